//! Ranking: the `k` best-scored candidates. The host selection here is what
//! [`Backend::predict_top_k`] uses by default; the GPU backend selects on the device
//! (`bst_kernels::gpu::topk`). Both give the order of [`bst_kernels::cpu::topk::better`]:
//! higher first, ties by lower index, NaN last.

use crate::backend::{Backend, BackendError};
use crate::encode::{Context, Encoder};
use crate::requests::Requests;

/// The host selection (`k` best, ties by lower index, NaN last), where the kernels keep it.
pub use bst_kernels::cpu::topk::{select_best, top_k};

/// Scores every item index of `items` as the target of one user's context and returns the
/// `k` best as `(position in items, probability)`, best first: one request
/// ([`Backend::predict_top_k_requests`]), so a backend computes the history once where
/// that is exact, and otherwise scores one sample per candidate in batches of its
/// [`Backend::max_batch`].
pub fn rank_items(
    backend: &mut dyn Backend,
    enc: &Encoder,
    ctx: &Context,
    items: &[u32],
    k: usize,
) -> Result<Vec<(usize, f32)>, BackendError> {
    let mut req = Requests::new(ctx.history.item.len(), ctx.other.len());
    let u = req.push_context(ctx)?;
    for &item in items {
        req.push_candidate(u, item, enc.item_cat(item));
    }
    backend.predict_top_k_requests(&req, k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bst_kernels::cpu::topk::better;

    #[test]
    fn top_k_is_sorted_with_ties_by_index_and_nan_last() {
        let s = [0.1, 0.9, f32::NAN, 0.5, 0.9, 0.3];
        assert_eq!(top_k(&s, 3), vec![(1, 0.9), (4, 0.9), (3, 0.5)]);
        let all = top_k(&s, 10);
        assert_eq!(all.len(), 6);
        assert_eq!(all[5].0, 2, "NaN ranks last");
        assert!(top_k(&s, 0).is_empty());
        assert!(top_k(&[], 3).is_empty());
    }

    #[test]
    fn top_k_matches_a_full_sort() {
        let mut rng = crate::rng::Rng::new(3);
        let s: Vec<f32> = (0..1000).map(|_| (rng.below(50) as f32) / 50.0).collect();
        let mut full: Vec<(usize, f32)> = s.iter().copied().enumerate().collect();
        full.sort_by(|&a, &b| better(a, b));
        for k in [1, 7, 50, 999, 1000] {
            assert_eq!(top_k(&s, k), full[..k].to_vec(), "k = {k}");
        }
    }
}
