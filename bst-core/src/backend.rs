//! Where a compute device plugs in. A backend owns the parameters, gradients, optimiser
//! state and activations, and runs whole steps; the training loop only hands it batches.
//! `CpuBackend` is the reference; a GPU backend implements the same trait.

use crate::batch::Batch;
use crate::collective::{Collective, ExchangeStats, GradientExchange};
use crate::config::Config;
use crate::grad_store::{GradStore, RowGrads};
use crate::model::{Activations, GradScratch, KeepGrads, Mode, Model, Shard, hand_over};
use crate::optim::{Decay, OptimRef, OptimSnapshot, Optimizer};
use crate::params::VocabSizes;
use crate::requests::{RequestError, Requests};
use crate::shared_history::{SharedScratch, is_exact, predict_requests};
use bst_kernels::cpu::topk::{select_best, top_k};
use bst_kernels::gpu::GpuError;
use std::any::Any;
use std::sync::Arc;

/// Host work a backend does on each training batch before its step (the GPU backend's
/// embedding segments), split out so that the training loop can run it on another
/// thread, ahead of the step ([`crate::prefetch`]). Must not depend on the backend's
/// state: only on the batch.
pub trait PrepareBatch: Send + Sync {
    /// What [`Backend::train_step_prepared`] takes for `batch`.
    fn prepare(&self, batch: &Batch) -> Prepared;

    /// [`PrepareBatch::prepare`] into `spent`, a [`Prepared`] of an earlier batch that its
    /// step is done with, reusing its memory where the preparer can (the producer of
    /// [`crate::prefetch`] recycles them). Must give what `prepare` gives. The default
    /// prepares afresh.
    fn prepare_into(&self, batch: &Batch, spent: &mut Prepared) {
        *spent = self.prepare(batch);
    }
}

/// What a [`PrepareBatch`] made of one batch, opaque to everyone but its backend.
pub struct Prepared(Box<dyn Any + Send>);

impl Prepared {
    /// Wraps a backend's prepared data.
    pub fn new<T: Any + Send>(data: T) -> Prepared {
        Prepared(Box::new(data))
    }

    /// The data, if it is a `T`.
    pub fn take<T: Any>(self) -> Option<T> {
        self.0.downcast().ok().map(|b| *b)
    }

    /// The data, if it is a `T`.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.0.downcast_ref()
    }

    /// The data, if it is a `T`, to prepare another batch into.
    pub fn get_mut<T: Any>(&mut self) -> Option<&mut T> {
        self.0.downcast_mut()
    }
}

/// What a backend cannot do, was handed wrongly, or failed at.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend does not implement an optional capability (yet).
    #[error("the {backend} backend cannot {what} yet")]
    Unsupported {
        /// The backend's description.
        backend: String,
        /// The capability, as a verb phrase ("read its optimiser state").
        what: &'static str,
    },
    /// Restored state or a batch that does not fit this backend's model or optimiser.
    #[error("{0}")]
    Mismatch(String),
    /// Scoring requests that do not fit the model.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The device failed: a lost or destroyed GPU, out of memory, a wgpu validation
    /// error. The backend's state on the device is then unknown: nothing it computed
    /// after the last successful read can be trusted.
    #[error("the GPU failed while {doing}: {source}")]
    Gpu {
        /// What the backend was doing, e.g. "running a training step".
        doing: String,
        /// wgpu's report (boxed: it is large, and rare).
        source: Box<GpuError>,
    },
}

impl BackendError {
    /// Wraps a device failure during `doing` (`map_err(BackendError::gpu("..."))`).
    pub fn gpu(doing: impl Into<String>) -> impl FnOnce(GpuError) -> BackendError {
        let doing = doing.into();
        move |source| BackendError::Gpu {
            doing,
            source: Box::new(source),
        }
    }
}

