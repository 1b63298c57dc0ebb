//! BST inside an application that owns a GPU: a [`Scorer`] records the model's scoring
//! into the application's own command encoder, on ids the application wrote into its own
//! buffers, and leaves the click probabilities in another of its buffers. Nothing is read
//! back; the application submits when it likes and may keep working on the scores on the
//! device (the top-k kernel, [`TopKKernels`], selects the best candidates there).
//!
//! ```no_run
//! use std::sync::Arc;
//! use bst_core::checkpoint::Checkpoint;
//! use bst_core::scorer::{CandidateBuffers, GpuContext, Scorer, TensorRef, wgpu};
//!
//! # fn app(device: wgpu::Device, queue: wgpu::Queue, info: wgpu::AdapterInfo,
//! #        ids: [wgpu::Buffer; 6], scores: wgpu::Buffer) -> Result<(), Box<dyn std::error::Error>> {
//! // The application's device, shared with bst (wgpu handles are cheap clones).
//! let ctx = Arc::new(GpuContext::from_device(device.clone(), queue.clone(), info));
//! let ckpt = Checkpoint::load("runs/x/best.safetensors".as_ref())?;
//! let scorer = Scorer::from_checkpoint(ctx, &ckpt, 4096)?;
//!
//! // Every frame: write candidate ids into the buffers (queue.write_buffer or a kernel of
//! // the application's), then record the scoring with the application's other work.
//! let [hist_item, hist_cat, hist_pos, target_item, target_cat, other] = &ids;
//! let mut encoder = device.create_command_encoder(&Default::default());
//! scorer.record(
//!     &mut encoder,
//!     &CandidateBuffers {
//!         rows: 4096,
//!         hist_item: TensorRef::whole(hist_item),
//!         hist_cat: TensorRef::whole(hist_cat),
//!         hist_pos: TensorRef::whole(hist_pos),
//!         target_item: TensorRef::whole(target_item),
//!         target_cat: TensorRef::whole(target_cat),
//!         other: TensorRef::whole(other),
//!         scores: TensorRef::whole(&scores),
//!     },
//! )?;
//! queue.submit([encoder.finish()]);
//! # Ok(()) }
//! ```
//!
//! # What the application writes
//!
//! One sample per candidate, as the rows of a [`crate::batch::Batch`]: `L` is the model's
//! `seq_len`, `F` its number of other-feature fields ([`Scorer::fields`]: the user fields,
//! then `hour` and `weekday`). All ids are `u32` row indices into the embedding tables,
//! not raw ids: [`crate::encode::Encoder`] maps raw ids to them (`Encoder::context` for a
//! user, `Encoder::push` per candidate), and a checkpoint's `bst.vocab` lists them.
//!
//! | tensor | shape | what |
//! |---|---|---|
//! | `hist_item` | `(rows, L)` u32 | the history's item rows, oldest first and right-aligned; `0` pads the front of a short history |
//! | `hist_cat` | `(rows, L)` u32 | the category of each history item (`vocab.item_cat[item]`), 0 where padding |
//! | `hist_pos` | `(rows, L)` u32 | each history item's position bucket (time gap to the target, or ordinal; `Encoder::context`), 0 where padding |
//! | `target_item` | `(rows)` u32 | the candidate item's row |
//! | `target_cat` | `(rows)` u32 | its category (`vocab.item_cat[target_item]`) |
//! | `other` | `(rows, F)` u32 | rows of `emb.other.weight`: `field.offset + local index` per field |
//! | `scores` | `(rows)` f32 | written: the click probability of each candidate |
//!
//! Each is a [`TensorRef`]: a buffer and the element (4-byte) offset where the tensor
//! starts, row-major and packed. The id buffers need `COPY_SRC` usage, the scores buffer
//! `COPY_DST` (and `STORAGE` to run [`TopKKernels`] on it). Ids must be below their
//! table's size ([`Scorer::sizes`]); the kernels never read out of their buffers, but an
//! id out of range scores as garbage. The valid mask (which history slots are padding)
//! is derived on the device from `hist_item`.
//!
//! # Rows per submission
//!
//! A scorer computes batches of [`Scorer::rows`] samples, `max_rows` unless changed with
//! [`Scorer::set_rows`]; a record may score fewer (`rows <= Scorer::rows()`), at the same
//! cost. `set_rows` is a `queue.write_buffer`: it takes effect at the next submit, for
//! every record in that submission, so do not change it between records of one
//! submission. Records in one encoder run in order and may use different buffers.
//!
//! # Memory
//!
//! A scorer holds the parameters and the activations of `max_rows` samples on the device
//! (the same buffers as [`GpuBackend`]'s, whose gradient and optimiser buffers it also
//! allocates for now: about three times the parameters in all).
//!
//! # f16 embedding tables
//!
//! At large vocabularies the embedding tables are most of the model, and their gather is
//! pure bandwidth. With [`ScorerOptions::f16_embeddings`] the scorer stores the four
//! tables (item, category, position, other) in f16 and allocates no f32 copy of them, nor
//! their gradient and optimiser buffers: the f32 parameters, gradient and optimiser
//! buffers then hold only the transformer blocks and the MLP, which stay f32, as do all
//! activations. The host rounds each table value to the nearest f16 (ties to even; beyond
//! 65504 in magnitude it becomes infinite), and [`Scorer::write_params`] rounds again. The
//! scores are then those of the model whose tables are rounded so (what
//! `bst-core/tests/gpu_scorer.rs` checks against the CPU): close to the f32 model's, not
//! equal. Each table value then costs 2 bytes on the device instead of 12 (parameter,
//! gradient and Adagrad sum): measured by wgpu's allocator on lavapipe, the default model
//! (d_item 32) at 1,000,000 items with `max_rows` 1,000 takes 292.7 MiB instead of 598.0
//! MiB (`benches/tests/memory.rs`; the rest is mostly activation buffers).
//!
//! The gather reads f16 in the shader, which needs `wgpu::Features::SHADER_F16` on the
//! device: create the context with `GpuContext::with_optional_features(&opts,
//! wgpu::Features::SHADER_F16)`, or request the feature on the application's own device
//! where its adapter offers it (`adapter.features()`). On a device without it the
//! constructor fails with [`GpuError::MissingFeature`]; it never falls back to f32.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use bst_core::checkpoint::Checkpoint;
//! # use bst_core::scorer::{GpuContext, GpuOptions, Scorer, ScorerOptions, wgpu};
//! # fn f(ckpt: &Checkpoint) -> Result<(), Box<dyn std::error::Error>> {
//! let ctx = GpuContext::with_optional_features(&GpuOptions::default(), wgpu::Features::SHADER_F16)?;
//! let opts = ScorerOptions { f16_embeddings: true };
//! let scorer = Scorer::from_checkpoint_with_options(Arc::new(ctx), ckpt, 4096, opts)?;
//! # Ok(()) }
//! ```

