//! The GPU backend's call sites: every launcher bound once to the buffers of
//! `buffers.rs`, in the order of `crate::model`'s forward, and recorded from here. One
//! block's wiring (which value each site reads and writes, where each gradient lives, the
//! order of the calls) is stated and checked in `block_plan.rs`.

mod binder;
mod block;
mod block_plan;
mod stages;
mod updates;

use bst_kernels::gpu::elementwise::ElementwiseBinding;
use bst_kernels::gpu::embedding::EmbeddingBinding;
use bst_kernels::gpu::loss::LossBinding;
use bst_kernels::gpu::mask::MaskBinding;
use bst_kernels::gpu::matmul::MatmulBinding;
use bst_kernels::gpu::optim::OptimBinding;
use bst_kernels::gpu::pooling::PoolingBinding;
use bst_kernels::gpu::{GpuContext, GpuError, SetRows, wgpu};

use super::Kernels;
use super::buffers::Buffers;
use crate::config::TrainConfig;
use crate::model::Model;
use binder::Binder;
use block::{BlockBufs, BlockSites};
pub use block_plan::BlockOp;
pub(super) use block_plan::{Buf as BlockBuf, GradHomes};
use updates::Updates;

/// Every call site, bound once.
pub(super) struct Sites {
    /// valid (B, T) from the batch's history ids.
    pub mask: MaskBinding,
    pub embedding: EmbeddingBinding,
    pub blocks: Vec<BlockSites>,
    pub pooling: PoolingBinding,
    /// Each MLP layer's linear (the LeakyReLU epilogue on hidden layers; the backward of
    /// the layer after a hidden one applies leaky' to its input gradient).
    pub mlp: Vec<MatmulBinding>,
    /// Training: accumulates the batch mean into `loss_sum`, writes dlogits.
    pub loss: LossBinding,
    /// Evaluation: probabilities only (its mean goes to `eval_loss`).
    pub eval_loss: LossBinding,
    /// The gradient arena, or with sparse updates its dense range only (the tables'
    /// gradients are consumed by `update_rows`).
    pub zero_grads: ElementwiseBinding,
    /// The dense range (blocks and MLP), with `train.weight_decay`.
    pub update: OptimBinding,
    /// Dense updates of trained f32 tables: the four tables, with `model.emb_l2`.
    pub update_tables: Option<OptimBinding>,
    /// Sparse updates: the touched rows of each embedding table (item, category,
    /// position, other), read from the segments' unique ids, with `model.emb_l2`.
    /// Empty for dense updates.
    pub update_rows: Vec<OptimBinding>,
}

/// Which half of a call site a [`Call`] records.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Backward,
}

/// One call of a training step's call sites, as the step records it: for the benchmarks,
/// which time each kernel family on the backend's own bindings
/// ([`super::GpuBackend::record_call`]).
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// The token and the other-feature embedding (gathers, or scatter-adds).
    Embedding(Direction),
    /// One site of block `i`.
    Block(usize, BlockOp, Direction),
    Pooling(Direction),
    /// MLP layer `k`.
    Mlp(usize, Direction),
    /// The training loss: its mean accumulated, or dlogits.
    Loss(Direction),
    /// Every optimiser update of a step.
    Update,
}

impl Sites {
    /// Binds every call site to `bufs`, for batches of up to `cap` samples, after
    /// checking the blocks' gradient homes ([`block_plan::check`]). The dropout keys are
    /// set per step.
    pub fn new(
        ctx: &GpuContext,
        k: &Kernels,
        model: &Model,
        train: &TrainConfig,
        cap: usize,
        bufs: &Buffers,
    ) -> Result<Sites, GpuError> {
        let bind = Binder {
            ctx,
            k,
            model,
            bufs,
            cap,
        };
        let homes = GradHomes::of(&model.dims);
        block_plan::check(&homes, &model.dims)
            .map_err(|e| GpuError::Binding(format!("a block's gradient buffers: {e}")))?;
        let (mask, embedding) = (bind.mask()?, bind.embedding()?);
        let (blocks, pooling, mlp) = (bind.blocks(&homes)?, bind.pooling()?, bind.mlp()?);
        let (loss, eval_loss) = (bind.loss(true)?, bind.loss(false)?);
        let Updates {
            zero_grads,
            update,
            update_tables,
            update_rows,
        } = bind.updates(train)?;
        Ok(Sites {
            mask,
            embedding,
            blocks,
            pooling,
            mlp,
            loss,
            eval_loss,
            zero_grads,
            update,
            update_tables,
            update_rows,
        })
    }

    /// Every optimiser update of a training step, in dispatch order: the dense range,
    /// the tables whole or their touched rows.
    pub fn updates(&self) -> impl Iterator<Item = &OptimBinding> {
        std::iter::once(&self.update)
            .chain(&self.update_tables)
            .chain(&self.update_rows)
    }

    /// The same, to set their step.
    pub fn updates_mut(&mut self) -> impl Iterator<Item = &mut OptimBinding> {
        std::iter::once(&mut self.update)
            .chain(&mut self.update_tables)
            .chain(&mut self.update_rows)
    }

    /// The updates of the embedding tables (whole or by rows), whose learning rate is
    /// scaled by `train.emb_lr_scale`.
    pub fn table_updates_mut(&mut self) -> impl Iterator<Item = &mut OptimBinding> {
        self.update_tables.iter_mut().chain(&mut self.update_rows)
    }

