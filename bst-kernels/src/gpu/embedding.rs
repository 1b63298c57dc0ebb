//! Embedding gathers and their scatter-add backward on the GPU: launcher for
//! `shaders/embedding.wgsl`. CPU reference: [`crate::cpu::embedding`].
//!
//! ```text
//! let emb = EmbeddingKernels::new(&ctx)?;                            // once
//! let mut b = emb.bind(&ctx, Site::with_grads(bufs, grads, dims))?;  // once
//! b.set_rows(&ctx, rows);                                            // a smaller batch
//! let segs = EmbeddingSegments::build(&dims, rows, batch.token_ids(), &batch.other)?;
//! b.set_segments(&ctx, &segs);                                       // every step, before submit
//! emb.token_embedding_forward(&mut pass, &b);                        // x (B, T, d)
//! emb.other_embedding_forward(&mut pass, &b);                        // z's other-feature columns
//! emb.other_embedding_backward(&mut pass, &b);                       // dE_other += scatter of dz
//! emb.token_embedding_backward(&mut pass, &b);                       // dE_item, dE_cat, dE_pos
//! ```
//!
//! # Forward
//! One kernel, `embedding_gather`, copies table rows into the activation with one
//! invocation per (token, column); it runs once per table (item, category and position
//! columns of x, then the other features into z). Pure copies: bit-identical to the CPU.
//!
//! # Backward: a deterministic scatter-add without atomics
//! WGSL has no float atomics, and we want bit-reproducible gradients, so no two
//! invocations may add into one table row. The host segments each table's token ids
//! ([`build_segments`]: the unique ids, ascending, and the token indices sorted by id,
//! stably), and `embedding_segment_sum` runs one invocation per (unique id, column): it
//! loads the gradient table's value, adds the tokens of its segment one by one in
//! ascending token order, and stores it. Those are the CPU reference's additions in the
//! CPU reference's order, so those gradients are bit-identical to it.
//!
//! A small table's segments are long: at batch 4096 each of 12 categories has about
//! 7,000 of the 86,016 tokens, so one invocation would add 7,000 gathered values one
//! after another while the rest of the GPU idles. So a segment longer than the batch's
//! piece length `P` ([`piece_len`]: at least [`MIN_PIECE`], about the square root of the
//! table's longest segment) is cut into pieces of `P` tokens: `embedding_piece_sum` adds
//! each piece's tokens in order from 0 into a scratch (one invocation per piece and
//! column), then `embedding_long_sum` adds the segment's pieces onto the table value in
//! order (one per long segment and column). No chain is longer than about
//! `max(64, sqrt(N))` additions. The result is deterministic, but a long segment's
//! additions are grouped differently from the CPU's: equal within rounding, not bit for
//! bit. The host lists the long segments and their pieces in the segments image.
//!
//! # Per step
//! [`EmbeddingSegments::build`] segments the four tables of one batch into one `u32`
//! image with a layout fixed by the [`EmbeddingDims`] (each table's segments have room
//! for all of the batch's tokens), so the offsets in the uniforms never change.
//! [`EmbeddingBinding::set_segments`] uploads the used part of that image
//! ([`EmbeddingSegments::live`], a `queue.write_buffer` per range) into the bound segments
//! buffer and writes each table's numbers of unique ids `U`, long segments and pieces into
//! the uniforms; the backward methods then dispatch `div_ceil(U * width, 64)` workgroups
//! (and as many for the pieces and the long segments), computed on the host from the
//! counts it just set (no fixed maximum grid of idle invocations). Both writes take effect at the next submit, like `set_rows`: set the
//! segments of one batch per submit.
//!
//! # f16 tables (scoring)
//! [`EmbeddingKernels::bind_f16`] binds the forward gathers to tables stored as f16
//! (`shaders/embedding_f16.wgsl`, `embedding_gather_f16`): half the memory and the
//! bandwidth of the gather, activations still f32, no backward (training keeps f32
//! tables: Adam's small updates vanish in f16). The tables' offsets and lengths count f16
//! elements. The shader needs `wgpu::Features::SHADER_F16`: [`EmbeddingKernels::new`]
//! compiles it only on a device that has the feature, and `bind_f16` on any other is an
//! error. The host rounds with [`crate::cpu::embedding::f16_table`] (to nearest, ties to
//! even); f16 to f32 is exact, so the gather equals the CPU reference's gather of
//! [`crate::cpu::embedding::f16_rounded`] tables bit for bit.

mod segments;

