//! Data-parallel training across processes, without MPI: the collective operations the
//! training loop and a backend need ([`Collective`]), the split of a global batch into
//! contiguous shards ([`shard_range`]), and the gradient exchange of one step
//! ([`GradientExchange`]). `bst-train` implements [`Collective`] on MPI (feature `mpi`);
//! a single process needs none of this ([`Single`] is the group of one).
//!
//! Semantics: every step, the global batch (the single process's batch, in the same
//! shuffled order) is split into `N` contiguous shards, rank `r` taking the `r`-th. Each
//! rank runs forward and backward on its shard with the dropout masks of the global rows
//! and the loss gradient of the global mean ([`crate::model::Shard`]), so the ranks'
//! gradients sum to the single process's. The sum is exchanged so that every rank takes
//! the same update:
//!
//! - the dense part (blocks, MLP) by an allreduce (sum);
//! - each embedding table either by the rows it touched, when that is smaller (an
//!   allgather of every rank's row ids and their gradient rows, added in rank order), or
//!   by the dense allreduce of the whole table ([`ExchangePolicy`]).
//!
//! With sparse updates (`train.sparse_embeddings`) the rows an update touches are the
//! union of every rank's, as a single process's batch touches them; the row ids are then
//! always gathered.
//!
//! The CPU backend overlaps the dense part with its backward
//! ([`GradientExchange::overlapped`]): the MLP's gradients are final before the blocks'
//! backward runs and each block's before the one below it, so each of those parts starts
//! its sum ([`Collective::start_sum_f32`]) as soon as the backward has finished it; the
//! tables follow the backward, and the update waits for everything.

use crate::model::{GradSink, KeepGrads};
use std::ops::Range;
use std::time::{Duration, Instant};

/// The collective operations of a group of processes (ranks `0..size`) that train one
/// model. Every rank calls the same operations in the same order with the same sizes.
/// The results are identical on every rank.
pub trait Collective: Send + Sync {
    /// This process's rank.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn size(&self) -> usize;
    /// Element-wise sum over the ranks, in place.
    fn sum_f32(&self, buf: &mut [f32]);
    /// Element-wise sum over the ranks, in place.
    fn sum_f64(&self, buf: &mut [f64]);
    /// Every rank's `local` concatenated in rank order into `out`; `counts[r]` is rank
    /// `r`'s length, known to every rank.
    fn gather_u32(&self, local: &[u32], counts: &[usize], out: &mut Vec<u32>);
    /// [`Collective::gather_u32`] for `f32`.
    fn gather_f32(&self, local: &[f32], counts: &[usize], out: &mut Vec<f32>);

    /// Starts the element-wise sum over the ranks of the `len` values at `buf`, into
    /// them, and may return before it is done (MPI's `Iallreduce`), so that the caller
    /// computes meanwhile. It counts as an operation of the group at the call, in the
    /// order of the others. [`Collective::wait_sums`] waits for every started sum;
    /// [`Collective::progress`] lets them advance meanwhile. The default sums at once.
    ///
    /// # Safety
    /// The `len` values at `buf` must be valid for reads and writes, and nothing else may
    /// read or write them, until `wait_sums` returns.
    unsafe fn start_sum_f32(&self, buf: *mut f32, len: usize) {
        // SAFETY: the caller lends the values until `wait_sums`; this sums them now.
        self.sum_f32(unsafe { std::slice::from_raw_parts_mut(buf, len) });
    }
    /// Lets the started sums advance (MPI moves a nonblocking collective only inside its
    /// calls, unless it has a progress thread).
    fn progress(&self) {}
    /// Waits until every started sum is done.
    fn wait_sums(&self) {}

    /// Whether `flag` is set on any rank (the stop request of a Ctrl-C).
    fn any(&self, flag: bool) -> bool {
        let mut v = [flag as u8 as f64];
        self.sum_f64(&mut v);
        v[0] > 0.0
    }
}

/// The group of one process: every operation is the identity.
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn sum_f32(&self, _: &mut [f32]) {}
    fn sum_f64(&self, _: &mut [f64]) {}
    fn gather_u32(&self, local: &[u32], _: &[usize], out: &mut Vec<u32>) {
        out.clear();
        out.extend_from_slice(local);
    }
    fn gather_f32(&self, local: &[f32], _: &[usize], out: &mut Vec<f32>) {
        out.clear();
        out.extend_from_slice(local);
    }
}