    /// Records the forward pass up to the logit (as `Model::forward` before the loss),
    /// starting with the valid mask from the history ids.
    pub fn record_forward(&self, k: &Kernels, pass: &mut wgpu::ComputePass) {
        k.mask.valid_mask(pass, &self.mask);
        k.emb.token_embedding_forward(pass, &self.embedding);
        for blk in &self.blocks {
            blk.record_forward(k, pass);
        }
        k.pool.forward(pass, &self.pooling);
        k.emb.other_embedding_forward(pass, &self.embedding);
        for layer in &self.mlp {
            k.mm.forward(pass, layer); // hidden layers: LeakyReLU(pre)
        }
    }

    /// Records the backward pass from the loss (as `Model::backward`).
    pub fn record_backward(&self, k: &Kernels, pass: &mut wgpu::ComputePass) {
        k.loss.backward(pass, &self.loss); // dlogit = dloss/dlogit
        for layer in self.mlp.iter().rev() {
            // dW, db +=; then dz, or over the previous layer's output its
            // dpre = dpre W * leaky'(act)
            k.mm.backward(pass, layer);
        }
        k.emb.other_embedding_backward(pass, &self.embedding);
        k.pool.backward(pass, &self.pooling); // dx
        for blk in self.blocks.iter().rev() {
            blk.record_backward(k, pass);
        }
        k.emb.token_embedding_backward(pass, &self.embedding);
    }

    /// Records a training step's gradients: the fill, the forward, the loss and the
    /// backward.
    pub fn record_gradients(&self, k: &Kernels, pass: &mut wgpu::ComputePass) {
        k.elt.forward(pass, &self.zero_grads);
        self.record_forward(k, pass);
        k.loss.forward(pass, &self.loss);
        self.record_backward(k, pass);
    }

    /// Records one [`Call`]; an error for a block or MLP layer the model lacks.
    pub fn record_call(
        &self,
        k: &Kernels,
        call: Call,
        pass: &mut wgpu::ComputePass,
    ) -> Result<(), GpuError> {
        use Direction::{Backward, Forward};
        let missing = |what: String| GpuError::Binding(format!("{what}: the model has none"));
        match call {
            Call::Embedding(Forward) => {
                k.emb.token_embedding_forward(pass, &self.embedding);
                k.emb.other_embedding_forward(pass, &self.embedding);
            }
            Call::Embedding(Backward) => {
                k.emb.other_embedding_backward(pass, &self.embedding);
                k.emb.token_embedding_backward(pass, &self.embedding);
            }
            Call::Block(i, op, dir) => {
                let blk = self
                    .blocks
                    .get(i)
                    .ok_or_else(|| missing(format!("block {i}")))?;
                blk.record(k, op, dir, pass);
            }
            Call::Pooling(Forward) => k.pool.forward(pass, &self.pooling),
            Call::Pooling(Backward) => k.pool.backward(pass, &self.pooling),
            Call::Mlp(i, dir) => {
                let layer = self
                    .mlp
                    .get(i)
                    .ok_or_else(|| missing(format!("MLP layer {i}")))?;
                match dir {
                    Forward => k.mm.forward(pass, layer),
                    Backward => k.mm.backward(pass, layer),
                }
            }
            Call::Loss(Forward) => k.loss.forward(pass, &self.loss),
            Call::Loss(Backward) => k.loss.backward(pass, &self.loss),
            Call::Update => {
                for update in self.updates() {
                    k.optim.update(pass, update);
                }
            }
        }
        Ok(())
    }

    /// Sets every binding to batches of `b` samples of `t` tokens: one loop over
    /// [`Sites::row_bindings`], each binding with its row unit.
    pub fn set_rows(&mut self, ctx: &GpuContext, b: usize, t: usize) {
        for (unit, binding) in self.row_bindings() {
            binding.set_rows(ctx, unit.rows(b, t));
        }
    }

    /// Every binding whose sizes follow the batch, with what its rows count.
    fn row_bindings(&mut self) -> Vec<(RowUnit, &mut dyn SetRows)> {
        use RowUnit::Samples;
        let mut all: Vec<(RowUnit, &mut dyn SetRows)> =
            vec![(Samples, &mut self.mask), (Samples, &mut self.embedding)];
        for blk in &mut self.blocks {
            all.extend(blk.row_bindings());
        }
        all.push((Samples, &mut self.pooling));
        all.extend(
            self.mlp
                .iter_mut()
                .map(|l| (Samples, l as &mut dyn SetRows)),
        );
        all.push((Samples, &mut self.loss));
        all.push((Samples, &mut self.eval_loss));
        all
    }
}

/// What a binding's rows count: samples (`b`) or tokens (`b * t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RowUnit {
    Samples,
    Tokens,
}

impl RowUnit {
    /// The rows of a batch of `b` samples of `t` tokens.
    fn rows(self, b: usize, t: usize) -> u32 {
        match self {
            RowUnit::Samples => b as u32,
            RowUnit::Tokens => (b * t) as u32,
        }
    }
}

impl Binder<'_> {
    /// Every block, its input x0 or the previous block's x2, its gradients where
    /// `homes` says.
    fn blocks(&self, homes: &GradHomes) -> Result<Vec<BlockSites>, GpuError> {
        let (acts, scratch) = (&self.bufs.acts, &self.bufs.scratch);
        let params = &self.model.layout.index.blocks;
        let mut x = &acts.x0;
        let mut blocks = Vec::new();
        for (acts, p) in acts.blocks.iter().zip(params) {
            blocks.push(self.block(&BlockBufs { x, acts, scratch }, homes, p)?);
            x = acts.x2()?;
        }
        Ok(blocks)
    }
}
