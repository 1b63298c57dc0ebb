//! BST on the GPU: [`GpuBackend`] runs the training step and inference of `crate::model`
//! (the CPU reference) step for step with the launchers of `bst_kernels::gpu`.
//!
//! Memory. Parameters, gradients and optimiser state are one buffer each, laid out by
//! [`crate::params::ParamLayout`]. Every activation is a buffer of its own (the names of
//! `crate::model::Activations`); the backward writes most activation gradients over
//! activations it no longer reads (`GradHomes` in `sites/block_plan.rs`), so only
//! a few gradient buffers exist. All are sized for the largest batch,
//! `max(train.batch, train.eval_batch)`, so no single binding comes near the device's
//! `max_storage_buffer_binding_size`; [`GpuBackend::new`] checks every size
//! before allocating and names the tensor that does not fit. A batch's ids share one
//! `u32` buffer at offsets fixed for the largest batch. Buffers: `buffers.rs`; the call
//! sites, each launcher bound once: `sites.rs`.
//!
//! A training step writes only inputs: the batch (ids and labels), its embedding
//! segments, the dropout keys, Adam's step and, when the batch size changes, the rows of
//! every binding. Then one command encoder: zero the gradients, the valid mask (from the
//! history ids, on the device), forward, loss (its mean added to a sum on the device),
//! backward, update; one submit and no readback. [`Backend::take_loss`] reads the sum
//! every few steps. With `train.sparse_embeddings` the fill and the update cover only the
//! blocks and the MLP, and one row-wise update per embedding table walks the rows the
//! batch touched (the segments' unique ids, already on the device) and zeroes their
//! gradients after use, so nothing in a step scales with the vocabulary.
//! [`Backend::predict_top_k`] selects on the device
//! (`bst_kernels::gpu::topk`, bound once for every `k` up to its `MAX_K`) and reads back
//! only the `k` pairs. Every readback of the hot paths (probabilities, top-k pairs, the
//! loss sum) goes through one staging buffer, made with the backend for the largest of
//! them, and `predict` and `predict_top_k` copy into it in the submit of their forward
//! pass.
//!
//! [`crate::scorer::Scorer`] runs the same forward pass on ids an application wrote into
//! its own buffers, recorded into its own command encoder.
//!
//! Failures. A lost or destroyed device, an out-of-memory or a validation error is a
//! [`BackendError::Gpu`] naming what the backend was doing, never a panic or a hang. wgpu
//! itself stays silent on a lost device (its calls then do nothing) until the device's
//! queued work has drained, so the backend asks: each batch's upload and each parameter
//! write is a checked write (`GpuContext::write_checked`), which a lost device refuses at
//! once; after every submit it polls without waiting and checks what the context's
//! handlers recorded ([`GpuContext::poll_check`]); every readback checks once the device
//! is idle; and nothing allocates on a device not checked first. A loss is permanent:
//! every later call fails too.

mod buffers;
mod exchange;
mod prepare;
mod shared;
mod sites;

use std::sync::Arc;

use bst_kernels::cpu::dropout::DropoutKey;
use bst_kernels::cpu::embedding::f16_table;
use bst_kernels::gpu::attention::AttentionKernels;
use bst_kernels::gpu::dropout::DropoutKernels;
use bst_kernels::gpu::elementwise::ElementwiseKernels;
use bst_kernels::gpu::embedding::{
    EmbeddingDims, EmbeddingKernels, EmbeddingSegments, check_f16_tables,
};
use bst_kernels::gpu::layernorm::LayerNormKernels;
use bst_kernels::gpu::loss::LossKernels;
use bst_kernels::gpu::mask::MaskKernels;
use bst_kernels::gpu::matmul::MatmulKernels;
use bst_kernels::gpu::optim::OptimKernels;
use bst_kernels::gpu::pooling::PoolingKernels;
use bst_kernels::gpu::target_attention::MAX_KEYS as TARGET_MAX_KEYS;
use bst_kernels::gpu::topk::{
    MAX_K, TopKBinding, TopKBuffers, TopKDims, TopKKernels, pairs_of_words,
};
use bst_kernels::gpu::{
    GpuContext, GpuError, Readback, TensorRef, bytes_created_on_this_thread, wgpu,
};

