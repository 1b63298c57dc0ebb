//! Multi-head softmax attention over the `T` tokens of each sample, keys masked by
//! validity (a history slot is valid when its item is not 0; the target always is).
//!
//! Head `j` owns columns `j*dh .. (j+1)*dh` of each of Q, K and V, which sit side by side
//! in `qkv`: columns `0..d` are Q, `d..2d` K, `2d..3d` V.
//!
//! Speed (the plain loops are [`crate::cpu::reference`], tested against here): each (sample, head) first
//! copies its operands into small scratch matrices: the queries, and only the `nv` valid
//! keys and values (masked keys get probability 0 and gradient 0, so they add nothing),
//! K or V transposed where a sum runs over the columns, rows zero-padded to 8 lanes.
//! Every sum is then [`sum8`]: 8 outputs at once, accumulated in registers over
//! unit-stride rows. A dot product per (query, key) is instead a serial chain of `dh`
//! adds, and an accumulator in memory a chain of store-to-load waits. The sums keep the
//! plain loops' order (and the GPU kernel's), less the zero terms of masked keys: over
//! the `dh` columns for a score, over the keys for an output or a query gradient, over
//! the queries for a key or value gradient.

use rayon::prelude::*;

/// Lanes of [`sum8`] and [`axpy`]: scratch rows are padded to a multiple of this.
const LANES: usize = 8;

/// One (sample, head)'s operands. `tp` is `T` and `dhp` is `dh` rounded up to a multiple
/// of [`LANES`]; `nv` of the `T` keys are valid, and key `i` of the scratch is token
/// `keys[i]`. Padding columns of `q`, `k`, `v`, `g` stay 0; those of `kt` and `vt` past
/// `nv` hold stale keys, which the mask or the loop bounds leave out.
struct HeadScratch {
    tp: usize,
    dhp: usize,
    keys: Vec<usize>, // (nv)      the valid tokens of this sample
    q: Vec<f32>,      // (T, dhp)
    k: Vec<f32>,      // (nv, dhp)  backward
    kt: Vec<f32>,     // (dh, tp)   forward: K transposed
    v: Vec<f32>,      // (nv, dhp)  forward
    vt: Vec<f32>,     // (dh, tp)   backward: V transposed
    g: Vec<f32>,      // (T, dhp)   backward: dO
    dk: Vec<f32>,     // (nv, dhp)  backward
    dv: Vec<f32>,     // (nv, dhp)  backward
    mask: Vec<f32>,   // (tp)       0 for the nv keys, -inf past them
    sc: Vec<f32>,     // (tp)       scores of one query, forward; dP, backward
    p: Vec<f32>,      // (nv)       probabilities of one query
    ds: Vec<f32>,     // (nv)       backward: dS of one query
}

impl HeadScratch {
    fn new(t_n: usize, dh: usize) -> Self {
        let (tp, dhp) = (t_n.next_multiple_of(LANES), dh.next_multiple_of(LANES));
        let rows = || vec![0.0; t_n * dhp];
        let cols = || vec![0.0; dh * tp];
        HeadScratch {
            tp,
            dhp,
            keys: Vec::with_capacity(t_n),
            q: rows(),
            k: rows(),
            kt: cols(),
            v: rows(),
            vt: cols(),
            g: rows(),
            dk: rows(),
            dv: rows(),
            mask: vec![0.0; tp],
            sc: vec![0.0; tp],
            p: vec![0.0; t_n],
            ds: vec![0.0; t_n],
        }
    }

    /// Lists the valid keys of a sample, valid (T), and sets the mask.
    fn set_keys(&mut self, valid: &[u32]) {
        self.keys.clear();
        self.keys.extend(
            valid
                .iter()
                .enumerate()
                .filter(|(_, v)| **v != 0)
                .map(|(t, _)| t),
        );
        let nv = self.keys.len();
        for (i, m) in self.mask.iter_mut().enumerate() {
            *m = if i < nv { 0.0 } else { f32::NEG_INFINITY };
        }
    }
}

