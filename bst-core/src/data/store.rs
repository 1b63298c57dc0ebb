//! The compact form of a dataset (issue 12): the log kept once, per user in time order, in
//! flat arrays, and each split a list of references to its events. A sample's history,
//! categories, positions, other features and label are assembled when its batch is made
//! ([`SampleSource::gather_into`]), so memory grows with the events (about 16 bytes each
//! for an implicit log), not with `L` times the samples.
//!
//! - [`EventStore`]: CSR per user (`user_start`), per event the item and the time (as
//!   `u32` offsets, [`Times`]), the label for explicit logs and the true click
//!   probability when the generator knows it.
//! - [`Split`]: the events whose samples a split holds, in sample order (users in order,
//!   each user's in time order): of each user's events, a contiguous run (spec 1.2), so
//!   the split keeps only how many events each user has in it (`first`, per-user
//!   offsets) and finds an event from them, no list of events. With `k` negatives per
//!   positive (implicit logs) event `j` of the split gives samples `j * (1 + k) + d`:
//!   `d = 0` the positive, `d >= 1` negative `d`, whose item is [`negative_item`], a
//!   counter-based hash of `(data seed, event, d)`, so no negative is stored.
//!
//! The samples are those of [`super::samples::build_reference`], the plain materialised
//! assembly the tests compare against, field for field.

use super::samples::{history_position, hour_and_weekday, split_sizes};
use super::times::Times;
use super::{Samples, Vocab};
use crate::batch::{Batch, SampleIndex, SampleSource};
use crate::config::Position;
use crate::hash::Fnv1a;
use std::sync::Arc;

/// The log, once: per user (CSR) the events in time order, and what assembling a sample
/// needs from the vocabulary and the config.
#[derive(Clone, Debug, PartialEq)]
pub struct EventStore {
    /// History length `L`.
    pub seq_len: usize,
    /// Position buckets `P`.
    pub pos_buckets: usize,
    /// How history positions are computed.
    pub position: Position,
    /// Other-feature fields `F` (the user fields, then `hour` and `weekday`).
    pub fields: usize,
    /// Global rows of each user's user fields, `(n_users, F - 2)`.
    pub user_other: Vec<u32>,
    /// First rows of the `hour` and `weekday` fields.
    pub context_offsets: [u32; 2],
    /// Category of each item row.
    pub item_cat: Vec<u32>,
    /// Events of user `u`: `user_start[u]..user_start[u + 1]`.
    pub user_start: Vec<u32>,
    /// Item of each event.
    pub item: Vec<u32>,
    /// Time of each event (seconds since the epoch).
    pub time: Times,
    /// Label of each event (explicit logs); `None`: every event is a positive.
    pub label: Option<Vec<f32>>,
    /// True click probability of each event, when known.
    pub true_prob: Option<Vec<f32>>,
    /// Negatives per positive (0 for explicit logs).
    pub negatives: usize,
    /// The data seed the negatives are drawn with.
    pub seed: u64,
}

impl Default for EventStore {
    fn default() -> EventStore {
        EventStore {
            seq_len: 0,
            pos_buckets: 0,
            position: Position::Timegap,
            fields: 2,
            user_other: Vec::new(),
            context_offsets: [0, 0],
            item_cat: Vec::new(),
            user_start: vec![0],
            item: Vec::new(),
            time: Times::default(),
            label: None,
            true_prob: None,
            negatives: 0,
            seed: 0,
        }
    }
}

/// The item of negative `draw` (>= 1) of event `event`: uniform over the items `1..n_items`
/// other than `positive`, from a counter-based hash of `(seed, event, draw)`.
pub fn negative_item(seed: u64, event: u64, draw: u64, n_items: usize, positive: u32) -> u32 {
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let h = mix(mix(mix(seed) ^ event) ^ draw.wrapping_mul(0xD1B5_4A32_D192_ED03));
    let others = (n_items - 2) as u64; // real items minus the positive
    let x = 1 + ((h as u128 * others as u128) >> 64) as u32;
    if x >= positive { x + 1 } else { x }
}

