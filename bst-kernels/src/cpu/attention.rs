//! Multi-head softmax attention over the `T` tokens of each sample, keys masked by
//! validity (a history slot is valid when its item is not 0; the target always is).
//!
//! Head `j` owns columns `j*dh .. (j+1)*dh` of each of Q, K and V, which sit side by side
//! in `qkv`: columns `0..d` are Q, `d..2d` K, `2d..3d` V.

use rayon::prelude::*;

/// out (B, T, d) = concat_j softmax(q_j k_j^T / sqrt(dh) + mask) v_j
/// att (B, h, T, T): the softmax probabilities, saved for the backward (0 on masked keys)
/// qkv (B, T, 3d), valid (B, T): 1 for valid tokens, 0 for padding
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
    let dh = d / h;
    let scale = 1.0 / (dh as f32).sqrt();
    out[..b * t_n * d]
        .par_chunks_mut(t_n * d)
        .zip(att[..b * h * t_n * t_n].par_chunks_mut(h * t_n * t_n))
        .enumerate()
        .for_each(|(bi, (out_b, att_b))| {
            let qkv_b = &qkv[bi * t_n * 3 * d..][..t_n * 3 * d];
            let valid_b = &valid[bi * t_n..][..t_n];
            for j in 0..h {
                for t1 in 0..t_n {
                    let q = &qkv_b[t1 * 3 * d + j * dh..][..dh];
                    let row = &mut att_b[(j * t_n + t1) * t_n..][..t_n];
                    let mut max = f32::NEG_INFINITY;
                    for (t2, a) in row.iter_mut().enumerate() {
                        if valid_b[t2] == 0 {
                            continue;
                        }
                        let k = &qkv_b[t2 * 3 * d + d + j * dh..][..dh];
                        *a = dot(q, k) * scale;
                        max = max.max(*a);
                    }
                    let mut sum = 0.0;
                    for (t2, a) in row.iter_mut().enumerate() {
                        *a = if valid_b[t2] == 0 {
                            0.0
                        } else {
                            (*a - max).exp()
                        };
                        sum += *a;
                    }
                    let o = &mut out_b[t1 * d + j * dh..][..dh];
                    o.fill(0.0);
                    for (t2, a) in row.iter_mut().enumerate() {
                        *a /= sum;
                        let v = &qkv_b[t2 * 3 * d + 2 * d + j * dh..][..dh];
                        for (o, &v) in o.iter_mut().zip(v) {
                            *o += *a * v;
                        }
                    }
                }
            }
        });
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
    let dh = d / h;
    let scale = 1.0 / (dh as f32).sqrt();
    dqkv[..b * t_n * 3 * d]
        .par_chunks_mut(t_n * 3 * d)
        .enumerate()
        .for_each(|(bi, dqkv_b)| {
            dqkv_b.fill(0.0);
            let qkv_b = &qkv[bi * t_n * 3 * d..][..t_n * 3 * d];
            let dout_b = &dout[bi * t_n * d..][..t_n * d];
            let mut dscore = vec![0.0f32; t_n];
            for j in 0..h {
                for t1 in 0..t_n {
                    let p = &att[((bi * h + j) * t_n + t1) * t_n..][..t_n];
                    let g = &dout_b[t1 * d + j * dh..][..dh];
                    // dp[t2] = g . v[t2];  dv[t2] += p[t2] g
                    let mut p_dot_dp = 0.0;
                    for t2 in 0..t_n {
                        let v = &qkv_b[t2 * 3 * d + 2 * d + j * dh..][..dh];
                        dscore[t2] = dot(g, v);
                        p_dot_dp += p[t2] * dscore[t2];
                        let dv = &mut dqkv_b[t2 * 3 * d + 2 * d + j * dh..][..dh];
                        for (dv, &g) in dv.iter_mut().zip(g) {
                            *dv += p[t2] * g;
                        }
                    }
                    // Softmax backward, then through the scaled dot product.
                    for t2 in 0..t_n {
                        let ds = p[t2] * (dscore[t2] - p_dot_dp) * scale;
                        if ds == 0.0 {
                            continue;
                        }
                        for c in 0..dh {
                            let q = qkv_b[t1 * 3 * d + j * dh + c];
                            let k = qkv_b[t2 * 3 * d + d + j * dh + c];
                            dqkv_b[t1 * 3 * d + j * dh + c] += ds * k;
                            dqkv_b[t2 * 3 * d + d + j * dh + c] += ds * q;
                        }
                    }
                }
            }
        });
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::gradcheck::{check_grad, random_vec};

    fn run(
        qkv: &[f32],
        valid: &[u32],
        b: usize,
        t: usize,
        d: usize,
        h: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        let mut out = vec![0.0; b * t * d];
        let mut att = vec![0.0; b * h * t * t];
        attention_forward(&mut out, &mut att, qkv, valid, b, t, d, h);
        (out, att)
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
    fn backward_matches_finite_differences() {
        for &(b, t, d, h) in &[(2, 5, 8, 2), (1, 1, 4, 1), (3, 3, 6, 3)] {
            let qkv = random_vec(b * t * 3 * d, 2);
            let mut valid = vec![1u32; b * t];
            valid[0] = 0; // a padded slot in the first sample
            valid[t - 1] = 1; // the target is always valid
            let r = random_vec(b * t * d, 3);
            let mut dqkv = vec![0.0; qkv.len()];
            let (_, att) = run(&qkv, &valid, b, t, d, h);
            attention_backward(&mut dqkv, &r, &att, &qkv, b, t, d, h);
            check_grad("attention dqkv", &dqkv, &qkv, |x| {
                let (out, _) = run(x, &valid, b, t, d, h);
                out.iter().zip(&r).map(|(&o, &r)| o as f64 * r as f64).sum()
            });
        }
    }
}