/// dst (n, dst_stride): the first `dh` columns of row i = columns `c0 .. c0+dh` of rows[i]
fn gather<'a>(
    dst: &mut [f32],
    dst_stride: usize,
    rows: impl Iterator<Item = &'a [f32]>,
    c0: usize,
    dh: usize,
) {
    for (d, s) in dst.chunks_exact_mut(dst_stride).zip(rows) {
        copy(&mut d[..dh], &s[c0..c0 + dh]);
    }
}

/// dst (dh, tp): column i = columns `c0 .. c0+dh` of rows[i] (a transposed gather)
fn gather_t<'a>(
    dst: &mut [f32],
    tp: usize,
    rows: impl Iterator<Item = &'a [f32]>,
    c0: usize,
    dh: usize,
) {
    for (i, s) in rows.enumerate() {
        for (d, &x) in dst.chunks_exact_mut(tp).zip(&s[c0..c0 + dh]) {
            d[i] = x;
        }
    }
}

/// out (8) = sum over i of a[i] * x[i * stride + off ..][..8], summed in the order of i.
/// The fixed-length accumulator lives in registers: straight SIMD code.
#[inline]
fn sum8(a: &[f32], x: &[f32], stride: usize, off: usize) -> [f32; LANES] {
    let mut acc = [0.0f32; LANES];
    for (&ai, xi) in a.iter().zip(x.chunks(stride)) {
        let xi = &xi[off..off + LANES];
        for l in 0..LANES {
            acc[l] += ai * xi[l];
        }
    }
    acc
}

/// y += a * x, for rows padded to a multiple of [`LANES`]
#[inline]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.chunks_exact_mut(LANES).zip(x.chunks_exact(LANES)) {
        for l in 0..LANES {
            y[l] += a * x[l];
        }
    }
}

/// dst = src (equal lengths), 8 floats at a time: a few vector moves for the short rows
/// here, where a copy of runtime length (or a plain loop, which LLVM turns into one) calls
/// memcpy.
#[inline]
fn copy(dst: &mut [f32], src: &[f32]) {
    let mut d8 = dst.chunks_exact_mut(LANES);
    let mut s8 = src.chunks_exact(LANES);
    for (d, s) in (&mut d8).zip(&mut s8) {
        d[..LANES].copy_from_slice(&s[..LANES]); // a constant length: no memcpy call
    }
    let (d, s) = (d8.into_remainder(), s8.remainder());
    if !d.is_empty() {
        d.copy_from_slice(s);
    }
}

/// Columns per head `dh = d / h` and the score scale `1 / sqrt(dh)` (the GPU launchers
/// compute the same f32).
pub fn head_dims(d: usize, h: usize) -> (usize, f32) {
    let dh = d / h;
    (dh, 1.0 / (dh as f32).sqrt())
}