impl EventStore {
    /// Number of users.
    pub fn n_users(&self) -> usize {
        self.user_start.len().saturating_sub(1)
    }
    /// Number of events.
    pub fn n_events(&self) -> usize {
        self.item.len()
    }
    /// Samples per event: the positive and its negatives.
    pub fn per_event(&self) -> usize {
        1 + self.negatives
    }
    /// Target item, label and true probability of draw `d` of event `e`.
    fn target(&self, e: usize, d: usize) -> (u32, f32, Option<f32>) {
        if d == 0 {
            let label = self.label.as_ref().map_or(1.0, |l| l[e]);
            (self.item[e], label, self.true_prob.as_ref().map(|p| p[e]))
        } else {
            let item = negative_item(
                self.seed,
                e as u64,
                d as u64,
                self.item_cat.len(),
                self.item[e],
            );
            (item, 0.0, None)
        }
    }

    /// Appends the sample of draw `d` of event `e` (of user `u`) to the batch's buffers.
    fn push(&self, b: &mut Batch, u: usize, e: usize, d: usize) {
        let l = self.seq_len;
        let first = self.user_start[u] as usize;
        let from = e.saturating_sub(l).max(first);
        let pad = l - (e - from);
        let now = self.time.get(e);
        b.hist_item.extend(std::iter::repeat_n(0, pad));
        b.hist_cat.extend(std::iter::repeat_n(0, pad));
        b.hist_pos.extend(std::iter::repeat_n(0, pad));
        for (slot, h) in (pad..l).zip(from..e) {
            let item = self.item[h];
            b.hist_item.push(item);
            b.hist_cat.push(self.item_cat[item as usize]);
            b.hist_pos.push(history_position(
                self.position,
                self.pos_buckets,
                l,
                slot,
                now - self.time.get(h),
            ));
        }
        let (item, label, _) = self.target(e, d);
        b.target_item.push(item);
        b.target_cat.push(self.item_cat[item as usize]);
        let uf = self.fields - 2;
        b.other
            .extend_from_slice(&self.user_other[u * uf..(u + 1) * uf]);
        let (hour, weekday) = hour_and_weekday(now);
        b.other.push(self.context_offsets[0] + hour);
        b.other.push(self.context_offsets[1] + weekday);
        b.label.push(label);
    }

    /// A 64-bit hash of everything the samples are assembled from.
    fn fingerprint(&self) -> u64 {
        let mut h = Fnv::new();
        for x in [
            self.seq_len,
            self.pos_buckets,
            self.position as usize,
            self.fields,
            self.negatives,
        ] {
            h.eat(x as u64);
        }
        h.eat(self.seed);
        h.eat_u32s(&self.user_other);
        h.eat_u32s(&self.context_offsets);
        h.eat_u32s(&self.item_cat);
        h.eat_u32s(&self.user_start);
        h.eat_u32s(&self.item);
        h.eat(self.time.len() as u64);
        (0..self.time.len()).for_each(|e| h.eat(self.time.get(e) as u64));
        for v in [&self.label, &self.true_prob] {
            h.eat(v.is_some() as u64);
            if let Some(v) = v {
                h.eat(v.len() as u64);
                v.iter().for_each(|&x| h.eat(x.to_bits() as u64));
            }
        }
        h.0.finish()
    }
}

/// FNV-1a over 64-bit words ([`Fnv1a::word`]), with slices of `u32` taken in pairs.
struct Fnv(Fnv1a);
impl Fnv {
    fn new() -> Fnv {
        Fnv(Fnv1a::new())
    }
    fn resume(state: u64) -> Fnv {
        Fnv(Fnv1a::resume(state))
    }
    fn eat(&mut self, x: u64) {
        self.0.word(x);
    }
    fn eat_u32s(&mut self, xs: &[u32]) {
        self.eat_u32_iter(xs.len(), xs.iter().copied());
    }
    /// [`Fnv::eat_u32s`] of the `n` values of `xs`, never collected.
    fn eat_u32_iter(&mut self, n: usize, xs: impl Iterator<Item = u32>) {
        self.eat(n as u64);
        let mut low = None;
        for x in xs {
            match low.take() {
                None => low = Some(x),
                Some(l) => self.eat(l as u64 | (x as u64) << 32),
            }
        }
        if let Some(l) = low {
            self.eat(l as u64);
        }
    }
}

/// Which of a user's samples a split holds (spec 1.2): the first, the next or the last
/// tenth, in time order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Part {
    /// The earliest samples.
    #[default]
    Train,
    /// The `max(1, n/10)` before the test ones.
    Valid,
    /// The last `max(1, n/10)`.
    Test,
}

