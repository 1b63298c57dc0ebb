//! Optimiser updates, as PyTorch's Adam and Adagrad with their coupled `weight_decay`
//! (the gradient becomes `g + weight_decay * p`, an L2 term `weight_decay/2 * |p|^2` in
//! the loss; no learning-rate decay). A [`Step`] is one update's rule with the state it
//! changes (Adam's moments, Adagrad's sum of squares), over one of three ranges:
//!
//! - [`Step::update`]: every parameter of a range of the arena, from its full gradient.
//! - [`Step::update_rows`]: lazily, only the rows of an embedding table that a batch
//!   touched (PyTorch's `SparseAdam` and sparse Adagrad): untouched rows keep their
//!   parameters and state as they are, so a step's cost follows the batch, not the
//!   vocabulary. The gradient is the table's full one, or its listed rows only
//!   ([`RowGrads`]).
//! - [`Step::update_table`]: every row of a table, as [`Step::update`] does with the
//!   table's full gradient, bit for bit, given only the listed rows' gradients (every
//!   other row's is zero), for the CPU backend that keeps no gradient arena as large as
//!   its tables (issue 12).
//!
//! Each applies the same element update ([`adam_element`], [`adagrad_element`]) in the
//! same order, so the three agree bit for bit wherever they update the same element.

use rayon::prelude::*;
use std::ops::Range;

/// Adam's hyper-parameters (PyTorch's names and defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamHyper {
    /// Learning rate.
    pub lr: f32,
    /// Decay of the first moment.
    pub beta1: f32,
    /// Decay of the second moment.
    pub beta2: f32,
    /// Added to the root of the second moment.
    pub eps: f32,
    /// L2 coefficient: the gradient is taken as `g + weight_decay * p` (PyTorch's).
    pub weight_decay: f32,
}