use std::sync::Arc;

use crate::backend::{Backend, BackendError};
use crate::checkpoint::Checkpoint;
use crate::config::{Config, ModelConfig, Optimizer, TrainConfig};
use crate::gpu_backend::{DeviceMemory, GpuBackend, Tables};
use crate::model::Model;
use crate::params::VocabSizes;
use crate::requests::{RequestError, Requests};

pub use bst_kernels::gpu::topk::{
    MAX_K, TopKBinding, TopKBuffers, TopKDims, TopKKernels, pairs_of_words, read_pairs,
};
pub use bst_kernels::gpu::{GpuContext, GpuError, GpuOptions, Readback, TensorRef, wgpu};

/// What a [`Scorer`] cannot do or was handed wrongly. Each message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum ScorerError {
    /// The device failed, or the model does not fit its limits.
    #[error(transparent)]
    Gpu(#[from] GpuError),
    /// A candidate tensor does not fit its buffer.
    #[error("candidate buffer `{what}`: {detail}")]
    Buffer {
        /// The tensor and its shape, e.g. `hist_item (rows, L)`.
        what: String,
        /// What is wrong and what to change.
        detail: String,
    },
    /// Scoring requests that do not fit the model.
    #[error(transparent)]
    Requests(#[from] RequestError),
    /// The device failed while scoring or taking new parameters (a lost GPU, out of
    /// memory); the message says what the scorer was doing.
    #[error(transparent)]
    Backend(BackendError),
    /// More rows than the scorer computes.
    #[error(
        "{rows} candidate rows, more than the scorer computes per record ({computed} of at \
         most {max}); raise them with Scorer::set_rows, or create the scorer with a larger \
         max_rows"
    )]
    Rows {
        /// Rows of the record.
        rows: usize,
        /// Rows the scorer computes ([`Scorer::rows`]).
        computed: usize,
        /// Largest batch of the scorer ([`Scorer::max_rows`]).
        max: usize,
    },
}