pub use segments::{EmbeddingSegments, MIN_PIECE, Segments, build_segments, piece_len};
use segments::{TableSegments, piece_room, segments_layout};

use super::buffer::uniform_slot;
use super::launch::{Site, WgslParams, dispatch, tensors, wgsl_module, wgsl_params};
use super::{GpuContext, GpuError, GpuResult, Slot, TensorRef};
use crate::cpu::embedding::TokenIds;

wgsl_params!(
    "embedding.wgsl",
    /// The uniform, and `Params` of `shaders/embedding.wgsl`, written from it (see its header for
    /// the token mapping these fields describe).
    pub struct EmbParams {
        /// Tokens (gather) or unique ids (segment_sum); rewritten per step.
        n: u32,
        /// Table width (columns per token).
        w: u32,
        table_off: u32,
        /// Ids >= table_rows are out of range (see the entry points).
        table_rows: u32,
        per_sample: u32,
        hist_len: u32,
        hist_off: u32,
        target_off: u32,
        /// 1: the token at slot hist_len has id ids[target_off + s]; 0: id 0.
        target_from_ids: u32,
        act_off: u32,
        act_stride: u32,
        act_col: u32,
        col_step: u32,
        /// Segment_sum: the unique ids (U), ascending, in `ids`.
        seg_ids_off: u32,
        /// Segment_sum: U + 1 offsets into the order, in `ids`.
        seg_start_off: u32,
        /// Segment_sum: the token indices sorted by id (stable), in `ids`.
        seg_order_off: u32,
        /// The segments (indices u) longer than `piece`, in `ids`.
        long_u_off: u32,
        /// Longs + 1 offsets into the pieces, in `ids`.
        long_piece_off: u32,
        /// The long segment of each piece, in `ids`.
        piece_long_off: u32,
        /// Piece length: longer segments are summed in pieces of this many tokens.
        piece: u32,
        /// Long segments (rewritten per step).
        longs: u32,
        /// Their pieces (rewritten per step).
        pieces: u32,
        _pad0: u32,
        _pad1: u32,
    }
);

/// `shaders/embedding_f16.wgsl`: the gather from f16 tables, with [`EmbParams`]'s interface.
pub const F16_SOURCE: &str = include_str!("../../../shaders/embedding_f16.wgsl");

/// Workgroup size of every entry point (`WG` in the shader).
const WG: u32 = 64;

/// Tables, in the order of every per-table array here: item, category, position, other.
const TABLES: usize = 4;
const ITEM: usize = 0;
const CAT: usize = 1;
const POS: usize = 2;
const OTHER: usize = 3;
const TABLE_NAMES: [&str; TABLES] = ["E_item", "E_cat", "E_pos", "E_other"];
/// Uniform slot of table `i`'s gather is `i`, of its segment sum `SEGMENT_SUM + i`.
const SEGMENT_SUM: usize = TABLES;

/// Sizes of the embedding layer. `rows` is the largest batch the buffers hold; smaller
/// batches are set later with [`EmbeddingBinding::set_rows`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmbeddingDims {
    /// B, at most.
    pub rows: u32,
    /// L, history slots per sample; T = L + 1 tokens with the target.
    pub seq_len: u32,
    /// Width of the item embedding.
    pub d_item: u32,
    /// Width of the category embedding.
    pub d_cat: u32,
    /// Width of the position embedding.
    pub d_pos: u32,
    /// F, other-feature fields per sample.
    pub fields: u32,
    /// Width of each other-feature embedding.
    pub d_other: u32,
    /// Row width of z, the MLP input.
    pub z_width: u32,
    /// Column of z where field 0's embedding starts.
    pub z_off: u32,
    /// Rows of each table (vocabulary sizes; `n_pos` position buckets).
    pub n_item: u32,
    /// Rows of the category table.
    pub n_cat: u32,
    /// Rows of the position table.
    pub n_pos: u32,
    /// Rows of the stacked other-feature table.
    pub n_other: u32,
}

impl EmbeddingDims {
    /// T = L + 1.
    pub fn tokens(&self) -> u32 {
        self.seq_len + 1
    }

    /// d = d_item + d_cat + d_pos, the width of x.
    pub fn d(&self) -> u32 {
        self.d_item + self.d_cat + self.d_pos
    }
}

