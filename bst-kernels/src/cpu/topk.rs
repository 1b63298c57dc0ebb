//! Top-k selection: the `k` highest scores with their indices, best first.
//!
//! The order is total and the answer unique: a higher score first, equal scores by lower
//! index, NaN below every number (NaNs by index too); `-0.0` ranks just below `+0.0`
//! (`f32::total_cmp`). The GPU kernel ([`crate::gpu::topk`]) gives exactly this answer,
//! bit for bit.

use std::cmp::Ordering;

/// `Less` when `a` ranks before `b`: higher score, then lower index; NaN last.
pub fn better(a: (usize, f32), b: (usize, f32)) -> Ordering {
    match (a.1.is_nan(), b.1.is_nan()) {
        (false, false) => b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)),
        (true, true) => a.0.cmp(&b.0),
        (false, true) => Ordering::Less,
        (true, false) => Ordering::Greater,
    }
}

/// The `min(k, n)` best of `scores (n)` as `(index, score)`, best first: every pair
/// sorted by [`better`], then the first `k` kept. The plain reference of [`top_k`] and of
/// the GPU kernel.
pub fn top_k_reference(scores: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut all: Vec<(usize, f32)> = scores.iter().copied().enumerate().collect();
    all.sort_by(|&a, &b| better(a, b));
    all.truncate(k);
    all
}

/// The same answer as [`top_k_reference`] in O(n + k log k): a partial selection, then a
/// sort of the `k` selected (the host selection of the backends).
pub fn top_k(scores: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut all: Vec<(usize, f32)> = scores.iter().copied().enumerate().collect();
    select_best(&mut all, k);
    all
}

/// Keeps the `k` best of `(index, score)` pairs in `pairs`, best first (the merge step
/// when candidates are scored in chunks).
pub fn select_best(pairs: &mut Vec<(usize, f32)>, k: usize) {
    let k = k.min(pairs.len());
    if k == 0 {
        pairs.clear();
        return;
    }
    if k < pairs.len() {
        pairs.select_nth_unstable_by(k - 1, |&a, &b| better(a, b));
        pairs.truncate(k);
    }
    pairs.sort_unstable_by(|&a, &b| better(a, b));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_selection_gives_the_reference_answer() {
        let s = [0.1, 0.9, f32::NAN, 0.5, 0.9, -0.0, 0.0, 0.3, f32::NAN, 0.9];
        for k in 0..=s.len() + 1 {
            let (fast, plain) = (top_k(&s, k), top_k_reference(&s, k));
            assert_eq!(format!("{fast:?}"), format!("{plain:?}"), "k = {k}");
        }
    }

    #[test]
    fn ties_go_to_the_lower_index_and_nan_ranks_last() {
        let s = [0.1, 0.9, f32::NAN, 0.5, 0.9, -0.0, 0.0];
        assert_eq!(top_k_reference(&s, 3), vec![(1, 0.9), (4, 0.9), (3, 0.5)]);
        let all = top_k_reference(&s, 10);
        let order: Vec<usize> = all.iter().map(|p| p.0).collect();
        assert_eq!(order, [1, 4, 3, 0, 6, 5, 2]);
        assert!(top_k_reference(&s, 0).is_empty());
        assert!(top_k_reference(&[], 3).is_empty());
    }
}
