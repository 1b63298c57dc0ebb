//! From an interaction log to BST samples, split per user in time order (spec 1.2).
//!
//! - Each user's interactions are sorted by (timestamp, order in the log).
//! - Every interaction with at least one earlier interaction of the same user is a sample:
//!   its item is the target, the up to `L` interactions before it are the history (oldest
//!   first, right-aligned, 0 = padding on the left).
//! - History positions are time-gap buckets (spec 1.1) or ordinal ranks; 0 when padded.
//! - Other features: the log's user fields, then `hour` (24) and `weekday` (7) of the
//!   target's time in UTC, stored as global rows of `emb.other.weight`.
//! - Implicit logs: each positive gets `data.negatives` negatives with the same history,
//!   time and features and a target drawn uniformly from the other items: negative `d`
//!   of event `e` (its index among all users' time-ordered events) from a counter-based
//!   hash of `(data.seed, e, d)` ([`super::store::negative_item`]).
//! - Split per user, in time order: with `n` samples (groups of a positive and its
//!   negatives for implicit logs) and `n >= 3`, the last `max(1, n/10)` are test, the
//!   `max(1, n/10)` before them validation, the rest train; smaller users go to train.

use super::store::{Columns, Sorted, negative_item, sort_events, splits_of};
use super::{DataError, Dataset, Field, Interaction, InteractionLog, Samples, Vocab};
use crate::config::{DataConfig, ModelConfig, Position};

/// Hours in a day and days in a week: the sizes of the two context fields.
const HOURS: usize = 24;
const WEEKDAYS: usize = 7;
const DAY_SECONDS: i64 = 86_400;
/// Names of the two context fields that follow the user fields, computed from the target's
/// time: hour of day, then day of week.
pub const CONTEXT_FIELDS: [&str; 2] = ["hour", "weekday"];

/// Position bucket of a history item clicked `gap_seconds` before the target (spec 1.1):
/// `1 + min(P - 2, floor(log2(1 + gap)))`, with the gap clamped at 0. Integer arithmetic.
pub fn time_gap_bucket(gap_seconds: i64, p: usize) -> u32 {
    let x = 1 + gap_seconds.max(0) as u64; // >= 1, no overflow: gap <= i64::MAX
    let log2 = 63 - x.leading_zeros() as u64;
    1 + log2.min(p.saturating_sub(2) as u64) as u32
}

/// Position bucket of the history item in slot `slot` of `l` (right-aligned, the newest in
/// slot `l - 1`), clicked `gap_seconds` before the target (spec 1.1).
pub fn history_position(
    position: Position,
    pos_buckets: usize,
    l: usize,
    slot: usize,
    gap_seconds: i64,
) -> u32 {
    match position {
        Position::Timegap => time_gap_bucket(gap_seconds, pos_buckets),
        Position::Ordinal => (l - slot) as u32, // 1 + k, k = 0 for the newest
    }
}

/// `(hour of day 0..24, day of week 0..7 with 0 = Monday)` of a Unix time, in UTC.
/// 1970-01-01 was a Thursday (weekday 3).
pub fn hour_and_weekday(t: i64) -> (u32, u32) {
    let hour = t.rem_euclid(DAY_SECONDS) / 3600;
    let weekday = (t.div_euclid(DAY_SECONDS) + 3).rem_euclid(7);
    (hour as u32, weekday as u32)
}

/// `(train, valid, test)` counts for a user with `n` samples (or sample groups).
pub fn split_sizes(n: usize) -> (usize, usize, usize) {
    if n < 3 {
        return (n, 0, 0);
    }
    let k = (n / 10).max(1);
    (n - 2 * k, k, k)
}

/// Builds the dataset `name` from `log` (spec 1.2): the compact store and its splits
/// (see [`super::store`]). The samples are those of [`build_reference`].
pub fn build(
    log: InteractionLog,
    model: &ModelConfig,
    data: &DataConfig,
    name: &str,
) -> Result<Dataset, DataError> {
    check_log(&log, model, data)?;
    // Before sorting, which counts events in `u32`.
    check_counts(log.interactions.len(), negatives(log.implicit, data), name)?;
    let events = &log.interactions;
    let cols = Columns {
        user: events.iter().map(|it| it.user).collect(),
        item: events.iter().map(|it| it.item).collect(),
        time: events.iter().map(|it| it.time).collect(),
        label: (!log.implicit).then(|| events.iter().map(|it| it.label).collect()),
        true_prob: log.true_prob,
    };
    drop(log.interactions);
    let sorted = sort_events(cols, log.vocab.user_ids.len());
    // (`build_sorted` checks the vocabulary again: a small cost beside the sort.)
    let (implicit, vocab, features) = (log.implicit, log.vocab, log.user_features);
    build_sorted(sorted, implicit, vocab, features, model, data, name)
}