tensors! {
    /// The forward tensors. Tables are f32 (in the parameter arena, say); ids are u32 (in a
    /// batch arena, say). A history and its target must lie in one buffer.
    pub struct EmbeddingBuffers {
        /// (B, T, d), overwritten by `token_embedding_forward`.
        x,
        /// (B, z_width): `other_embedding_forward` overwrites columns
        /// `z_off .. z_off + F * d_other` and leaves the others alone.
        z,
        /// (n_item, d_item)
        e_item,
        /// (n_cat, d_cat)
        e_cat,
        /// (n_pos, d_pos)
        e_pos,
        /// (n_other, d_other)
        e_other,
        /// u32 (B, L)
        hist_item,
        /// u32 (B, L)
        hist_cat,
        /// u32 (B, L)
        hist_pos,
        /// u32 (B), in `hist_item`'s buffer.
        target_item,
        /// u32 (B), in `hist_cat`'s buffer.
        target_cat,
        /// u32 (B, F)
        other,
    }
}

tensors! {
    /// The backward tensors.
    pub struct EmbeddingGradBuffers {
        /// (n_item, d_item), accumulated.
        de_item,
        /// (n_cat, d_cat), accumulated.
        de_cat,
        /// (n_pos, d_pos), accumulated.
        de_pos,
        /// (n_other, d_other), accumulated.
        de_other,
        /// (B, T, d): gradient of the loss with respect to x.
        dx,
        /// (B, z_width): gradient with respect to z; only the other-feature columns are read.
        dz,
        /// u32 ([`EmbeddingSegments::buffer_len`]): written by
        /// [`EmbeddingBinding::set_segments`] every step.
        segments,
    }
}

/// What [`EmbeddingKernels::bind`] takes.
pub type EmbeddingSite<'a> = Site<EmbeddingBuffers<'a>, EmbeddingGradBuffers<'a>, EmbeddingDims>;

impl<'a> EmbeddingGradBuffers<'a> {
    /// Per table (item, cat, pos, other): the gradient table, and the activation gradient
    /// its segment sum reads.
    fn per_table(&self) -> ([TensorRef<'a>; TABLES], [TensorRef<'a>; TABLES]) {
        (
            [self.de_item, self.de_cat, self.de_pos, self.de_other],
            [self.dx, self.dx, self.dx, self.dz],
        )
    }
}

/// One table seen through the shader's token mapping (see `shaders/embedding.wgsl`).
#[derive(Clone, Copy, Debug)]
struct TableMap {
    /// Columns per token (the table's width).
    w: u32,
    /// Rows of the table.
    rows: u32,
    per_sample: u32,
    hist_len: u32,
    target_from_ids: bool,
    act_stride: u32,
    act_col: u32,
    col_step: u32,
}

impl TableMap {
    /// Tokens of a batch of `b` samples.
    fn tokens(&self, b: u32) -> u32 {
        b * self.per_sample
    }
}

fn table_maps(dims: &EmbeddingDims) -> [TableMap; TABLES] {
    let (t, d, l) = (dims.tokens(), dims.d(), dims.seq_len);
    let token = |w, rows, act_col, target_from_ids| TableMap {
        w,
        rows,
        per_sample: t,
        hist_len: l,
        target_from_ids,
        act_stride: t * d,
        act_col,
        col_step: d,
    };
    [
        token(dims.d_item, dims.n_item, 0, true),
        token(dims.d_cat, dims.n_cat, dims.d_item, true),
        // The target's position bucket is 0.
        token(dims.d_pos, dims.n_pos, dims.d_item + dims.d_cat, false),
        TableMap {
            w: dims.d_other,
            rows: dims.n_other,
            per_sample: dims.fields,
            hist_len: dims.fields,
            target_from_ids: false,
            act_stride: dims.z_width,
            act_col: dims.z_off,
            col_step: dims.d_other,
        },
    ]
}

/// Checks that the dims describe a layer whose sizes fit `u32` offsets (as the shader
/// computes them) and whose other features fit the rows of z.
fn check_dims(d: &EmbeddingDims) -> Result<(), GpuError> {
    let bad = |what: String| Err(GpuError::Binding(format!("embedding dims: {what}")));
    if d.rows == 0 {
        return bad("rows must be at least 1".into());
    }
    let fields_end = u64::from(d.z_off) + u64::from(d.fields) * u64::from(d.d_other);
    if fields_end > u64::from(d.z_width) {
        return bad(format!(
            "the other features' columns {}..{fields_end} do not fit z's rows of width {}",
            d.z_off, d.z_width
        ));
    }
    let (b, t, f) = (
        u64::from(d.rows),
        u64::from(d.seq_len) + 1,
        u64::from(d.fields),
    );
    let dm = u64::from(d.d_item) + u64::from(d.d_cat) + u64::from(d.d_pos);
    for (what, n) in [
        ("x (B, T, d)", b * t * dm.max(1)),
        ("z (B, z_width)", b * u64::from(d.z_width)),
        // region_len(n) <= 4 n + 2 per table
        (
            "the segments image",
            4 * b * (3 * t + f) + 2 * TABLES as u64,
        ),
    ] {
        if n > u64::from(u32::MAX) {
            return bad(format!(
                "{what} has {n} elements for {} rows, more than u32 offsets reach; use \
                 smaller batches",
                d.rows
            ));
        }
    }
    Ok(())
}