/// Rank `rank`'s contiguous part of `0..len` split into `ranks` parts: the first
/// `len % ranks` parts have one more element than the others.
pub fn shard_range(len: usize, rank: usize, ranks: usize) -> Range<usize> {
    let (base, extra) = (len / ranks, len % ranks);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// How the embedding tables' gradients are exchanged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExchangePolicy {
    /// Per table, whichever moves fewer bytes: the touched rows (ids and gradients of
    /// every rank) or the whole table.
    #[default]
    Auto,
    /// Always the whole tables (allreduce).
    Dense,
    /// Always the touched rows (allgather).
    Sparse,
}

/// What the exchange of one step, or of many, moved.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ExchangeStats {
    /// Steps counted.
    pub steps: usize,
    /// Payload bytes of the collectives, as this rank sees them: an allreduce's buffer,
    /// an allgather's gathered result.
    pub bytes: u64,
    /// Of those, the allreduce's.
    pub allreduce_bytes: u64,
    /// Of those, the allgathers' (row counts, row ids and row gradients).
    pub allgather_bytes: u64,
    /// Wall seconds in the exchange (waiting for the slowest rank included).
    pub seconds: f64,
    /// Tables exchanged by their touched rows (summed over steps).
    pub sparse_tables: usize,
    /// Tables exchanged whole (summed over steps).
    pub dense_tables: usize,
}

impl ExchangeStats {
    fn add(&mut self, o: &ExchangeStats) {
        self.steps += o.steps;
        self.bytes += o.bytes;
        self.allreduce_bytes += o.allreduce_bytes;
        self.allgather_bytes += o.allgather_bytes;
        self.seconds += o.seconds;
        self.sparse_tables += o.sparse_tables;
        self.dense_tables += o.dense_tables;
    }
}

/// The gradient exchange of a data-parallel backend, with its buffers (reused across
/// steps: a step allocates nothing once they have grown) and what it moved.
#[derive(Default)]
pub struct GradientExchange {
    /// How the tables go.
    pub policy: ExchangePolicy,
    /// [`GradientExchange::overlapped`] sums the dense part after the backward instead of
    /// during it (to measure what the overlap gains; the same sums either way).
    pub no_overlap: bool,
    /// The last step's exchange.
    pub last: ExchangeStats,
    /// Every step's since the last [`GradientExchange::take_total`].
    total: ExchangeStats,
    /// This rank's row count per table (T).
    local: Vec<u32>,
    /// Every rank's row count per table (N, T).
    counts: Vec<u32>,
    /// Elements each rank contributes to a gather (N).
    rank_counts: Vec<usize>,
    /// Per table: whether it goes by its touched rows (T).
    sparse: Vec<bool>,
    /// The allreduced ranges after the backward.
    ranges: Vec<Range<usize>>,
    ids: Vec<u32>,
    all_ids: Vec<u32>,
    rows: Vec<f32>,
    all_rows: Vec<f32>,
}

impl GradientExchange {
    /// The totals since the last call, reset.
    pub fn take_total(&mut self) -> ExchangeStats {
        std::mem::take(&mut self.total)
    }

    /// Sums `grads` (an arena: the embedding `tables`, `(range, width)`, and `dense`)
    /// over the ranks of `group`. `touched[t]` holds the rows of table `t` this rank's
    /// gradient may be non-zero in (ascending, distinct); with `union` it is replaced by
    /// the union over the ranks (ascending, distinct), the rows a sparse update takes.
    /// Rows of a table outside every rank's `touched` must be zero on every rank.
    pub fn exchange(
        &mut self,
        group: &dyn Collective,
        grads: &mut [f32],
        dense: Range<usize>,
        tables: &[(Range<usize>, usize)],
        touched: &mut [Vec<u32>],
        union: bool,
    ) {
        let start = Instant::now();
        let mut st = ExchangeStats::default();
        self.tables(group, grads, Some(dense), tables, touched, union, &mut st);
        self.record(st, start.elapsed());
    }