/// A compute device that trains and scores BST: the CPU reference ([`CpuBackend`]) or the
/// GPU ([`crate::gpu_backend::GpuBackend`]). The training loop ([`crate::train`]) sees only
/// this trait.
///
/// The methods that run on the device return a [`BackendError`] when it fails (a GPU
/// lost or out of memory); the CPU's never fail.
pub trait Backend {
    /// A one-line description of the device, for logs.
    fn describe(&self) -> String;
    /// The model this backend runs.
    fn model(&self) -> &Model;
    /// One training step: forward with dropout, backward, optimiser update. The batch's
    /// mean loss is added to a running sum that `take_loss` returns, so a GPU backend need
    /// not read anything back per step.
    fn train_step(&mut self, batch: &Batch) -> Result<(), BackendError>;
    /// The host work of a training step that can run ahead on another thread, if the
    /// backend has any (the CPU has none).
    fn batch_preparer(&self) -> Option<Arc<dyn PrepareBatch>> {
        None
    }
    /// [`Backend::train_step`] with what [`Backend::batch_preparer`] made of `batch`
    /// (`None`: the step does that work itself). Same results either way. The step only
    /// reads `prepared`: the caller may prepare the next batch into it
    /// ([`PrepareBatch::prepare_into`]).
    fn train_step_prepared(
        &mut self,
        batch: &Batch,
        prepared: Option<&mut Prepared>,
    ) -> Result<(), BackendError> {
        let _ = prepared;
        self.train_step(batch)
    }
    /// Steps between two `take_loss` calls that cost the device nothing noticeable: 1 on
    /// the CPU (so a non-finite loss is caught at its step), more on a GPU, where each
    /// read waits for the device.
    fn loss_read_interval(&self) -> usize {
        1
    }
    /// The sum of the batch mean losses since the last call, and how many steps it holds.
    /// (The training loop calls this every few steps, not every step.)
    fn take_loss(&mut self) -> Result<(f64, usize), BackendError>;
    /// Sets the learning rate of the following updates (the loop sets each epoch's,
    /// `TrainConfig::lr_at`).
    fn set_lr(&mut self, lr: f32);
    /// Click probabilities of a batch in evaluation mode (no dropout) into `probs (B)`.
    fn predict(&mut self, batch: &Batch, probs: &mut [f32]) -> Result<(), BackendError>;
    /// A copy of the parameter arena.
    fn read_params(&self) -> Result<Vec<f32>, BackendError>;
    /// Replaces the parameter arena (same layout; another size is a
    /// [`BackendError::Mismatch`]).
    fn write_params(&mut self, params: &[f32]) -> Result<(), BackendError>;

    /// A copy of the optimiser state (arenas of the parameter layout) and the number of
    /// updates taken, for checkpoints. Call it between steps (after `take_loss`).
    fn read_optim_state(&self) -> Result<OptimSnapshot, BackendError> {
        Err(BackendError::Unsupported {
            backend: self.describe(),
            what: "read its optimiser state (for checkpoints)",
        })
    }
    /// The parameters and the optimiser state, borrowed, for a checkpoint written without
    /// copying them; `None` where they live elsewhere (the GPU), and the checkpoint reads
    /// copies through [`Backend::read_params`] and [`Backend::read_optim_state`].
    fn checkpoint_state(&self) -> Option<(&[f32], OptimRef<'_>)> {
        None
    }
    /// Continues from a saved state: the parameters ([`Backend::write_params`]) and the
    /// optimiser state ([`Backend::write_optim_state`]), taken by value so that a backend
    /// keeping them in host memory (the CPU one) holds no second copy of either.
    fn restore(&mut self, params: Vec<f32>, optim: OptimSnapshot) -> Result<(), BackendError> {
        self.write_params(&params)?;
        drop(params);
        self.write_optim_state(&optim)
    }
    /// Restores the optimiser state and update count of a checkpoint, so the next
    /// `train_step` continues as if the run had never stopped (Adam's bias correction and
    /// the dropout masks depend on the count). Refuses a state of another optimiser kind or
    /// arena size.
    fn write_optim_state(&mut self, state: &OptimSnapshot) -> Result<(), BackendError> {
        let _ = state;
        Err(BackendError::Unsupported {
            backend: self.describe(),
            what: "restore an optimiser state (to resume)",
        })
    }

