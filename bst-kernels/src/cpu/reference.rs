//! The plain CPU reference of the ops whose CPU versions are optimised (the gemm matmul,
//! the scratch-row attention): straight loops in the order the spec reads, no cleverness,
//! easy to check by eye. The fast CPU ops ([`crate::cpu::matmul`],
//! [`crate::cpu::attention`]) are tested against these, and the finite-difference checks
//! of their backwards run here. (The other ops of [`crate::cpu`] are plain loops already.)
//! Same signatures as the fast versions: outputs first, then inputs, then dimensions.

use crate::cpu::attention::head_dims;

/// out (rows, n_out) = inp (rows, n_in) weight^T (n_in, n_out) + bias (n_out)
pub fn matmul_forward(
    out: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    rows: usize,
    n_in: usize,
    n_out: usize,
) {
    for r in 0..rows {
        for o in 0..n_out {
            let mut s = bias.map_or(0.0, |b| b[o]);
            for i in 0..n_in {
                s += inp[r * n_in + i] * weight[o * n_in + i];
            }
            out[r * n_out + o] = s;
        }
    }
}

/// dinp (rows, n_in) = dout (rows, n_out) weight (n_out, n_in)          (overwrites)
/// dweight (n_out, n_in) += dout^T inp;  dbias (n_out) += column sums of dout
#[allow(clippy::too_many_arguments)] // the fast version's signature
pub fn matmul_backward(
    dinp: Option<&mut [f32]>,
    dweight: &mut [f32],
    dbias: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    rows: usize,
    n_in: usize,
    n_out: usize,
) {
    if let Some(dinp) = dinp {
        for r in 0..rows {
            for i in 0..n_in {
                let mut s = 0.0;
                for o in 0..n_out {
                    s += dout[r * n_out + o] * weight[o * n_in + i];
                }
                dinp[r * n_in + i] = s;
            }
        }
    }
    for o in 0..n_out {
        for i in 0..n_in {
            let mut s = 0.0;
            for r in 0..rows {
                s += dout[r * n_out + o] * inp[r * n_in + i];
            }
            dweight[o * n_in + i] += s;
        }
    }
    if let Some(dbias) = dbias {
        for r in 0..rows {
            for o in 0..n_out {
                dbias[o] += dout[r * n_out + o];
            }
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// out (B, T, d) = concat_j softmax(q_j k_j^T / sqrt(dh) + mask) v_j
/// att (B, h, T, T): the softmax probabilities, saved for the backward (0 on masked keys)
/// qkv (B, T, 3d), valid (B, T): 1 for valid tokens, 0 for padding. Q, K and V sit side by
/// side in each row of qkv, head `j` owning columns `j*dh .. (j+1)*dh` of each. A sample
/// with no valid token gets att 0 and out 0.
#[allow(clippy::too_many_arguments)] // the fast version's signature
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
    out[..b * t_n * d].fill(0.0);
    let (dh, scale) = head_dims(d, h);
    let col = qkv_col(t_n, d, dh);
    for bi in 0..b {
        for j in 0..h {
            for t1 in 0..t_n {
                let q = &qkv[col(bi, t1, 0, j)..][..dh];
                let row = &mut att[((bi * h + j) * t_n + t1) * t_n..][..t_n];
                let mut max = f32::NEG_INFINITY;
                for t2 in 0..t_n {
                    if valid[bi * t_n + t2] != 0 {
                        row[t2] = dot(q, &qkv[col(bi, t2, 1, j)..][..dh]) * scale;
                        max = max.max(row[t2]);
                    }
                }
                let mut sum = 0.0;
                for t2 in 0..t_n {
                    row[t2] = if valid[bi * t_n + t2] != 0 {
                        (row[t2] - max).exp()
                    } else {
                        0.0
                    };
                    sum += row[t2];
                }
                if sum == 0.0 {
                    continue; // no valid key: att and out stay 0
                }
                for t2 in 0..t_n {
                    row[t2] /= sum;
                    for c in 0..dh {
                        out[(bi * t_n + t1) * d + j * dh + c] +=
                            row[t2] * qkv[col(bi, t2, 2, j) + c];
                    }
                }
            }
        }
    }
}

/// dqkv (B, T, 3d) = gradient of the attention output dout (B, T, d)      (overwrites)
/// given the saved probabilities att (B, h, T, T) and the input qkv (B, T, 3d).
#[allow(clippy::too_many_arguments)] // the fast version's signature
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
    dqkv[..b * t_n * 3 * d].fill(0.0);
    let (dh, scale) = head_dims(d, h);
    let col = qkv_col(t_n, d, dh);
    for bi in 0..b {
        for j in 0..h {
            for t1 in 0..t_n {
                let p = &att[((bi * h + j) * t_n + t1) * t_n..][..t_n];
                let g = &dout[(bi * t_n + t1) * d + j * dh..][..dh];
                let dp: Vec<f32> = (0..t_n)
                    .map(|t2| dot(g, &qkv[col(bi, t2, 2, j)..][..dh]))
                    .collect();
                let p_dot_dp: f32 = (0..t_n).map(|t2| p[t2] * dp[t2]).sum();
                for t2 in 0..t_n {
                    let ds = p[t2] * (dp[t2] - p_dot_dp) * scale;
                    for c in 0..dh {
                        dqkv[col(bi, t2, 2, j) + c] += p[t2] * g[c];
                        dqkv[col(bi, t1, 0, j) + c] += ds * qkv[col(bi, t2, 1, j) + c];
                        dqkv[col(bi, t2, 1, j) + c] += ds * qkv[col(bi, t1, 0, j) + c];
                    }
                }
            }
        }
    }
}

/// `col(bi, t, part, j)`: where head `j`'s query, key or value (`part` 0, 1, 2) of token
/// `t` of sample `bi` starts in qkv (B, T, 3d), for `T = t_n` and `dh` columns per head.
fn qkv_col(t_n: usize, d: usize, dh: usize) -> impl Fn(usize, usize, usize, usize) -> usize {
    move |bi, t, part, j| (bi * t_n + t) * 3 * d + part * d + j * dh
}

pub use crate::cpu::topk::top_k_reference as top_k;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::gradcheck::{check_grad, random_vec};

    #[test]
    fn matmul_backward_matches_finite_differences() {
        let (rows, n_in, n_out) = (70, 5, 35);
        let inp = random_vec(rows * n_in, 4);
        let w = random_vec(n_out * n_in, 5);
        let b = random_vec(n_out, 6);
        let r = random_vec(rows * n_out, 7); // loss = sum(out * r)
        let loss = |inp: &[f32], w: &[f32], b: &[f32]| {
            let mut out = vec![0.0; rows * n_out];
            matmul_forward(&mut out, inp, w, Some(b), rows, n_in, n_out);
            out.iter()
                .zip(&r)
                .map(|(&o, &r)| o as f64 * r as f64)
                .sum::<f64>()
        };
        let (mut dinp, mut dw, mut db) = (
            vec![0.0; rows * n_in],
            vec![0.0; n_out * n_in],
            vec![0.0; n_out],
        );
        let grads = (Some(&mut dinp[..]), &mut dw[..], Some(&mut db[..]));
        matmul_backward(grads.0, grads.1, grads.2, &r, &inp, &w, rows, n_in, n_out);
        check_grad("reference matmul dinp", &dinp, &inp, |x| loss(x, &w, &b));
        check_grad("reference matmul dweight", &dw, &w, |x| loss(&inp, x, &b));
        check_grad("reference matmul dbias", &db, &b, |x| loss(&inp, &w, x));
    }

    #[test]
    fn attention_backward_matches_finite_differences() {
        for &(b, t, d, h) in &[(2, 5, 8, 2), (1, 1, 4, 1), (3, 3, 6, 3)] {
            let qkv = random_vec(b * t * 3 * d, 2);
            let mut valid = vec![1u32; b * t];
            valid[0] = 0; // a padded slot in the first sample
            valid[t - 1] = 1; // the target is always valid
            let r = random_vec(b * t * d, 3);
            let run = |x: &[f32]| {
                let (mut out, mut att) = (vec![0.0; b * t * d], vec![0.0; b * h * t * t]);
                attention_forward(&mut out, &mut att, x, &valid, b, t, d, h);
                (out, att)
            };
            let (_, att) = run(&qkv);
            let mut dqkv = vec![f32::NAN; qkv.len()];
            attention_backward(&mut dqkv, &r, &att, &qkv, b, t, d, h);
            check_grad("reference attention dqkv", &dqkv, &qkv, |x| {
                let (out, _) = run(x);
                out.iter().zip(&r).map(|(&o, &r)| o as f64 * r as f64).sum()
            });
        }
    }
}