    /// [`GradientExchange::exchange`] overlapped with the backward: `backward` gets the
    /// whole arena and a [`GradSink`], hands it the parts after the tables as their
    /// gradients become final (each starts its sum there) and returns the rest, the
    /// tables ([`crate::model::Model::backward`]). Then the tables are exchanged,
    /// and the call returns once every sum is done. The same sums as `exchange`, in the
    /// same order on every rank. The time counted is what the exchange adds to the step:
    /// starting the sums, letting them advance between layers, the tables, the wait.
    pub fn overlapped(
        &mut self,
        group: &dyn Collective,
        grads: &mut [f32],
        tables: &[(Range<usize>, usize)],
        touched: &mut [Vec<u32>],
        union: bool,
        backward: impl for<'a> FnOnce(&'a mut [f32], &mut dyn GradSink<'a>) -> &'a mut [f32],
    ) {
        if self.no_overlap {
            let len = grads.len();
            let tables_end = backward(grads, &mut KeepGrads).len();
            return self.exchange(group, grads, tables_end..len, tables, touched, union);
        }
        // From the first started sum until `wait_sums`, the group writes into `grads`.
        let in_flight = InFlight;
        let mut sink = StartSums {
            group,
            bytes: 0,
            spent: Duration::ZERO,
        };
        let rest = backward(grads, &mut sink);
        let start = Instant::now();
        let mut st = ExchangeStats {
            allreduce_bytes: sink.bytes,
            ..ExchangeStats::default()
        };
        self.tables(group, rest, None, tables, touched, union, &mut st);
        group.wait_sums();
        std::mem::forget(in_flight);
        self.record(st, sink.spent + start.elapsed());
    }

    /// The tables' exchange (and the dense part's, when given) on `grads`, an arena from
    /// element 0 that holds the tables: [`GradientExchange::exchange`] without the timing.
    fn tables(
        &mut self,
        group: &dyn Collective,
        grads: &mut [f32],
        dense: Option<Range<usize>>,
        tables: &[(Range<usize>, usize)],
        touched: &mut [Vec<u32>],
        union: bool,
        st: &mut ExchangeStats,
    ) {
        let (n, nt) = (group.size(), tables.len());
        // 1. Every rank's row count per table.
        self.local.clear();
        self.local.extend(touched.iter().map(|t| t.len() as u32));
        self.rank_counts.clear();
        self.rank_counts.resize(n, nt);
        group.gather_u32(&self.local, &self.rank_counts, &mut self.counts);
        st.allgather_bytes += 4 * (n * nt) as u64;
        let counts = &self.counts;
        let count = |r: usize, t: usize| counts[r * nt + t] as usize;
        // 2. Per table: the touched rows (ids + gradient rows of every rank) or the table.
        self.sparse.clear();
        self.sparse
            .extend(tables.iter().enumerate().map(|(t, (range, w))| {
                let rows: usize = (0..n).map(|r| count(r, t)).sum();
                match self.policy {
                    ExchangePolicy::Dense => false,
                    ExchangePolicy::Sparse => true,
                    ExchangePolicy::Auto => rows * (w + 1) < range.len(),
                }
            }));
        let sparse = &self.sparse;
        st.sparse_tables = sparse.iter().filter(|&&s| s).count();
        st.dense_tables = nt - st.sparse_tables;
        // 3. The row ids, when a sparse table or the union needs them.
        if union || st.sparse_tables > 0 {
            self.ids.clear();
            for t in touched.iter() {
                self.ids.extend_from_slice(t);
            }
            self.rank_counts.clear();
            self.rank_counts
                .extend((0..n).map(|r| (0..nt).map(|t| count(r, t)).sum::<usize>()));
            group.gather_u32(&self.ids, &self.rank_counts, &mut self.all_ids);
            st.allgather_bytes += 4 * self.all_ids.len() as u64;
        }
        // 4. The sparse tables' gradient rows, added in rank order into zeroed rows.
        if st.sparse_tables > 0 {
            self.rows.clear();
            for (t, rows) in touched.iter().enumerate().filter(|(t, _)| sparse[*t]) {
                let (range, w) = &tables[t];
                let table = &grads[range.clone()];
                for &row in rows {
                    self.rows
                        .extend_from_slice(&table[row as usize * w..][..*w]);
                }
            }
            self.rank_counts.clear();
            self.rank_counts.extend((0..n).map(|r| {
                (0..nt)
                    .filter(|&t| sparse[t])
                    .map(|t| count(r, t) * tables[t].1)
                    .sum::<usize>()
            }));
            group.gather_f32(&self.rows, &self.rank_counts, &mut self.all_rows);
            st.allgather_bytes += 4 * self.all_rows.len() as u64;
            for (t, rows) in touched.iter().enumerate().filter(|(t, _)| sparse[*t]) {
                let (range, w) = &tables[t];
                let table = &mut grads[range.clone()];
                for &row in rows {
                    table[row as usize * w..][..*w].fill(0.0);
                }
            }
            let (mut id_at, mut row_at) = (0, 0);
            for r in 0..n {
                for t in 0..nt {
                    let (range, w) = &tables[t];
                    let ids = &self.all_ids[id_at..id_at + count(r, t)];
                    id_at += ids.len();
                    if !sparse[t] {
                        continue;
                    }
                    let table = &mut grads[range.clone()];
                    for &row in ids {
                        let src = &self.all_rows[row_at..row_at + w];
                        row_at += w;
                        for (g, s) in table[row as usize * w..][..*w].iter_mut().zip(src) {
                            *g += s;
                        }
                    }
                }
            }
        }
        // 5. The dense tables and the dense part, if given: one allreduce per contiguous
        // range.
        self.ranges.clear();
        let dense_tables = tables.iter().zip(sparse).filter(|(_, s)| !**s);
        for r in dense_tables.map(|(t, _)| t.0.clone()).chain(dense) {
            match self.ranges.last_mut() {
                Some(last) if last.end == r.start => last.end = r.end,
                _ => self.ranges.push(r),
            }
        }
        for r in &self.ranges {
            st.allreduce_bytes += 4 * r.len() as u64;
            group.sum_f32(&mut grads[r.clone()]);
        }
        // 6. The union of the touched rows.
        if union {
            touched.iter_mut().for_each(Vec::clear);
            let mut id_at = 0;
            for r in 0..n {
                for (t, rows) in touched.iter_mut().enumerate() {
                    rows.extend_from_slice(&self.all_ids[id_at..id_at + count(r, t)]);
                    id_at += count(r, t);
                }
            }
            for rows in touched.iter_mut() {
                rows.sort_unstable();
                rows.dedup();
            }
        }
    }