use crate::backend::{
    Backend, BackendError, PrepareBatch, Prepared, check_arena_len, check_requests,
    predict_requests_per_sample,
};
use crate::batch::Batch;
use crate::collective::{Collective, ExchangeStats};
use crate::config::{Config, Optimizer as OptimizerKind};
use crate::model::{Mode, Model, Shard};
use crate::optim::{OptimSnapshot, OptimState};
use crate::params::VocabSizes;
use crate::requests::Requests;
use crate::shared_history::is_exact;
use bst_kernels::cpu::topk::top_k;
use buffers::Buffers;
pub(crate) use buffers::IdsAt;
pub use buffers::embedding_dims;
use prepare::{SegmentBatches, SegmentsOf, ids_fingerprint};
use shared::SharedPath;
use sites::Sites;
#[doc(hidden)]
pub use sites::{BlockOp, Call, Direction};

/// Where the backend keeps the embedding tables on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tables {
    /// In the f32 parameter arena, with their gradients and optimiser state.
    F32,
    /// Rounded to f16 in a buffer of their own (`bst_kernels::gpu::embedding`'s
    /// `bind_f16`); the arenas hold only the blocks and the MLP. Scoring only: such a
    /// backend cannot train.
    F16,
}

/// The bytes of the device buffers a [`GpuBackend`] (or a [`crate::scorer::Scorer`])
/// holds, by group: the sizes of the buffers it created, summed as they were created
/// (`bst_kernels::gpu::bytes_created_on_this_thread`), not computed again from the
/// model's dims. wgpu's allocator adds only alignment padding to these
/// (`benches/tests/memory.rs` checks it); the queue's transient staging of buffer writes
/// and the per-call buffers of `read_params` and checkpoints are not counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeviceMemory {
    /// Parameters, gradients, and Adam's two moments (Adagrad's one sum); with f16
    /// embedding tables, also the tables (`crate::scorer`).
    pub arenas: u64,
    /// A batch's ids, labels, valid mask and embedding segments.
    pub inputs: u64,
    /// Forward activations (every block's, the MLP's, the loss outputs).
    pub activations: u64,
    /// Activation gradients that do not live in dead activations (dx, dz, dlogit, and
    /// dqkv when d_ff < 3d).
    pub gradients: u64,
    /// What the kernels' bindings hold: their uniforms, the LayerNorm backward's partial
    /// sums, the top-k's scratch and output, and the pipelines' placeholder buffers.
    pub bindings: u64,
    /// The staging buffer of the readbacks (probabilities, top-k pairs, the loss).
    pub readback: u64,
    /// The sum of the above.
    pub total: u64,
}

impl DeviceMemory {
    /// `self` with `total` set to the sum of the parts.
    fn summed(self) -> DeviceMemory {
        let total = self.arenas
            + self.inputs
            + self.activations
            + self.gradients
            + self.bindings
            + self.readback;
        DeviceMemory { total, ..self }
    }
}

/// The training step and inference of a [`Model`] on one GPU.
pub struct GpuBackend {
    ctx: Arc<GpuContext>,
    model: Model,
    k: Kernels,
    bufs: Buffers,
    sites: Sites,
    emb_dims: EmbeddingDims,
    /// Largest batch the buffers hold.
    cap: usize,
    /// Samples the bindings are set to (the last batch's size).
    rows: usize,
    adam: bool,
    /// The embedding tables' learning rate over the rest's (`train.emb_lr_scale`).
    emb_lr_scale: f32,
    /// Optimiser steps taken (Adam's next `t` is `steps + 1`).
    steps: u64,
    /// Seed of the dropout masks.
    seed: u64,
    /// Steps whose mean loss the device has added into `acts.loss_sum` since `take_loss`.
    loss_steps: usize,
    /// The device top-k over `acts.probs`, bound for every `k <= min(MAX_K, cap)`.
    topk: TopK,
    /// The staging buffer of every hot readback: `max(cap, 2 min(MAX_K, cap))` words
    /// (the probabilities, or the top-k pairs).
    readback: Readback,
    /// The segments of the last batch the step built itself (none prepared), rebuilt
    /// into for the next.
    segments: Result<EmbeddingSegments, String>,
    /// The bindings' bytes (the kernels' placeholders, the sites' uniforms and scratch).
    binding_bytes: u64,
    /// The shared-history scoring path (`predict_requests`), made at the first request
    /// and remade for more users than it holds. Not in `device_memory`.
    shared: Option<SharedPath>,
    /// The data-parallel group and its gradient exchange (`exchange.rs`).
    dp: Option<exchange::DataParallel>,
}

/// The device top-k of `predict_top_k`: its binding and its output `(k, 2)` u32.
struct TopK {
    binding: TopKBinding,
    out: wgpu::Buffer,
}