/// How the tables of a binding are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TableFormat {
    F32,
    F16,
}

/// Uniforms and bind groups of the embedding layer, made by [`EmbeddingKernels::bind`]
/// or [`EmbeddingKernels::bind_f16`].
#[derive(Debug)]
pub struct EmbeddingBinding {
    dims: EmbeddingDims,
    tables: TableFormat,
    rows: u32,
    /// Per table, the segments set last (no ids before any).
    segs: [TableSegments; TABLES],
    widths: [u32; TABLES],
    per_sample: [u32; TABLES],
    params: [EmbParams; 2 * TABLES],
    uniform: wgpu::Buffer,
    gather: [wgpu::BindGroup; TABLES],
    segment_sum: Option<SegmentSumGroups>,
    /// The segments buffer and the element offset of the image in it.
    segments: Option<(wgpu::Buffer, u32)>,
}

/// The backward's bind groups, per table, and the scratch of the pieces' sums.
#[derive(Debug)]
struct SegmentSumGroups {
    /// (table <- scratch, act <- dx or dz): each piece's sum.
    piece_sum: [wgpu::BindGroup; TABLES],
    /// (table <- dE, act <- dx or dz): the segments of at most P tokens.
    segment_sum: [wgpu::BindGroup; TABLES],
    /// (table <- dE, act <- scratch): the long segments, from their pieces.
    long_sum: [wgpu::BindGroup; TABLES],
    /// (pieces, w) of one table at a time: f32 `max_i piece_room(N_i) w_i`.
    _scratch: wgpu::Buffer,
}

impl EmbeddingBinding {
    /// Rows of the current batch.
    pub fn rows(&self) -> u32 {
        self.rows
    }

    /// Sets the batch rows (at most the `rows` bound) for the following forward
    /// dispatches. A `queue.write_buffer`: it takes effect at the next submit, and every
    /// dispatch of this binding in that submit sees the last value set. Panics if `rows`
    /// exceeds the bound maximum (the buffers are not big enough).
    pub fn set_rows(&mut self, ctx: &GpuContext, rows: u32) {
        assert!(
            rows <= self.dims.rows,
            "embedding set_rows({rows}): the binding was made for at most {} rows",
            self.dims.rows
        );
        self.rows = rows;
        for i in 0..TABLES {
            self.params[i].n = rows * self.per_sample[i];
        }
        self.write_uniform(ctx);
    }

    /// Uploads the segments of the current batch (a `queue.write_buffer` per range of
    /// [`EmbeddingSegments::live`] into the bound segments buffer) and their numbers of
    /// distinct ids, long segments and pieces (into the uniforms, and for the backward's
    /// grids). Takes effect at the
    /// next submit, like `set_rows`. Panics if the binding was made without gradient
    /// buffers or the segments were built for other dims.
    pub fn set_segments(&mut self, ctx: &GpuContext, segs: &EmbeddingSegments) {
        let (buffer, offset) = self
            .segments
            .as_ref()
            .expect("embedding set_segments: the binding was made without gradient buffers");
        assert_eq!(
            segs.dims, self.dims,
            "embedding set_segments: the segments were built for other dims"
        );
        for r in segs.live() {
            ctx.write(buffer, *offset + r.start as u32, &segs.data[r]);
        }
        self.segs = segs.tables;
        for (params, t) in self.params[SEGMENT_SUM..].iter_mut().zip(segs.tables) {
            params.n = t.unique;
            params.piece = t.piece;
            params.longs = t.longs;
            params.pieces = t.pieces;
        }
        self.write_uniform(ctx);
    }

    fn write_uniform(&self, ctx: &GpuContext) {
        ctx.write_uniform_slots(&self.uniform, &self.params);
    }
}

