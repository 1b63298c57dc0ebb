//! Embedding gathers and their scatter-add backward.
//!
//! Tokens: `x[b, t] = concat(E_item[item], E_cat[cat], E_pos[pos])` for the `L` history
//! slots `t < L`, and the target as token `L` with position bucket 0.
//! Other features: `z[b, off + f*d_o ..] = E_other[other[b, f]]`, written into a wider row.
//!
//! f16 tables (scoring only): the host stores [`f16_table`]`(E)` on the device, and the GPU
//! gather converts each element back to f32, exactly. Its reference is the gathers below
//! on [`f16_rounded`]`(E)`: the same values, so GPU and CPU agree bit for bit.

use half::f16;
use rayon::prelude::*;

/// The table as stored in f16: every value rounded to the nearest f16, ties to even
/// (`half::f16::from_f32`; beyond 65504 in magnitude it becomes infinite).
pub fn f16_table(table: &[f32]) -> Vec<f16> {
    table.iter().map(|&v| f16::from_f32(v)).collect()
}

/// The values an f16 table holds, as f32: `f16_table(table)` converted back (exactly).
pub fn f16_rounded(table: &[f32]) -> Vec<f32> {
    table.iter().map(|&v| f16::from_f32(v).to_f32()).collect()
}

/// Ids of one batch (row-major, `B` samples).
#[derive(Clone, Copy, Debug)]
pub struct TokenIds<'a> {
    /// (B, L) history item rows, 0 = padding.
    pub hist_item: &'a [u32],
    /// (B, L) history category rows.
    pub hist_cat: &'a [u32],
    /// (B, L) history position buckets.
    pub hist_pos: &'a [u32],
    /// (B) target item rows.
    pub target_item: &'a [u32],
    /// (B) target category rows.
    pub target_cat: &'a [u32],
}

impl TokenIds<'_> {
    /// (item, category, position) of token `t` of sample `b`; `t == L` is the target.
    #[inline]
    pub fn token(&self, b: usize, t: usize, l: usize) -> (usize, usize, usize) {
        if t < l {
            let i = b * l + t;
            (
                self.hist_item[i] as usize,
                self.hist_cat[i] as usize,
                self.hist_pos[i] as usize,
            )
        } else {
            (self.target_item[b] as usize, self.target_cat[b] as usize, 0)
        }
    }
}

/// Embedding widths `(d_item, d_cat, d_pos)`; the token width is their sum.
pub type TokenWidths = (usize, usize, usize);

/// out (B, T, d) with T = L + 1, d = d_item + d_cat + d_pos.
/// e_item (V_item, d_item), e_cat (V_cat, d_cat), e_pos (P, d_pos)
pub fn token_embedding_forward(
    out: &mut [f32],
    ids: TokenIds,
    e_item: &[f32],
    e_cat: &[f32],
    e_pos: &[f32],
    b: usize,
    l: usize,
    (di, dc, dp): TokenWidths,
) {
    let (t_n, d) = (l + 1, di + dc + dp);
    out[..b * t_n * d]
        .par_chunks_mut(t_n * d)
        .enumerate()
        .for_each(|(bi, out_b)| {
            for (t, x) in out_b.chunks_mut(d).enumerate() {
                let (item, cat, pos) = ids.token(bi, t, l);
                x[..di].copy_from_slice(&e_item[item * di..(item + 1) * di]);
                x[di..di + dc].copy_from_slice(&e_cat[cat * dc..(cat + 1) * dc]);
                x[di + dc..].copy_from_slice(&e_pos[pos * dp..(pos + 1) * dp]);
            }
        });
}

/// de_item, de_cat, de_pos += scatter of dout (B, T, d) by the ids.
/// Sequential in (b, t) order, so the sums are deterministic.
pub fn token_embedding_backward(
    de_item: &mut [f32],
    de_cat: &mut [f32],
    de_pos: &mut [f32],
    dout: &[f32],
    ids: TokenIds,
    b: usize,
    l: usize,
    (di, dc, dp): TokenWidths,
) {
    let (t_n, d) = (l + 1, di + dc + dp);
    for bi in 0..b {
        for t in 0..t_n {
            let g = &dout[(bi * t_n + t) * d..][..d];
            let (item, cat, pos) = ids.token(bi, t, l);
            add(&mut de_item[item * di..][..di], &g[..di]);
            add(&mut de_cat[cat * dc..][..dc], &g[di..di + dc]);
            add(&mut de_pos[pos * dp..][..dp], &g[di + dc..]);
        }
    }
}

fn add(acc: &mut [f32], g: &[f32]) {
    for (a, &v) in acc.iter_mut().zip(g) {
        *a += v;
    }
}

/// out[b, off + f*d_o .. off + (f+1)*d_o] = e_other[other[b, f]] for every field f.
/// out (B, width), other (B, F), e_other (V_other, d_o)
pub fn other_embedding_forward(
    out: &mut [f32],
    other: &[u32],
    e_other: &[f32],
    b: usize,
    f_n: usize,
    d_o: usize,
    width: usize,
    off: usize,
) {
    out[..b * width]
        .par_chunks_mut(width)
        .enumerate()
        .for_each(|(bi, row)| {
            for f in 0..f_n {
                let id = other[bi * f_n + f] as usize;
                row[off + f * d_o..][..d_o].copy_from_slice(&e_other[id * d_o..][..d_o]);
            }
        });
}

