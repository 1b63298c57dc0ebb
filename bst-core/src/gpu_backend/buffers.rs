//! The GPU backend's buffers: the arenas, the batch inputs, one buffer per activation and
//! activation gradient (the names of `crate::model::Activations` and `GradScratch`), each
//! checked against the device's binding limit.

use std::ops::Range;

use bst_kernels::gpu::embedding::{EmbeddingDims, EmbeddingSegments};
use bst_kernels::gpu::{GpuContext, GpuError, bytes_created_on_this_thread, wgpu};

use super::sites::{BlockBuf, GradHomes};
use super::{DeviceMemory, Tables};
use crate::model::Model;

/// Arenas of the parameter layout: parameters, gradients, optimiser state.
pub(super) struct Arenas {
    /// The first element of the layout the arenas hold: 0, or with f16 tables the end of
    /// the tables (`ParamLayout::dense_range`), so that a tensor at layout offset `o`
    /// lies at `o - base` in each arena.
    pub base: usize,
    /// With f16 tables ([`super::Tables::F16`]): the four embedding tables rounded to
    /// f16, each at its layout offset (in f16 elements), which the arenas then skip.
    pub tables_f16: Option<wgpu::Buffer>,
    pub params: wgpu::Buffer,
    pub grads: wgpu::Buffer,
    /// Adam's first moment, or Adagrad's sum of squares.
    pub m: wgpu::Buffer,
    /// Adam's second moment.
    pub v: Option<wgpu::Buffer>,
}

/// Element offsets of one batch's ids in the ids buffer, fixed for the largest batch.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IdsAt {
    pub hist_item: u32,   // (B, L)
    pub hist_cat: u32,    // (B, L)
    pub hist_pos: u32,    // (B, L)
    pub target_item: u32, // (B)
    pub target_cat: u32,  // (B)
    pub other: u32,       // (B, F)
    pub len: usize,
}

impl IdsAt {
    fn new(cap: usize, l: usize, f: usize) -> IdsAt {
        let (bl, b) = ((cap * l) as u32, cap as u32);
        IdsAt {
            hist_item: 0,
            hist_cat: bl,
            hist_pos: 2 * bl,
            target_item: 3 * bl,
            target_cat: 3 * bl + b,
            other: 3 * bl + 2 * b,
            len: cap * (3 * l + 2 + f),
        }
    }
}

/// What the host writes per batch.
pub(super) struct Inputs {
    pub ids: wgpu::Buffer, // u32, laid out by `ids_at`
    pub ids_at: IdsAt,
    pub labels: wgpu::Buffer,   // (B)
    pub valid: wgpu::Buffer,    // u32 (B, T)
    pub segments: wgpu::Buffer, // u32 (EmbeddingSegments::buffer_len)
}

/// One block's forward activations: a buffer per entry of [`BlockBuf::OWNED`], in its
/// order (their names and shapes are there).
pub(super) struct BlockActs(Vec<wgpu::Buffer>);

impl BlockActs {
    /// The buffer of `b`, or `None` for a buffer the block does not own (its input, the
    /// gradient scratch).
    pub fn get(&self, b: BlockBuf) -> Option<&wgpu::Buffer> {
        b.owned_at().and_then(|i| self.0.get(i))
    }

    /// x2 (B, T, d): the block's output.
    pub fn x2(&self) -> Result<&wgpu::Buffer, GpuError> {
        self.get(BlockBuf::X2)
            .ok_or_else(|| GpuError::Binding("a block without its x2 buffer".into()))
    }
}

/// Forward activations (as `crate::model::Activations`, less the hidden MLP layers'
/// pre-activations: their outputs have their signs) and the loss outputs.
pub(super) struct Acts {
    pub x0: wgpu::Buffer, // (B, T, d)
    pub blocks: Vec<BlockActs>,
    pub z: wgpu::Buffer,            // (B, zw)
    pub mlp_act: Vec<wgpu::Buffer>, // (B, out_k), hidden layers: LeakyReLU(pre_k)
    pub logit: wgpu::Buffer,        // (B), the last layer's output
    pub probs: wgpu::Buffer,        // (B)
    pub losses: wgpu::Buffer,       // (B)
    /// (1): the sum of the batch mean losses since the last `take_loss`.
    pub loss_sum: wgpu::Buffer,
    /// (1): the mean loss of the last `predict` (unused).
    pub eval_loss: wgpu::Buffer,
}