/// Pipelines of `shaders/embedding.wgsl` (and `embedding_f16.wgsl` where the device has
/// `SHADER_F16`), created once.
#[derive(Debug)]
pub struct EmbeddingKernels {
    layout: wgpu::BindGroupLayout,
    gather: wgpu::ComputePipeline,
    piece_sum: wgpu::ComputePipeline,
    segment_sum: wgpu::ComputePipeline,
    long_sum: wgpu::ComputePipeline,
    /// The gather from f16 tables; `None` on a device without `SHADER_F16`.
    gather_f16: Option<wgpu::ComputePipeline>,
    /// Workgroups along x before a dispatch spills into y.
    max_groups_x: u32,
    /// The device's workgroups per dimension.
    max_groups: u32,
}

impl EmbeddingKernels {
    /// Compiles the shader and creates its pipelines (and the f16 gather's, when the
    /// device has `SHADER_F16`).
    pub fn new(ctx: &GpuContext) -> Result<Self, GpuError> {
        let max = ctx.limits.max_compute_workgroups_per_dimension;
        Self::with_grid_limit(ctx, max)
    }

    /// As [`EmbeddingKernels::new`], but dispatches spill into a second grid dimension
    /// past `max_groups_x` workgroups (at most the device's limit). The tests use a small
    /// value to run the two-dimensional grid on small shapes.
    pub fn with_grid_limit(ctx: &GpuContext, max_groups_x: u32) -> Result<Self, GpuError> {
        let max_groups = ctx.limits.max_compute_workgroups_per_dimension;
        ctx.checked("creating the embedding kernels", || {
            let layout = ctx.bind_group_layout(
                "embedding",
                &[
                    Slot::Uniform, // params
                    Slot::Storage, // table
                    Slot::Storage, // act
                    Slot::Storage, // ids
                ],
            );
            let module = ctx.shader_module(
                EmbParams::SHADER,
                &wgsl_module::<EmbParams>(EmbParams::SOURCE),
            );
            let pipeline = |entry| ctx.compute_pipeline(&module, entry, Some(&layout));
            // Same layout: the f16 table is one more storage buffer at binding 1.
            let gather_f16 = ctx.features.contains(wgpu::Features::SHADER_F16).then(|| {
                let module =
                    ctx.shader_module("embedding_f16.wgsl", &wgsl_module::<EmbParams>(F16_SOURCE));
                ctx.compute_pipeline(&module, "embedding_gather_f16", Some(&layout))
            });
            Self {
                gather: pipeline("embedding_gather"),
                piece_sum: pipeline("embedding_piece_sum"),
                segment_sum: pipeline("embedding_segment_sum"),
                long_sum: pipeline("embedding_long_sum"),
                gather_f16,
                layout,
                max_groups_x: max_groups_x.clamp(1, max_groups),
                max_groups,
            }
        })
    }

    /// Creates the uniforms and bind groups of the layer, after checking every tensor
    /// lies inside its buffer. `grads = None` binds the forward pass only.
    pub fn bind(&self, ctx: &GpuContext, site: EmbeddingSite) -> GpuResult<EmbeddingBinding> {
        self.bind_tables(ctx, site, TableFormat::F32)
    }

    /// As [`EmbeddingKernels::bind`] without gradients, for tables stored as f16: the
    /// four tables of `bufs` are f16 tensors (their offsets count f16 elements, so a
    /// table at an odd offset is fine), the ids and activations as for `bind`. The
    /// forward methods then gather from f16 into the f32 activations; the binding has no
    /// backward. An error when the device lacks `wgpu::Features::SHADER_F16`.
    pub fn bind_f16(
        &self,
        ctx: &GpuContext,
        bufs: &EmbeddingBuffers,
        dims: EmbeddingDims,
    ) -> GpuResult<EmbeddingBinding> {
        if self.gather_f16.is_none() {
            return Err(missing_shader_f16(ctx));
        }
        let site = Site::forward(*bufs, dims);
        self.bind_tables(ctx, site, TableFormat::F16)
    }