/// out (B, T, d) = concat_j softmax(q_j k_j^T / sqrt(dh) + mask) v_j
/// att (B, h, T, T): the softmax probabilities, saved for the backward (0 on masked keys)
/// qkv (B, T, 3d), valid (B, T): 1 for valid tokens, 0 for padding
/// A sample with no valid token gets att 0 and out 0 (its softmax has no term), and the
/// backward then gives it dqkv 0.
pub fn attention_forward(
    out: &mut [f32],
    att: &mut [f32],
    qkv: &[f32],
    valid: &[u32],
    b: usize,
    t_n: usize,
    d: usize,
    h: usize,
) {
    let (dh, scale) = head_dims(d, h);
    out[..b * t_n * d]
        .par_chunks_mut(t_n * d)
        .zip(att[..b * h * t_n * t_n].par_chunks_mut(h * t_n * t_n))
        .enumerate()
        .for_each_init(
            || HeadScratch::new(t_n, dh),
            |s, (bi, (out_b, att_b))| {
                let (tp, dhp) = (s.tp, s.dhp);
                let qkv_b = &qkv[bi * t_n * 3 * d..][..t_n * 3 * d]; // (T, 3d)
                let tok = |t: &usize| &qkv_b[t * 3 * d..][..3 * d]; // (3d)
                s.set_keys(&valid[bi * t_n..][..t_n]);
                let nv = s.keys.len();
                for (j, att_j) in att_b.chunks_exact_mut(t_n * t_n).enumerate() {
                    gather(&mut s.q, dhp, qkv_b.chunks_exact(3 * d), j * dh, dh);
                    gather_t(&mut s.kt, tp, s.keys.iter().map(tok), d + j * dh, dh);
                    gather(&mut s.v, dhp, s.keys.iter().map(tok), 2 * d + j * dh, dh);
                    // One query t1 at a time: its row of att (T), its dh outputs.
                    for (t1, (row, q)) in att_j
                        .chunks_exact_mut(t_n)
                        .zip(s.q.chunks_exact(dhp))
                        .enumerate()
                    {
                        // sc (nv) = q K^T, 8 keys at a time; p (nv) = softmax
                        for (i, sc) in s.sc[..nv.next_multiple_of(LANES)]
                            .chunks_exact_mut(LANES)
                            .enumerate()
                        {
                            sc.copy_from_slice(&sum8(&q[..dh], &s.kt, tp, i * LANES));
                        }
                        softmax(&mut s.p[..nv], &mut s.sc, &s.mask, scale);
                        row.fill(0.0);
                        for (&t2, &p) in s.keys.iter().zip(&s.p) {
                            row[t2] = p;
                        }
                        // o (dh) = sum over keys of p[t2] v[t2], 8 columns at a time
                        let o = &mut out_b[t1 * d + j * dh..][..dh];
                        for (i, o) in o.chunks_mut(LANES).enumerate() {
                            let acc = sum8(&s.p[..nv], &s.v, dhp, i * LANES);
                            copy(o, &acc[..o.len()]);
                        }
                    }
                }
            },
        );
}

/// p (nv) = softmax(sc * scale + mask) of the scores sc (tp), mask (tp) -inf past nv.
/// Branch-free; the max runs in 8 lanes.
#[inline]
fn softmax(p: &mut [f32], sc: &mut [f32], mask: &[f32], scale: f32) {
    let mut max8 = [f32::NEG_INFINITY; LANES];
    let n8 = p.len().next_multiple_of(LANES);
    for (a, m) in sc[..n8]
        .chunks_exact_mut(LANES)
        .zip(mask.chunks_exact(LANES))
    {
        for l in 0..LANES {
            a[l] = a[l] * scale + m[l];
            max8[l] = if a[l] > max8[l] { a[l] } else { max8[l] };
        }
    }
    let max = max8
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    let mut sum = 0.0;
    for (p, &a) in p.iter_mut().zip(sc.iter()) {
        *p = (a - max).exp();
        sum += *p;
    }
    for p in p.iter_mut() {
        *p /= sum;
    }
}

