//! Pooling of the last block's tokens into one row per sample, after zeroing invalid tokens.
//! The pooled vector is written into columns `off..off + width` of a wider row (the MLP
//! input), so the other-feature embeddings can sit beside it without a copy.

use rayon::prelude::*;

/// The pooling modes of spec section 2; numbered as the GPU kernel expects them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolMode {
    /// Token `T-1`: `d` wide.
    Target = 0,
    /// Token `T-1`, then the mean of the valid history tokens: `2d` wide.
    Mean = 1,
    /// All `T` tokens, invalid ones zeroed: `T*d` wide.
    Flatten = 2,
}

impl PoolMode {
    /// Columns of the pooled vector for `t_n` tokens of width `d`.
    pub fn width(self, t_n: usize, d: usize) -> usize {
        match self {
            PoolMode::Target => d,
            PoolMode::Mean => 2 * d,
            PoolMode::Flatten => t_n * d,
        }
    }
}

/// `out[b, off .. off + width] = pool(x[b])`;  x (B, T, d), valid (B, T), out (B, row)
pub fn pooling_forward(
    out: &mut [f32],
    x: &[f32],
    valid: &[u32],
    mode: PoolMode,
    b: usize,
    t_n: usize,
    d: usize,
    row: usize,
    off: usize,
) {
    let width = mode.width(t_n, d);
    out[..b * row]
        .par_chunks_mut(row)
        .enumerate()
        .for_each(|(bi, o)| {
            let o = &mut o[off..off + width];
            let xb = &x[bi * t_n * d..][..t_n * d];
            let vb = &valid[bi * t_n..][..t_n];
            let target = &xb[(t_n - 1) * d..];
            match mode {
                PoolMode::Target => o.copy_from_slice(target),
                PoolMode::Mean => {
                    o[..d].copy_from_slice(target);
                    let count = vb[..t_n - 1].iter().filter(|&&v| v != 0).count();
                    let mean = &mut o[d..];
                    mean.fill(0.0);
                    for t in (0..t_n - 1).filter(|&t| vb[t] != 0) {
                        for (m, &v) in mean.iter_mut().zip(&xb[t * d..][..d]) {
                            *m += v;
                        }
                    }
                    if count > 0 {
                        mean.iter_mut().for_each(|m| *m /= count as f32);
                    }
                }
                PoolMode::Flatten => {
                    for t in 0..t_n {
                        let dst = &mut o[t * d..][..d];
                        if vb[t] != 0 {
                            dst.copy_from_slice(&xb[t * d..][..d]);
                        } else {
                            dst.fill(0.0);
                        }
                    }
                }
            }
        });
}

/// dx (B, T, d) = gradient of the pooled columns of dout (B, row)       (overwrites)
pub fn pooling_backward(
    dx: &mut [f32],
    dout: &[f32],
    valid: &[u32],
    mode: PoolMode,
    b: usize,
    t_n: usize,
    d: usize,
    row: usize,
    off: usize,
) {
    dx[..b * t_n * d]
        .par_chunks_mut(t_n * d)
        .enumerate()
        .for_each(|(bi, dxb)| {
            dxb.fill(0.0);
            let g = &dout[bi * row + off..];
            let vb = &valid[bi * t_n..][..t_n];
            match mode {
                PoolMode::Target => dxb[(t_n - 1) * d..].copy_from_slice(&g[..d]),
                PoolMode::Mean => {
                    dxb[(t_n - 1) * d..].copy_from_slice(&g[..d]);
                    let count = vb[..t_n - 1].iter().filter(|&&v| v != 0).count();
                    for t in (0..t_n - 1).filter(|&t| vb[t] != 0) {
                        for (dst, &v) in dxb[t * d..][..d].iter_mut().zip(&g[d..2 * d]) {
                            *dst = v / count as f32;
                        }
                    }
                }
                PoolMode::Flatten => {
                    for t in (0..t_n).filter(|&t| vb[t] != 0) {
                        dxb[t * d..][..d].copy_from_slice(&g[t * d..][..d]);
                    }
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::gradcheck::{check_grad, random_vec};

    #[test]
    fn mean_of_an_all_padding_history_is_zero() {
        let (b, t, d) = (1, 3, 2);
        let x = random_vec(b * t * d, 1);
        let mut out = vec![9.0; 5];
        pooling_forward(&mut out, &x, &[0, 0, 1], PoolMode::Mean, b, t, d, 5, 1);
        assert_eq!(out, vec![9.0, x[4], x[5], 0.0, 0.0]);
    }

    #[test]
    fn backward_matches_finite_differences_for_every_mode() {
        let (b, t, d) = (3, 4, 3);
        let valid = [0, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1]; // sample 1: all-padding history
        let x = random_vec(b * t * d, 2);
        for mode in [PoolMode::Target, PoolMode::Mean, PoolMode::Flatten] {
            let (row, off) = (mode.width(t, d) + 3, 2);
            let r = random_vec(b * row, 3);
            let mut dx = vec![0.0; x.len()];
            pooling_backward(&mut dx, &r, &valid, mode, b, t, d, row, off);
            check_grad(&format!("pooling {mode:?}"), &dx, &x, |x| {
                let mut o = vec![0.0; b * row];
                pooling_forward(&mut o, x, &valid, mode, b, t, d, row, off);
                o.iter().zip(&r).map(|(&a, &b)| a as f64 * b as f64).sum()
            });
        }
    }
}