/// Pipelines of every op, created once.
struct Kernels {
    mask: MaskKernels,
    emb: EmbeddingKernels,
    mm: MatmulKernels,
    attn: AttentionKernels,
    ln: LayerNormKernels,
    drop: DropoutKernels,
    elt: ElementwiseKernels,
    pool: PoolingKernels,
    loss: LossKernels,
    optim: OptimKernels,
    topk: TopKKernels,
}

impl Kernels {
    fn new(ctx: &GpuContext) -> Result<Kernels, GpuError> {
        Ok(Kernels {
            mask: MaskKernels::new(ctx)?,
            emb: EmbeddingKernels::new(ctx)?,
            mm: MatmulKernels::new(ctx)?,
            attn: AttentionKernels::new(ctx)?,
            ln: LayerNormKernels::new(ctx)?,
            drop: DropoutKernels::new(ctx)?,
            elt: ElementwiseKernels::new(ctx)?,
            pool: PoolingKernels::new(ctx)?,
            loss: LossKernels::new(ctx)?,
            optim: OptimKernels::new(ctx)?,
            topk: TopKKernels::new(ctx)?,
        })
    }
}

impl GpuBackend {
    /// A freshly initialised model (parameters from `cfg.train.seed`), as
    /// [`crate::backend::CpuBackend::new`].
    pub fn init(
        ctx: Arc<GpuContext>,
        cfg: &Config,
        sizes: VocabSizes,
    ) -> Result<GpuBackend, GpuError> {
        let model = Model::new(&cfg.model, sizes);
        let params = model.layout.init(cfg.train.seed);
        GpuBackend::new(ctx, cfg, model, params)
    }

    /// Creates every pipeline, allocates the arenas and activations for batches of up to
    /// `max(cfg.train.batch, cfg.train.eval_batch)` samples, uploads `params` and binds
    /// every call site. `cfg.train` gives the optimiser, learning rate, batch sizes and
    /// the dropout seed; `model` the shapes. The context may wrap an application's own
    /// device ([`GpuContext::from_device`]).
    pub fn new(
        ctx: Arc<GpuContext>,
        cfg: &Config,
        model: Model,
        params: Vec<f32>,
    ) -> Result<GpuBackend, GpuError> {
        GpuBackend::with_tables(ctx, cfg, model, params, Tables::F32)
    }

    /// As [`GpuBackend::new`], with the embedding tables stored as `tables` says.
    pub(crate) fn with_tables(
        ctx: Arc<GpuContext>,
        cfg: &Config,
        model: Model,
        params: Vec<f32>,
        tables: Tables,
    ) -> Result<GpuBackend, GpuError> {
        ctx.wait_check()?;
        check_limits(&ctx)?;
        let n = model.layout.total;
        if params.len() != n {
            return Err(GpuError::Binding(format!(
                "the parameter arena: {} values given, the model's layout has {n}",
                params.len()
            )));
        }
        let cap = cfg.train.batch.max(cfg.train.eval_batch).max(1);
        let adam = cfg.train.optimizer == OptimizerKind::Adam;
        let start = bytes_created_on_this_thread();
        let k = Kernels::new(&ctx)?;
        let kernel_bytes = bytes_created_on_this_thread() - start;
        if tables == Tables::F16 {
            // Before allocating anything; bind_f16 would say the same, later.
            check_f16_tables(&ctx)?;
        }
        let bufs = Buffers::new(&ctx, &model, cap, adam, tables)?;
        write_params(&ctx, &bufs, &params)?;
        let start = bytes_created_on_this_thread();
        let sites = ctx.checked("binding the BST model", || {
            Sites::new(&ctx, &k, &model, &cfg.train, cap, &bufs)
        })??;
        let topk = bind_topk(&ctx, &k.topk, &bufs.acts.probs, cap)?;
        let binding_bytes = kernel_bytes + bytes_created_on_this_thread() - start;
        let readback = Readback::with_capacity(&ctx, "bst readback", cap.max(2 * topk_max(cap)));
        Ok(GpuBackend {
            topk,
            readback,
            segments: Err("no batch segmented yet".into()),
            binding_bytes,
            shared: None,
            dp: None,
            seed: cfg.train.seed,
            rows: cap,
            steps: 0,
            loss_steps: 0,
            adam,
            emb_lr_scale: cfg.train.emb_lr_scale(),
            cap,
            emb_dims: embedding_dims(&model, cap),
            sites,
            bufs,
            k,
            model,
            ctx,
        })
    }

