//! Attention of the target token alone, over its user's history and itself: the scoring
//! path of a one-block BST with `target` pooling, where the history's keys and values are
//! computed once per user and shared by all of that user's candidates.
//!
//! Row `n` is one candidate of user `user[n]`. Its keys are the user's `L` history slots
//! (masked where the slot is padding) followed by its own key (the target, always valid),
//! in token order, as in [`super::attention::attention_forward`]; head `j` owns columns
//! `j*dh .. (j+1)*dh` of Q, K and V.
//!
//! The sums keep that op's order (scores over the `dh` columns, the softmax's max, exp and
//! sum over the valid keys in token order, the output over the valid keys in token order),
//! so the target token's output equals the full op's bit for bit. Plain loops, parallel
//! over the rows: the work is `N * h * (L + 1) * dh` multiply-adds, small beside the
//! projections around it.

use rayon::prelude::*;

/// Rows per parallel task.
const ROW_CHUNK: usize = 64;

/// out (N, d) = concat_j softmax(q_j K_j^T / sqrt(dh) + mask) V_j, with, for row n of user
/// u = user[n], K = [hist_kv[u, :, 0..d]; qkv[n, d..2d]] and V = [hist_kv[u, :, d..2d];
/// qkv[n, 2d..3d]] (L + 1 keys), mask = -inf on padded history slots.
/// qkv (N, 3d): each row's own Q, K, V.  hist_kv (U, L, 2d): each user's history K then V.
/// hist_valid (U, L): 1 where the slot holds an item.  user (N): each row's user, < U.
pub fn target_attention_forward(
    out: &mut [f32],
    qkv: &[f32],
    hist_kv: &[f32],
    hist_valid: &[u32],
    user: &[u32],
    n: usize,
    l: usize,
    d: usize,
    h: usize,
) {
    let (dh, scale) = super::attention::head_dims(d, h);
    out[..n * d]
        .par_chunks_mut(ROW_CHUNK * d)
        .enumerate()
        .for_each_init(
            || (Vec::with_capacity(l + 1), vec![0.0f32; l + 1]),
            |(keys, p), (ci, out_c)| {
                for (r, o) in out_c.chunks_exact_mut(d).enumerate() {
                    let row = ci * ROW_CHUNK + r;
                    let u = user[row] as usize;
                    let own = &qkv[row * 3 * d..][..3 * d]; // (3d)
                    let hist = &hist_kv[u * l * 2 * d..][..l * 2 * d]; // (L, 2d)
                    // The valid keys in token order: the history's, then the target's.
                    // Each is (K, V) of width d.
                    keys.clear();
                    for (t, &v) in hist_valid[u * l..][..l].iter().enumerate() {
                        if v != 0 {
                            let kv = &hist[t * 2 * d..][..2 * d];
                            keys.push((&kv[..d], &kv[d..]));
                        }
                    }
                    keys.push((&own[d..2 * d], &own[2 * d..]));
                    let p = &mut p[..keys.len()];
                    for j in 0..h {
                        let c = j * dh..(j + 1) * dh;
                        let q = &own[c.clone()];
                        for (pk, (k, _)) in p.iter_mut().zip(keys.iter()) {
                            let mut s = 0.0f32;
                            for (&qi, &ki) in q.iter().zip(&k[c.clone()]) {
                                s += qi * ki;
                            }
                            *pk = s * scale;
                        }
                        let max = p.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                        let mut sum = 0.0f32;
                        for pk in p.iter_mut() {
                            *pk = (*pk - max).exp();
                            sum += *pk;
                        }
                        for pk in p.iter_mut() {
                            *pk /= sum;
                        }
                        let o = &mut o[c.clone()];
                        o.fill(0.0);
                        for (&pk, (_, v)) in p.iter().zip(keys.iter()) {
                            for (oi, &vi) in o.iter_mut().zip(&v[c.clone()]) {
                                *oi += pk * vi;
                            }
                        }
                    }
                }
            },
        );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::attention::attention_forward;
    use crate::cpu::gradcheck::random_vec;

    /// Every user's full sequence (history, then each of its candidates as the target)
    /// through the full attention: the target token's output must be the same.
    fn check(
        users: usize,
        per_user: &[usize],
        l: usize,
        d: usize,
        h: usize,
        valid_of: impl Fn(usize, usize) -> u32,
    ) {
        let n: usize = per_user.iter().sum();
        let t_n = l + 1;
        let hist_qkv = random_vec(users * l * 3 * d, 11); // (U, L, 3d)
        let qkv = random_vec(n * 3 * d, 12); // (N, 3d)
        let hist_valid: Vec<u32> = (0..users * l)
            .map(|i| valid_of(i / l.max(1), i % l.max(1)))
            .collect();
        let user: Vec<u32> = (0..users)
            .flat_map(|u| std::iter::repeat_n(u as u32, per_user[u]))
            .collect();
        let mut hist_kv = vec![0.0; users * l * 2 * d];
        for (kv, x) in hist_kv
            .chunks_exact_mut(2 * d)
            .zip(hist_qkv.chunks_exact(3 * d))
        {
            kv.copy_from_slice(&x[d..]);
        }
        let mut out = vec![f32::NAN; n * d];
        target_attention_forward(&mut out, &qkv, &hist_kv, &hist_valid, &user, n, l, d, h);
        // The full op on (N, T, 3d): the history rows of the row's user, then the row.
        let mut full = Vec::with_capacity(n * t_n * 3 * d);
        let mut valid = Vec::with_capacity(n * t_n);
        for (row, &u) in user.iter().enumerate() {
            let u = u as usize;
            full.extend_from_slice(&hist_qkv[u * l * 3 * d..][..l * 3 * d]);
            full.extend_from_slice(&qkv[row * 3 * d..][..3 * d]);
            valid.extend_from_slice(&hist_valid[u * l..][..l]);
            valid.push(1);
        }
        let mut want = vec![0.0; n * t_n * d];
        let mut att = vec![0.0; n * h * t_n * t_n];
        attention_forward(&mut want, &mut att, &full, &valid, n, t_n, d, h);
        for row in 0..n {
            let got = &out[row * d..][..d];
            let want = &want[(row * t_n + l) * d..][..d];
            assert_eq!(got, want, "row {row} (users {users}, L {l}, d {d}, h {h})");
        }
    }

    #[test]
    fn equals_the_full_attention_on_the_target_token() {
        // Several users with different candidate counts, past a chunk boundary; some
        // padded slots.
        check(3, &[1, 70, 5], 20, 64, 8, |u, t| ((t + u) % 3 != 0) as u32);
        // Odd head width, one head.
        check(2, &[3, 2], 7, 12, 1, |_, t| (t % 2) as u32);
        check(2, &[4, 1], 5, 15, 3, |_, _| 1);
    }

    #[test]
    fn an_all_padding_history_attends_to_the_target_alone() {
        check(2, &[3, 130], 4, 16, 4, |_, _| 0);
        // out = the target's own V: its one key has probability 1.
        let (d, h) = (8, 2);
        let qkv = random_vec(3 * d, 3);
        let mut out = vec![0.0; d];
        target_attention_forward(
            &mut out,
            &qkv,
            &vec![5.0; 3 * 2 * d],
            &[0, 0, 0],
            &[0],
            1,
            3,
            d,
            h,
        );
        assert_eq!(out, qkv[2 * d..]);
    }

    #[test]
    fn a_one_slot_history() {
        check(1, &[9], 1, 16, 2, |_, _| 1);
        check(1, &[9], 1, 16, 2, |_, _| 0);
    }
}