/// Refuses a log the store cannot index: events and samples are numbered with `u32`
/// (CSR offsets, split references, the epoch's order), so at most `u32::MAX` of each.
pub fn check_counts(events: usize, negatives: usize, name: &str) -> Result<(), DataError> {
    let samples = negatives.checked_add(1).and_then(|k| events.checked_mul(k));
    let max = u32::MAX as usize;
    if events > max || samples.is_none_or(|s| s > max) {
        return Err(DataError::Other(format!(
            "{name}: {events} interactions with {negatives} negatives each make more than \
             {max} events or samples, the most one store indexes: split the log, or lower \
             data.negatives"
        )));
    }
    Ok(())
}

/// [`build`] from a log's events already sorted per user (a large file read by
/// [`super::taobao::parse`] or its cache, whose ids are in range by construction): no
/// [`Interaction`] is made.
#[allow(clippy::too_many_arguments)]
pub fn build_sorted(
    sorted: Sorted,
    implicit: bool,
    vocab: Vocab,
    user_features: Vec<Vec<u32>>,
    model: &ModelConfig,
    data: &DataConfig,
    name: &str,
) -> Result<Dataset, DataError> {
    // The vocabulary's checks; the events are in range by construction.
    let log = InteractionLog {
        interactions: Vec::new(),
        implicit,
        vocab,
        user_features,
        true_prob: None,
    };
    check_log(&log, model, data)?;
    let negatives = negatives(implicit, data);
    check_counts(sorted.item.len(), negatives, name)?;
    let vocab = with_context_fields(log.vocab);
    let [train, valid, test] = splits_of(
        sorted,
        &vocab,
        &log.user_features,
        model,
        negatives,
        data.seed,
    );
    Ok(Dataset {
        name: name.to_string(),
        vocab,
        train,
        valid,
        test,
    })
}

/// Negatives drawn per positive: the config's for a click log, none for an explicit one.
fn negatives(implicit: bool, data: &DataConfig) -> usize {
    if implicit { data.negatives } else { 0 }
}

/// The plain materialised assembly of the samples of `log` as `[train, valid, test]`
/// (spec 1.2): every sample's rows written out in full. The tests compare the compact
/// store's batches with it, field for field.
pub fn build_reference(
    log: InteractionLog,
    model: &ModelConfig,
    data: &DataConfig,
) -> Result<[Samples; 3], DataError> {
    check_log(&log, model, data)?;
    let InteractionLog {
        interactions,
        implicit,
        vocab,
        user_features,
        true_prob,
    } = log;
    let user_fields = vocab.fields.len();
    let vocab = with_context_fields(vocab);
    let layout = Layout::new(&vocab, model, user_fields);
    let negatives = negatives(implicit, data);

    let fields = vocab.fields.len();
    let new_split = || {
        let mut s = Samples::new(model.seq_len, fields);
        if true_prob.is_some() {
            s.true_prob = Some(Vec::new());
        }
        s
    };
    let mut splits = [new_split(), new_split(), new_split()];
    // Index of the user's first event among all users' time-ordered events.
    let mut first_event = 0u64;

    for (user, timeline) in timelines(&interactions, vocab.user_ids.len())
        .iter()
        .enumerate()
    {
        let (n_train, n_valid, _) = split_sizes(timeline.len().saturating_sub(1));
        for j in 1..timeline.len() {
            let group = j - 1;
            let split = if group < n_train {
                0
            } else if group < n_train + n_valid {
                1
            } else {
                2
            };
            let i = timeline[j];
            let now = interactions[i].time;
            let context = UserContext {
                user: user as u32,
                context: Context {
                    history: layout.history(&interactions, &timeline[..j], now),
                    other: layout.other(&user_features[user], now),
                },
            };
            let target = &interactions[i];
            let prob = true_prob.as_ref().map(|p| p[i]);
            context.push(&mut splits[split], &vocab, target.item, target.label, prob);
            for d in 1..=negatives {
                let event = first_event + j as u64;
                let item = negative_item(data.seed, event, d as u64, vocab.n_items(), target.item);
                context.push(&mut splits[split], &vocab, item, 0.0, None);
            }
        }
        first_event += timeline.len() as u64;
    }
    Ok(splits)
}