impl Default for AdamHyper {
    fn default() -> Self {
        AdamHyper {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// Adagrad's hyper-parameters (PyTorch's names).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdagradHyper {
    /// Learning rate.
    pub lr: f32,
    /// Added to the root of the sum of squares.
    pub eps: f32,
    /// L2 coefficient: the gradient is taken as `g + weight_decay * p` (PyTorch's).
    pub weight_decay: f32,
}

/// One Adam step `t` (1-based) on params (N) with grads (N); moments m, v (N) updated.
pub fn adam_update(
    params: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    grads: &[f32],
    hp: AdamHyper,
    t: u64,
) {
    Step::adam(m, v, hp, t).update(params, grads);
}

/// One Adagrad step on params (N) with grads (N); the running sum of squares (N) updated.
pub fn adagrad_update(params: &mut [f32], sum: &mut [f32], grads: &[f32], hp: AdagradHyper) {
    Step::adagrad(sum, hp).update(params, grads);
}

/// One optimiser update: its rule and the state it changes, of the same length as the
/// parameters it is applied to.
#[derive(Debug)]
pub enum Step<'a> {
    /// Adam at one step: the moments `m` and `v`.
    Adam {
        /// First moment (PyTorch's `exp_avg`).
        m: &'a mut [f32],
        /// Second moment (PyTorch's `exp_avg_sq`).
        v: &'a mut [f32],
        /// The hyper-parameters and the step's bias corrections.
        rule: AdamStep,
    },
    /// Adagrad: the running sum of squared gradients.
    Adagrad {
        /// Sum of squared gradients (PyTorch's `sum`).
        sum: &'a mut [f32],
        /// The hyper-parameters.
        hp: AdagradHyper,
    },
}

/// The table of a row update's gradient: which row of `grads (K, w)` is row `rows[k]`'s.
#[derive(Clone, Copy, Debug)]
pub enum RowGrads<'g> {
    /// The table's full gradient `(R, w)`: row `rows[k]`'s is its row `rows[k]`.
    Full(&'g [f32]),
    /// The listed rows' only `(K, w)`: row `rows[k]`'s is its row `k`.
    Listed(&'g [f32]),
}

/// Parameters per parallel task of [`Step::update`].
const DENSE_CHUNK: usize = 8192;
/// Rows of a table per parallel task of [`Step::update_table`].
const TABLE_CHUNK_ROWS: usize = 512;

impl<'a> Step<'a> {
    /// Adam's step `t` (1-based) on the moments `m`, `v`.
    pub fn adam(m: &'a mut [f32], v: &'a mut [f32], hp: AdamHyper, t: u64) -> Step<'a> {
        let rule = AdamStep {
            hp,
            bc: AdamCorrection::new(hp, t),
        };
        Step::Adam { m, v, rule }
    }

    /// An Adagrad step on the running sum of squares `sum`.
    pub fn adagrad(sum: &'a mut [f32], hp: AdagradHyper) -> Step<'a> {
        Step::Adagrad { sum, hp }
    }

    /// Every parameter of `params` (N) from `grads` (N).
    pub fn update(self, params: &mut [f32], grads: &[f32]) {
        params
            .par_chunks_mut(DENSE_CHUNK)
            .zip(self.chunks(DENSE_CHUNK))
            .zip(grads.par_chunks(DENSE_CHUNK))
            .for_each(|((p, state), g)| state.run(p, g));
    }

    /// Lazily, the rows `rows` (distinct) of one table of width `w` (params and the state
    /// are the table's `(R, w)` slices), each element exactly as [`Step::update`] would;
    /// the other rows are not touched (Adam's moments do not decay there). Adagrad changes
    /// nothing where the gradient is zero, so for it this equals the dense update bit for
    /// bit when `rows` holds every row with a nonzero gradient and there is no weight
    /// decay (with it, only the listed rows decay: lazy L2). Panics on a row past the
    /// table. (The GPU's `adam_rows` also zeroes the gradient rows it consumes and skips an
    /// id past the table; the CPU backend zeroes its gradients before the next backward
    /// instead.)
    pub fn update_rows(mut self, params: &mut [f32], grads: RowGrads<'_>, w: usize, rows: &[u32]) {
        for (k, &r) in rows.iter().enumerate() {
            let at = r as usize * w..(r as usize + 1) * w;
            let g = match grads {
                RowGrads::Full(g) => &g[at.clone()],
                RowGrads::Listed(g) => &g[k * w..][..w],
            };
            self.at(at.clone()).run(&mut params[at], g);
        }
    }

    /// Every row of a table of width `w` (params and the state are its `(R, w)` slices)
    /// whose gradient is given by rows: row `k` of `grads (K, w)` for row `rows[k]`
    /// (sorted, distinct), zero for every other row. Bit for bit [`Step::update`] with
    /// the table's full gradient (every row's state changes), without that gradient.
    pub fn update_table(self, params: &mut [f32], grads: &[f32], w: usize, rows: &[u32]) {
        if w == 0 {
            return;
        }
        let zero = vec![0.0; w];
        let n = TABLE_CHUNK_ROWS * w;
        params
            .par_chunks_mut(n)
            .zip(self.chunks(n))
            .enumerate()
            .for_each(|(c, (p, mut state))| {
                let first = c * TABLE_CHUNK_ROWS;
                let mut cursor = RowCursor::from(rows, grads, &zero, first);
                for (i, p) in p.chunks_mut(w).enumerate() {
                    let g = cursor.grad(first + i);
                    state.at(i * w..(i + 1) * w).run(p, g);
                }
            });
    }

    /// The same step on the state's elements `at`.
    fn at(&mut self, at: Range<usize>) -> Step<'_> {
        match self {
            Step::Adam { m, v, rule } => Step::Adam {
                m: &mut m[at.clone()],
                v: &mut v[at],
                rule: *rule,
            },
            Step::Adagrad { sum, hp } => Step::Adagrad {
                sum: &mut sum[at],
                hp: *hp,
            },
        }
    }

    /// The same step on consecutive runs of `n` elements of the state (the last shorter).
    fn chunks(self, n: usize) -> Vec<Step<'a>> {
        match self {
            Step::Adam { m, v, rule } => m
                .chunks_mut(n)
                .zip(v.chunks_mut(n))
                .map(|(m, v)| Step::Adam { m, v, rule })
                .collect(),
            Step::Adagrad { sum, hp } => sum
                .chunks_mut(n)
                .map(|sum| Step::Adagrad { sum, hp })
                .collect(),
        }
    }