    /// The device this backend runs on.
    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    /// Optimiser steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The bytes of the device buffers this backend holds (see [`DeviceMemory`]).
    pub fn device_memory(&self) -> DeviceMemory {
        DeviceMemory {
            bindings: self.binding_bytes,
            readback: self.readback.capacity_bytes(),
            ..self.bufs.memory
        }
        .summed()
    }

    /// A copy of the gradient arena: the gradients of the last training step. With
    /// sparse updates (`train.sparse_embeddings`) the embedding tables read as zeros:
    /// the row-wise update consumes their gradients.
    pub fn read_grads(&self) -> Result<Vec<f32>, BackendError> {
        self.read_arena(&self.bufs.arenas.grads, "the gradients")
    }

    /// A copy of one arena (blocking), in the layout's shape: with f16 tables the
    /// arena skips them, and they read as zeros. `what` names the arena in the error.
    fn read_arena(&self, arena: &wgpu::Buffer, what: &str) -> Result<Vec<f32>, BackendError> {
        let base = self.bufs.arenas.base;
        let mut out = vec![0.0; base];
        let words = self
            .ctx
            .read_f32(arena, 0, self.model.layout.total - base)
            .map_err(BackendError::gpu(format!("reading {what} back")))?;
        out.extend(words);
        Ok(out)
    }

    /// Refuses unless the tables are in the f32 arenas (a scorer's f16 tables cannot
    /// train); `what` names the capability.
    fn check_trainable(&self, what: &'static str) -> Result<(), BackendError> {
        match self.bufs.arenas.tables_f16 {
            Some(_) => Err(BackendError::Unsupported {
                backend: format!("{} (f16 embedding tables, for scoring)", self.describe()),
                what,
            }),
            None => Ok(()),
        }
    }

    /// The key of dropout site `(block, branch)` at training step `train_step` (`None`:
    /// evaluation), `Model::dropout_key`'s.
    fn dropout_key(&self, train_step: Option<u32>, block: usize, branch: u32) -> DropoutKey {
        let mode = match train_step {
            Some(step) => Mode::Train {
                seed: self.seed,
                step,
                shard: None,
            },
            None => Mode::Eval,
        };
        self.model.dropout_key(mode, block, branch)
    }

    /// Writes the batch (ids, labels), the dropout keys (`None`: evaluation) and, when the
    /// batch size changed, every binding's rows. Refuses a batch the buffers do not fit;
    /// a device that refuses the write fails `doing`.
    fn upload(
        &mut self,
        batch: &Batch,
        train_step: Option<u32>,
        doing: &str,
    ) -> Result<(), BackendError> {
        let dm = &self.model.dims;
        let (b, l, f) = (batch.size, dm.l, dm.fields);
        if b > self.cap {
            return Err(BackendError::Mismatch(format!(
                "a batch of {b} samples exceeds the GPU buffers' {} (train.batch / \
                 train.eval_batch)",
                self.cap
            )));
        }
        if batch.seq_len != l || batch.fields != f {
            return Err(BackendError::Mismatch(format!(
                "the batch has L = {}, F = {}; the model has L = {l}, F = {f}",
                batch.seq_len, batch.fields
            )));
        }
        self.set_rows(b);
        let ctx = &*self.ctx;
        let (ids, at) = (&self.bufs.inputs.ids, self.bufs.inputs.ids_at);
        ctx.write(ids, at.hist_item, &batch.hist_item[..b * l]);
        ctx.write(ids, at.hist_cat, &batch.hist_cat[..b * l]);
        ctx.write(ids, at.hist_pos, &batch.hist_pos[..b * l]);
        ctx.write(ids, at.target_item, &batch.target_item[..b]);
        ctx.write(ids, at.target_cat, &batch.target_cat[..b]);
        ctx.write(ids, at.other, &batch.other[..b * f]);
        // Checked: a lost device shows here, at the batch's first call, not only at a read.
        ctx.write_checked(&self.bufs.inputs.labels, 0, &batch.label[..b])
            .map_err(BackendError::gpu(doing))?;
        for i in 0..self.sites.blocks.len() {
            let (k0, k1) = (
                self.dropout_key(train_step, i, 0),
                self.dropout_key(train_step, i, 1),
            );
            let blk = &mut self.sites.blocks[i];
            blk.res1.set_key(&self.ctx, k0);
            blk.res2.set_key(&self.ctx, k1);
        }
        Ok(())
    }

    /// Records the forward pass up to the logit (as `Model::forward` before the loss),
    /// starting with the valid mask from the history ids.
    fn forward(&self, pass: &mut wgpu::ComputePass) {
        self.sites.record_forward(&self.k, pass);
    }