/// Checks that the log is consistent with itself and with the config, so that building
/// cannot index out of bounds.
fn check_log(
    log: &InteractionLog,
    model: &ModelConfig,
    data: &DataConfig,
) -> Result<(), DataError> {
    let bad = |m: String| Err(DataError::Other(m));
    let v = &log.vocab;
    let n_users = v.user_ids.len();
    if model.seq_len == 0 {
        return bad("model.seq_len (L) must be at least 1".into());
    }
    let max_pos = match model.position {
        Position::Timegap => 2,
        Position::Ordinal => model.seq_len + 1,
    };
    if model.pos_buckets < max_pos {
        return bad(format!(
            "model.pos_buckets = {} is too small for {:?} positions (need at least {max_pos})",
            model.pos_buckets, model.position
        ));
    }
    if v.item_cat.len() != v.n_items() {
        return bad(format!(
            "vocab.item_cat has {} entries for {} items",
            v.item_cat.len(),
            v.n_items()
        ));
    }
    if let Some(&c) = v.item_cat.iter().find(|&&c| c as usize >= v.n_cats()) {
        return bad(format!(
            "item category {c} is outside the {} categories",
            v.n_cats()
        ));
    }
    if log.user_features.len() != n_users {
        return bad(format!(
            "user_features has {} rows for {n_users} users",
            log.user_features.len()
        ));
    }
    for (u, row) in log.user_features.iter().enumerate() {
        if row.len() != v.fields.len() {
            return bad(format!(
                "user {u} has {} features for {} fields",
                row.len(),
                v.fields.len()
            ));
        }
        if let Some((f, &x)) = row
            .iter()
            .enumerate()
            .find(|&(f, &x)| x as usize >= v.fields[f].size)
        {
            return bad(format!(
                "user {u}: value {x} is outside field `{}` of size {}",
                v.fields[f].name, v.fields[f].size
            ));
        }
    }
    for (i, it) in log.interactions.iter().enumerate() {
        if it.user as usize >= n_users || it.item == 0 || it.item as usize >= v.n_items() {
            return bad(format!(
                "interaction {i} has user {} / item {} outside the vocabulary \
                 ({n_users} users, items 1..{})",
                it.user,
                it.item,
                v.n_items()
            ));
        }
        if log.implicit && it.label != 1.0 {
            return bad(format!(
                "interaction {i} of an implicit log has label {}: implicit logs hold only positives",
                it.label
            ));
        }
    }
    if let Some(p) = &log.true_prob {
        if log.implicit {
            return bad(
                "true_prob is not supported for implicit logs (negatives have none)".into(),
            );
        }
        if p.len() != log.interactions.len() {
            return bad(format!(
                "true_prob has {} entries for {} interactions",
                p.len(),
                log.interactions.len()
            ));
        }
    }
    if log.implicit && data.negatives > 0 && v.n_items() < 3 {
        return bad(format!(
            "cannot sample negatives: the log has {} item(s), and a negative must differ \
             from the positive item",
            v.n_items().saturating_sub(1)
        ));
    }
    Ok(())
}

/// Appends the context fields `hour` (24) and `weekday` (7) after the user fields.
fn with_context_fields(mut vocab: Vocab) -> Vocab {
    for (name, size) in CONTEXT_FIELDS.into_iter().zip([HOURS, WEEKDAYS]) {
        let offset = vocab.n_other();
        vocab.fields.push(Field {
            name: name.into(),
            size,
            offset,
            tokens: Vec::new(),
        });
    }
    vocab
}

/// Each user's interaction indices sorted by (time, order in the log):
/// `timelines[user] = [i, ...]`.
fn timelines(interactions: &[Interaction], n_users: usize) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new(); n_users];
    for (i, it) in interactions.iter().enumerate() {
        out[it.user as usize].push(i);
    }
    for t in &mut out {
        t.sort_by_key(|&i| interactions[i].time); // stable: ties keep log order
    }
    out
}

/// What a sample's rows are built from: the vocabulary sizes and the config.
struct Layout<'a> {
    vocab: &'a Vocab,
    model: &'a ModelConfig,
    /// Number of user fields; `hour` and `weekday` follow them.
    user_fields: usize,
}

/// A sample's history, right-aligned (the newest in the last slot), 0 = padding.
#[derive(Clone, Debug, PartialEq)]
pub struct History {
    /// (L) item rows.
    pub item: Vec<u32>,
    /// (L) category rows.
    pub cat: Vec<u32>,
    /// (L) position buckets.
    pub pos: Vec<u32>,
}

impl History {
    /// The history of a target at time `now` from the last `L` of a user's earlier
    /// `events` (oldest first): `event(e)` is the item and time of `e`, or `None` for an
    /// unknown item, whose slot stays padding. `item_cat`: each item's category.
    pub fn of<E>(
        model: &ModelConfig,
        item_cat: &[u32],
        now: i64,
        events: &[E],
        mut event: impl FnMut(&E) -> Option<(u32, i64)>,
    ) -> History {
        let l = model.seq_len;
        let kept = &events[events.len().saturating_sub(l)..];
        let mut h = History {
            item: vec![0; l],
            cat: vec![0; l],
            pos: vec![0; l],
        };
        for (slot, e) in (l - kept.len()..l).zip(kept) {
            let Some((item, time)) = event(e) else {
                continue;
            };
            h.item[slot] = item;
            h.cat[slot] = item_cat[item as usize];
            h.pos[slot] = history_position(model.position, model.pos_buckets, l, slot, now - time);
        }
        h
    }
}