impl From<BackendError> for ScorerError {
    /// Requests that do not fit stay [`ScorerError::Requests`].
    fn from(e: BackendError) -> ScorerError {
        match e {
            BackendError::Request(r) => ScorerError::Requests(r),
            e => ScorerError::Backend(e),
        }
    }
}

/// The application's buffers holding `rows` candidate samples (layout: the module docs).
#[derive(Clone, Copy, Debug)]
pub struct CandidateBuffers<'a> {
    /// Samples to score (at most [`Scorer::rows`]).
    pub rows: usize,
    /// (rows, L) u32, `COPY_SRC`: history item rows, 0 = padding.
    pub hist_item: TensorRef<'a>,
    /// (rows, L) u32, `COPY_SRC`: history category rows.
    pub hist_cat: TensorRef<'a>,
    /// (rows, L) u32, `COPY_SRC`: history position buckets.
    pub hist_pos: TensorRef<'a>,
    /// (rows) u32, `COPY_SRC`: candidate item rows.
    pub target_item: TensorRef<'a>,
    /// (rows) u32, `COPY_SRC`: candidate category rows.
    pub target_cat: TensorRef<'a>,
    /// (rows, F) u32, `COPY_SRC`: other-feature rows.
    pub other: TensorRef<'a>,
    /// (rows) f32, `COPY_DST`: written with the click probabilities.
    pub scores: TensorRef<'a>,
}

/// How a [`Scorer`] stores the model; `ScorerOptions::default()` is what [`Scorer::new`]
/// uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScorerOptions {
    /// Store the embedding tables in f16 (half their memory; see the module docs). Needs
    /// a device with `wgpu::Features::SHADER_F16`. Default: f32.
    pub f16_embeddings: bool,
}

/// BST's evaluation forward pass on a GPU, recorded into the caller's command encoder.
pub struct Scorer {
    backend: GpuBackend,
    sizes: VocabSizes,
    options: ScorerOptions,
}