    fn bind_tables(
        &self,
        ctx: &GpuContext,
        site: EmbeddingSite,
        format: TableFormat,
    ) -> GpuResult<EmbeddingBinding> {
        let Site { bufs, grads, dims } = site;
        check_dims(&dims)?;
        let maps = table_maps(&dims);
        self.check(ctx, &site, &maps, format)?;

        let tables = [bufs.e_item, bufs.e_cat, bufs.e_pos, bufs.e_other];
        let hist = [bufs.hist_item, bufs.hist_cat, bufs.hist_pos, bufs.other];
        let targets = [Some(bufs.target_item), Some(bufs.target_cat), None, None];
        let acts = [bufs.x, bufs.x, bufs.x, bufs.z];
        let (seg_at, _) = segments_layout(&dims);
        let mut params = [EmbParams::default(); 2 * TABLES];
        for (i, m) in maps.iter().enumerate() {
            let mapping = EmbParams {
                w: m.w,
                table_rows: m.rows,
                per_sample: m.per_sample,
                hist_len: m.hist_len,
                target_from_ids: m.target_from_ids.into(),
                act_stride: m.act_stride,
                act_col: m.act_col,
                col_step: m.col_step,
                ..Default::default()
            };
            params[i] = EmbParams {
                n: m.tokens(dims.rows),
                table_off: tables[i].offset,
                hist_off: hist[i].offset,
                target_off: targets[i].map_or(0, |t| t.offset),
                act_off: acts[i].offset,
                ..mapping
            };
            if let Some(g) = grads {
                let (dtables, dacts) = g.per_table();
                let base = g.segments.offset;
                params[SEGMENT_SUM + i] = EmbParams {
                    n: 0, // set_segments
                    table_off: dtables[i].offset,
                    act_off: dacts[i].offset,
                    seg_ids_off: base + seg_at[i].ids,
                    seg_start_off: base + seg_at[i].start,
                    seg_order_off: base + seg_at[i].order,
                    long_u_off: base + seg_at[i].long_u,
                    long_piece_off: base + seg_at[i].long_piece,
                    piece_long_off: base + seg_at[i].piece_long,
                    ..mapping
                };
            }
        }

        // The gathers' and segment sums' uniforms share one buffer, one slot per table
        // and direction (a table's three backward kernels share its slot).
        let uniform = ctx.uniform_slots_buffer("embedding params", &params);

        // One bind group per dispatch: (params, table, act, ids) as in the shader.
        let group = |label: &str, slot: usize, bufs: [&wgpu::Buffer; 3]| {
            let params = uniform_slot::<EmbParams>(&uniform, slot);
            ctx.kernel_bind_group(label, &self.layout, params, &bufs)
        };
        let gather = std::array::from_fn(|i| {
            group(
                "embedding gather",
                i,
                [tables[i].buffer, acts[i].buffer, hist[i].buffer],
            )
        });
        let segment_sum = grads.map(|g| {
            let (dtables, dacts) = g.per_table();
            let scratch_len = maps
                .iter()
                .map(|m| piece_room(m.tokens(dims.rows) as usize) * m.w as usize)
                .max()
                .unwrap_or(0);
            let scratch = ctx.storage_buffer_zeroed("embedding piece sums", scratch_len);
            let seg = g.segments.buffer;
            let at = |i: usize, label: &str, table, act| {
                group(label, SEGMENT_SUM + i, [table, act, seg])
            };
            let (dt, da, sc) = (dtables.map(|t| t.buffer), dacts.map(|t| t.buffer), &scratch);
            SegmentSumGroups {
                piece_sum: std::array::from_fn(|i| at(i, "embedding piece_sum", sc, da[i])),
                segment_sum: std::array::from_fn(|i| at(i, "embedding segment_sum", dt[i], da[i])),
                long_sum: std::array::from_fn(|i| at(i, "embedding long_sum", dt[i], sc)),
                _scratch: scratch.clone(),
            }
        });
        Ok(EmbeddingBinding {
            dims,
            tables: format,
            rows: dims.rows,
            segs: Default::default(),
            widths: maps.map(|m| m.w),
            per_sample: maps.map(|m| m.per_sample),
            params,
            uniform,
            gather,
            segment_sum,
            segments: grads.map(|g| (g.segments.buffer.clone(), g.segments.offset)),
        })
    }