    /// The update of `p` from `g`, element by element (all of the state's length).
    fn run(self, p: &mut [f32], g: &[f32]) {
        match self {
            Step::Adam { m, v, rule } => {
                for (((p, m), v), &g) in p.iter_mut().zip(m).zip(v).zip(g) {
                    adam_element(p, m, v, g, rule);
                }
            }
            Step::Adagrad { sum, hp } => {
                for ((p, s), &g) in p.iter_mut().zip(sum).zip(g) {
                    adagrad_element(p, s, g, hp);
                }
            }
        }
    }
}

/// The gradient of each row of a table, asked for in increasing row order: row `rows[k]`
/// (`rows` sorted) has row `k` of `grads`, every other row `zero`.
struct RowCursor<'a> {
    rows: &'a [u32],
    grads: &'a [f32],
    zero: &'a [f32],
    k: usize,
}

impl<'a> RowCursor<'a> {
    /// A cursor for rows from `first` on.
    fn from(rows: &'a [u32], grads: &'a [f32], zero: &'a [f32], first: usize) -> Self {
        let k = rows.partition_point(|&r| (r as usize) < first);
        RowCursor {
            rows,
            grads,
            zero,
            k,
        }
    }
    /// The gradient of `row` (each asked for once, in increasing order).
    fn grad(&mut self, row: usize) -> &'a [f32] {
        if self.rows.get(self.k).is_some_and(|&r| r as usize == row) {
            let w = self.zero.len();
            self.k += 1;
            &self.grads[(self.k - 1) * w..][..w]
        } else {
            self.zero
        }
    }
}

/// Adam's hyper-parameters with the bias corrections of one step.
#[derive(Clone, Copy, Debug)]
pub struct AdamStep {
    hp: AdamHyper,
    bc: AdamCorrection,
}

/// Adam's bias corrections for step `t`, computed in f64 and rounded once (the GPU's
/// `OptimBinding::set_step` computes them the same way).
#[derive(Clone, Copy, Debug)]
struct AdamCorrection {
    /// lr / (1 - beta1^t)
    step: f32,
    /// sqrt(1 - beta2^t)
    bc2_sqrt: f32,
}

impl AdamCorrection {
    fn new(hp: AdamHyper, t: u64) -> Self {
        let bc1 = 1.0 - (hp.beta1 as f64).powi(t as i32);
        let bc2 = 1.0 - (hp.beta2 as f64).powi(t as i32);
        AdamCorrection {
            step: (hp.lr as f64 / bc1) as f32,
            bc2_sqrt: bc2.sqrt() as f32,
        }
    }
}

/// One element of an Adam step, in the operation order `shaders/optim.wgsl` follows.
#[inline]
fn adam_element(p: &mut f32, m: &mut f32, v: &mut f32, g: f32, AdamStep { hp, bc }: AdamStep) {
    let g = g + hp.weight_decay * *p;
    *m = hp.beta1 * *m + (1.0 - hp.beta1) * g;
    *v = hp.beta2 * *v + (1.0 - hp.beta2) * g * g;
    // PyTorch: p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)
    *p -= bc.step * *m / ((*v).sqrt() / bc.bc2_sqrt + hp.eps);
}

/// One element of an Adagrad step.
#[inline]
fn adagrad_element(p: &mut f32, s: &mut f32, g: f32, hp: AdagradHyper) {
    let g = g + hp.weight_decay * *p;
    *s += g * g;
    *p -= hp.lr * g / (s.sqrt() + hp.eps);
}

#[cfg(test)]
mod tests {
    use super::*;