/// The samples of one split: references to the events of a shared [`EventStore`].
#[derive(Clone, Debug, Default)]
pub struct Split {
    /// The store the events belong to.
    pub store: Arc<EventStore>,
    /// Which of each user's samples.
    pub part: Part,
    /// The split's events of users `0..u` number `first[u]`, `(n_users + 1)` (empty: none).
    first: Vec<u32>,
}

impl PartialEq for Split {
    fn eq(&self, other: &Split) -> bool {
        self.part == other.part
            && self.first == other.first
            && (Arc::ptr_eq(&self.store, &other.store) || self.store == other.store)
    }
}

impl Split {
    /// Part `part` of the samples of `store`.
    pub fn new(store: Arc<EventStore>, part: Part) -> Split {
        let us = &store.user_start;
        let mut first = Vec::with_capacity(us.len());
        first.push(0u32);
        for w in us.windows(2) {
            let (tr, va, te) = split_sizes((w[1] - w[0]).saturating_sub(1) as usize);
            let n = [tr, va, te][part as usize] as u32;
            first.push(first.last().expect("one") + n);
        }
        Split { store, part, first }
    }
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.n_events() * self.store.per_event()
    }
    /// No samples.
    pub fn is_empty(&self) -> bool {
        self.n_events() == 0
    }
    /// Number of the split's events.
    fn n_events(&self) -> usize {
        self.first.last().map_or(0, |&n| n as usize)
    }
    /// History length `L`.
    pub fn seq_len(&self) -> usize {
        self.store.seq_len
    }
    /// Other-feature fields `F`.
    pub fn fields(&self) -> usize {
        self.store.fields
    }
    /// The events of user `u` in this split: a run of its time-ordered events after the
    /// first (which has no history).
    fn user_events(&self, u: usize) -> std::ops::Range<usize> {
        let (a, b) = (self.store.user_start[u], self.store.user_start[u + 1]);
        let (train, valid, _) = split_sizes((b - a).saturating_sub(1) as usize);
        let skip = [0, train, train + valid][self.part as usize];
        let from = a as usize + 1 + skip;
        from..from + (self.first[u + 1] - self.first[u]) as usize
    }
    /// The split's events, in sample order.
    pub fn events(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.first.len().saturating_sub(1)).flat_map(|u| self.user_events(u))
    }
    /// `(user, event, draw)` of sample `i`.
    fn locate(&self, i: usize) -> (usize, usize, usize) {
        let per = self.store.per_event();
        let j = i / per;
        let u = self.first.partition_point(|&s| s as usize <= j) - 1;
        let e = self.user_events(u).start + (j - self.first[u] as usize);
        (u, e, i % per)
    }
    /// A 64-bit hash of the store and the split's events (computed without materialising
    /// a sample or a list of events), to tell whether two runs saw the same data.
    pub fn fingerprint(&self) -> u64 {
        let mut h = Fnv::resume(self.store.fingerprint());
        h.eat_u32_iter(self.n_events(), self.events().map(|e| e as u32));
        h.0.finish()
    }
    /// Label of every sample, in order.
    pub fn labels(&self) -> Vec<f32> {
        (0..self.len()).map(|i| self.label_user(i).0).collect()
    }
    /// Dense user of every sample, in order.
    pub fn users(&self) -> Vec<u32> {
        (0..self.len()).map(|i| self.label_user(i).1).collect()
    }
    /// The true click probability of every sample, when the log has it.
    pub fn true_prob(&self) -> Option<Vec<f32>> {
        let p = self.store.true_prob.as_ref()?;
        Some(self.events().map(|e| p[e]).collect())
    }
    /// Fraction of positive labels.
    pub fn positive_rate(&self) -> f64 {
        let n = self.len();
        (0..n).map(|i| self.label_user(i).0 as f64).sum::<f64>() / n.max(1) as f64
    }
    /// Samples `range`, materialised (tests, small uses; a whole split of a large log does
    /// not fit in memory this way).
    pub fn samples_range(&self, range: std::ops::Range<usize>) -> Samples {
        let idx: Vec<usize> = range.clone().collect();
        let mut b = Batch::default();
        self.gather_into(&mut b, &idx);
        let user = idx.iter().map(|&i| self.label_user(i).1).collect();
        let true_prob = self.store.true_prob.as_ref().map(|_| {
            idx.iter()
                .filter_map(|&i| {
                    let (_, e, d) = self.locate(i);
                    self.store.target(e, d).2
                })
                .collect()
        });
        Samples {
            seq_len: b.seq_len,
            fields: b.fields,
            hist_item: b.hist_item,
            hist_cat: b.hist_cat,
            hist_pos: b.hist_pos,
            target_item: b.target_item,
            target_cat: b.target_cat,
            other: b.other,
            label: b.label,
            user,
            true_prob,
        }
    }
    /// Every sample, materialised (see [`Split::samples_range`]).
    pub fn samples(&self) -> Samples {
        self.samples_range(0..self.len())
    }
}

