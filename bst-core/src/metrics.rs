//! Evaluation metrics (spec §4): AUC, GAUC and logloss.
//!
//! - AUC is the Mann-Whitney statistic with ties counted as one half, computed from
//!   average ranks in O(n log n).
//! - GAUC is the mean of per-user AUCs weighted by each user's sample count, over the
//!   users whose samples hold both labels.
//! - Logloss is the mean binary cross-entropy of probabilities clipped to
//!   `[1e-7, 1 - 1e-7]`, accumulated in f64.
//!
//! Labels are 0/1 floats; a label `> 0.5` counts as positive.

use crate::batch::SampleIndex;
use std::cmp::Ordering;
use std::fmt;

/// Probability clipping bound for [`logloss`].
const EPS: f64 = 1e-7;

#[inline]
fn is_pos(label: f32) -> bool {
    label > 0.5
}

/// AUC of all samples, `idx` holding `0..n` in any order: sorted by score first. [`auc`]
/// and [`gauc`] pass `u32` indices where they fit (68 MB rather than 135 MB of `usize` for
/// a split of 16.9M samples).
fn auc_by<I: SampleIndex>(mut idx: Vec<I>, scores: &[f32], labels: &[f32]) -> Option<f64> {
    idx.sort_unstable_by(|&a, &b| scores[a.at()].total_cmp(&scores[b.at()]));
    auc_sorted(&idx, scores, labels)
}

/// GAUC, `idx` holding `0..n` in any order: one sort by (user, score) groups the users
/// and orders each group by score.
fn gauc_by<I: SampleIndex>(
    mut idx: Vec<I>,
    scores: &[f32],
    labels: &[f32],
    users: &[u32],
) -> Option<f64> {
    idx.sort_unstable_by(|&a, &b| {
        let (a, b) = (a.at(), b.at());
        match users[a].cmp(&users[b]) {
            Ordering::Equal => scores[a].total_cmp(&scores[b]),
            o => o,
        }
    });
    let mut weighted = 0.0f64;
    let mut weight = 0usize;
    for group in idx.chunk_by(|&a, &b| users[a.at()] == users[b.at()]) {
        if let Some(a) = auc_sorted(group, scores, labels) {
            weighted += a * group.len() as f64;
            weight += group.len();
        }
    }
    (weight > 0).then(|| weighted / weight as f64)
}

/// AUC of the samples `idx` (indices into `scores`/`labels`), which must already be
/// sorted by ascending score. Ties get average ranks, so a tied positive/negative pair
/// counts one half. `None` when the samples do not hold both classes.
fn auc_sorted<I: SampleIndex>(idx: &[I], scores: &[f32], labels: &[f32]) -> Option<f64> {
    let n_pos = idx.iter().filter(|&&i| is_pos(labels[i.at()])).count();
    let n_neg = idx.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    // Sum of the (1-based, tie-averaged) ranks of the positives.
    let mut rank_sum = 0.0f64;
    let mut start = 0;
    while start < idx.len() {
        let s = scores[idx[start].at()];
        let mut end = start + 1;
        while end < idx.len() && scores[idx[end].at()] == s {
            end += 1;
        }
        // Ranks start+1 ..= end share their mean.
        let avg_rank = (start + 1 + end) as f64 / 2.0;
        let pos_in_group = idx[start..end]
            .iter()
            .filter(|&&i| is_pos(labels[i.at()]))
            .count();
        rank_sum += avg_rank * pos_in_group as f64;
        start = end;
    }
    let (p, q) = (n_pos as f64, n_neg as f64);
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * q))
}

/// Area under the ROC curve (Mann-Whitney U / (n_pos * n_neg)), ties counted as one
/// half. `None` when only one class is present (or the input is empty).
///
/// # Panics
/// If the slices differ in length.
pub fn auc(scores: &[f32], labels: &[f32]) -> Option<f64> {
    assert_eq!(
        scores.len(),
        labels.len(),
        "auc: scores/labels length mismatch"
    );
    match u32::try_from(scores.len()) {
        Ok(n) => auc_by((0..n).collect(), scores, labels),
        Err(_) => auc_by((0..scores.len()).collect(), scores, labels),
    }
}

/// Group AUC: per-user AUCs averaged with weights equal to the user's sample count,
/// over users whose samples hold both labels. `None` when no user qualifies.
///
/// # Panics
/// If the slices differ in length.
pub fn gauc(scores: &[f32], labels: &[f32], users: &[u32]) -> Option<f64> {
    assert_eq!(
        scores.len(),
        labels.len(),
        "gauc: scores/labels length mismatch"
    );
    assert_eq!(
        scores.len(),
        users.len(),
        "gauc: scores/users length mismatch"
    );
    match u32::try_from(scores.len()) {
        Ok(n) => gauc_by((0..n).collect(), scores, labels, users),
        Err(_) => gauc_by((0..scores.len()).collect(), scores, labels, users),
    }
}