    /// Joins a data-parallel group ([`crate::collective`]): the following
    /// [`Backend::train_step_shard`] calls sum their gradients over its ranks. The default
    /// refuses.
    fn join_group(&mut self, group: Arc<dyn Collective>) -> Result<(), BackendError> {
        let _ = group;
        Err(BackendError::Unsupported {
            backend: self.describe(),
            what: "train data-parallel across processes",
        })
    }

    /// [`Backend::train_step_prepared`] on this rank's `shard` of a global batch (`batch`
    /// holds its rows only), after [`Backend::join_group`]: every rank takes the update of
    /// the whole global batch. The default, for a backend that joins no group, trains on
    /// `batch` alone.
    fn train_step_shard(
        &mut self,
        batch: &Batch,
        prepared: Option<&mut Prepared>,
        shard: Shard,
    ) -> Result<(), BackendError> {
        let _ = shard;
        self.train_step_prepared(batch, prepared)
    }

    /// What the gradient exchange moved since the last call (`None`: no group).
    fn take_exchange_stats(&mut self) -> Option<ExchangeStats> {
        None
    }

    /// Largest batch [`Backend::predict`] takes at once (`None`: any).
    fn max_batch(&self) -> Option<usize> {
        None
    }

    /// Whether [`Backend::predict_requests`] computes each user's history once for this
    /// model (else it scores one sample per candidate).
    fn shares_history(&self) -> bool {
        false
    }

    /// Click probabilities of every candidate of `req` (evaluation mode) into `probs (N)`:
    /// several users, each with its own candidates, in one call. A backend computes each
    /// user's history once where that is exact ([`crate::shared_history::is_exact`]);
    /// the default (and the fallback for other models) scores one sample per candidate
    /// with [`Backend::predict`]. Refuses requests that do not fit the model.
    fn predict_requests(&mut self, req: &Requests, probs: &mut [f32]) -> Result<(), BackendError> {
        check_requests(self.model(), req, probs)?;
        predict_requests_per_sample(self, req, probs)
    }

    /// The `k` most probable candidates of `req` (all its users' together; one user's
    /// ranking is a one-user request) as `(candidate, probability)`, best first, ties by
    /// candidate. The default scores one sample per candidate, in batches of
    /// [`Backend::max_batch`], with [`Backend::predict_top_k`] (a GPU selects on the
    /// device), and merges; the CPU computes each history once where that is exact.
    fn predict_top_k_requests(
        &mut self,
        req: &Requests,
        k: usize,
    ) -> Result<Vec<(usize, f32)>, BackendError> {
        predict_top_k_per_sample(self, req, k)
    }

    /// The `k` most probable rows of `batch` (evaluation mode) as `(row, probability)`,
    /// best first, ties by row. The default scores on the device, reads every probability
    /// back and selects on the host with [`top_k`]; a device backend may select on the
    /// device and read back only `k` pairs.
    fn predict_top_k(
        &mut self,
        batch: &Batch,
        k: usize,
    ) -> Result<Vec<(usize, f32)>, BackendError> {
        let mut probs = vec![0.0; batch.size];
        self.predict(batch, &mut probs)?;
        Ok(top_k(&probs, k))
    }
}