    /// Adds one step's exchange, which took `spent`, to the totals.
    fn record(&mut self, mut st: ExchangeStats, spent: Duration) {
        st.steps = 1;
        st.bytes = st.allreduce_bytes + st.allgather_bytes;
        st.seconds = spent.as_secs_f64();
        self.total.add(&st);
        self.last = st;
    }
}

/// The [`GradSink`] of [`GradientExchange::overlapped`]: starts the sum of each part the
/// backward hands over, and lets the sums advance between layers.
struct StartSums<'c> {
    group: &'c dyn Collective,
    /// Elements summed, in bytes.
    bytes: u64,
    /// Time spent here.
    spent: Duration,
}

impl<'g> GradSink<'g> for StartSums<'_> {
    fn take(&mut self, _: usize, grads: &'g mut [f32]) {
        let t = Instant::now();
        self.bytes += 4 * grads.len() as u64;
        // SAFETY: `grads` is borrowed from the arena of `overlapped` and dropped here, so
        // nothing reads or writes these values until `overlapped` has waited for the
        // sums (or aborted, on a panic: `InFlight`).
        unsafe { self.group.start_sum_f32(grads.as_mut_ptr(), grads.len()) };
        self.spent += t.elapsed();
    }

    fn between(&mut self) {
        let t = Instant::now();
        self.group.progress();
        self.spent += t.elapsed();
    }
}

/// Alive while sums write into borrowed memory: a panic that unwinds past it aborts the
/// process rather than free or reuse the memory under the sums (the launcher then stops
/// the other ranks).
struct InFlight;

impl Drop for InFlight {
    fn drop(&mut self) {
        eprintln!("a panic during the gradient exchange: aborting");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_contiguous_and_cover_the_batch() {
        for (len, n) in [(10, 3), (2, 4), (0, 2), (7, 1), (4096, 8)] {
            let mut next = 0;
            for r in 0..n {
                let s = shard_range(len, r, n);
                assert_eq!(s.start, next, "len {len}, {n} ranks, rank {r}");
                assert!(s.len() == len / n || s.len() == len / n + 1);
                next = s.end;
            }
            assert_eq!(next, len);
        }
    }

    #[test]
    fn a_group_of_one_exchanges_nothing_and_keeps_the_gradients() {
        let tables = [(0..8, 2), (8..14, 3)];
        let mut grads: Vec<f32> = (0..20).map(|i| i as f32).collect();
        // Only touched rows may be non-zero.
        grads[2..8].fill(0.0);
        grads[8..11].fill(0.0);
        let want = grads.clone();
        let mut touched = vec![vec![0], vec![1]];
        for policy in [ExchangePolicy::Sparse, ExchangePolicy::Dense] {
            let mut ex = GradientExchange {
                policy,
                ..Default::default()
            };
            ex.exchange(&Single, &mut grads, 14..20, &tables, &mut touched, true);
            assert_eq!(grads, want, "{policy:?}");
            assert_eq!(touched, vec![vec![0], vec![1]]);
            let s = ex.last;
            let dense = policy == ExchangePolicy::Dense;
            assert_eq!(s.sparse_tables, if dense { 0 } else { 2 });
            assert_eq!(s.allreduce_bytes, 4 * if dense { 20 } else { 6 });
        }
    }
}
