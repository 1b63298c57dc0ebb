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

use std::ops::Range;
use std::time::Instant;

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
/// steps) and what it moved.
#[derive(Default)]
pub struct GradientExchange {
    /// How the tables go.
    pub policy: ExchangePolicy,
    /// The last step's exchange.
    pub last: ExchangeStats,
    /// Every step's since the last [`GradientExchange::take_total`].
    total: ExchangeStats,
    counts: Vec<u32>,
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
        let (n, nt) = (group.size(), tables.len());
        let mut st = ExchangeStats {
            steps: 1,
            ..ExchangeStats::default()
        };
        // 1. Every rank's row count per table.
        let local: Vec<u32> = touched.iter().map(|t| t.len() as u32).collect();
        group.gather_u32(&local, &vec![nt; n], &mut self.counts);
        st.allgather_bytes += 4 * (n * nt) as u64;
        let count = |r: usize, t: usize| self.counts[r * nt + t] as usize;
        // 2. Per table: the touched rows (ids + gradient rows of every rank) or the table.
        let sparse: Vec<bool> = (0..nt)
            .map(|t| {
                let (range, w) = &tables[t];
                let rows: usize = (0..n).map(|r| count(r, t)).sum();
                match self.policy {
                    ExchangePolicy::Dense => false,
                    ExchangePolicy::Sparse => true,
                    ExchangePolicy::Auto => rows * (w + 1) < range.len(),
                }
            })
            .collect();
        st.sparse_tables = sparse.iter().filter(|&&s| s).count();
        st.dense_tables = nt - st.sparse_tables;
        // 3. The row ids, when a sparse table or the union needs them.
        if union || st.sparse_tables > 0 {
            self.ids.clear();
            for t in touched.iter() {
                self.ids.extend_from_slice(t);
            }
            let counts: Vec<usize> = (0..n).map(|r| (0..nt).map(|t| count(r, t)).sum()).collect();
            group.gather_u32(&self.ids, &counts, &mut self.all_ids);
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
            let counts: Vec<usize> = (0..n)
                .map(|r| {
                    (0..nt)
                        .filter(|&t| sparse[t])
                        .map(|t| count(r, t) * tables[t].1)
                        .sum()
                })
                .collect();
            group.gather_f32(&self.rows, &counts, &mut self.all_rows);
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
        // 5. The dense part and the dense tables: one allreduce per contiguous range.
        let mut ranges: Vec<Range<usize>> = Vec::new();
        let dense_tables = tables.iter().zip(&sparse).filter(|(_, s)| !**s);
        for r in dense_tables.map(|(t, _)| t.0.clone()).chain([dense]) {
            match ranges.last_mut() {
                Some(last) if last.end == r.start => last.end = r.end,
                _ => ranges.push(r),
            }
        }
        for r in ranges {
            st.allreduce_bytes += 4 * r.len() as u64;
            group.sum_f32(&mut grads[r]);
        }
        // 6. The union of the touched rows.
        if union {
            let mut id_at = 0;
            let mut all: Vec<Vec<u32>> = vec![Vec::new(); nt];
            for r in 0..n {
                for (t, all) in all.iter_mut().enumerate() {
                    all.extend_from_slice(&self.all_ids[id_at..id_at + count(r, t)]);
                    id_at += count(r, t);
                }
            }
            for (t, mut rows) in touched.iter_mut().zip(all) {
                rows.sort_unstable();
                rows.dedup();
                *t = rows;
            }
        }
        st.bytes = st.allreduce_bytes + st.allgather_bytes;
        st.seconds = start.elapsed().as_secs_f64();
        self.total.add(&st);
        self.last = st;
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