/// The activation gradients that have no dead activation to live in. The backward writes
/// the others over forward activations it no longer reads (the block's `a`, `f`, `x1`,
/// `x2`, `res2`, `ff`, and the MLP's hidden outputs): `sites/block_plan.rs`'s `GradHomes`
/// says where each block gradient goes, and checks it.
/// So the backward needs little more memory than the forward.
pub(super) struct GradScratch {
    /// (B, T, d): the gradient of a block's output, then of its input.
    pub dx: wgpu::Buffer,
    /// (B, T, 3d): only when d_ff < 3d; else it lives in the block's `ff`.
    pub dqkv: Option<wgpu::Buffer>,
    /// (B, zw)
    pub dz: wgpu::Buffer,
    /// (B): the gradient of the logit.
    pub dlogit: wgpu::Buffer,
}

/// Every buffer of the backend.
pub(super) struct Buffers {
    pub arenas: Arenas,
    pub inputs: Inputs,
    pub acts: Acts,
    pub scratch: GradScratch,
    /// The bytes of the buffers above, counted as they were created (the arenas, inputs,
    /// activations and gradients of [`DeviceMemory`]; the rest 0).
    pub memory: DeviceMemory,
}

impl Buffers {
    /// Zeroed buffers for a model and batches of up to `cap` samples, with Adam's two
    /// state arenas or Adagrad's one, and the embedding tables stored as `tables` says.
    /// First checks every size against the device's binding limit, so that a batch too
    /// large fails before anything is allocated.
    pub fn new(
        ctx: &GpuContext,
        model: &Model,
        cap: usize,
        adam: bool,
        tables: Tables,
    ) -> Result<Buffers, GpuError> {
        Buffers::create(&Alloc { ctx, dry: true }, model, cap, adam, tables)?;
        Buffers::create(&Alloc { ctx, dry: false }, model, cap, adam, tables)
    }