    const AG: AdagradHyper = AdagradHyper {
        lr: 0.01,
        eps: 1e-10,
        weight_decay: 0.0,
    };

    /// PyTorch's Adam defaults at learning rate 0.01.
    const ADAM: AdamHyper = AdamHyper {
        lr: 0.01,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    };

    /// The parameters of a (R = 5, w = 3) table before the first step.
    fn init() -> Vec<f32> {
        (0..15).map(|i| i as f32 * 0.1 - 0.7).collect()
    }

    #[test]
    fn adam_first_step_moves_each_parameter_by_lr_against_its_gradient() {
        let mut p = vec![1.0, 1.0, 1.0];
        let (mut m, mut v) = (vec![0.0; 3], vec![0.0; 3]);
        adam_update(
            &mut p,
            &mut m,
            &mut v,
            &[0.5, -2.0, 0.0],
            AdamHyper::default(),
            1,
        );
        assert!(
            (p[0] - 0.999).abs() < 1e-6 && (p[1] - 1.001).abs() < 1e-6 && p[2] == 1.0,
            "{p:?}"
        );
    }

    #[test]
    fn adam_matches_a_plain_f64_transcription_over_several_steps() {
        let (mut p, mut m, mut v) = (vec![0.3f32], vec![0.0f32], vec![0.0f32]);
        let (mut pr, mut mr, mut vr) = (0.3f64, 0.0f64, 0.0f64);
        for t in 1..=5u64 {
            let g = (t as f32 * 0.7).sin();
            adam_update(&mut p, &mut m, &mut v, &[g], ADAM, t);
            mr = 0.9 * mr + 0.1 * g as f64;
            vr = 0.999 * vr + 0.001 * (g as f64).powi(2);
            let (mh, vh) = (
                mr / (1.0 - 0.9f64.powi(t as i32)),
                vr / (1.0 - 0.999f64.powi(t as i32)),
            );
            pr -= 0.01 * mh / (vh.sqrt() + 1e-8);
        }
        assert!((p[0] as f64 - pr).abs() < 1e-6, "{} vs {pr}", p[0]);
    }

    /// (R = 5, w = 3) with gradients on rows 1 and 3 only.
    fn sparse_grads(step: usize) -> Vec<f32> {
        let mut g = vec![0.0; 15];
        for (k, i) in (3..6).chain(9..12).enumerate() {
            g[i] = ((k + 3 * step) as f32 * 0.37).sin();
        }
        g
    }

    #[test]
    fn adagrad_rows_equals_the_dense_update_bit_for_bit() {
        let init = init();
        let (mut pd, mut sd) = (init.clone(), vec![0.0; 15]);
        let (mut ps, mut ss) = (init, vec![0.0; 15]);
        for step in 0..4 {
            let g = sparse_grads(step);
            adagrad_update(&mut pd, &mut sd, &g, AG);
            Step::adagrad(&mut ss, AG).update_rows(&mut ps, RowGrads::Full(&g), 3, &[3, 1]);
        }
        assert_eq!(pd, ps);
        assert_eq!(sd, ss);
    }