impl std::fmt::Debug for Scorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scorer")
            .field("device", &self.backend.context().describe())
            .field("rows", &self.rows())
            .field("max_rows", &self.max_rows())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Scorer {
    /// A scorer of the model `model` with vocabularies of `sizes` and the parameter arena
    /// `params` (laid out by [`crate::params::ParamLayout`]), for batches of up to
    /// `max_rows` samples, on `ctx`: an application's device wrapped with
    /// [`GpuContext::from_device`] (which installs bst's error handlers on it), or one
    /// from [`GpuContext::new`]. Compiles the kernels, allocates and uploads.
    pub fn new(
        ctx: Arc<GpuContext>,
        model: &ModelConfig,
        sizes: VocabSizes,
        params: Vec<f32>,
        max_rows: usize,
    ) -> Result<Scorer, ScorerError> {
        Scorer::with_options(
            ctx,
            model,
            sizes,
            params,
            max_rows,
            ScorerOptions::default(),
        )
    }

    /// As [`Scorer::new`], storing the model as `options` says. With `f16_embeddings`
    /// on a device without `SHADER_F16`: [`GpuError::MissingFeature`], before anything
    /// is allocated.
    pub fn with_options(
        ctx: Arc<GpuContext>,
        model: &ModelConfig,
        sizes: VocabSizes,
        params: Vec<f32>,
        max_rows: usize,
        options: ScorerOptions,
    ) -> Result<Scorer, ScorerError> {
        // Batches of up to max_rows; Adagrad's one state arena is the smallest the
        // backend allocates (the scorer never trains).
        let cfg = Config {
            model: model.clone(),
            train: TrainConfig {
                batch: 1,
                eval_batch: max_rows.max(1),
                optimizer: Optimizer::Adagrad,
                ..TrainConfig::default()
            },
            ..Config::default()
        };
        let tables = match options.f16_embeddings {
            true => Tables::F16,
            false => Tables::F32,
        };
        let model_ = Model::new(model, sizes);
        let backend = GpuBackend::with_tables(ctx, &cfg, model_, params, tables)?;
        Ok(Scorer {
            backend,
            sizes,
            options,
        })
    }

    /// A scorer of a checkpoint's model and parameters (`best.safetensors`, or the latest
    /// state of `checkpoint.safetensors`); see [`Scorer::new`].
    pub fn from_checkpoint(
        ctx: Arc<GpuContext>,
        ckpt: &Checkpoint,
        max_rows: usize,
    ) -> Result<Scorer, ScorerError> {
        Scorer::from_checkpoint_with_options(ctx, ckpt, max_rows, ScorerOptions::default())
    }

    /// As [`Scorer::from_checkpoint`], storing the model as `options` says (see
    /// [`Scorer::with_options`]).
    pub fn from_checkpoint_with_options(
        ctx: Arc<GpuContext>,
        ckpt: &Checkpoint,
        max_rows: usize,
        options: ScorerOptions,
    ) -> Result<Scorer, ScorerError> {
        let sizes = ckpt.vocab.sizes();
        Scorer::with_options(
            ctx,
            &ckpt.config.model,
            sizes,
            ckpt.params.clone(),
            max_rows,
            options,
        )
    }

    /// How the scorer stores the model.
    pub fn options(&self) -> ScorerOptions {
        self.options
    }

    /// The bytes of the device buffers the scorer holds, by group (see
    /// [`DeviceMemory`]).
    pub fn device_memory(&self) -> DeviceMemory {
        self.backend.device_memory()
    }

    /// Records the scoring of `c.rows` candidates into `encoder`: copies of the ids into
    /// the scorer's buffers, one compute pass (valid mask, forward, sigmoid), and a copy
    /// of the probabilities into `c.scores`. Reads nothing back; the scores are there
    /// once the application has submitted the encoder. Checks every buffer's size and
    /// usage first and records nothing when one is wrong.
    pub fn record(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        c: &CandidateBuffers,
    ) -> Result<(), ScorerError> {
        let tensors = self.check(c)?;
        if c.rows == 0 {
            return Ok(());
        }
        let (ids, _) = self.backend.ids();
        for (src, dst, len) in tensors {
            encoder.copy_buffer_to_buffer(
                src.buffer,
                4 * u64::from(src.offset),
                ids,
                4 * u64::from(dst),
                4 * len,
            );
        }
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("bst scorer"),
                timestamp_writes: None,
            });
            self.backend.record_predict(&mut pass);
        }
        encoder.copy_buffer_to_buffer(
            self.backend.probs(),
            0,
            c.scores.buffer,
            4 * u64::from(c.scores.offset),
            4 * c.rows as u64,
        );
        Ok(())
    }

    /// Checks sizes and usages; returns each id tensor with its offset in the scorer's ids
    /// buffer and its length in elements.
    fn check<'a>(
        &self,
        c: &CandidateBuffers<'a>,
    ) -> Result<Vec<(TensorRef<'a>, u32, u64)>, ScorerError> {
        let (computed, max) = (self.rows(), self.max_rows());
        if c.rows > computed {
            return Err(ScorerError::Rows {
                rows: c.rows,
                computed,
                max,
            });
        }
        let (_, at) = self.backend.ids();
        let (b, l, f) = (c.rows as u64, self.seq_len() as u64, self.fields() as u64);
        let ids = [
            ("hist_item (rows, L)", c.hist_item, at.hist_item, b * l),
            ("hist_cat (rows, L)", c.hist_cat, at.hist_cat, b * l),
            ("hist_pos (rows, L)", c.hist_pos, at.hist_pos, b * l),
            ("target_item (rows)", c.target_item, at.target_item, b),
            ("target_cat (rows)", c.target_cat, at.target_cat, b),
            ("other (rows, F)", c.other, at.other, b * f),
        ];
        let mut out = Vec::with_capacity(ids.len());
        for (what, t, dst, len) in ids {
            check_tensor(what, t, len, COPY_SRC, "copies the ids out")?;
            out.push((t, dst, len));
        }
        check_tensor(
            "scores (rows)",
            c.scores,
            b,
            COPY_DST,
            "copies the probabilities in",
        )?;
        Ok(out)
    }

    /// Computes batches of `rows` samples (at most [`Scorer::max_rows`]) from the next
    /// submit on: records then score up to `rows` candidates, at a cost that grows with
    /// `rows`. A `queue.write_buffer`: do not change it between records of one submission
    /// (every record in it sees the last value).
    pub fn set_rows(&mut self, rows: usize) -> Result<(), ScorerError> {
        let max = self.max_rows();
        if rows > max {
            return Err(ScorerError::Rows {
                rows,
                computed: max,
                max,
            });
        }
        self.backend.set_rows(rows);
        Ok(())
    }

    /// Samples each record computes (`max_rows` unless set with [`Scorer::set_rows`]).
    pub fn rows(&self) -> usize {
        self.backend.rows()
    }

    /// The largest batch the scorer's buffers hold.
    pub fn max_rows(&self) -> usize {
        self.backend.capacity()
    }

    /// History length `L` of the candidate tensors.
    pub fn seq_len(&self) -> usize {
        self.model().dims.l
    }

    /// Other-feature fields `F` of the candidate tensors (user fields, `hour`, `weekday`).
    pub fn fields(&self) -> usize {
        self.model().dims.fields
    }

    /// The vocabulary sizes: every id must be below its table's size.
    pub fn sizes(&self) -> VocabSizes {
        self.sizes
    }

    /// The model the scorer runs.
    pub fn model(&self) -> &Model {
        self.backend.model()
    }

    /// The device the scorer runs on.
    pub fn context(&self) -> &Arc<GpuContext> {
        self.backend.context()
    }

    /// Click probabilities of several users' candidates into `probs (N)`, read back: a
    /// server's batch of requests in one call. Each user's history is computed once
    /// where that is exact ([`crate::shared_history::is_exact`]: one block or none,
    /// `target` pooling), else one sample per candidate in batches of `max_rows`. Unlike
    /// [`Scorer::record`] it submits on its own (one submit per `max_rows` candidates)
    /// and waits for the device; [`Scorer::rows`] is left as it was. Ids are model rows,
    /// checked against the vocabularies.
    pub fn predict_requests(
        &mut self,
        req: &Requests,
        probs: &mut [f32],
    ) -> Result<(), ScorerError> {
        let rows = self.rows();
        let done = self.backend.predict_requests(req, probs);
        self.backend.set_rows(rows);
        Ok(done?)
    }

    /// Replaces the parameters (same layout), e.g. after training more on the host. A
    /// `queue.write_buffer`: records submitted afterwards use them. With f16 tables the
    /// tables are rounded to f16 again. Refuses an arena of another size.
    pub fn write_params(&mut self, params: &[f32]) -> Result<(), ScorerError> {
        Ok(self.backend.write_params(params)?)
    }
}

const COPY_SRC: (wgpu::BufferUsages, &str) = (wgpu::BufferUsages::COPY_SRC, "COPY_SRC");
const COPY_DST: (wgpu::BufferUsages, &str) = (wgpu::BufferUsages::COPY_DST, "COPY_DST");

/// `len` elements from the tensor's offset lie inside its buffer, which has `usage`.
fn check_tensor(
    what: &str,
    t: TensorRef,
    len: u64,
    (usage, usage_name): (wgpu::BufferUsages, &str),
    why: &str,
) -> Result<(), ScorerError> {
    let err = |detail: String| ScorerError::Buffer {
        what: what.to_string(),
        detail,
    };
    if !t.buffer.usage().contains(usage) {
        return Err(err(format!(
            "the buffer lacks {usage_name} usage (bst {why}); create it with \
             wgpu::BufferUsages::{usage_name}"
        )));
    }
    let have = t.buffer.size() / 4;
    let end = u64::from(t.offset) + len;
    if end > have {
        return Err(err(format!(
            "elements {}..{end} ({len} for these rows) lie past the end of its buffer \
             ({have} elements of 4 bytes)",
            t.offset
        )));
    }
    Ok(())
}