/// Checks `req` against the model and `probs` against the candidates.
pub fn check_requests(model: &Model, req: &Requests, probs: &[f32]) -> Result<(), RequestError> {
    let cfg = &model.cfg;
    if req.seq_len != cfg.seq_len {
        return Err(RequestError(format!(
            "histories of {} slots, the model's seq_len is {}",
            req.seq_len, cfg.seq_len
        )));
    }
    // Table rows from the arena (a table of width 0 bounds nothing).
    let pi = &model.layout.index;
    let rows = |r: &std::ops::Range<usize>, w: usize| r.len().checked_div(w).unwrap_or(usize::MAX);
    let sizes = VocabSizes {
        items: rows(&pi.emb_item, cfg.d_item),
        cats: rows(&pi.emb_cat, cfg.d_cat),
        other: rows(&pi.emb_other, cfg.d_other),
        fields: model.dims.fields,
    };
    let pos = rows(&pi.emb_pos, cfg.d_pos);
    req.check(sizes, pos)?;
    if probs.len() != req.candidates() {
        return Err(RequestError(format!(
            "{} probabilities for {} candidates",
            probs.len(),
            req.candidates()
        )));
    }
    Ok(())
}

/// Refuses a parameter arena of another size than the model's layout.
pub fn check_arena_len(model: &Model, params: &[f32]) -> Result<(), BackendError> {
    let n = model.layout.total;
    if params.len() != n {
        return Err(BackendError::Mismatch(format!(
            "the parameter arena: {} values given, the model's layout has {n}",
            params.len()
        )));
    }
    Ok(())
}

/// [`Backend::predict_requests`] one sample per candidate (the history repeated), in
/// batches of [`Backend::max_batch`] (1024 when any): the path for models where sharing
/// the history is not exact.
pub fn predict_requests_per_sample<B: Backend + ?Sized>(
    backend: &mut B,
    req: &Requests,
    probs: &mut [f32],
) -> Result<(), BackendError> {
    let chunk = backend.max_batch().unwrap_or(1024).max(1);
    let mut batch = Batch::default();
    for (c0, out) in (0..req.candidates())
        .step_by(chunk)
        .zip(probs.chunks_mut(chunk))
    {
        req.to_batch(c0..c0 + out.len(), &mut batch);
        backend.predict(&batch, out)?;
    }
    Ok(())
}

/// [`Backend::predict_top_k_requests`] one sample per candidate, in batches of
/// [`Backend::max_batch`] (1024 when any), each batch's top k by
/// [`Backend::predict_top_k`], merged.
pub fn predict_top_k_per_sample<B: Backend + ?Sized>(
    backend: &mut B,
    req: &Requests,
    k: usize,
) -> Result<Vec<(usize, f32)>, BackendError> {
    check_requests(backend.model(), req, &vec![0.0; req.candidates()])?;
    let chunk = backend.max_batch().unwrap_or(1024).max(1);
    let mut best = Vec::new();
    let mut batch = Batch::default();
    for c0 in (0..req.candidates()).step_by(chunk) {
        req.to_batch(c0..(c0 + chunk).min(req.candidates()), &mut batch);
        let top = backend.predict_top_k(&batch, k)?;
        best.extend(top.into_iter().map(|(i, p)| (c0 + i, p)));
        select_best(&mut best, k);
    }
    Ok(best)
}

/// The CPU reference backend.
pub struct CpuBackend {
    /// The model (shapes and parameter layout).
    pub model: Model,
    /// The parameter arena.
    pub params: Vec<f32>,
    /// The gradients of the last step: of the touched rows of the tables alone
    /// ([`RowGrads`]), or the whole arena in a data-parallel group
    /// ([`CpuBackend::grads`] gives the whole arena either way).
    pub grad_store: GradStore,
    /// The optimiser and its state.
    pub optim: Optimizer,
    /// Seed of the dropout masks.
    pub seed: u64,
    /// Sparse embedding updates (`train.sparse_embeddings`): the rows of each table
    /// (item, category, position, other) whose gradients the last backward wrote, which
    /// the next one zeroes instead of the whole table (in the whole arena). `None` for
    /// dense updates.
    dirty_rows: Option<[Vec<u32>; 4]>,
    /// The data-parallel group ([`Backend::join_group`]) and its gradient exchange.
    group: Option<Arc<dyn Collective>>,
    /// How the gradients are exchanged, and what that moved.
    pub exchange: GradientExchange,
    /// The rows the last shard touched, for the exchange of dense updates.
    shard_rows: [Vec<u32>; 4],
    loss_sum: f64,
    loss_steps: usize,
    acts: Activations,
    scratch: GradScratch,
    shared: SharedScratch,
}