    #[test]
    fn adam_rows_updates_listed_rows_as_dense_adam_and_leaves_the_rest_alone() {
        let init = init();
        let (mut p, mut m, mut v) = (init.clone(), vec![0.0; 15], vec![0.0; 15]);
        // Step 1 touches rows 1 and 3, step 2 only row 3.
        Step::adam(&mut m, &mut v, ADAM, 1).update_rows(
            &mut p,
            RowGrads::Full(&sparse_grads(0)),
            3,
            &[1, 3],
        );
        let g2 = sparse_grads(1);
        Step::adam(&mut m, &mut v, ADAM, 2).update_rows(&mut p, RowGrads::Full(&g2), 3, &[3]);
        // Rows 0, 2, 4: never listed, never changed.
        for r in [0, 2, 4] {
            assert_eq!(&p[3 * r..3 * r + 3], &init[3 * r..3 * r + 3]);
            assert!(m[3 * r..3 * r + 3].iter().all(|&x| x == 0.0));
        }
        // Row 1: one step, then frozen (lazy: its moments did not decay at step 2).
        let (mut p1, mut m1, mut v1) = (init[3..6].to_vec(), vec![0.0; 3], vec![0.0; 3]);
        adam_update(&mut p1, &mut m1, &mut v1, &sparse_grads(0)[3..6], ADAM, 1);
        assert_eq!((&p[3..6], &m[3..6], &v[3..6]), (&p1[..], &m1[..], &v1[..]));
        // Row 3: both steps, exactly as dense Adam on that row.
        let (mut p3, mut m3, mut v3) = (init[9..12].to_vec(), vec![0.0; 3], vec![0.0; 3]);
        adam_update(&mut p3, &mut m3, &mut v3, &sparse_grads(0)[9..12], ADAM, 1);
        adam_update(&mut p3, &mut m3, &mut v3, &g2[9..12], ADAM, 2);
        assert_eq!(&p[9..12], &p3[..]);
    }

    /// The rows of `sparse_grads` (1 and 3) as listed rows: (2, 3).
    fn listed_grads(step: usize) -> Vec<f32> {
        let g = sparse_grads(step);
        [&g[3..6], &g[9..12]].concat()
    }

    #[test]
    fn table_updates_from_listed_rows_equal_the_dense_ones_bit_for_bit() {
        let hp = AdamHyper {
            weight_decay: 0.02,
            ..ADAM
        };
        let ag = AdagradHyper {
            weight_decay: 0.02,
            ..AG
        };
        let init = init();
        let (mut pd, mut md, mut vd, mut sd) =
            (init.clone(), vec![0.0; 15], vec![0.0; 15], vec![0.0; 15]);
        let (mut pa, mut ma, mut va) = (init.clone(), vec![0.0; 15], vec![0.0; 15]);
        let (mut pg, mut sg) = (init.clone(), vec![0.0; 15]);
        let mut qd = init.clone();
        for step in 0..4 {
            let t = step as u64 + 1;
            adam_update(&mut pd, &mut md, &mut vd, &sparse_grads(step), hp, t);
            let g = listed_grads(step);
            Step::adam(&mut ma, &mut va, hp, t).update_table(&mut pa, &g, 3, &[1, 3]);
            adagrad_update(&mut qd, &mut sd, &sparse_grads(step), ag);
            Step::adagrad(&mut sg, ag).update_table(&mut pg, &g, 3, &[1, 3]);
        }
        assert_eq!((&pa, &ma, &va), (&pd, &md, &vd));
        assert_eq!((&pg, &sg), (&qd, &sd));
        // A table of more rows than one task takes, rows listed in several tasks.
        let (r, w) = (2 * TABLE_CHUNK_ROWS + 7, 2);
        let rows = [0u32, 5, 511, 512, 513, 1030];
        let listed: Vec<f32> = (0..rows.len() * w)
            .map(|i| (i as f32 * 0.3).cos())
            .collect();
        let mut full = vec![0.0; r * w];
        for (k, &row) in rows.iter().enumerate() {
            full[row as usize * w..][..w].copy_from_slice(&listed[k * w..][..w]);
        }
        let init: Vec<f32> = (0..r * w).map(|i| (i as f32 * 0.01).sin()).collect();
        let (mut a, mut am, mut av) = (init.clone(), vec![0.1; r * w], vec![0.2; r * w]);
        let (mut b, mut bm, mut bv) = (init.clone(), vec![0.1; r * w], vec![0.2; r * w]);
        adam_update(&mut a, &mut am, &mut av, &full, hp, 3);
        Step::adam(&mut bm, &mut bv, hp, 3).update_table(&mut b, &listed, w, &rows);
        assert_eq!((&a, &am, &av), (&b, &bm, &bv));
    }