    /// After [`check_dims`]: checks that every tensor fits its buffer, that the ids of a
    /// history and its target share a buffer, and that the largest batch's grids fit the
    /// device and `u32` indices.
    fn check(
        &self,
        ctx: &GpuContext,
        site: &EmbeddingSite,
        maps: &[TableMap; TABLES],
        format: TableFormat,
    ) -> GpuResult<()> {
        let Site {
            bufs,
            grads,
            dims: d,
        } = site;
        let (b, l, f) = (u64::from(d.rows), u64::from(d.seq_len), u64::from(d.fields));
        let (t, dm, zw) = (l + 1, u64::from(d.d()), u64::from(d.z_width));
        let table = |rows: u32, w: u32| u64::from(rows) * u64::from(w);
        let tables = [
            ("embedding e_item", bufs.e_item, table(d.n_item, d.d_item)),
            ("embedding e_cat", bufs.e_cat, table(d.n_cat, d.d_cat)),
            ("embedding e_pos", bufs.e_pos, table(d.n_pos, d.d_pos)),
            (
                "embedding e_other",
                bufs.e_other,
                table(d.n_other, d.d_other),
            ),
        ];
        let mut tensors = vec![
            ("embedding x (B, T, d)", bufs.x, b * t * dm),
            ("embedding z (B, z_width)", bufs.z, b * zw),
            ("embedding hist_item (B, L)", bufs.hist_item, b * l),
            ("embedding hist_cat (B, L)", bufs.hist_cat, b * l),
            ("embedding hist_pos (B, L)", bufs.hist_pos, b * l),
            ("embedding target_item (B)", bufs.target_item, b),
            ("embedding target_cat (B)", bufs.target_cat, b),
            ("embedding other (B, F)", bufs.other, b * f),
        ];
        if let Some(g) = grads {
            tensors.extend([
                ("embedding de_item", g.de_item, table(d.n_item, d.d_item)),
                ("embedding de_cat", g.de_cat, table(d.n_cat, d.d_cat)),
                ("embedding de_pos", g.de_pos, table(d.n_pos, d.d_pos)),
                (
                    "embedding de_other",
                    g.de_other,
                    table(d.n_other, d.d_other),
                ),
                ("embedding dx (B, T, d)", g.dx, b * t * dm),
                ("embedding dz (B, z_width)", g.dz, b * zw),
                (
                    "embedding segments",
                    g.segments,
                    segments_layout(d).1.into(),
                ),
            ]);
        }
        match format {
            TableFormat::F32 => tensors.extend(tables),
            TableFormat::F16 => {
                for (what, tensor, len) in tables {
                    check_f16(ctx, &format!("{what} (f16)"), tensor, len)?;
                }
            }
        }
        for (what, tensor, len) in tensors {
            tensor.check(ctx, what, len)?;
        }
        for (hist, target, name) in [
            (bufs.hist_item, bufs.target_item, "item"),
            (bufs.hist_cat, bufs.target_cat, "cat"),
        ] {
            if hist.buffer != target.buffer {
                return Err(GpuError::Binding(format!(
                    "embedding ids: hist_{name} and target_{name} lie in different buffers; \
                     put them in one (the batch arena)"
                )));
            }
        }
        for (m, name) in maps.iter().zip(TABLE_NAMES) {
            let invocations = u64::from(m.tokens(d.rows)) * u64::from(m.w);
            if self.grid(invocations).is_none() {
                return Err(GpuError::Binding(format!(
                    "embedding {name}: {invocations} invocations for {} rows do not fit the \
                     device's grid of {} x {} workgroups of {WG} (or u32 indices); split the \
                     batch",
                    d.rows, self.max_groups_x, self.max_groups
                )));
            }
        }
        Ok(())
    }

    /// `x[b, t] = concat(E_item[item], E_cat[cat], E_pos[pos])` for the current rows.
    pub fn token_embedding_forward(&self, pass: &mut wgpu::ComputePass, b: &EmbeddingBinding) {
        for i in [ITEM, CAT, POS] {
            self.gather(pass, b, i);
        }
    }

    /// `z[b, z_off + f*d_other ..][..d_other] = E_other[other[b, f]]` for the current rows;
    /// z's other columns are left alone.
    pub fn other_embedding_forward(&self, pass: &mut wgpu::ComputePass, b: &EmbeddingBinding) {
        self.gather(pass, b, OTHER);
    }

    fn gather(&self, pass: &mut wgpu::ComputePass, b: &EmbeddingBinding, table: usize) {
        let pipeline = match b.tables {
            TableFormat::F32 => &self.gather,
            TableFormat::F16 => self
                .gather_f16
                .as_ref()
                .expect("embedding: bind_f16 checked the f16 pipeline"),
        };
        let n = b.rows * b.per_sample[table];
        self.dispatch(pass, pipeline, &b.gather[table], n, b.widths[table]);
    }

    /// dE_item, dE_cat, dE_pos += scatter of dx by the ids of the segments set last.
    /// Panics if the binding was made without gradient buffers.
    pub fn token_embedding_backward(&self, pass: &mut wgpu::ComputePass, b: &EmbeddingBinding) {
        for i in [ITEM, CAT, POS] {
            self.segment_sum(pass, b, i);
        }
    }