    fn create(
        a: &Alloc,
        model: &Model,
        cap: usize,
        adam: bool,
        tables: Tables,
    ) -> Result<Buffers, GpuError> {
        let dm = &model.dims;
        let (t, d) = (dm.t, dm.d);
        let total = model.layout.total;
        let base = match tables {
            Tables::F32 => 0,
            Tables::F16 => model.layout.dense_range().start,
        };
        let n = total - base;
        // The bytes each group of buffers creates (on this thread, where they are made).
        let mut mark = bytes_created_on_this_thread();
        let mut created = move || {
            let now = bytes_created_on_this_thread();
            now - std::mem::replace(&mut mark, now)
        };
        let arena_knob = format!(
            "the model has {total} parameters: use smaller embedding widths, vocabularies or MLP"
        );
        let arena = |name: &str| a.buffer(name, n, &arena_knob);
        let arenas = Arenas {
            base,
            // `base` f16 values in 4-byte words.
            tables_f16: match tables {
                Tables::F32 => None,
                Tables::F16 => {
                    Some(a.buffer("the embedding tables (f16)", base.div_ceil(2), &arena_knob)?)
                }
            },
            params: arena("the parameter arena")?,
            grads: arena("the gradient arena")?,
            m: arena(if adam {
                "adam's m arena"
            } else {
                "adagrad's sum arena"
            })?,
            v: if adam {
                Some(arena("adam's v arena")?)
            } else {
                None
            },
        };
        let arena_bytes = created();

        let knob = format!(
            "lower train.batch and train.eval_batch (the buffers hold {cap} samples, the \
             larger of the two)"
        );
        // An activation with `per` elements per sample.
        let act = |name: &str, per: usize| a.buffer(name, cap * per, &knob);
        let ids_at = IdsAt::new(cap, dm.l, dm.fields);
        let segments = EmbeddingSegments::buffer_len(&embedding_dims(model, cap))?;
        let inputs = Inputs {
            ids: a.buffer("batch ids", ids_at.len, &knob)?,
            ids_at,
            labels: act("labels (B)", 1)?,
            valid: act("valid (B, T)", t)?,
            segments: a.buffer("embedding segments", segments, &knob)?,
        };
        let input_bytes = created();
        let mut blocks = Vec::new();
        for i in 0..dm.blocks {
            let bufs = BlockBuf::OWNED
                .iter()
                .map(|&(b, name)| act(&format!("blocks.{i}.{name}"), b.per_sample(dm)));
            blocks.push(BlockActs(bufs.collect::<Result<_, _>>()?));
        }
        let last = dm.mlp.len() - 1;
        let mlp = |what: &str, k: usize| act(&format!("mlp.{k}.{what} (B, out)"), dm.mlp[k]);
        let acts = Acts {
            x0: act("x0 (B, T, d)", t * d)?,
            blocks,
            z: act("z (B, zw)", dm.zw)?,
            mlp_act: (0..last).map(|k| mlp("act", k)).collect::<Result<_, _>>()?,
            logit: act("logit (B)", 1)?,
            probs: act("probs (B)", 1)?,
            losses: act("losses (B)", 1)?,
            loss_sum: a.buffer("loss sum", 1, "")?,
            eval_loss: a.buffer("eval loss", 1, "")?,
        };
        let activation_bytes = created();
        let scratch = GradScratch {
            dx: act("dx (B, T, d)", BlockBuf::Dx.per_sample(dm))?,
            // Only where a block's gradient lives in it (`GradHomes`: when d_ff < 3d).
            dqkv: match dm.blocks > 0 && GradHomes::of(dm).uses(BlockBuf::Dqkv) {
                true => Some(act("dqkv (B, T, 3d)", BlockBuf::Dqkv.per_sample(dm))?),
                false => None,
            },
            dz: act("dz (B, zw)", dm.zw)?,
            dlogit: act("dlogit (B)", 1)?,
        };
        let memory = DeviceMemory {
            arenas: arena_bytes,
            inputs: input_bytes,
            activations: activation_bytes,
            gradients: created(),
            ..DeviceMemory::default()
        };
        Ok(Buffers {
            arenas,
            inputs,
            acts,
            scratch,
            memory,
        })
    }
}

/// Creates storage buffers after checking each against the device's binding limit;
/// `dry` only checks (every buffer is 4 bytes).
struct Alloc<'a> {
    ctx: &'a GpuContext,
    dry: bool,
}

impl Alloc<'_> {
    /// A zeroed buffer of `len` elements, or an error naming it, its size, the limit and
    /// `knob` (what to change) when the device cannot bind it.
    fn buffer(&self, name: &str, len: usize, knob: &str) -> Result<wgpu::Buffer, GpuError> {
        let limits = &self.ctx.limits;
        // Kernels index elements with u32.
        let limit = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size)
            .min(4 * u64::from(u32::MAX));
        let bytes = 4 * len as u64;
        if bytes > limit {
            return Err(GpuError::Binding(format!(
                "{name}: {bytes} bytes, more than the device's \
                 max_storage_buffer_binding_size ({limit} bytes); {knob}"
            )));
        }
        let len = if self.dry { 1 } else { len };
        Ok(self.ctx.storage_buffer_zeroed(name, len))
    }
}

/// The embedding layer's sizes for batches of up to `cap` samples of `model`.
pub fn embedding_dims(model: &Model, cap: usize) -> EmbeddingDims {
    let (dm, pi) = (&model.dims, &model.layout.index);
    let (d_item, d_cat, d_pos) = dm.widths;
    let rows = |r: &Range<usize>, w: usize| (r.len() / w) as u32;
    EmbeddingDims {
        rows: cap as u32,
        seq_len: dm.l as u32,
        d_item: d_item as u32,
        d_cat: d_cat as u32,
        d_pos: d_pos as u32,
        fields: dm.fields as u32,
        d_other: dm.d_o as u32,
        z_width: dm.zw as u32,
        z_off: dm.pw as u32,
        n_item: rows(&pi.emb_item, d_item),
        n_cat: rows(&pi.emb_cat, d_cat),
        n_pos: rows(&pi.emb_pos, d_pos),
        n_other: rows(&pi.emb_other, dm.d_o),
    }
}