/// Mean binary cross-entropy with probabilities clipped to `[1e-7, 1 - 1e-7]`,
/// computed in f64. NaN for empty input.
///
/// # Panics
/// If the slices differ in length.
pub fn logloss(probs: &[f32], labels: &[f32]) -> f64 {
    assert_eq!(
        probs.len(),
        labels.len(),
        "logloss: probs/labels length mismatch"
    );
    if probs.is_empty() {
        return f64::NAN;
    }
    let total: f64 = probs
        .iter()
        .zip(labels)
        .map(|(&p, &y)| {
            let p = (p as f64).clamp(EPS, 1.0 - EPS);
            if is_pos(y) { -p.ln() } else { -(1.0 - p).ln() }
        })
        .sum();
    total / probs.len() as f64
}

/// The evaluation summary of one pass over a data set. NaN is written as JSON `null` and
/// read back as NaN.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Metrics {
    /// Global AUC; NaN when undefined (one class only).
    #[serde(with = "nan_as_null")]
    pub auc: f64,
    /// Group (per-user) AUC; NaN when no user holds both labels.
    #[serde(with = "nan_as_null")]
    pub gauc: f64,
    /// Mean clipped binary cross-entropy.
    #[serde(with = "nan_as_null")]
    pub logloss: f64,
    /// Number of samples evaluated.
    pub samples: usize,
}

/// Serde for an `f64` that may be NaN or infinite: written as `null`, read back as NaN
/// (JSON has no NaN). Use with `#[serde(with = "crate::metrics::nan_as_null")]`.
pub mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes a finite `x` as a number, anything else as `null`.
    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        if x.is_finite() {
            s.serialize_f64(*x)
        } else {
            s.serialize_none()
        }
    }

    /// Reads a number, or `null` as NaN.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

impl Metrics {
    /// Computes all metrics from predicted probabilities, 0/1 labels and user ids.
    pub fn compute(probs: &[f32], labels: &[f32], users: &[u32]) -> Metrics {
        Metrics {
            auc: auc(probs, labels).unwrap_or(f64::NAN),
            gauc: gauc(probs, labels, users).unwrap_or(f64::NAN),
            logloss: logloss(probs, labels),
            samples: labels.len(),
        }
    }
}

