//! Scoring a split on one rank of a group (`predict_all_in`) asks `stop` before each
//! batch, and as many times on every rank (as often as the rank with the most batches
//! scores), so a stop the ranks agree on (`Collective::any`, the Ctrl-C of a
//! data-parallel run) ends them all at the same call, with no rank left waiting in a
//! collective the others never reach.

use bst_core::backend::CpuBackend;
use bst_core::collective::{Collective, shard_range};
use bst_core::config::Config;
use bst_core::data::{self, DataSource};
use bst_core::train::{predict_all, predict_all_in};

/// Rank `rank` of `size`, alone: a gather puts this rank's values in their place among
/// zeros for the others'.
struct Rank {
    rank: usize,
    size: usize,
}

impl Rank {
    fn place<T: Copy + Default>(&self, local: &[T], counts: &[usize], out: &mut Vec<T>) {
        out.clear();
        out.resize(counts.iter().sum(), T::default());
        let at: usize = counts[..self.rank].iter().sum();
        out[at..at + local.len()].copy_from_slice(local);
    }
}

impl Collective for Rank {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn sum_f32(&self, _: &mut [f32]) {}
    fn sum_f64(&self, _: &mut [f64]) {}
    fn gather_u32(&self, local: &[u32], counts: &[usize], out: &mut Vec<u32>) {
        self.place(local, counts, out);
    }
    fn gather_f32(&self, local: &[f32], counts: &[usize], out: &mut Vec<f32>) {
        self.place(local, counts, out);
    }
}

#[test]
fn every_rank_asks_to_stop_as_often_and_stops_at_the_same_call() {
    let mut cfg = Config::synthetic(60);
    cfg.model.mlp = vec![16];
    let ds = data::load(&DataSource::Synthetic, &cfg).expect("synthetic data");
    let s = &ds.valid;
    // 10 batches over 3 ranks: 4, 3 and 3 of them (the last one short).
    let eval_batch = s.len().div_ceil(10);
    let batches = s.len().div_ceil(eval_batch);
    assert_eq!(batches, 10, "{} samples", s.len());
    let most = (0..3)
        .map(|r| shard_range(batches, r, 3).len())
        .max()
        .unwrap();
    assert_eq!(most, 4);
    let mut backend = CpuBackend::new(&cfg, ds.vocab.sizes());
    let whole = predict_all(&mut backend, s, eval_batch).unwrap();
    for rank in 0..3 {
        let g = Rank { rank, size: 3 };
        let mut asked = 0;
        let mut never = || {
            asked += 1;
            false
        };
        let probs = predict_all_in(
            &mut backend,
            s,
            eval_batch,
            Some(&g),
            &mut |_, _| {},
            &mut never,
        )
        .unwrap()
        .expect("not stopped");
        assert_eq!(asked, most, "rank {rank}: stop asked {asked} times");
        // This rank's part, as one process scores it.
        let rows = shard_range(batches, rank, 3);
        let mine = rows.start * eval_batch..(rows.end * eval_batch).min(s.len());
        assert!(probs[mine.clone()] == whole[mine], "rank {rank}");
        // Asked to stop at the third call, or at the fourth, which ranks of 3 batches make
        // after their last: every rank stops at that call, all its batches before it scored.
        for stop_at in [3, 4] {
            let (mut asked, mut scored) = (0, 0);
            let mut stop = || {
                asked += 1;
                asked == stop_at
            };
            let mut progress = |_, _| scored += 1;
            let got = predict_all_in(
                &mut backend,
                s,
                eval_batch,
                Some(&g),
                &mut progress,
                &mut stop,
            );
            assert!(
                got.unwrap().is_none(),
                "rank {rank}: not stopped at call {stop_at}"
            );
            assert_eq!(asked, stop_at, "rank {rank}");
            assert_eq!(scored, (stop_at - 1).min(rows.len()), "rank {rank}");
        }
    }
}