impl CpuBackend {
    /// A freshly initialised model (parameters from `cfg.train.seed`).
    pub fn new(cfg: &Config, sizes: VocabSizes) -> CpuBackend {
        let model = Model::new(&cfg.model, sizes);
        let params = model.layout.init(cfg.train.seed);
        CpuBackend::with_params(cfg, model, params)
    }

    /// A backend holding `params` (the arena of `model.layout`), with a fresh optimiser.
    /// Panics if the arena has the wrong size.
    pub fn with_params(cfg: &Config, model: Model, params: Vec<f32>) -> CpuBackend {
        let cap = cfg.train.batch.max(cfg.train.eval_batch);
        let n = model.layout.total;
        assert_eq!(params.len(), n, "parameter arena has the wrong size");
        CpuBackend {
            acts: Activations::new(&model.dims, cap),
            scratch: GradScratch::new(&model.dims, cfg.train.batch),
            shared: SharedScratch::default(),
            grad_store: GradStore::Rows(Box::new(RowGrads::new(&model, cfg.train.batch))),
            optim: Optimizer::new(&cfg.train, n).with_decay(Decay {
                tables_end: model.layout.dense_range().start,
                tables: cfg.model.emb_l2,
                dense: cfg.train.weight_decay,
                tables_lr_scale: cfg.train.emb_lr_scale(),
            }),
            seed: cfg.train.seed,
            dirty_rows: cfg.train.sparse_embeddings.then(Default::default),
            group: None,
            exchange: GradientExchange::default(),
            shard_rows: Default::default(),
            loss_sum: 0.0,
            loss_steps: 0,
            params,
            model,
        }
    }

    fn ensure_capacity(&mut self, b: usize) {
        if b > self.acts.capacity {
            self.acts = Activations::new(&self.model.dims, b);
        }
    }

    /// Loss and gradients of one batch (gradients overwritten), no update. With sparse
    /// updates into the whole arena only the dense part and the rows the last batch
    /// touched are zeroed first: the others are zero already, so the whole arena is the
    /// gradient either way.
    pub fn loss_and_grads(&mut self, batch: &Batch, mode: Mode) -> f32 {
        let loss = self.forward_for_grads(batch, mode);
        let (index, grads, batch) = match &mut self.grad_store {
            GradStore::Full(g) => (&self.model.layout.index, g, batch),
            GradStore::Rows(r) => (&r.layout.index, &mut r.arena, &r.slotted),
        };
        let (scratch, acts, params) = (&mut self.scratch, &self.acts, &self.params);
        let keep = &mut KeepGrads;
        self.model
            .backward(index, grads, scratch, acts, params, batch, mode, keep);
        loss
    }

    /// [`CpuBackend::loss_and_grads`] up to the backward: the gradients zeroed, the
    /// forward run.
    fn forward_for_grads(&mut self, batch: &Batch, mode: Mode) -> f32 {
        self.ensure_capacity(batch.size);
        if self.scratch_capacity() < batch.size {
            self.scratch = GradScratch::new(&self.model.dims, batch.size);
        }
        self.zero_grads(batch);
        self.model
            .forward(&mut self.acts, &self.params, batch, mode)
    }

    /// The gradient arena of the last step, whole (zero for the rows it did not touch):
    /// a copy, for tests and checks.
    pub fn grads(&self) -> Vec<f32> {
        self.grad_store.to_full(&self.model.layout)
    }