impl fmt::Display for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "AUC {:.4}  GAUC {:.4}  logloss {:.4}",
            self.auc, self.gauc, self.logloss
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    /// O(n^2) pairwise reference: P(score_pos > score_neg) + 0.5 P(tie).
    fn auc_pairwise(scores: &[f32], labels: &[f32]) -> Option<f64> {
        let mut num = 0.0f64;
        let mut pairs = 0usize;
        for i in 0..scores.len() {
            if !is_pos(labels[i]) {
                continue;
            }
            for j in 0..scores.len() {
                if is_pos(labels[j]) {
                    continue;
                }
                pairs += 1;
                if scores[i] > scores[j] {
                    num += 1.0;
                } else if scores[i] == scores[j] {
                    num += 0.5;
                }
            }
        }
        (pairs > 0).then(|| num / pairs as f64)
    }

    /// Small deterministic generator (SplitMix64) so the test needs nothing else.
    struct SplitMix(u64);
    impl SplitMix {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn auc_perfect_reversed_tied() {
        let labels = [0.0, 0.0, 1.0, 1.0, 1.0];
        assert_eq!(auc(&[0.1, 0.2, 0.3, 0.4, 0.5], &labels), Some(1.0));
        assert_eq!(auc(&[0.5, 0.4, 0.3, 0.2, 0.1], &labels), Some(0.0));
        assert_eq!(auc(&[0.3; 5], &labels), Some(0.5));
    }

    #[test]
    fn auc_hand_computed_with_ties() {
        // Pos {0.4, 0.8} vs neg {0.1, 0.4}: 1 + 0.5 + 1 + 1 = 3.5 of 4 pairs.
        let a = auc(&[0.1, 0.4, 0.4, 0.8], &[0.0, 0.0, 1.0, 1.0]).unwrap();
        assert!(close(a, 0.875), "{a}");
        // Order of the input must not matter.
        let a = auc(&[0.4, 0.8, 0.1, 0.4], &[1.0, 1.0, 0.0, 0.0]).unwrap();
        assert!(close(a, 0.875), "{a}");
    }

    #[test]
    fn auc_matches_pairwise_reference_on_random_data() {
        let mut rng = SplitMix(42);
        for trial in 0..50 {
            let n = 1 + rng.below(200) as usize;
            // Few distinct score values so that ties are frequent.
            let levels = 1 + rng.below(if trial % 2 == 0 { 8 } else { 1000 });
            let scores: Vec<f32> = (0..n)
                .map(|_| rng.below(levels) as f32 / levels as f32)
                .collect();
            let labels: Vec<f32> = (0..n).map(|_| rng.below(2) as f32).collect();
            let fast = auc(&scores, &labels);
            let slow = auc_pairwise(&scores, &labels);
            match (fast, slow) {
                (Some(a), Some(b)) => assert!((a - b).abs() < 1e-9, "{a} vs {b}"),
                (None, None) => {}
                other => panic!("mismatch {other:?}"),
            }
        }
    }

    #[test]
    fn wide_indices_give_the_same_metrics_as_narrow_ones() {
        // Splits of more than 2^32 samples sort `usize` indices; the same code path.
        let mut rng = SplitMix(7);
        let n = 500;
        let scores: Vec<f32> = (0..n).map(|_| rng.below(20) as f32 / 20.0).collect();
        let labels: Vec<f32> = (0..n).map(|_| rng.below(2) as f32).collect();
        let users: Vec<u32> = (0..n).map(|_| rng.below(30) as u32).collect();
        let wide: Vec<usize> = (0..n).collect();
        let narrow: Vec<u32> = (0..n as u32).collect();
        assert_eq!(
            auc_by(wide.clone(), &scores, &labels),
            auc_by(narrow.clone(), &scores, &labels)
        );
        assert_eq!(
            gauc_by(wide, &scores, &labels, &users),
            gauc_by(narrow, &scores, &labels, &users)
        );
    }

    #[test]
    fn auc_single_class_is_none() {
        assert_eq!(auc(&[0.1, 0.9], &[1.0, 1.0]), None);
        assert_eq!(auc(&[0.1, 0.9], &[0.0, 0.0]), None);
        assert_eq!(auc(&[], &[]), None);
    }

    #[test]
    fn gauc_one_user_equals_auc() {
        let scores = [0.1, 0.4, 0.4, 0.8, 0.3, 0.6];
        let labels = [0.0, 0.0, 1.0, 1.0, 1.0, 0.0];
        let users = [7; 6];
        assert_eq!(gauc(&scores, &labels, &users), auc(&scores, &labels));
    }

    #[test]
    fn gauc_weights_by_count() {
        // User 1 (4 samples): AUC 0.875. User 2 (3 samples): pos 0.5 vs neg {0.2, 0.7}
        // gives 0.5. Weighted: (4 * 0.875 + 3 * 0.5) / 7 = 5 / 7. Interleaved on purpose.
        let scores = [0.1, 0.5, 0.4, 0.2, 0.4, 0.7, 0.8];
        let labels = [0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0];
        let users = [1, 2, 1, 2, 1, 2, 1];
        let g = gauc(&scores, &labels, &users).unwrap();
        assert!(close(g, 5.0 / 7.0), "{g}");
    }

    #[test]
    fn gauc_excludes_single_class_users() {
        // User 3 has only positives and must not affect the value or the weights.
        let scores = [0.1, 0.4, 0.4, 0.8, 0.05, 0.06];
        let labels = [0.0, 0.0, 1.0, 1.0, 1.0, 1.0];
        let users = [1, 1, 1, 1, 3, 3];
        let g = gauc(&scores, &labels, &users).unwrap();
        assert!(close(g, 0.875), "{g}");
        // Nobody qualifies.
        assert_eq!(gauc(&[0.1, 0.2], &[1.0, 0.0], &[1, 2]), None);
    }

    #[test]
    fn logloss_hand_value() {
        // -(ln 0.8 + ln 0.7) / 2
        let l = logloss(&[0.8, 0.3], &[1.0, 0.0]);
        let want = -(0.8f64.ln() + 0.7f64.ln()) / 2.0;
        assert!((l - want).abs() < 1e-7, "{l} vs {want}");
        assert!((l - 0.289_909_25).abs() < 1e-6, "{l}");
    }

    #[test]
    fn logloss_clips_extremes() {
        // Confidently wrong predictions stay finite: -ln(1e-7) each.
        let l = logloss(&[0.0, 1.0], &[1.0, 0.0]);
        assert!(l.is_finite());
        assert!((l - 16.118_095_650_958_32).abs() < 1e-6, "{l}");
        // Confidently right predictions are ~0 but finite.
        let l = logloss(&[1.0, 0.0], &[1.0, 0.0]);
        assert!(l.is_finite() && (0.0..1e-6).contains(&l), "{l}");
    }

    #[test]
    fn metrics_compute_and_display() {
        let m = Metrics::compute(&[0.1, 0.4, 0.4, 0.8], &[0.0, 0.0, 1.0, 1.0], &[1, 1, 1, 1]);
        assert!(close(m.auc, 0.875) && close(m.gauc, 0.875));
        assert_eq!(m.samples, 4);
        let s = m.to_string();
        assert!(s.starts_with("AUC 0.8750  GAUC 0.8750  logloss "), "{s}");
        let m = Metrics::compute(&[0.3, 0.6], &[1.0, 1.0], &[1, 2]);
        assert!(m.auc.is_nan() && m.gauc.is_nan() && m.logloss.is_finite());
    }
}