    /// Records one call of a training step's call sites (for the benchmarks, which time
    /// each kernel family on the backend's own bindings); an error for a block or MLP
    /// layer the model lacks.
    #[doc(hidden)]
    pub fn record_call(&self, call: Call, pass: &mut wgpu::ComputePass) -> Result<(), GpuError> {
        self.sites.record_call(&self.k, call, pass)
    }

    /// Writes a training step's inputs: the batch, its embedding segments (`prepared`'s
    /// when they are this batch's) and the rows of the row-wise updates, and Adam's step.
    fn begin_step(
        &mut self,
        batch: &Batch,
        prepared: Option<&Prepared>,
    ) -> Result<(), BackendError> {
        // Segments prepared from another batch would put gradients on the wrong rows:
        // take them only when the batch's ids match those they were built from.
        let handed = prepared
            .and_then(|p| p.get::<SegmentsOf>())
            .filter(|p| p.ids == ids_fingerprint(batch));
        self.upload(batch, Some(self.steps as u32), "running a training step")?;
        let segs = match handed {
            Some(p) => &p.segments,
            None => {
                SegmentBatches(self.emb_dims).segment_into(batch, &mut self.segments);
                &self.segments
            }
        };
        let segs = segs.as_ref().map_err(|e| {
            BackendError::Mismatch(format!("segmenting the batch's embedding ids: {e}"))
        })?;
        self.sites.embedding.set_segments(&self.ctx, segs);
        for (rows, &u) in self.sites.update_rows.iter_mut().zip(&segs.unique_ids()) {
            rows.set_rows(&self.ctx, u);
        }
        self.set_update_step();
        Ok(())
    }

    /// Sets Adam's step (`t = steps + 1`) on every update.
    fn set_update_step(&mut self) {
        if self.adam {
            let t = self.steps + 1;
            for update in self.sites.updates_mut() {
                update.set_step(&self.ctx, t);
            }
        }
    }

    /// Records the evaluation forward pass of the ids in the batch buffer (mask, forward,
    /// probabilities into `probs`) for the current rows; the dropout keys must be off.
    pub(crate) fn record_predict(&self, pass: &mut wgpu::ComputePass) {
        self.forward(pass);
        self.k.loss.forward(pass, &self.sites.eval_loss);
    }

    /// Largest batch the buffers hold.
    pub(crate) fn capacity(&self) -> usize {
        self.cap
    }

    /// Samples every binding is set to.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Sets every binding to batches of `b <= capacity` samples. A `queue.write_buffer`:
    /// every dispatch of the next submit sees the last value set.
    pub(crate) fn set_rows(&mut self, b: usize) {
        if b != self.rows {
            self.sites.set_rows(&self.ctx, b, self.model.dims.t);
            self.rows = b;
        }
    }

    /// The batch ids buffer (u32) and where each tensor starts in it.
    pub(crate) fn ids(&self) -> (&wgpu::Buffer, IdsAt) {
        (&self.bufs.inputs.ids, self.bufs.inputs.ids_at)
    }

    /// probs (B): the click probabilities of the last forward pass.
    pub(crate) fn probs(&self) -> &wgpu::Buffer {
        &self.bufs.acts.probs
    }

    /// Records `record` into one compute pass of one encoder, submits it, and checks the
    /// device ([`GpuContext::poll_check`]: no wait); `doing` names the work in the error.
    fn submit(
        &self,
        label: &str,
        doing: &str,
        record: impl FnOnce(&mut wgpu::ComputePass),
    ) -> Result<(), BackendError> {
        let encoder = self.encode(label, record);
        self.ctx.queue.submit([encoder.finish()]);
        self.ctx.poll_check().map_err(BackendError::gpu(doing))
    }

    /// An encoder holding one compute pass recorded by `record`, not yet submitted.
    fn encode(
        &self,
        label: &str,
        record: impl FnOnce(&mut wgpu::ComputePass),
    ) -> wgpu::CommandEncoder {
        let mut encoder = self
            .ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(label),
                timestamp_writes: None,
            });
            record(&mut pass);
        }
        encoder
    }

    /// Submits `encoder` after a copy of `len` words of `src` into the staging buffer,
    /// and returns the words (blocking); `doing` names the work in the error.
    fn submit_and_read<T: bytemuck::Pod>(
        &mut self,
        mut encoder: wgpu::CommandEncoder,
        src: Src,
        out: &mut [T],
        doing: &str,
    ) -> Result<(), BackendError> {
        let ctx = &*self.ctx;
        let (a, t) = (&self.bufs.acts, &self.topk);
        let src = match src {
            Src::Probs => &a.probs,
            Src::LossSum => &a.loss_sum,
            Src::TopK => &t.out,
        };
        // `out` holds 4-byte words: f32 or u32.
        let len = std::mem::size_of_val(out) / 4;
        self.readback
            .copy(ctx, &mut encoder, TensorRef::whole(src), len)
            .and_then(|()| {
                ctx.queue.submit([encoder.finish()]);
                self.readback.finish_into(ctx, out)
            })
            .map_err(BackendError::gpu(doing))
    }
}