/// dqkv (B, T, 3d) = gradient of the attention output dout (B, T, d)      (overwrites)
/// given the saved probabilities att (B, h, T, T) and the input qkv (B, T, 3d).
pub fn attention_backward(
    dqkv: &mut [f32],
    dout: &[f32],
    att: &[f32],
    qkv: &[f32],
    b: usize,
    t_n: usize,
    d: usize,
    h: usize,
) {
    let (dh, scale) = head_dims(d, h);
    dqkv[..b * t_n * 3 * d]
        .par_chunks_mut(t_n * 3 * d)
        .enumerate()
        .for_each_init(
            || HeadScratch::new(t_n, dh),
            |s, (bi, dqkv_b)| {
                let (tp, dhp) = (s.tp, s.dhp);
                let qkv_b = &qkv[bi * t_n * 3 * d..][..t_n * 3 * d]; // (T, 3d)
                let tok = |t: &usize| &qkv_b[t * 3 * d..][..3 * d]; // (3d)
                let dout_b = &dout[bi * t_n * d..][..t_n * d]; // (T, d)
                let att_b = &att[bi * h * t_n * t_n..][..h * t_n * t_n]; // (h, T, T)
                // Masked keys get no gradient: their K and V columns stay 0.
                dqkv_b.fill(0.0);
                // The keys to visit: those with a nonzero probability in some row. The others
                // (the masked ones; the mask is not an input here) add exactly 0 everywhere.
                let live = &mut s.p[..t_n];
                live.fill(0.0);
                for row in att_b.chunks_exact(t_n) {
                    for (l, &p) in live.iter_mut().zip(row) {
                        *l = if p != 0.0 { 1.0 } else { *l };
                    }
                }
                s.keys.clear();
                s.keys.extend((0..t_n).filter(|&t| live[t] != 0.0));
                let nv = s.keys.len();
                for (j, att_j) in att_b.chunks_exact(t_n * t_n).enumerate() {
                    gather(&mut s.q, dhp, qkv_b.chunks_exact(3 * d), j * dh, dh);
                    gather(&mut s.k, dhp, s.keys.iter().map(tok), d + j * dh, dh);
                    gather_t(&mut s.vt, tp, s.keys.iter().map(tok), 2 * d + j * dh, dh);
                    gather(&mut s.g, dhp, dout_b.chunks_exact(d), j * dh, dh);
                    s.dk[..nv * dhp].fill(0.0);
                    s.dv[..nv * dhp].fill(0.0);
                    // One query t1 at a time: its probabilities p (nv), its output gradient
                    // g (dhp), its query q (dhp).
                    for (t1, ((row, g), q)) in att_j
                        .chunks_exact(t_n)
                        .zip(s.g.chunks_exact(dhp))
                        .zip(s.q.chunks_exact(dhp))
                        .enumerate()
                    {
                        let p = &mut s.p[..nv];
                        for (p, &t2) in p.iter_mut().zip(&s.keys) {
                            *p = row[t2];
                        }
                        // dp (nv) = g V^T, 8 keys at a time;  dv[t2] += p[t2] g
                        let dp = &mut s.sc[..nv.next_multiple_of(LANES)];
                        for (i, dp) in dp.chunks_exact_mut(LANES).enumerate() {
                            dp.copy_from_slice(&sum8(&g[..dh], &s.vt, tp, i * LANES));
                        }
                        for (&pk, dv) in p.iter().zip(s.dv.chunks_exact_mut(dhp)) {
                            axpy(dv, pk, g);
                        }
                        // Softmax backward, then through the scaled dot product:
                        // ds = p (dp - p.dp) scale;  dq = ds K;  dk[t2] += ds[t2] q
                        let p_dot_dp: f32 = p.iter().zip(dp.iter()).map(|(p, dp)| p * dp).sum();
                        for ((ds, &pk), &dpk) in s.ds.iter_mut().zip(p.iter()).zip(dp.iter()) {
                            *ds = pk * (dpk - p_dot_dp) * scale;
                        }
                        let ds = &s.ds[..nv];
                        let dq = &mut dqkv_b[t1 * 3 * d + j * dh..][..dh];
                        for (i, dq) in dq.chunks_mut(LANES).enumerate() {
                            let acc = sum8(ds, &s.k, dhp, i * LANES);
                            copy(dq, &acc[..dq.len()]);
                        }
                        for (&ds, dk) in ds.iter().zip(s.dk.chunks_exact_mut(dhp)) {
                            axpy(dk, ds, q);
                        }
                    }
                    // Scatter dK and dV to the valid keys' rows.
                    for ((&t2, dk), dv) in s
                        .keys
                        .iter()
                        .zip(s.dk.chunks_exact(dhp))
                        .zip(s.dv.chunks_exact(dhp))
                    {
                        let row = &mut dqkv_b[t2 * 3 * d..][..3 * d];
                        copy(&mut row[d + j * dh..][..dh], &dk[..dh]);
                        copy(&mut row[2 * d + j * dh..][..dh], &dv[..dh]);
                    }
                }
            },
        );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::gradcheck::random_vec;
    use crate::cpu::reference;

    /// The signature both forwards share: this module's and the plain loops'
    /// ([`crate::cpu::reference`]).
    type Forward = fn(&mut [f32], &mut [f32], &[f32], &[u32], usize, usize, usize, usize);

    /// (out, att) of `forward`.
    fn run_with(
        forward: Forward,
        qkv: &[f32],
        valid: &[u32],
        dims: [usize; 4],
    ) -> (Vec<f32>, Vec<f32>) {
        let [b, t, d, h] = dims;
        let mut out = vec![0.0; b * t * d];
        let mut att = vec![0.0; b * h * t * t];
        forward(&mut out, &mut att, qkv, valid, b, t, d, h);
        (out, att)
    }

    fn run(
        qkv: &[f32],
        valid: &[u32],
        b: usize,
        t: usize,
        d: usize,
        h: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        run_with(attention_forward, qkv, valid, [b, t, d, h])
    }

    #[test]
    fn matches_the_plain_loops_with_padding_and_several_heads() {
        let (b, t, d, h) = (5, 21, 64, 8);
        let qkv: Vec<f32> = random_vec(b * t * 3 * d, 4)
            .iter()
            .map(|v| 2.0 * v)
            .collect();
        let noise = random_vec(b * t, 5);
        // About 3/4 of the history valid, sample 1 all padding, the target always valid.
        let valid: Vec<u32> = (0..b * t)
            .map(|i| u32::from(i % t == t - 1 || (i / t != 1 && noise[i] > -0.5)))
            .collect();
        let (out, att) = run(&qkv, &valid, b, t, d, h);
        let (want_out, want_att) =
            run_with(reference::attention_forward, &qkv, &valid, [b, t, d, h]);
        let dout = random_vec(b * t * d, 6);
        let mut dqkv = vec![f32::NAN; qkv.len()]; // overwritten, NaN if an entry is missed
        attention_backward(&mut dqkv, &dout, &att, &qkv, b, t, d, h);
        let mut want_dqkv = vec![0.0; qkv.len()];
        reference::attention_backward(&mut want_dqkv, &dout, &want_att, &qkv, b, t, d, h);
        for (name, got, want) in [
            ("out", &out, &want_out),
            ("att", &att, &want_att),
            ("dqkv", &dqkv, &want_dqkv),
        ] {
            for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-6 + 1e-5 * w.abs(),
                    "{name}[{i}]: {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn rows_sum_to_one_and_masked_keys_get_nothing() {
        let (b, t, d, h) = (2, 4, 6, 2);
        let qkv = random_vec(b * t * 3 * d, 1);
        let valid = [0, 1, 0, 1, 0, 0, 0, 1]; // sample 1 has only its target valid
        let (out, att) = run(&qkv, &valid, b, t, d, h);
        for row in att.chunks(t) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        for (i, &a) in att.iter().enumerate() {
            let (bi, t2) = (i / (h * t * t), i % t);
            if valid[bi * t + t2] == 0 {
                assert_eq!(a, 0.0);
            }
        }
        // With only the target valid, every token's output is the target's V.
        let v_target = &qkv[(t + 3) * 3 * d + 2 * d..][..d];
        for t1 in 0..t {
            assert_eq!(&out[(t + t1) * d..][..d], v_target);
        }
    }

    #[test]
    fn a_sample_without_valid_keys_gets_zeros_forward_and_backward() {
        let (b, t, d, h) = (2, 3, 4, 2);
        let qkv = random_vec(b * t * 3 * d, 7);
        let valid = [1, 0, 1, 0, 0, 0]; // sample 1: nothing valid
        let (out, att) = run(&qkv, &valid, b, t, d, h);
        let mut dqkv = vec![f32::NAN; qkv.len()];
        attention_backward(&mut dqkv, &random_vec(b * t * d, 8), &att, &qkv, b, t, d, h);
        assert!(out[t * d..].iter().all(|&x| x == 0.0), "out {out:?}");
        assert!(att[h * t * t..].iter().all(|&x| x == 0.0), "att {att:?}");
        assert!(dqkv[t * 3 * d..].iter().all(|&x| x == 0.0), "dqkv {dqkv:?}");
        assert!(
            out[..t * d].iter().all(|&x| x != 0.0),
            "sample 0 is unaffected"
        );
    }
}
