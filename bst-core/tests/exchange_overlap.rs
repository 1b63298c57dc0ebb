//! The CPU backend's data-parallel step sums the blocks' and the MLP's gradients while
//! its backward runs (`GradientExchange::overlapped`). Against the same step with every
//! sum after the backward (`no_overlap`), on a group whose started sums only land when
//! it waits: the same parameters bit for bit (each part summed once, none read before
//! the wait), for dense and sparse updates and every table exchange, an empty shard
//! included; and the parts start in the order the backward finishes them (the MLP, then
//! the blocks from the last), before the tables, with the group let to advance between.

use bst_core::backend::{Backend, CpuBackend};
use bst_core::batch::Batch;
use bst_core::collective::{Collective, ExchangePolicy, Single};
use bst_core::config::Config;
use bst_core::data::{self, DataSource};
use bst_core::model::Shard;
use bst_core::train::epoch_order;
use std::sync::{Arc, Mutex};

/// What the backend asked of the group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    /// A started sum of this many values.
    Start(usize),
    Progress,
    /// A blocking sum.
    Sum,
    Wait,
}

/// One rank whose sums double (two ranks with equal gradients). A started sum doubles
/// its values only in `wait_sums`: a step that read them before would differ.
#[derive(Default)]
struct LateDoubling {
    log: Mutex<Vec<Op>>,
    /// The started sums' values (address, length), doubled at the wait.
    started: Mutex<Vec<(usize, usize)>>,
}

impl Collective for LateDoubling {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn sum_f32(&self, buf: &mut [f32]) {
        self.log.lock().unwrap().push(Op::Sum);
        buf.iter_mut().for_each(|x| *x *= 2.0);
    }
    fn sum_f64(&self, _: &mut [f64]) {}
    fn gather_u32(&self, local: &[u32], counts: &[usize], out: &mut Vec<u32>) {
        Single.gather_u32(local, counts, out);
    }
    fn gather_f32(&self, local: &[f32], counts: &[usize], out: &mut Vec<f32>) {
        Single.gather_f32(local, counts, out);
    }
    unsafe fn start_sum_f32(&self, buf: *mut f32, len: usize) {
        self.log.lock().unwrap().push(Op::Start(len));
        self.started.lock().unwrap().push((buf as usize, len));
    }
    fn progress(&self) {
        self.log.lock().unwrap().push(Op::Progress);
    }
    fn wait_sums(&self) {
        self.log.lock().unwrap().push(Op::Wait);
        for (at, len) in self.started.lock().unwrap().drain(..) {
            // SAFETY: `start_sum_f32`'s caller lends these values until this returns.
            let buf = unsafe { std::slice::from_raw_parts_mut(at as *mut f32, len) };
            buf.iter_mut().for_each(|x| *x *= 2.0);
        }
    }
}

#[test]
fn summing_during_the_backward_gives_the_sums_after_it() {
    let mut cfg = Config::default();
    cfg.data.synthetic_users = 120;
    cfg.train.batch = 24;
    cfg.model.seq_len = 10;
    cfg.model.blocks = 2;
    cfg.model.mlp = vec![32, 16];
    let ds = data::load(&DataSource::Synthetic, &cfg).expect("synthetic data");
    let order = epoch_order(ds.train.len(), cfg.train.seed, 1);
    let batches: Vec<&[u32]> = order.chunks(cfg.train.batch).take(3).collect();
    for sparse in [false, true] {
        cfg.train.sparse_embeddings = sparse;
        for policy in [
            ExchangePolicy::Sparse,
            ExchangePolicy::Dense,
            ExchangePolicy::Auto,
        ] {
            let what = format!("sparse updates {sparse}, exchange {policy:?}");
            let run = |no_overlap: bool| {
                let group = Arc::new(LateDoubling::default());
                let mut backend = CpuBackend::new(&cfg, ds.vocab.sizes());
                backend.exchange.policy = policy;
                backend.exchange.no_overlap = no_overlap;
                backend.join_group(group.clone()).unwrap();
                let mut batch = Batch::default();
                // The last step: an empty shard (no forward, zero gradients).
                for idx in batches.iter().copied().chain([&[][..]]) {
                    batch.gather(&ds.train, idx);
                    let shard = Shard {
                        row0: 0,
                        global: idx.len().max(1),
                    };
                    backend.train_step_shard(&batch, None, shard).unwrap();
                }
                let log = std::mem::take(&mut *group.log.lock().unwrap());
                (backend, log)
            };
            let (overlapped, log) = run(false);
            let (after, log_after) = run(true);
            assert!(
                overlapped.params == after.params,
                "{what}: parameters differ"
            );
            assert!(
                !log_after.iter().any(|op| matches!(op, Op::Start(_))),
                "{what}"
            );
            // Per step: the MLP's part, then each block's from the last, then the tables
            // and the wait.
            let layout = &overlapped.model.layout;
            let pi = &layout.index;
            let mlp = pi.mlp[0].0.start;
            let parts = [
                layout.total - mlp,
                mlp - pi.blocks[1].qkv_w.start,
                pi.blocks[1].qkv_w.start - pi.blocks[0].qkv_w.start,
            ];
            let steps: Vec<&[Op]> = log.split_inclusive(|op| *op == Op::Wait).collect();
            assert_eq!(steps.len(), batches.len() + 1, "{what}: {log:?}");
            for (s, ops) in steps.iter().enumerate() {
                let starts: Vec<usize> = ops
                    .iter()
                    .filter_map(|op| match op {
                        Op::Start(n) => Some(*n),
                        _ => None,
                    })
                    .collect();
                assert_eq!(starts, parts, "{what}, step {s}: {ops:?}");
                let last_start = ops.iter().rposition(|op| matches!(op, Op::Start(_)));
                let first_sum = ops.iter().position(|op| *op == Op::Sum);
                if let (Some(a), Some(b)) = (last_start, first_sum) {
                    assert!(
                        a < b,
                        "{what}, step {s}: a table summed before the backward's end"
                    );
                }
                if s < batches.len() {
                    let first = ops.iter().position(|op| matches!(op, Op::Start(_)));
                    let between = &ops[first.unwrap()..last_start.unwrap()];
                    assert!(
                        between.iter().filter(|op| **op == Op::Progress).count() >= 4,
                        "{what}, step {s}: the group is let to advance between layers: {ops:?}"
                    );
                }
            }
        }
    }
}