/// What [`GpuBackend::submit_and_read`] reads.
enum Src {
    /// probs (B)
    Probs,
    /// loss_sum (1)
    LossSum,
    /// The top-k output (k, 2) u32.
    TopK,
}

/// Largest `k` the device top-k of a backend for `cap` samples selects.
fn topk_max(cap: usize) -> usize {
    cap.min(MAX_K as usize)
}

/// The device top-k over the probabilities of up to `cap` samples, for every `k` up to
/// [`topk_max`], and its output buffer.
fn bind_topk(
    ctx: &GpuContext,
    kernels: &TopKKernels,
    probs: &wgpu::Buffer,
    cap: usize,
) -> Result<TopK, GpuError> {
    let k = topk_max(cap);
    let out = ctx.storage_buffer_zeroed("top-k out (k, 2)", 2 * k);
    let bufs = TopKBuffers {
        out: TensorRef::whole(&out),
        scores: TensorRef::whole(probs),
    };
    let dims = TopKDims {
        n: cap as u32,
        k: k as u32,
    };
    let binding = kernels.bind(ctx, &bufs, dims)?;
    Ok(TopK { binding, out })
}

/// Uploads a parameter arena laid out by the model's `ParamLayout`: into the parameter
/// arena, and with f16 tables the tables, rounded to nearest (ties to even), into theirs.
/// Fails if the device refuses the write.
fn write_params(ctx: &GpuContext, bufs: &Buffers, params: &[f32]) -> Result<(), GpuError> {
    let a = &bufs.arenas;
    ctx.write_checked(&a.params, 0, &params[a.base..])?;
    if let Some(tables) = &a.tables_f16 {
        let mut h = f16_table(&params[..a.base]);
        // Whole 4-byte words, as queue writes need.
        if h.len() % 2 == 1 {
            h.push(half::f16::ZERO);
        }
        ctx.write_checked(tables, 0, &h)?;
    }
    Ok(())
}

/// Refuses a device below the limits the kernels use: [`GpuContext::new`] checks them
/// when it chooses the adapter, but an application's own device
/// ([`GpuContext::from_device`]) may have been created with lower ones.
fn check_limits(ctx: &GpuContext) -> Result<(), GpuError> {
    match bst_kernels::gpu::context::limit_shortfall(&ctx.limits) {
        Some(why) => Err(GpuError::Device(format!(
            "the device {}: its {why}; create it with wgpu::Limits::default() or the \
             adapter's limits",
            ctx.describe()
        ))),
        None => Ok(()),
    }
}

impl Backend for GpuBackend {
    fn describe(&self) -> String {
        format!("gpu: {}", self.ctx.describe())
    }

    fn model(&self) -> &Model {
        &self.model
    }

    fn train_step(&mut self, batch: &Batch) -> Result<(), BackendError> {
        self.train_step_prepared(batch, None)
    }

    /// The embedding segments of a batch, built on the host: the step's host work.
    fn batch_preparer(&self) -> Option<Arc<dyn PrepareBatch>> {
        Some(Arc::new(SegmentBatches(self.emb_dims)))
    }

    fn train_step_prepared(
        &mut self,
        batch: &Batch,
        prepared: Option<&mut Prepared>,
    ) -> Result<(), BackendError> {
        self.check_trainable("train")?;
        self.begin_step(batch, prepared.map(|p| &*p))?;
        self.submit("train step", "running a training step", |pass| {
            let (k, s) = (&self.k, &self.sites);
            s.record_gradients(k, pass);
            for update in s.updates() {
                k.optim.update(pass, update);
            }
        })?;
        self.steps += 1;
        self.loss_steps += 1;
        Ok(())
    }

    fn loss_read_interval(&self) -> usize {
        crate::train::LOSS_EVERY
    }

    fn join_group(&mut self, group: Arc<dyn Collective>) -> Result<(), BackendError> {
        self.join(group)
    }

