//! What the benchmarks share (the criterion benches in `benches/` and `bst-train bench`):
//! the kernel shapes of a model, the scoring batch of one user, and what wgpu's allocator
//! holds (to cross-check the GPU backend's own accounting of its buffers,
//! `GpuBackend::device_memory`), and [`workload`]: every kernel family at a model's shapes,
//! with its byte and flop counts.

use crate::workload::Shapes;
use bst_core::batch::Batch;
use bst_core::data::{Samples, Vocab};
use bst_core::model::Model;
use bst_kernels::gpu::{GpuContext, GpuOptions, wgpu};
use std::sync::Arc;

pub mod workload;

/// The criterion benches' training batch: `BST_BENCH_BATCH`, else 256.
pub fn bench_batch() -> usize {
    std::env::var("BST_BENCH_BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(256)
}

/// The criterion benches' device: the best adapter, a software one allowed (lavapipe),
/// reported on standard error. Panics without one.
pub fn bench_context() -> Arc<GpuContext> {
    let ctx = GpuContext::new(&GpuOptions {
        allow_software: true,
        ..Default::default()
    })
    .expect("a GPU adapter");
    eprintln!("adapter: {}", ctx.describe());
    Arc::new(ctx)
}

/// Candidates scored for one user in the scoring benchmarks.
pub const SCORING_CANDIDATES: usize = 1000;

/// The shapes of `model`'s layers for batches of `batch` samples (one block's worth of
/// the block's ops).
pub fn kernel_shapes(model: &Model, batch: usize) -> Shapes {
    let dm = &model.dims;
    let pi = &model.layout.index;
    let (d_item, d_cat, d_pos) = dm.widths;
    Shapes {
        batch,
        seq_len: dm.l,
        widths: dm.widths,
        heads: dm.h,
        d_ff: dm.dff,
        fields: dm.fields,
        d_other: dm.d_o,
        pool: dm.pool,
        mlp: dm.mlp.clone(),
        vocab: [
            pi.emb_item.len() / d_item,
            pi.emb_cat.len() / d_cat,
            pi.emb_pos.len() / d_pos,
            pi.emb_other.len() / dm.d_o,
        ],
        params: model.layout.total,
        alpha: dm.alpha,
        dropout: dm.dropout,
    }
}

/// `n` samples of one user at one time, differing only in the target item: the history
/// and other features of the first sample of `s` with the longest history, and targets
/// `1, 2, ...` cycling over the item vocabulary (each with its category), as `rank`
/// scores candidates. Labels are 0. Panics if `s` is empty.
pub fn scoring_batch(s: &Samples, vocab: &Vocab, n: usize) -> Batch {
    assert!(
        !s.is_empty(),
        "scoring_batch: no samples to take a user from"
    );
    let l = s.seq_len;
    let history = |i: usize| {
        s.hist_item[i * l..(i + 1) * l]
            .iter()
            .filter(|&&x| x != 0)
            .count()
    };
    let user = (0..s.len())
        .max_by_key(|&i| (history(i), std::cmp::Reverse(i)))
        .unwrap_or(0);
    let mut batch = Batch::from_range(s, user..user + 1);
    let items = vocab.n_items().max(2) - 1;
    batch.size = n;
    for field in [
        &mut batch.hist_item,
        &mut batch.hist_cat,
        &mut batch.hist_pos,
        &mut batch.other,
    ] {
        let row = field.clone();
        *field = row.repeat(n);
    }
    batch.target_item = (0..n).map(|k| 1 + (k % items) as u32).collect();
    batch.target_cat = batch
        .target_item
        .iter()
        .map(|&i| vocab.item_cat.get(i as usize).copied().unwrap_or(0))
        .collect();
    batch.label = vec![0.0; n];
    batch
}

/// The bytes wgpu's memory allocator holds on `ctx`'s device (Vulkan, DX12 and Metal
/// report them; `None` elsewhere), after the queue's pending writes, whose staging buffers
/// hold a copy of what was written, have been submitted and freed. The growth across
/// `GpuBackend::init` cross-checks `GpuBackend::device_memory`.
pub fn allocator_bytes(ctx: &GpuContext) -> Option<u64> {
    ctx.queue.submit([]);
    ctx.device.poll(wgpu::PollType::wait_indefinitely()).ok()?;
    Some(
        ctx.device
            .generate_allocator_report()?
            .total_allocated_bytes,
    )
}
