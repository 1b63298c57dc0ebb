//! Optimiser updates, as PyTorch's Adam and Adagrad with their coupled `weight_decay`
//! (the gradient becomes `g + weight_decay * p`, an L2 term `weight_decay/2 * |p|^2` in
//! the loss; no learning-rate decay): over a whole range of the parameter arena, or lazily over the rows of an
//! embedding table that a batch touched (`*_rows`, PyTorch's `SparseAdam` and sparse
//! Adagrad): untouched rows keep their parameters and state as they are, so a step's cost
//! follows the batch, not the vocabulary.
//!
//! The `*_listed` and `*_table` forms take a table's gradient as its listed rows only
//! (row `k` of `grads (K, w)` is row `rows[k]`'s, every other row's is zero), for the CPU
//! backend that keeps no gradient arena as large as its tables (issue 12): `*_listed`
//! updates the listed rows lazily, `*_table` every row as the dense update does with the
//! table's full gradient, bit for bit.

use rayon::prelude::*;

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

/// One Adam step `t` (1-based) on params (N) with grads (N); moments m, v (N) updated.
pub fn adam_update(
    params: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    grads: &[f32],
    hp: AdamHyper,
    t: u64,
) {
    let bc = AdamCorrection::new(hp, t);
    params
        .par_iter_mut()
        .zip(m.par_iter_mut().zip(v.par_iter_mut()))
        .zip(grads)
        .with_min_len(8192)
        .for_each(|((p, (m, v)), &g)| adam_element(p, m, v, g, hp, bc));
}

/// Lazy Adam step `t` on the rows `rows` (distinct) of one table of width `w`: params,
/// m, v and grads are that table's (R, w) slices. Each element of a listed row is
/// updated exactly as [`adam_update`] would; the other rows are not touched (their
/// moments do not decay). Panics on a row past the table. (The GPU's `adam_rows` also
/// zeroes the gradient rows it consumes and skips an id past the table; the CPU backend
/// zeroes its gradients before the next backward instead.)
pub fn adam_update_rows(
    params: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    grads: &[f32],
    w: usize,
    rows: &[u32],
    hp: AdamHyper,
    t: u64,
) {
    adam_rows(params, m, v, w, rows, hp, t, |_, r| &grads[r * w..][..w]);
}

/// [`adam_update_rows`] with the listed rows' gradients only: row `k` of `grads (K, w)`
/// is row `rows[k]`'s.
pub fn adam_update_listed(
    params: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    grads: &[f32],
    w: usize,
    rows: &[u32],
    hp: AdamHyper,
    t: u64,
) {
    adam_rows(params, m, v, w, rows, hp, t, |k, _| &grads[k * w..][..w]);
}

/// Lazy Adam on the rows `rows` of a table of width `w`, row `rows[k]` with the gradient
/// `grad(k, rows[k])`.
fn adam_rows<'g>(
    params: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    w: usize,
    rows: &[u32],
    hp: AdamHyper,
    t: u64,
    grad: impl Fn(usize, usize) -> &'g [f32],
) {
    let bc = AdamCorrection::new(hp, t);
    for (k, &r) in rows.iter().enumerate() {
        let at = r as usize * w..(r as usize + 1) * w;
        let (p, m, v) = (&mut params[at.clone()], &mut m[at.clone()], &mut v[at]);
        for (((p, m), v), &g) in p.iter_mut().zip(m).zip(v).zip(grad(k, r as usize)) {
            adam_element(p, m, v, g, hp, bc);
        }
    }
}

/// Rows of a table per parallel task of the `*_table` updates.
const TABLE_CHUNK_ROWS: usize = 512;

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