    /// Zeroes the gradients (with sparse updates into the whole arena: the dense part and
    /// the rows the last batch touched, then notes `batch`'s rows; by rows: notes the
    /// batch's rows and their slots).
    fn zero_grads(&mut self, batch: &Batch) {
        let grads = match &mut self.grad_store {
            GradStore::Full(g) => g,
            GradStore::Rows(r) => return r.prepare(batch),
        };
        match &mut self.dirty_rows {
            None => grads.fill(0.0),
            Some(dirty) => {
                let layout = &self.model.layout;
                grads[layout.dense_range()].fill(0.0);
                for ((r, w), rows) in layout.embedding_tables().into_iter().zip(dirty.iter()) {
                    let table = &mut grads[r];
                    for &row in rows {
                        table[row as usize * w..][..w].fill(0.0);
                    }
                }
                batch.touched_rows_into(dirty);
            }
        }
    }

    /// The optimiser's update with the gradients (sparse updates: of the rows in
    /// `dirty_rows`, or the touched rows of [`RowGrads`]).
    fn update(&mut self) {
        let layout = &self.model.layout;
        let (dense, tables) = (layout.dense_range(), layout.embedding_tables());
        let grads = match &self.grad_store {
            GradStore::Full(g) => g,
            GradStore::Rows(r) => {
                let lazy = self.dirty_rows.is_some();
                let g = r.table_grads();
                let (params, dense_grads) = (&mut self.params, r.dense_grads());
                return self.optim.step_rows(
                    params,
                    dense,
                    dense_grads,
                    &tables,
                    &r.rows,
                    &g,
                    lazy,
                );
            }
        };
        match &self.dirty_rows {
            None => self.optim.step(&mut self.params, grads),
            Some(touched) => {
                self.optim
                    .step_sparse(&mut self.params, grads, dense, &tables, touched);
            }
        }
    }

    fn scratch_capacity(&self) -> usize {
        self.scratch.capacity(&self.model.dims)
    }
}

