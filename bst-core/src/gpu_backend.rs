//! BST on the GPU: [`GpuBackend`] runs the training step and inference of `crate::model`
//! (the CPU reference) step for step with the launchers of `bst_kernels::gpu`.
//!
//! Memory. Parameters, gradients and optimiser state are one buffer each, laid out by
//! [`crate::params::ParamLayout`]. Every activation and activation gradient is a buffer of
//! its own (the names of `crate::model::Activations` and `GradScratch`), sized for the
//! largest batch, `max(train.batch, train.eval_batch)`, so no single binding comes near
//! the device's `max_storage_buffer_binding_size`; [`GpuBackend::new`] checks every size
//! before allocating and names the tensor that does not fit. A batch's ids share one
//! `u32` buffer at offsets fixed for the largest batch. Buffers: `buffers.rs`; the call
//! sites, each launcher bound once: `sites.rs`.
//!
//! A training step writes only inputs: the batch (ids, labels, valid mask), its embedding
//! segments, the dropout keys, Adam's step and, when the batch size changes, the rows of
//! every binding. Then one command encoder: zero the gradients, forward, loss (its mean
//! added to a sum on the device), backward, update; one submit and no readback.
//! [`Backend::take_loss`] reads the sum every few steps.

mod buffers;
mod sites;

use std::sync::Arc;

use bst_kernels::cpu::dropout::DropoutKey;
use bst_kernels::gpu::activation::ActivationKernels;
use bst_kernels::gpu::attention::AttentionKernels;
use bst_kernels::gpu::dropout::DropoutKernels;
use bst_kernels::gpu::embedding::{EmbeddingDims, EmbeddingKernels, EmbeddingSegments};
use bst_kernels::gpu::layernorm::LayerNormKernels;
use bst_kernels::gpu::loss::LossKernels;
use bst_kernels::gpu::matmul::MatmulKernels;
use bst_kernels::gpu::optim::OptimKernels;
use bst_kernels::gpu::pooling::PoolingKernels;
use bst_kernels::gpu::{GpuContext, GpuError, wgpu};

use crate::backend::{Backend, BackendError};
use crate::batch::Batch;
use crate::config::{Config, Optimizer as OptimizerKind};
use crate::model::Model;
use crate::optim::{OptimSnapshot, OptimState};
use crate::params::VocabSizes;
use buffers::{Buffers, embedding_dims};
use sites::Sites;

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
    /// Optimiser steps taken (Adam's next `t` is `steps + 1`).
    steps: u64,
    /// Seed of the dropout masks.
    seed: u64,
    /// Steps whose mean loss the device has added into `acts.loss_sum` since `take_loss`.
    loss_steps: usize,
    /// Host copy of the valid mask (B, T), rebuilt per batch.
    valid: Vec<u32>,
}

/// Pipelines of every op, created once.
struct Kernels {
    emb: EmbeddingKernels,
    mm: MatmulKernels,
    attn: AttentionKernels,
    ln: LayerNormKernels,
    drop: DropoutKernels,
    act: ActivationKernels,
    pool: PoolingKernels,
    loss: LossKernels,
    optim: OptimKernels,
}