    #[test]
    fn listed_row_updates_equal_the_row_updates_of_the_full_gradient() {
        let init = init();
        let (mut a, mut am, mut av, mut asum) =
            (init.clone(), vec![0.0; 15], vec![0.0; 15], vec![0.0; 15]);
        let (mut b, mut bm, mut bv, mut bsum) =
            (init.clone(), vec![0.0; 15], vec![0.0; 15], vec![0.0; 15]);
        let (mut c, mut d) = (init.clone(), init);
        for step in 0..3 {
            let t = step as u64 + 1;
            Step::adam(&mut am, &mut av, ADAM, t).update_rows(
                &mut a,
                RowGrads::Full(&sparse_grads(step)),
                3,
                &[1, 3],
            );
            let g = listed_grads(step);
            Step::adam(&mut bm, &mut bv, ADAM, t).update_rows(
                &mut b,
                RowGrads::Listed(&g),
                3,
                &[1, 3],
            );
            Step::adagrad(&mut asum, AG).update_rows(
                &mut c,
                RowGrads::Full(&sparse_grads(step)),
                3,
                &[1, 3],
            );
            Step::adagrad(&mut bsum, AG).update_rows(&mut d, RowGrads::Listed(&g), 3, &[1, 3]);
        }
        assert_eq!((&a, &am, &av), (&b, &bm, &bv));
        assert_eq!((&c, &asum), (&d, &bsum));
    }

    #[test]
    fn adagrad_matches_its_formula() {
        let (mut p, mut s) = (vec![1.0f32], vec![0.0f32]);
        adagrad_update(&mut p, &mut s, &[2.0], AG);
        adagrad_update(&mut p, &mut s, &[1.0], AG);
        let want = 1.0 - 0.01 * 2.0 / 2.0 - 0.01 * 1.0 / 5f32.sqrt();
        assert!((p[0] - want).abs() < 1e-7 && s[0] == 5.0);
    }

    #[test]
    fn weight_decay_adds_its_multiple_of_the_parameter_to_the_gradient() {
        // PyTorch's coupled L2: one step with decay equals a step without it on the
        // gradient g + wd * p, for Adam and Adagrad, dense and by rows.
        let wd = 0.05;
        let init = init();
        let g = sparse_grads(2);
        let shifted: Vec<f32> = g.iter().zip(&init).map(|(g, p)| g + wd * p).collect();
        let decayed = AdamHyper {
            weight_decay: wd,
            ..ADAM
        };
        let (mut a, mut am, mut av) = (init.clone(), vec![0.1; 15], vec![0.2; 15]);
        let (mut b, mut bm, mut bv) = (init.clone(), vec![0.1; 15], vec![0.2; 15]);
        adam_update(&mut a, &mut am, &mut av, &g, decayed, 3);
        adam_update(&mut b, &mut bm, &mut bv, &shifted, ADAM, 3);
        assert_eq!((&a, &am, &av), (&b, &bm, &bv));
        assert_ne!(a, init, "rows without gradient decay too");
        let (mut r, mut rm, mut rv) = (init.clone(), vec![0.1; 15], vec![0.2; 15]);
        Step::adam(&mut rm, &mut rv, decayed, 3).update_rows(
            &mut r,
            RowGrads::Full(&g),
            3,
            &[0, 1, 2, 3, 4],
        );
        assert_eq!(r, a);
        let ag = AdagradHyper {
            weight_decay: wd,
            ..AG
        };
        let (mut c, mut cs) = (init.clone(), vec![0.3; 15]);
        let (mut d, mut ds) = (init.clone(), vec![0.3; 15]);
        adagrad_update(&mut c, &mut cs, &g, ag);
        adagrad_update(&mut d, &mut ds, &shifted, AG);
        assert_eq!((&c, &cs), (&d, &ds));
        let (mut e, mut es) = (init.clone(), vec![0.3; 15]);
        Step::adagrad(&mut es, ag).update_rows(&mut e, RowGrads::Full(&g), 3, &[4, 2, 0, 1, 3]);
        assert_eq!((&e, &es), (&c, &cs));
    }
}