/// What a user's samples at one time share (a positive and its negatives, or every
/// candidate of a scoring request): the history rows and the other-feature rows.
#[derive(Clone, Debug, PartialEq)]
pub struct Context {
    /// The history.
    pub history: History,
    /// (F) rows of `emb.other.weight`.
    pub other: Vec<u32>,
}

impl Context {
    /// Appends the sample of this context with target `(item, cat)` (rows), label
    /// `label`, of dense user `user`.
    pub fn push(&self, s: &mut Samples, (item, cat): (u32, u32), label: f32, user: u32) {
        s.hist_item.extend_from_slice(&self.history.item);
        s.hist_cat.extend_from_slice(&self.history.cat);
        s.hist_pos.extend_from_slice(&self.history.pos);
        s.target_item.push(item);
        s.target_cat.push(cat);
        s.other.extend_from_slice(&self.other);
        s.label.push(label);
        s.user.push(user);
    }
}

impl<'a> Layout<'a> {
    fn new(vocab: &'a Vocab, model: &'a ModelConfig, user_fields: usize) -> Layout<'a> {
        Layout {
            vocab,
            model,
            user_fields,
        }
    }

    /// The history of a target at time `now`, from the user's earlier interactions
    /// `before` (oldest first).
    fn history(&self, interactions: &[Interaction], before: &[usize], now: i64) -> History {
        let item_cat = &self.vocab.item_cat;
        History::of(self.model, item_cat, now, before, |&i| {
            Some((interactions[i].item, interactions[i].time))
        })
    }

    /// Global rows `[F]`: each user field's `offset + local`, then hour and weekday.
    fn other(&self, user_features: &[u32], now: i64) -> Vec<u32> {
        let fields = &self.vocab.fields;
        let (hour, weekday) = hour_and_weekday(now);
        let mut other: Vec<u32> = user_features
            .iter()
            .zip(fields)
            .map(|(&x, f)| f.offset as u32 + x)
            .collect();
        other.push(fields[self.user_fields].offset as u32 + hour);
        other.push(fields[self.user_fields + 1].offset as u32 + weekday);
        other
    }
}

/// Everything a positive shares with its negatives.
struct UserContext {
    user: u32,
    context: Context,
}

impl UserContext {
    /// Appends one sample with target `item` to `s`.
    fn push(&self, s: &mut Samples, vocab: &Vocab, item: u32, label: f32, prob: Option<f32>) {
        let target = (item, vocab.item_cat[item as usize]);
        self.context.push(s, target, label, self.user);
        if let (Some(all), Some(p)) = (s.true_prob.as_mut(), prob) {
            all.push(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_past_u32_are_refused_with_the_knob_to_turn() {
        let max = u32::MAX as usize;
        assert!(check_counts(max, 0, "log").is_ok());
        assert!(check_counts(max / 2, 1, "log").is_ok());
        for (events, negatives) in [(max + 1, 0), (max / 2 + 1, 1), (max, usize::MAX)] {
            let e = check_counts(events, negatives, "log")
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("log: ") && e.contains("data.negatives"),
                "{e}"
            );
        }
    }

    #[test]
    fn buckets_follow_the_spec() {
        assert_eq!(time_gap_bucket(0, 64), 1);
        assert_eq!(time_gap_bucket(1, 64), 2);
        assert_eq!(time_gap_bucket(2, 64), 2);
        assert_eq!(time_gap_bucket(3, 64), 3);
        assert_eq!(time_gap_bucket(-5, 64), 1);
        assert_eq!(time_gap_bucket(i64::MAX, 64), 63);
        assert_eq!(time_gap_bucket(1 << 20, 8), 7);
    }

    #[test]
    fn splits_are_tenths_with_at_least_one() {
        assert_eq!(split_sizes(2), (2, 0, 0));
        assert_eq!(split_sizes(3), (1, 1, 1));
        assert_eq!(split_sizes(25), (21, 2, 2));
        assert_eq!(split_sizes(100), (80, 10, 10));
    }

    #[test]
    fn negatives_never_hit_the_positive() {
        for pos in 1..5u32 {
            for e in 0..200 {
                let x = negative_item(1, e, 1, 5, pos);
                assert!((1..5).contains(&x) && x != pos);
            }
        }
    }
}