    /// Forward and backward on the shard (the masks of its global rows, the global
    /// mean's loss gradient), the gradients read back and summed over the group
    /// ([`crate::collective::GradientExchange`]), written back, then the update every
    /// rank takes alike (`gpu_backend/exchange.rs`).
    fn train_step_shard(
        &mut self,
        batch: &Batch,
        prepared: Option<&mut Prepared>,
        shard: Shard,
    ) -> Result<(), BackendError> {
        self.train_shard(batch, prepared, shard)
    }

    fn take_exchange_stats(&mut self) -> Option<ExchangeStats> {
        self.exchange_stats()
    }

    fn set_lr(&mut self, lr: f32) {
        self.sites.update.set_lr(&self.ctx, lr);
        let table_lr = lr * self.emb_lr_scale;
        for update in self.sites.table_updates_mut() {
            update.set_lr(&self.ctx, table_lr);
        }
    }

    fn take_loss(&mut self) -> Result<(f64, usize), BackendError> {
        if self.loss_steps == 0 {
            return Ok((0.0, 0));
        }
        let mut sum = [0.0f32];
        let encoder = self.encode("take loss", |_| {});
        self.submit_and_read(encoder, Src::LossSum, &mut sum, "reading the loss back")?;
        let sum = sum[0];
        // Takes effect before the next submit's commands.
        self.ctx.write(&self.bufs.acts.loss_sum, 0, &[0.0f32]);
        let steps = std::mem::take(&mut self.loss_steps);
        Ok((self.sum_over_group(f64::from(sum)), steps))
    }

    fn max_batch(&self) -> Option<usize> {
        Some(self.cap)
    }

    /// Where exact, and for histories the target attention kernel holds (`L + 1` keys
    /// at most `target_attention::MAX_KEYS`).
    fn shares_history(&self) -> bool {
        is_exact(&self.model.cfg) && self.model.dims.t <= TARGET_MAX_KEYS as usize
    }

    /// Each user's history once (`gpu_backend/shared.rs`) where that is exact: the users
    /// and up to `max_batch` candidates per submit, the probabilities read back.
    fn predict_requests(&mut self, req: &Requests, probs: &mut [f32]) -> Result<(), BackendError> {
        check_requests(&self.model, req, probs)?;
        if !self.shares_history() {
            return predict_requests_per_sample(self, req, probs);
        }
        if req.candidates() == 0 {
            return Ok(());
        }
        let users = req.users().max(1);
        let fail = BackendError::gpu;
        let mut shared = match self.shared.take() {
            Some(s) if s.users >= users => s,
            old => {
                let users = users.max(old.map_or(0, |s| s.users));
                let (ctx, k, m, a) = (&self.ctx, &self.k, &self.model, &self.bufs.arenas);
                let doing = "binding the shared-history path";
                ctx.wait_check().map_err(fail(doing))?;
                ctx.checked(doing, || SharedPath::new(ctx, k, m, a, users, self.cap))
                    .and_then(|r| r)
                    .map_err(fail(doing))?
            }
        };
        let rows = shared.rows;
        let mut result = Ok(());
        for (c0, out) in (0..req.candidates())
            .step_by(rows)
            .zip(probs.chunks_mut(rows))
        {
            shared.upload(&self.ctx, req, c0..c0 + out.len());
            let encoder = self.encode("shared-history scoring", |pass| {
                shared.record(&self.k, pass)
            });
            self.ctx.queue.submit([encoder.finish()]);
            match self.ctx.read_f32(shared.probs(), 0, out.len()) {
                Ok(p) => out.copy_from_slice(&p),
                Err(e) => {
                    result = Err(fail("scoring requests on the shared-history path")(e));
                    break;
                }
            }
        }
        self.shared = Some(shared);
        result
    }

    fn predict_top_k_requests(
        &mut self,
        req: &Requests,
        k: usize,
    ) -> Result<Vec<(usize, f32)>, BackendError> {
        if !self.shares_history() {
            // One sample per candidate, the top k selected on the device per batch.
            return crate::backend::predict_top_k_per_sample(self, req, k);
        }
        let mut probs = vec![0.0; req.candidates()];
        self.predict_requests(req, &mut probs)?;
        Ok(top_k(&probs, k))
    }

    fn predict(&mut self, batch: &Batch, probs: &mut [f32]) -> Result<(), BackendError> {
        self.upload(batch, None, "scoring a batch")?;
        let encoder = self.encode("predict", |pass| self.record_predict(pass));
        let probs = &mut probs[..batch.size];
        self.submit_and_read(encoder, Src::Probs, probs, "scoring a batch")
    }