impl Backend for CpuBackend {
    fn describe(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn model(&self) -> &Model {
        &self.model
    }

    fn train_step(&mut self, batch: &Batch) -> Result<(), BackendError> {
        let mode = Mode::Train {
            seed: self.seed,
            step: self.optim.steps as u32,
            shard: None,
        };
        let loss = self.loss_and_grads(batch, mode);
        self.update();
        self.loss_sum += loss as f64;
        self.loss_steps += 1;
        Ok(())
    }

    /// The gradient exchange sums whole arenas (with the rows of every rank's batch):
    /// the gradients are kept whole from here on.
    fn join_group(&mut self, group: Arc<dyn Collective>) -> Result<(), BackendError> {
        self.group = Some(group);
        if let GradStore::Rows(_) = self.grad_store {
            self.grad_store = GradStore::Full(vec![0.0; self.model.layout.total]);
            if let Some(dirty) = &mut self.dirty_rows {
                dirty.iter_mut().for_each(Vec::clear);
            }
        }
        Ok(())
    }

    /// Forward and backward on the shard, the gradients summed over the group
    /// ([`GradientExchange`]), then the update every rank takes alike. The step's loss is
    /// the shard's share of the global mean; `take_loss` sums the shares.
    fn train_step_shard(
        &mut self,
        batch: &Batch,
        prepared: Option<&mut Prepared>,
        shard: Shard,
    ) -> Result<(), BackendError> {
        let Some(group) = self.group.clone() else {
            return self.train_step_prepared(batch, prepared);
        };
        let mode = Mode::Train {
            seed: self.seed,
            step: self.optim.steps as u32,
            shard: Some(shard),
        };
        // A shard may be empty (a last batch smaller than the group): no forward.
        let loss = if batch.size > 0 {
            self.forward_for_grads(batch, mode) as f64 * batch.size as f64 / shard.global as f64
        } else {
            self.zero_grads(batch);
            0.0
        };
        let tables = self.model.layout.embedding_tables();
        let union = self.dirty_rows.is_some();
        let touched = match &mut self.dirty_rows {
            Some(dirty) => dirty,
            None => {
                batch.touched_rows_into(&mut self.shard_rows);
                &mut self.shard_rows
            }
        };
        let GradStore::Full(grads) = &mut self.grad_store else {
            unreachable!("a group's gradients are whole (join_group)")
        };
        // The backward hands each part of the arena over to its sum as soon as it is final.
        let (model, scratch, acts, params) =
            (&self.model, &mut self.scratch, &self.acts, &self.params);
        let gi = &model.layout.index;
        self.exchange
            .overlapped(&*group, grads, &tables, touched, union, |grads, sink| {
                if batch.size > 0 {
                    model.backward(gi, grads, scratch, acts, params, batch, mode, sink)
                } else {
                    Model::final_suffixes(gi).fold(grads, |g, at| hand_over(g, Some(at), sink))
                }
            });
        self.update();
        self.loss_sum += loss;
        self.loss_steps += 1;
        Ok(())
    }

    fn take_exchange_stats(&mut self) -> Option<ExchangeStats> {
        self.group.as_ref()?;
        Some(self.exchange.take_total())
    }

    fn set_lr(&mut self, lr: f32) {
        self.optim.lr = lr;
    }

    fn take_loss(&mut self) -> Result<(f64, usize), BackendError> {
        if let Some(group) = &self.group {
            let mut sum = [self.loss_sum];
            group.sum_f64(&mut sum);
            self.loss_sum = sum[0];
        }
        let taken = (self.loss_sum, self.loss_steps);
        (self.loss_sum, self.loss_steps) = (0.0, 0);
        Ok(taken)
    }

    fn predict(&mut self, batch: &Batch, probs: &mut [f32]) -> Result<(), BackendError> {
        self.ensure_capacity(batch.size);
        self.model
            .forward(&mut self.acts, &self.params, batch, Mode::Eval);
        probs[..batch.size].copy_from_slice(&self.acts.probs[..batch.size]);
        Ok(())
    }

    fn shares_history(&self) -> bool {
        is_exact(&self.model.cfg)
    }

    /// Each user's history once ([`crate::shared_history`]) where that is exact.
    fn predict_requests(&mut self, req: &Requests, probs: &mut [f32]) -> Result<(), BackendError> {
        check_requests(&self.model, req, probs)?;
        if !is_exact(&self.model.cfg) {
            return predict_requests_per_sample(self, req, probs);
        }
        predict_requests(probs, &mut self.shared, &self.model, &self.params, req);
        Ok(())
    }

    fn predict_top_k_requests(
        &mut self,
        req: &Requests,
        k: usize,
    ) -> Result<Vec<(usize, f32)>, BackendError> {
        let mut probs = vec![0.0; req.candidates()];
        self.predict_requests(req, &mut probs)?;
        Ok(top_k(&probs, k))
    }

    fn read_params(&self) -> Result<Vec<f32>, BackendError> {
        Ok(self.params.clone())
    }

    fn write_params(&mut self, params: &[f32]) -> Result<(), BackendError> {
        check_arena_len(&self.model, params)?;
        self.params.copy_from_slice(params);
        Ok(())
    }

    fn read_optim_state(&self) -> Result<OptimSnapshot, BackendError> {
        Ok(self.optim.snapshot())
    }

    fn checkpoint_state(&self) -> Option<(&[f32], OptimRef<'_>)> {
        Some((&self.params, self.optim.as_ref()))
    }

    fn write_optim_state(&mut self, state: &OptimSnapshot) -> Result<(), BackendError> {
        self.optim
            .restore(state.clone())
            .map_err(BackendError::Mismatch)
    }

    /// Takes the arenas over: no copy.
    fn restore(&mut self, params: Vec<f32>, optim: OptimSnapshot) -> Result<(), BackendError> {
        check_arena_len(&self.model, &params)?;
        self.optim.restore(optim).map_err(BackendError::Mismatch)?;
        self.params = params;
        Ok(())
    }
}
