//! The valid mask of a batch from its history item ids on the GPU: launcher for
//! `shaders/mask.wgsl`. CPU reference: [`crate::cpu::mask`].
//!
//! ```text
//! let mask = MaskKernels::new(&ctx)?;                     // once
//! let mut b = mask.bind(&ctx, &bufs, dims)?;              // once per buffer set
//! b.set_rows(&ctx, last_batch_rows);                      // when the batch size changes
//! mask.valid_mask(&mut pass, &b);                         // every batch, before attention
//! ```

use super::launch::{Launcher, assert_bound, dispatch, flat_grid, wgsl_params};
use super::{GpuContext, GpuError, TensorRef};

wgsl_params!(
    "mask.wgsl",
    /// The kernel's uniform, field for field `Params` in `shaders/mask.wgsl`.
    pub(crate) struct MaskParams {
        b: u32,
        l: u32,
        hist_off: u32,
        valid_off: u32,
    }
);

/// Invocations per workgroup (`WG` in the shader).
const WG: u32 = 256;

/// Sizes of one call site. `rows` is the largest batch the buffers hold; smaller batches
/// are set later with [`MaskBinding::set_rows`].
#[derive(Clone, Copy, Debug)]
pub struct MaskDims {
    /// Samples the buffers hold (B).
    pub rows: u32,
    /// History length L (T = L + 1 tokens).
    pub seq_len: u32,
}

/// The tensors of the mask.
#[derive(Clone, Copy, Debug)]
pub struct MaskBuffers<'a> {
    /// (rows, T) u32, overwritten.
    pub valid: TensorRef<'a>,
    /// (rows, L) u32: history item ids, 0 = padding.
    pub hist_item: TensorRef<'a>,
}

/// Uniform and bind group of one call site, made by [`MaskKernels::bind`].
#[derive(Debug)]
pub struct MaskBinding {
    params: MaskParams,
    max_rows: u32,
    uniform: wgpu::Buffer,
    group: wgpu::BindGroup,
}

impl MaskBinding {
    /// Rows of the current batch.
    pub fn rows(&self) -> u32 {
        self.params.b
    }

    /// Sets the batch rows (at most the bound `rows`). A `queue.write_buffer`: it takes
    /// effect at the next submit, and every dispatch of this binding in that submit sees
    /// the last value set. Panics if `rows` exceeds the bound maximum.
    pub fn set_rows(&mut self, ctx: &GpuContext, rows: u32) {
        assert_bound("mask set_rows", rows, self.max_rows, "rows");
        self.params.b = rows;
        ctx.write(&self.uniform, 0, &[self.params]);
    }
}

/// The pipeline of `shaders/mask.wgsl`, created once.
#[derive(Debug)]
pub struct MaskKernels {
    k: Launcher,
}

impl MaskKernels {
    /// Compiles the shader and creates its pipeline.
    pub fn new(ctx: &GpuContext) -> Result<Self, GpuError> {
        let source = include_str!("../../../shaders/mask.wgsl");
        let entries = ["valid_mask"];
        // Storage: hist_item; valid.
        let k = Launcher::new(ctx, "mask", source, 2, &entries)?;
        Ok(Self { k })
    }

    /// Caps the workgroups per grid row (at least 1), so that tests reach the grid's
    /// second row with small data.
    pub fn with_max_workgroups_per_dim(mut self, max: u32) -> Self {
        self.k.cap(max);
        self
    }

    /// Creates the uniform and bind group, after checking both tensors lie inside their
    /// buffers.
    pub fn bind(
        &self,
        ctx: &GpuContext,
        bufs: &MaskBuffers,
        dims: MaskDims,
    ) -> Result<MaskBinding, GpuError> {
        let (b, l) = (u64::from(dims.rows), u64::from(dims.seq_len));
        bufs.valid.check(ctx, "mask valid (rows, T)", b * (l + 1))?;
        bufs.hist_item
            .check(ctx, "mask hist_item (rows, L)", b * l)?;
        let params = MaskParams {
            b: dims.rows,
            l: dims.seq_len,
            hist_off: bufs.hist_item.offset,
            valid_off: bufs.valid.offset,
        };
        let uniform = ctx.uniform_buffer("mask params", &params);
        let group = ctx.kernel_bind_group(
            "mask",
            &self.k.layout,
            uniform.as_entire_binding(),
            &[bufs.hist_item.buffer, bufs.valid.buffer],
        );
        Ok(MaskBinding {
            params,
            max_rows: dims.rows,
            uniform,
            group,
        })
    }

    /// valid (B, T) from hist_item (B, L), as [`crate::cpu::mask::valid_mask`].
    pub fn valid_mask(&self, pass: &mut wgpu::ComputePass, b: &MaskBinding) {
        let n = b.params.b * (b.params.l + 1);
        dispatch(
            pass,
            self.k.pipeline("valid_mask"),
            &b.group,
            flat_grid(n, WG, self.k.max_groups),
        );
    }
}