impl SampleSource for Split {
    fn len(&self) -> usize {
        Split::len(self)
    }
    fn gather_into<I: SampleIndex>(&self, b: &mut Batch, idx: &[I]) {
        b.size = idx.len();
        b.seq_len = self.store.seq_len;
        b.fields = self.store.fields;
        for v in [
            &mut b.hist_item,
            &mut b.hist_cat,
            &mut b.hist_pos,
            &mut b.target_item,
            &mut b.target_cat,
            &mut b.other,
        ] {
            v.clear();
        }
        b.label.clear();
        for &i in idx {
            let (u, e, d) = self.locate(i.at());
            self.store.push(b, u, e, d);
        }
    }
    fn label_user(&self, i: usize) -> (f32, u32) {
        let (u, e, d) = self.locate(i);
        (self.store.target(e, d).1, u as u32)
    }
    fn fingerprint(&self) -> u64 {
        Split::fingerprint(self)
    }
}

impl SampleSource for Samples {
    fn len(&self) -> usize {
        self.label.len()
    }
    fn gather_into<I: SampleIndex>(&self, b: &mut Batch, idx: &[I]) {
        let (l, f) = (self.seq_len, self.fields);
        b.size = idx.len();
        b.seq_len = l;
        b.fields = f;
        let rows = |dst: &mut Vec<u32>, src: &[u32], w: usize| {
            dst.clear();
            for &i in idx {
                let i = i.at();
                dst.extend_from_slice(&src[i * w..(i + 1) * w]);
            }
        };
        rows(&mut b.hist_item, &self.hist_item, l);
        rows(&mut b.hist_cat, &self.hist_cat, l);
        rows(&mut b.hist_pos, &self.hist_pos, l);
        rows(&mut b.target_item, &self.target_item, 1);
        rows(&mut b.target_cat, &self.target_cat, 1);
        rows(&mut b.other, &self.other, f);
        b.label.clear();
        b.label.extend(idx.iter().map(|&i| self.label[i.at()]));
    }
    fn label_user(&self, i: usize) -> (f32, u32) {
        (self.label[i], self.user[i])
    }
    fn fingerprint(&self) -> u64 {
        Samples::fingerprint(self)
    }
}

/// The log's events as columns, in log order (what [`sort_events`] sorts per user).
pub(crate) struct Columns {
    pub user: Vec<u32>,
    pub item: Vec<u32>,
    pub time: Vec<i64>,
    pub label: Option<Vec<f32>>,
    pub true_prob: Option<Vec<f32>>,
}

/// A log's events sorted per user (CSR), each user's in time order.
pub struct Sorted {
    /// Events of user `u`: `user_start[u]..user_start[u + 1]`.
    pub user_start: Vec<u32>,
    /// Item of each event.
    pub item: Vec<u32>,
    /// Time of each event.
    pub time: Times,
    /// Label of each event, for explicit logs.
    pub label: Option<Vec<f32>>,
    /// True click probability of each event, when known.
    pub true_prob: Option<Vec<f32>>,
}

