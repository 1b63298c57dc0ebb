//! What the benchmarks share (the criterion benches in `benches/` and `bst-train bench`):
//! the kernel shapes of a model, the scoring batch of one user, and the GPU backend's
//! device memory by our own accounting.

use bst_core::batch::Batch;
use bst_core::data::{Samples, Vocab};
use bst_core::gpu_backend::embedding_dims;
use bst_core::model::Model;
use bst_kernels::gpu::embedding::EmbeddingSegments;
use bst_kernels::gpu::layernorm::CHUNK_ROWS;
use bst_kernels::gpu::matmul::{Activation, MatmulDims, SPLIT_SCRATCH_BYTES, splits_gradients};
use bst_kernels::gpu::{GpuContext, GpuOptions, wgpu};
use bst_kernels::workload::Shapes;
use serde::Serialize;
use std::sync::Arc;

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

/// Bytes of the storage buffers `bst_core::gpu_backend::GpuBackend` allocates for
/// `model` with buffers for `cap = max(train.batch, train.eval_batch)` samples, by the
/// sizes in `gpu_backend/buffers.rs` and the LayerNorm bindings' scratch. Left out: the
/// kernels' uniform buffers (256 bytes to 2 KiB per binding), their 16-byte dummies and
/// the transient readback buffers, together well under 1 MiB at the default model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DeviceMemory {
    /// Parameters, gradients, and Adam's two moments (Adagrad's one sum).
    pub arenas: u64,
    /// A batch's ids, labels, valid mask and embedding segments.
    pub inputs: u64,
    /// Forward activations (every block's, the MLP's, the loss outputs).
    pub activations: u64,
    /// Activation gradients that do not live in dead activations (dx, dz, dlogit, and
    /// dqkv when d_ff < 3d).
    pub gradients: u64,
    /// The LayerNorm backward's per-chunk partial sums (two LayerNorms per block).
    pub layernorm_scratch: u64,
    /// The partial sums of the linear layers' split weight and bias gradients (one
    /// scratch for all layers, when a layer splits).
    pub matmul_scratch: u64,
    /// The sum of the above.
    pub total: u64,
}

/// [`DeviceMemory`] of the GPU backend for `model`, `cap` samples, Adam or Adagrad.
pub fn gpu_backend_memory(model: &Model, cap: usize, adam: bool) -> DeviceMemory {
    let dm = &model.dims;
    let (t, d, dff, zw) = (dm.t, dm.d, dm.dff, dm.zw);
    // Every buffer is `4 * max(len, 1)` bytes.
    let buf = |len: usize| 4 * len.max(1) as u64;
    let n = model.layout.total;
    let arenas = (if adam { 4 } else { 3 }) * buf(n);

    let emb = embedding_dims(model, cap);
    let segments = EmbeddingSegments::buffer_len(&emb).unwrap_or(0);
    let inputs = buf(cap * (3 * dm.l + 2 + dm.fields)) + buf(cap) + buf(cap * t) + buf(segments);

    // Per block: qkv (3 t d), att (h t t), atty, a, res1, x1, f, res2, x2 (t d each),
    // ff_pre and ff (t d_ff each), two LayerNorms' mean and rstd (t each).
    let td = cap * t * d;
    let block = buf(3 * td)
        + buf(cap * dm.h * t * t)
        + 7 * buf(td)
        + 2 * buf(cap * t * dff)
        + 4 * buf(cap * t);
    let mlp_pre: u64 = dm.mlp.iter().map(|&w| buf(cap * w)).sum();
    let last = dm.mlp.len() - 1;
    let mlp_act: u64 = dm.mlp[..last].iter().map(|&w| buf(cap * w)).sum();
    let activations = dm.blocks as u64 * block
        + buf(td) // x0
        + buf(cap * zw) // z
        + mlp_pre
        + mlp_act
        + 2 * buf(cap) // probs, losses
        + 2 * buf(1); // loss sum, eval loss
    // dx; dqkv when d_ff < 3d (else in the block's ff); dz; dlogit. The other activation
    // gradients live in dead activations.
    let dqkv = if dm.blocks > 0 && dff < 3 * d {
        buf(3 * td)
    } else {
        0
    };
    let gradients = buf(td) + dqkv + buf(cap * zw) + buf(cap);
    let rows = (cap * t) as u32;
    let layernorm_scratch = 2 * dm.blocks as u64 * buf(2 * rows.div_ceil(CHUNK_ROWS) as usize * d);
    // The linear layers: (rows, n_in, n_out) of each block's four, then the MLP's.
    let linear = |rows: usize, n_in: usize, n_out: usize| MatmulDims {
        rows: rows as u32,
        n_in: n_in as u32,
        n_out: n_out as u32,
        act: Activation::None,
    };
    let mut layers = vec![];
    if dm.blocks > 0 {
        let rows = cap * t;
        layers.extend([
            linear(rows, d, 3 * d),
            linear(rows, d, d),
            linear(rows, d, dff),
            linear(rows, dff, d),
        ]);
    }
    let widths = std::iter::once(zw).chain(dm.mlp.iter().copied());
    layers.extend(
        widths
            .clone()
            .zip(widths.skip(1))
            .map(|(i, o)| linear(cap, i, o)),
    );
    let matmul_scratch = if layers.iter().any(|l| splits_gradients(l, true)) {
        SPLIT_SCRATCH_BYTES
    } else {
        0
    };
    DeviceMemory {
        arenas,
        inputs,
        activations,
        gradients,
        layernorm_scratch,
        matmul_scratch,
        total: arenas + inputs + activations + gradients + layernorm_scratch + matmul_scratch,
    }
}

/// The bytes wgpu's memory allocator holds on `ctx`'s device (Vulkan, DX12 and Metal
/// report them; `None` elsewhere), after the queue's pending writes, whose staging buffers
/// hold a copy of what was written, have been submitted and freed. The growth across
/// `GpuBackend::init` cross-checks [`gpu_backend_memory`].
pub fn allocator_bytes(ctx: &GpuContext) -> Option<u64> {
    ctx.queue.submit([]);
    ctx.device.poll(wgpu::PollType::wait_indefinitely()).ok()?;
    Some(
        ctx.device
            .generate_allocator_report()?
            .total_allocated_bytes,
    )
}