/// Adam step `t` on every row of a table of width `w` (params, m, v: its (R, w) slices)
/// whose gradient is given by rows: row `k` of `grads (K, w)` for row `rows[k]` (sorted,
/// distinct), zero for every other row. Bit for bit [`adam_update`] with the table's full
/// gradient (every row's moments decay), without that gradient.
pub fn adam_update_table(
    params: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    grads: &[f32],
    w: usize,
    rows: &[u32],
    hp: AdamHyper,
    t: u64,
) {
    if w == 0 {
        return;
    }
    let bc = AdamCorrection::new(hp, t);
    let zero = vec![0.0; w];
    let n = TABLE_CHUNK_ROWS * w;
    params
        .par_chunks_mut(n)
        .zip(m.par_chunks_mut(n).zip(v.par_chunks_mut(n)))
        .enumerate()
        .for_each(|(c, (p, (m, v)))| {
            let first = c * TABLE_CHUNK_ROWS;
            let mut cursor = RowCursor::from(rows, grads, &zero, first);
            let rows = p.chunks_mut(w).zip(m.chunks_mut(w).zip(v.chunks_mut(w)));
            for (i, (p, (m, v))) in rows.enumerate() {
                let g = cursor.grad(first + i);
                for (((p, m), v), &g) in p.iter_mut().zip(m).zip(v).zip(g) {
                    adam_element(p, m, v, g, hp, bc);
                }
            }
        });
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
fn adam_element(p: &mut f32, m: &mut f32, v: &mut f32, g: f32, hp: AdamHyper, bc: AdamCorrection) {
    let g = g + hp.weight_decay * *p;
    *m = hp.beta1 * *m + (1.0 - hp.beta1) * g;
    *v = hp.beta2 * *v + (1.0 - hp.beta2) * g * g;
    // PyTorch: p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)
    *p -= bc.step * *m / ((*v).sqrt() / bc.bc2_sqrt + hp.eps);
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

/// One Adagrad step on params (N) with grads (N); the running sum of squares (N) updated.
pub fn adagrad_update(params: &mut [f32], sum: &mut [f32], grads: &[f32], hp: AdagradHyper) {
    params
        .par_iter_mut()
        .zip(sum.par_iter_mut())
        .zip(grads)
        .with_min_len(8192)
        .for_each(|((p, s), &g)| adagrad_element(p, s, g, hp));
}

/// Adagrad on the rows `rows` (distinct) of one table of width `w` (params, sum and grads
/// are the table's (R, w) slices). A row outside the batch has a zero gradient, for which
/// [`adagrad_update`] changes nothing, so this equals the dense update bit for bit when
/// `rows` holds every row with a nonzero gradient and there is no weight decay (with
/// it, only the listed rows decay: lazy L2). Panics on a row past the table.
pub fn adagrad_update_rows(
    params: &mut [f32],
    sum: &mut [f32],
    grads: &[f32],
    w: usize,
    rows: &[u32],
    hp: AdagradHyper,
) {
    adagrad_rows(params, sum, w, rows, hp, |_, r| &grads[r * w..][..w]);
}

/// [`adagrad_update_rows`] with the listed rows' gradients only: row `k` of
/// `grads (K, w)` is row `rows[k]`'s.
pub fn adagrad_update_listed(
    params: &mut [f32],
    sum: &mut [f32],
    grads: &[f32],
    w: usize,
    rows: &[u32],
    hp: AdagradHyper,
) {
    adagrad_rows(params, sum, w, rows, hp, |k, _| &grads[k * w..][..w]);
}

/// Adagrad on the rows `rows` of a table of width `w`, row `rows[k]` with the gradient
/// `grad(k, rows[k])`.
fn adagrad_rows<'g>(
    params: &mut [f32],
    sum: &mut [f32],
    w: usize,
    rows: &[u32],
    hp: AdagradHyper,
    grad: impl Fn(usize, usize) -> &'g [f32],
) {
    for (k, &r) in rows.iter().enumerate() {
        let at = r as usize * w..(r as usize + 1) * w;
        let (p, s) = (&mut params[at.clone()], &mut sum[at]);
        for ((p, s), &g) in p.iter_mut().zip(s).zip(grad(k, r as usize)) {
            adagrad_element(p, s, g, hp);
        }
    }
}

/// [`adam_update_table`] for Adagrad: every row of the table, row `rows[k]` with row `k`
/// of `grads`, every other row with a zero gradient; [`adagrad_update`] with the table's
/// full gradient, bit for bit.
pub fn adagrad_update_table(
    params: &mut [f32],
    sum: &mut [f32],
    grads: &[f32],
    w: usize,
    rows: &[u32],
    hp: AdagradHyper,
) {
    if w == 0 {
        return;
    }
    let zero = vec![0.0; w];
    let n = TABLE_CHUNK_ROWS * w;
    params
        .par_chunks_mut(n)
        .zip(sum.par_chunks_mut(n))
        .enumerate()
        .for_each(|(c, (p, s))| {
            let first = c * TABLE_CHUNK_ROWS;
            let mut cursor = RowCursor::from(rows, grads, &zero, first);
            for (i, (p, s)) in p.chunks_mut(w).zip(s.chunks_mut(w)).enumerate() {
                let g = cursor.grad(first + i);
                for ((p, s), &g) in p.iter_mut().zip(s).zip(g) {
                    adagrad_element(p, s, g, hp);
                }
            }
        });
}

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
        let hp = AdamHyper {
            lr: 0.01,
            ..Default::default()
        };
        let (mut p, mut m, mut v) = (vec![0.3f32], vec![0.0f32], vec![0.0f32]);
        let (mut pr, mut mr, mut vr) = (0.3f64, 0.0f64, 0.0f64);
        for t in 1..=5u64 {
            let g = (t as f32 * 0.7).sin();
            adam_update(&mut p, &mut m, &mut v, &[g], hp, t);
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
        let init: Vec<f32> = (0..15).map(|i| i as f32 * 0.1 - 0.7).collect();
        let (mut pd, mut sd) = (init.clone(), vec![0.0; 15]);
        let (mut ps, mut ss) = (init, vec![0.0; 15]);
        for step in 0..4 {
            let g = sparse_grads(step);
            adagrad_update(&mut pd, &mut sd, &g, AG);
            adagrad_update_rows(&mut ps, &mut ss, &g, 3, &[3, 1], AG);
        }
        assert_eq!(pd, ps);
        assert_eq!(sd, ss);
    }

    #[test]
    fn adam_rows_updates_listed_rows_as_dense_adam_and_leaves_the_rest_alone() {
        let hp = AdamHyper {
            lr: 0.01,
            ..Default::default()
        };
        let init: Vec<f32> = (0..15).map(|i| i as f32 * 0.1 - 0.7).collect();
        let (mut p, mut m, mut v) = (init.clone(), vec![0.0; 15], vec![0.0; 15]);
        // Step 1 touches rows 1 and 3, step 2 only row 3.
        adam_update_rows(&mut p, &mut m, &mut v, &sparse_grads(0), 3, &[1, 3], hp, 1);
        let g2 = sparse_grads(1);
        adam_update_rows(&mut p, &mut m, &mut v, &g2, 3, &[3], hp, 2);
        // Rows 0, 2, 4: never listed, never changed.
        for r in [0, 2, 4] {
            assert_eq!(&p[3 * r..3 * r + 3], &init[3 * r..3 * r + 3]);
            assert!(m[3 * r..3 * r + 3].iter().all(|&x| x == 0.0));
        }
        // Row 1: one step, then frozen (lazy: its moments did not decay at step 2).
        let (mut p1, mut m1, mut v1) = (init[3..6].to_vec(), vec![0.0; 3], vec![0.0; 3]);
        adam_update(&mut p1, &mut m1, &mut v1, &sparse_grads(0)[3..6], hp, 1);
        assert_eq!((&p[3..6], &m[3..6], &v[3..6]), (&p1[..], &m1[..], &v1[..]));
        // Row 3: both steps, exactly as dense Adam on that row.
        let (mut p3, mut m3, mut v3) = (init[9..12].to_vec(), vec![0.0; 3], vec![0.0; 3]);
        adam_update(&mut p3, &mut m3, &mut v3, &sparse_grads(0)[9..12], hp, 1);
        adam_update(&mut p3, &mut m3, &mut v3, &g2[9..12], hp, 2);
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
            lr: 0.01,
            weight_decay: 0.02,
            ..Default::default()
        };
        let ag = AdagradHyper {
            weight_decay: 0.02,
            ..AG
        };
        let init: Vec<f32> = (0..15).map(|i| i as f32 * 0.1 - 0.7).collect();
        let (mut pd, mut md, mut vd, mut sd) =
            (init.clone(), vec![0.0; 15], vec![0.0; 15], vec![0.0; 15]);
        let (mut pa, mut ma, mut va) = (init.clone(), vec![0.0; 15], vec![0.0; 15]);
        let (mut pg, mut sg) = (init.clone(), vec![0.0; 15]);
        let mut qd = init.clone();
        for step in 0..4 {
            let t = step as u64 + 1;
            adam_update(&mut pd, &mut md, &mut vd, &sparse_grads(step), hp, t);
            let g = listed_grads(step);
            adam_update_table(&mut pa, &mut ma, &mut va, &g, 3, &[1, 3], hp, t);
            adagrad_update(&mut qd, &mut sd, &sparse_grads(step), ag);
            adagrad_update_table(&mut pg, &mut sg, &g, 3, &[1, 3], ag);
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
        adam_update_table(&mut b, &mut bm, &mut bv, &listed, w, &rows, hp, 3);
        assert_eq!((&a, &am, &av), (&b, &bm, &bv));
    }

    #[test]
    fn listed_row_updates_equal_the_row_updates_of_the_full_gradient() {
        let hp = AdamHyper {
            lr: 0.01,
            ..Default::default()
        };
        let init: Vec<f32> = (0..15).map(|i| i as f32 * 0.1 - 0.7).collect();
        let (mut a, mut am, mut av, mut asum) =
            (init.clone(), vec![0.0; 15], vec![0.0; 15], vec![0.0; 15]);
        let (mut b, mut bm, mut bv, mut bsum) =
            (init.clone(), vec![0.0; 15], vec![0.0; 15], vec![0.0; 15]);
        let (mut c, mut d) = (init.clone(), init);
        for step in 0..3 {
            let t = step as u64 + 1;
            adam_update_rows(
                &mut a,
                &mut am,
                &mut av,
                &sparse_grads(step),
                3,
                &[1, 3],
                hp,
                t,
            );
            let g = listed_grads(step);
            adam_update_listed(&mut b, &mut bm, &mut bv, &g, 3, &[1, 3], hp, t);
            adagrad_update_rows(&mut c, &mut asum, &sparse_grads(step), 3, &[1, 3], AG);
            adagrad_update_listed(&mut d, &mut bsum, &g, 3, &[1, 3], AG);
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
        let init: Vec<f32> = (0..15).map(|i| i as f32 * 0.1 - 0.7).collect();
        let g = sparse_grads(2);
        let shifted: Vec<f32> = g.iter().zip(&init).map(|(g, p)| g + wd * p).collect();
        let hp = AdamHyper {
            lr: 0.01,
            ..Default::default()
        };
        let decayed = AdamHyper {
            weight_decay: wd,
            ..hp
        };
        let (mut a, mut am, mut av) = (init.clone(), vec![0.1; 15], vec![0.2; 15]);
        let (mut b, mut bm, mut bv) = (init.clone(), vec![0.1; 15], vec![0.2; 15]);
        adam_update(&mut a, &mut am, &mut av, &g, decayed, 3);
        adam_update(&mut b, &mut bm, &mut bv, &shifted, hp, 3);
        assert_eq!((&a, &am, &av), (&b, &bm, &bv));
        assert_ne!(a, init, "rows without gradient decay too");
        let (mut r, mut rm, mut rv) = (init.clone(), vec![0.1; 15], vec![0.2; 15]);
        adam_update_rows(
            &mut r,
            &mut rm,
            &mut rv,
            &g,
            3,
            &[0, 1, 2, 3, 4],
            decayed,
            3,
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
        adagrad_update_rows(&mut e, &mut es, &g, 3, &[4, 2, 0, 1, 3], ag);
        assert_eq!((&e, &es), (&c, &cs));
    }
}