    /// dE_other += scatter of dz's other-feature columns by the segments set last.
    /// Panics if the binding was made without gradient buffers.
    pub fn other_embedding_backward(&self, pass: &mut wgpu::ComputePass, b: &EmbeddingBinding) {
        self.segment_sum(pass, b, OTHER);
    }

    /// The long segments' pieces, the short segments, then the long ones from their
    /// pieces (the scratch then holds this table's pieces until the next table's).
    fn segment_sum(&self, pass: &mut wgpu::ComputePass, b: &EmbeddingBinding, table: usize) {
        let g = b
            .segment_sum
            .as_ref()
            .expect("embedding backward: the binding was made without gradient buffers");
        let (s, w) = (b.segs[table], b.widths[table]);
        self.dispatch(pass, &self.piece_sum, &g.piece_sum[table], s.pieces, w);
        self.dispatch(pass, &self.segment_sum, &g.segment_sum[table], s.unique, w);
        self.dispatch(pass, &self.long_sum, &g.long_sum[table], s.longs, w);
    }

    /// One invocation per (token or id, column): `n * w` of them, guarded in the shader.
    fn dispatch(
        &self,
        pass: &mut wgpu::ComputePass,
        pipeline: &wgpu::ComputePipeline,
        bg: &wgpu::BindGroup,
        n: u32,
        w: u32,
    ) {
        let invocations = u64::from(n) * u64::from(w);
        if invocations == 0 {
            return;
        }
        let (x, y) = self
            .grid(invocations)
            .expect("embedding: bind checked the grid of the largest batch");
        dispatch(pass, pipeline, bg, [x, y, 1]);
    }

    /// Workgroups `(x, y)` covering `invocations` (the shader's linear index is
    /// `gid.y * x * WG + gid.x`), or `None` when they need more than the device has or
    /// overflow `u32` indices.
    fn grid(&self, invocations: u64) -> Option<(u32, u32)> {
        grid(invocations, self.max_groups_x, self.max_groups)
    }
}

/// Ok when `ctx`'s device can gather from f16 tables (it has `SHADER_F16`), else the
/// error [`EmbeddingKernels::bind_f16`] returns: which feature, and how to get it.
pub fn check_f16_tables(ctx: &GpuContext) -> Result<(), GpuError> {
    match ctx.features.contains(wgpu::Features::SHADER_F16) {
        true => Ok(()),
        false => Err(missing_shader_f16(ctx)),
    }
}

fn missing_shader_f16(ctx: &GpuContext) -> GpuError {
    GpuError::MissingFeature(format!(
        "f16 embedding tables need wgpu::Features::SHADER_F16, which the device {} was not \
         created with; create it with GpuContext::with_optional_features(.., \
         wgpu::Features::SHADER_F16) (or request the feature on the application's device, \
         where the adapter offers it), or keep the tables in f32",
        ctx.describe()
    ))
}

/// Checks that the f16 tensor `t` (offset and `len` in f16 elements) lies inside its
/// buffer and that the device can bind the buffer.
fn check_f16(ctx: &GpuContext, what: &str, t: TensorRef, len: u64) -> Result<(), GpuError> {
    let have = t.buffer.size() / 2;
    let end = u64::from(t.offset) + len;
    if end > have {
        return Err(GpuError::Binding(format!(
            "{what}: f16 elements {}..{end} lie past the end of its buffer ({have} f16 \
             elements)",
            t.offset
        )));
    }
    // The binding-size check of an f32 tensor of no elements at the buffer's start.
    TensorRef::whole(t.buffer).check(ctx, what, 0)
}

fn grid(invocations: u64, max_x: u32, max_y: u32) -> Option<(u32, u32)> {
    let groups = invocations.div_ceil(u64::from(WG)).max(1);
    let x = groups.min(u64::from(max_x));
    let y = groups.div_ceil(x);
    let fits = y <= u64::from(max_y) && x * y * u64::from(WG) <= u64::from(u32::MAX);
    fits.then_some((x as u32, y as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_spills_into_y_and_covers_every_invocation() {
        assert_eq!(grid(1, 65535, 65535), Some((1, 1)));
        assert_eq!(grid(64, 65535, 65535), Some((1, 1)));
        assert_eq!(grid(65, 65535, 65535), Some((2, 1)));
        // 10 groups with at most 3 along x: 3 x 4 = 12 >= 10.
        assert_eq!(grid(10 * 64, 3, 65535), Some((3, 4)));
        assert_eq!(grid(10 * 64, 3, 3), None);
        assert_eq!(grid(u64::from(u32::MAX), 65535, 65535), None);
    }
}