impl Kernels {
    fn new(ctx: &GpuContext) -> Result<Kernels, GpuError> {
        Ok(Kernels {
            emb: EmbeddingKernels::new(ctx)?,
            mm: MatmulKernels::new(ctx)?,
            attn: AttentionKernels::new(ctx)?,
            ln: LayerNormKernels::new(ctx)?,
            drop: DropoutKernels::new(ctx)?,
            act: ActivationKernels::new(ctx)?,
            pool: PoolingKernels::new(ctx)?,
            loss: LossKernels::new(ctx)?,
            optim: OptimKernels::new(ctx)?,
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
        let n = model.layout.total;
        if params.len() != n {
            return Err(GpuError::Binding(format!(
                "the parameter arena: {} values given, the model's layout has {n}",
                params.len()
            )));
        }
        let cap = cfg.train.batch.max(cfg.train.eval_batch).max(1);
        let adam = cfg.train.optimizer == OptimizerKind::Adam;
        let bufs = Buffers::new(&ctx, &model, cap, adam)?;
        let k = Kernels::new(&ctx)?;
        ctx.write(&bufs.arenas.params, 0, &params);
        let sites = ctx.checked("binding the BST model", || {
            Sites::new(&ctx, &k, &model, &cfg.train, cap, &bufs)
        })??;
        Ok(GpuBackend {
            valid: Vec::with_capacity(cap * model.dims.t),
            seed: cfg.train.seed,
            rows: cap,
            steps: 0,
            loss_steps: 0,
            adam,
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

    /// A copy of the gradient arena: the gradients of the last training step.
    pub fn read_grads(&self) -> Vec<f32> {
        self.read_arena(&self.bufs.arenas.grads, "the gradients")
    }

    /// A copy of one arena (blocking); panics with `what` if the device fails.
    fn read_arena(&self, arena: &wgpu::Buffer, what: &str) -> Vec<f32> {
        self.ctx
            .read_f32(arena, 0, self.model.layout.total)
            .unwrap_or_else(|e| panic!("reading {what} back from the GPU: {e}"))
    }

    /// The key of dropout site `(block, branch)` in this mode, as `Model::dropout_key`.
    fn dropout_key(&self, train_step: Option<u32>, block: usize, branch: u32) -> DropoutKey {
        match train_step {
            Some(step) => DropoutKey {
                p: self.model.dims.dropout,
                seed: self.seed,
                step,
                site: 2 * block as u32 + branch,
            },
            None => DropoutKey {
                p: 0.0,
                seed: 0,
                step: 0,
                site: 0,
            },
        }
    }

    /// Writes the batch (ids, labels, valid mask), the dropout keys (`None`: evaluation)
    /// and, when the batch size changed, every binding's rows.
    fn upload(&mut self, batch: &Batch, train_step: Option<u32>) {
        let dm = &self.model.dims;
        let (b, l, f) = (batch.size, dm.l, dm.fields);
        assert!(
            b <= self.cap,
            "a batch of {b} samples exceeds the GPU buffers' {} (train.batch / train.eval_batch)",
            self.cap
        );
        assert!(
            batch.seq_len == l && batch.fields == f,
            "the batch has L = {}, F = {}; the model has L = {l}, F = {f}",
            batch.seq_len,
            batch.fields
        );
        if b != self.rows {
            self.sites.set_rows(&self.ctx, b, self.model.dims.t);
            self.rows = b;
        }
        let ctx = &*self.ctx;
        let (ids, at) = (&self.bufs.inputs.ids, self.bufs.inputs.ids_at);
        ctx.write(ids, at.hist_item, &batch.hist_item[..b * l]);
        ctx.write(ids, at.hist_cat, &batch.hist_cat[..b * l]);
        ctx.write(ids, at.hist_pos, &batch.hist_pos[..b * l]);
        ctx.write(ids, at.target_item, &batch.target_item[..b]);
        ctx.write(ids, at.target_cat, &batch.target_cat[..b]);
        ctx.write(ids, at.other, &batch.other[..b * f]);
        ctx.write(&self.bufs.inputs.labels, 0, &batch.label[..b]);
        batch.valid_mask(&mut self.valid);
        ctx.write(&self.bufs.inputs.valid, 0, &self.valid);
        for i in 0..self.sites.blocks.len() {
            let (k0, k1) = (
                self.dropout_key(train_step, i, 0),
                self.dropout_key(train_step, i, 1),
            );
            let blk = &mut self.sites.blocks[i];
            blk.res1.set_key(&self.ctx, k0);
            blk.res2.set_key(&self.ctx, k1);
        }
    }

    /// Records the forward pass up to the logit (as `Model::forward` before the loss).
    fn forward(&self, pass: &mut wgpu::ComputePass) {
        let (k, s) = (&self.k, &self.sites);
        k.emb.token_embedding_forward(pass, &s.embedding);
        for blk in &s.blocks {
            k.mm.forward(pass, &blk.qkv);
            k.attn.forward(pass, &blk.attention);
            k.mm.forward(pass, &blk.out);
            k.drop.forward(pass, &blk.res1);
            k.ln.forward(pass, &blk.ln1);
            k.mm.forward(pass, &blk.ffn1); // ff_pre and ff = LeakyReLU(ff_pre)
            k.mm.forward(pass, &blk.ffn2);
            k.drop.forward(pass, &blk.res2);
            k.ln.forward(pass, &blk.ln2);
        }
        k.pool.forward(pass, &s.pooling);
        k.emb.other_embedding_forward(pass, &s.embedding);
        for layer in &s.mlp {
            k.mm.forward(pass, &layer.linear); // hidden layers: pre and LeakyReLU(pre)
        }
    }

    /// Records the backward pass from the loss (as `Model::backward`).
    fn backward(&self, pass: &mut wgpu::ComputePass) {
        let (k, s) = (&self.k, &self.sites);
        k.loss.backward(pass, &s.loss); // dmlp_pre = dloss/dlogit
        for layer in s.mlp.iter().rev() {
            if let Some(act) = &layer.act {
                k.act.backward(pass, act); // dmlp_pre = dmlp * leaky'(pre)
            }
            k.mm.backward(pass, &layer.linear); // dmlp (or dz) = dmlp_pre W; dW, db +=
        }
        k.emb.other_embedding_backward(pass, &s.embedding);
        k.pool.backward(pass, &s.pooling); // dx
        for blk in s.blocks.iter().rev() {
            // dx holds the gradient of the block's output; on exit, of its input.
            k.ln.backward(pass, &blk.ln2); // dres
            k.drop.backward(pass, &blk.res2); // dbr = dres * mask
            k.mm.backward(pass, &blk.ffn2); // dff
            k.act.backward(pass, &blk.ffn1_act); // dff_pre
            k.mm.backward(pass, &blk.ffn1); // dtmp
            k.drop.forward(pass, &blk.sum_dx1); // dx1 = dres + dtmp
            k.ln.backward(pass, &blk.ln1); // dres
            k.drop.backward(pass, &blk.res1); // dbr
            k.mm.backward(pass, &blk.out); // datty
            k.attn.backward(pass, &blk.attention); // dqkv
            k.mm.backward(pass, &blk.qkv); // dtmp
            k.optim.fill(pass, &blk.zero_key_bias);
            k.drop.forward(pass, &blk.sum_dx); // dx = dres + dtmp
        }
        k.emb.token_embedding_backward(pass, &s.embedding);
    }

    /// Records `record` into one compute pass of one encoder and submits it.
    fn submit(&self, label: &str, record: impl FnOnce(&mut wgpu::ComputePass)) {
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
        self.ctx.queue.submit([encoder.finish()]);
    }
}

impl Backend for GpuBackend {
    fn describe(&self) -> String {
        format!("gpu: {}", self.ctx.describe())
    }

    fn model(&self) -> &Model {
        &self.model
    }

    fn train_step(&mut self, batch: &Batch) {
        self.upload(batch, Some(self.steps as u32));
        let segs = EmbeddingSegments::build(
            &self.emb_dims,
            batch.size as u32,
            batch.token_ids(),
            &batch.other,
        )
        .unwrap_or_else(|e| panic!("segmenting the batch's embedding ids: {e}"));
        self.sites.embedding.set_segments(&self.ctx, &segs);
        if self.adam {
            self.sites.update.set_step(&self.ctx, self.steps + 1);
        }
        self.submit("train step", |pass| {
            let (k, s) = (&self.k, &self.sites);
            k.optim.fill(pass, &s.zero_grads);
            self.forward(pass);
            k.loss.forward(pass, &s.loss);
            self.backward(pass);
            k.optim.update(pass, &s.update);
        });
        self.steps += 1;
        self.loss_steps += 1;
    }

    fn loss_read_interval(&self) -> usize {
        crate::train::LOSS_EVERY
    }

    fn take_loss(&mut self) -> (f64, usize) {
        if self.loss_steps == 0 {
            return (0.0, 0);
        }
        let sum = self
            .ctx
            .read_f32(&self.bufs.acts.loss_sum, 0, 1)
            .unwrap_or_else(|e| panic!("reading the loss back from the GPU: {e}"))[0];
        // Takes effect before the next submit's commands.
        self.ctx.write(&self.bufs.acts.loss_sum, 0, &[0.0f32]);
        let steps = std::mem::take(&mut self.loss_steps);
        (f64::from(sum), steps)
    }

    fn predict(&mut self, batch: &Batch, probs: &mut [f32]) {
        self.upload(batch, None);
        self.submit("predict", |pass| {
            self.forward(pass);
            self.k.loss.forward(pass, &self.sites.eval_loss);
        });
        let got = self
            .ctx
            .read_f32(&self.bufs.acts.probs, 0, batch.size)
            .unwrap_or_else(|e| panic!("reading the probabilities back from the GPU: {e}"));
        probs[..batch.size].copy_from_slice(&got);
    }

    fn read_params(&self) -> Vec<f32> {
        self.read_arena(&self.bufs.arenas.params, "the parameters")
    }

    fn write_params(&mut self, params: &[f32]) {
        assert_eq!(
            params.len(),
            self.model.layout.total,
            "parameter arena has the wrong size"
        );
        self.ctx.write(&self.bufs.arenas.params, 0, params);
    }

    fn read_optim_state(&self) -> Result<OptimSnapshot, BackendError> {
        let a = &self.bufs.arenas;
        let state = match &a.v {
            Some(v) => OptimState::Adam {
                m: self.read_arena(&a.m, "adam's m"),
                v: self.read_arena(v, "adam's v"),
            },
            None => OptimState::Adagrad {
                sum: self.read_arena(&a.m, "adagrad's sum"),
            },
        };
        Ok(OptimSnapshot {
            steps: self.steps,
            state,
        })
    }

    fn write_optim_state(&mut self, s: &OptimSnapshot) -> Result<(), BackendError> {
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
        let a = &self.bufs.arenas;
        match (&s.state, &a.v) {
            (OptimState::Adam { m, v }, Some(v_buf)) => {
                self.ctx.write(&a.m, 0, m);
                self.ctx.write(v_buf, 0, v);
            }
            (OptimState::Adagrad { sum }, None) => self.ctx.write(&a.m, 0, sum),
            _ => unreachable!("the kinds were checked"),
        }
        self.steps = s.steps;
        Ok(())
    }
}