/// Sorts `cols` (of `n_users` users) per user, each user's events by (time, log order):
/// a stable counting sort by user, then a stable sort by time within each user.
pub(crate) fn sort_events(cols: Columns, n_users: usize) -> Sorted {
    let n = cols.item.len();
    let mut user_start = vec![0u32; n_users + 1];
    for &u in &cols.user {
        user_start[u as usize + 1] += 1;
    }
    for u in 0..n_users {
        user_start[u + 1] += user_start[u];
    }
    let mut perm = vec![0u32; n];
    {
        let mut next = user_start.clone();
        for (i, &u) in cols.user.iter().enumerate() {
            perm[next[u as usize] as usize] = i as u32;
            next[u as usize] += 1;
        }
    }
    drop(cols.user);
    {
        let time = &cols.time;
        for u in 0..n_users {
            let r = user_start[u] as usize..user_start[u + 1] as usize;
            perm[r].sort_by_key(|&i| time[i as usize]); // stable: ties keep log order
        }
    }
    let gather_u32 = |v: Vec<u32>| -> Vec<u32> { perm.iter().map(|&i| v[i as usize]).collect() };
    let gather_f32 = |v: Vec<f32>| -> Vec<f32> { perm.iter().map(|&i| v[i as usize]).collect() };
    let item = gather_u32(cols.item);
    let time = Times::collect(n, |k| cols.time[perm[k] as usize]);
    drop(cols.time);
    Sorted {
        user_start,
        item,
        time,
        label: cols.label.map(gather_f32),
        true_prob: cols.true_prob.map(gather_f32),
    }
}

/// The store of the sorted events (checked against `vocab`, which holds the context
/// fields) and its `[train, valid, test]` splits (spec 1.2).
pub(crate) fn splits_of(
    sorted: Sorted,
    vocab: &Vocab,
    user_features: &[Vec<u32>],
    model: &crate::config::ModelConfig,
    negatives: usize,
    seed: u64,
) -> [Split; 3] {
    let n_users = vocab.user_ids.len();
    let Sorted {
        user_start,
        item,
        time,
        label,
        true_prob,
    } = sorted;
    let fields = vocab.fields.len();
    let uf = fields - 2;
    let mut user_other = Vec::with_capacity(n_users * uf);
    for row in user_features {
        user_other.extend(
            row.iter()
                .zip(&vocab.fields)
                .map(|(&x, f)| f.offset as u32 + x),
        );
    }
    let store = Arc::new(EventStore {
        seq_len: model.seq_len,
        pos_buckets: model.pos_buckets,
        position: model.position,
        fields,
        user_other,
        context_offsets: [
            vocab.fields[uf].offset as u32,
            vocab.fields[uf + 1].offset as u32,
        ],
        item_cat: vocab.item_cat.clone(),
        user_start,
        item,
        time,
        label,
        true_prob,
        negatives,
        seed,
    });

    [Part::Train, Part::Valid, Part::Test].map(|part| Split::new(store.clone(), part))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_u32s_hash_as_the_slice_does() {
        for n in [0, 1, 2, 5, 8] {
            let xs: Vec<u32> = (0..n).map(|i| 7 + 1000 * i).collect();
            let (mut a, mut b) = (Fnv::new(), Fnv::new());
            a.eat_u32s(&xs);
            b.eat_u32_iter(n as usize, xs.iter().copied());
            assert_eq!(a.0.finish(), b.0.finish(), "{n} values");
        }
    }

    #[test]
    fn splits_take_each_users_runs_in_order() {
        // Users of 1, 3, 4 and 12 events: 0, 2, 3 and 11 samples (the first event has no
        // history), split 0, 2 + 0 + 0, 1 + 1 + 1 and 9 + 1 + 1.
        let store = Arc::new(EventStore {
            user_start: vec![0, 1, 4, 8, 20],
            item: vec![1; 20],
            time: Times::collect(20, |e| e as i64),
            item_cat: vec![0, 0],
            ..EventStore::default()
        });
        let events = |part| {
            let s = Split::new(store.clone(), part);
            let located: Vec<usize> = (0..s.len()).map(|i| s.locate(i).1).collect();
            let listed: Vec<usize> = s.events().collect();
            assert_eq!(located, listed, "{part:?}");
            let users: Vec<usize> = (0..s.len()).map(|i| s.locate(i).0).collect();
            (listed, users)
        };
        let (train, users) = events(Part::Train);
        assert_eq!(train, [2, 3, 5, 9, 10, 11, 12, 13, 14, 15, 16, 17]);
        assert_eq!(users, [1, 1, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3]);
        assert_eq!(events(Part::Valid), (vec![6, 18], vec![2, 3]));
        assert_eq!(events(Part::Test), (vec![7, 19], vec![2, 3]));
    }
}