    /// Scores on the device, selects there (`bst_kernels::gpu::topk`, exactly the order of
    /// [`top_k`]) and reads back only the `min(k, B)` pairs. For `k` above the kernel's
    /// `MAX_K` (1024) it reads every probability and selects on the host.
    fn predict_top_k(
        &mut self,
        batch: &Batch,
        k: usize,
    ) -> Result<Vec<(usize, f32)>, BackendError> {
        if k == 0 || batch.size == 0 {
            return Ok(Vec::new());
        }
        if k > MAX_K as usize {
            let mut probs = vec![0.0; batch.size];
            self.predict(batch, &mut probs)?;
            return Ok(top_k(&probs, k));
        }
        let doing = format!("selecting the top {k} of a batch");
        self.upload(batch, None, &doing)?;
        // k above the batch selects the whole batch, as k = B would.
        let topk = &mut self.topk.binding;
        topk.set_len(&self.ctx, batch.size as u32);
        topk.set_k(&self.ctx, k.min(batch.size) as u32);
        let mut words = vec![0u32; 2 * topk.pairs()];
        let encoder = self.encode("predict top-k", |pass| {
            self.record_predict(pass);
            self.k.topk.record(pass, &self.topk.binding);
        });
        self.submit_and_read(encoder, Src::TopK, &mut words, &doing)?;
        Ok(pairs_of_words(&words)
            .into_iter()
            .map(|(i, p)| (i as usize, p))
            .collect())
    }

    /// With f16 tables, the tables as stored: rounded to f16.
    fn read_params(&self) -> Result<Vec<f32>, BackendError> {
        let mut params = self.read_arena(&self.bufs.arenas.params, "the parameters")?;
        if let Some(tables) = &self.bufs.arenas.tables_f16 {
            let base = self.bufs.arenas.base;
            let words = self
                .ctx
                .read_u32(tables, 0, base.div_ceil(2))
                .map_err(BackendError::gpu("reading the f16 tables back"))?;
            let h: &[half::f16] = bytemuck::cast_slice(&words);
            for (p, h) in params[..base].iter_mut().zip(h) {
                *p = h.to_f32();
            }
        }
        Ok(params)
    }

    /// With f16 tables, the tables are rounded to f16 on the host (to nearest, ties to
    /// even) and uploaded as such.
    fn write_params(&mut self, params: &[f32]) -> Result<(), BackendError> {
        check_arena_len(&self.model, params)?;
        write_params(&self.ctx, &self.bufs, params)
            .map_err(BackendError::gpu("writing the parameters"))
    }

    fn read_optim_state(&self) -> Result<OptimSnapshot, BackendError> {
        self.check_trainable("read its optimiser state")?;
        let a = &self.bufs.arenas;
        let state = match &a.v {
            Some(v) => OptimState::Adam {
                m: self.read_arena(&a.m, "adam's m")?,
                v: self.read_arena(v, "adam's v")?,
            },
            None => OptimState::Adagrad {
                sum: self.read_arena(&a.m, "adagrad's sum")?,
            },
        };
        Ok(OptimSnapshot {
            steps: self.steps,
            state,
        })
    }

    fn write_optim_state(&mut self, s: &OptimSnapshot) -> Result<(), BackendError> {
        self.check_trainable("restore an optimiser state")?;
        let ours = if self.adam {
            OptimizerKind::Adam
        } else {
            OptimizerKind::Adagrad
        };
        let n = self.model.layout.total;
        if s.state.kind() != ours {
            return Err(BackendError::Mismatch(format!(
                "the optimiser state is {:?}'s but this run uses {ours:?}",
                s.state.kind()
            )));
        }
        if s.state.len() != n {
            return Err(BackendError::Mismatch(format!(
                "the optimiser state holds {} values for {n} parameters",
                s.state.len()
            )));
        }
        let (a, ctx) = (&self.bufs.arenas, &self.ctx);
        let written = match (&s.state, &a.v) {
            (OptimState::Adam { m, v }, Some(v_buf)) => ctx
                .write_checked(&a.m, 0, m)
                .and_then(|()| ctx.write_checked(v_buf, 0, v)),
            (OptimState::Adagrad { sum }, None) => ctx.write_checked(&a.m, 0, sum),
            _ => unreachable!("the kinds were checked"),
        };
        written.map_err(BackendError::gpu("writing the optimiser state"))?;
        self.steps = s.steps;
        Ok(())
    }
}