/// de_other += scatter of the other-feature columns of dout (B, width).
pub fn other_embedding_backward(
    de_other: &mut [f32],
    dout: &[f32],
    other: &[u32],
    b: usize,
    f_n: usize,
    d_o: usize,
    width: usize,
    off: usize,
) {
    for bi in 0..b {
        for f in 0..f_n {
            let id = other[bi * f_n + f] as usize;
            add(
                &mut de_other[id * d_o..][..d_o],
                &dout[bi * width + off + f * d_o..][..d_o],
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::gradcheck::{check_grad, random_vec};

    #[test]
    fn f16_tables_round_to_nearest_ties_to_even() {
        let ulp = 2f32.powi(-10); // f16's spacing in [1, 2)
        let e = [
            1.0 + ulp / 2.0,  // tie: to even, 1.0
            1.0 + 1.5 * ulp,  // tie: to even, 1 + 2 ulp
            1.0 + 0.51 * ulp, // nearest: 1 + ulp
            65520.0,          // past the largest f16 (65504) by half an ulp: infinity
            -3.0e-6,          // a subnormal: 50 of its 2^-24 steps
        ];
        let want = [
            1.0,
            1.0 + 2.0 * ulp,
            1.0 + ulp,
            f32::INFINITY,
            -50.0 * 2f32.powi(-24),
        ];
        assert_eq!(f16_rounded(&e), want);
        let stored: Vec<f32> = f16_table(&e).iter().map(|h| h.to_f32()).collect();
        assert_eq!(stored, want);
    }

    #[test]
    fn token_gather_places_target_last_with_position_zero_and_backward_matches_fd() {
        let (b, l, w) = (3, 2, (2, 3, 1));
        let (vi, vc, vp) = (4, 3, 5);
        // Repeated ids (item 2 twice, category 1 three times) exercise the scatter-add.
        let hist_item = [0, 2, 1, 2, 0, 0];
        let hist_cat = [0, 1, 1, 1, 0, 0];
        let hist_pos = [0, 3, 4, 2, 0, 0];
        let target_item = [3, 1, 2];
        let target_cat = [2, 1, 1];
        let ids = TokenIds {
            hist_item: &hist_item,
            hist_cat: &hist_cat,
            hist_pos: &hist_pos,
            target_item: &target_item,
            target_cat: &target_cat,
        };
        let ei = random_vec(vi * 2, 1);
        let ec = random_vec(vc * 3, 2);
        let ep = random_vec(vp, 3);
        let d = 6;
        let mut out = vec![0.0; b * 3 * d];
        token_embedding_forward(&mut out, ids, &ei, &ec, &ep, b, l, w);
        // Sample 0's target (token 2): item 3, category 2, position 0.
        assert_eq!(&out[2 * d..2 * d + 2], &ei[6..8]);
        assert_eq!(&out[2 * d + 2..2 * d + 5], &ec[6..9]);
        assert_eq!(out[2 * d + 5], ep[0]);

        let r = random_vec(out.len(), 4);
        let loss = |ei: &[f32], ec: &[f32], ep: &[f32]| {
            let mut o = vec![0.0; b * 3 * d];
            token_embedding_forward(&mut o, ids, ei, ec, ep, b, l, w);
            o.iter()
                .zip(&r)
                .map(|(&x, &y)| x as f64 * y as f64)
                .sum::<f64>()
        };
        let (mut gi, mut gc, mut gp) = (
            vec![0.0; ei.len()],
            vec![0.0; ec.len()],
            vec![0.0; ep.len()],
        );
        token_embedding_backward(&mut gi, &mut gc, &mut gp, &r, ids, b, l, w);
        check_grad("E_item", &gi, &ei, |x| loss(x, &ec, &ep));
        check_grad("E_cat", &gc, &ec, |x| loss(&ei, x, &ep));
        check_grad("E_pos", &gp, &ep, |x| loss(&ei, &ec, x));
    }

    #[test]
    fn other_gather_writes_only_its_columns_and_backward_matches_fd() {
        let (b, f_n, d_o, width, off) = (4, 3, 2, 9, 2);
        let other = [0, 3, 5, 1, 3, 4, 2, 3, 5, 0, 0, 0];
        let e = random_vec(6 * d_o, 5);
        let mut out = vec![7.0; b * width];
        other_embedding_forward(&mut out, &other, &e, b, f_n, d_o, width, off);
        assert_eq!(&out[..2], &[7.0, 7.0]);
        assert_eq!(out[8], 7.0);
        assert_eq!(&out[off + d_o..off + 2 * d_o], &e[3 * d_o..4 * d_o]);
        let r = random_vec(out.len(), 6);
        let mut g = vec![0.0; e.len()];
        other_embedding_backward(&mut g, &r, &other, b, f_n, d_o, width, off);
        check_grad("E_other", &g, &e, |e| {
            let mut o = vec![0.0; b * width];
            other_embedding_forward(&mut o, &other, e, b, f_n, d_o, width, off);
            o.iter().zip(&r).map(|(&x, &y)| x as f64 * y as f64).sum()
        });
    }
}
