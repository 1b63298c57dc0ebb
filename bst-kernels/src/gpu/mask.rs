//! The valid mask of a batch from its history item ids on the GPU: launcher for
//! `shaders/mask.wgsl`. CPU reference: [`crate::cpu::mask`].
//!
//! ```text
//! let mask = MaskKernels::new(&ctx)?;                     // once
//! let mut b = mask.bind(&ctx, &bufs, dims)?;              // once per buffer set
//! b.set_rows(&ctx, last_batch_rows);                      // when the batch size changes
//! mask.valid_mask(&mut pass, &b);                         // every batch, before attention
//! ```

use super::launch::{Binding, Kernels, flat_grid, tensors, wgsl_params};
use super::{GpuContext, GpuError};

wgsl_params!(
    "mask.wgsl",
    /// The kernel's uniform, and `Params` of `shaders/mask.wgsl`, written from it.
    pub struct MaskParams {
        /// Rows of the current batch.
        b: u32,
        /// History length L (T = L + 1).
        l: u32,
        hist_off: u32,
        valid_off: u32,
    },
    storage [hist_item: u32, valid: u32],
    kernels ["valid_mask"],
    rows b
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

tensors! {
    /// The tensors of the mask.
    pub struct MaskBuffers {
        /// (rows, T) u32, overwritten.
        valid,
        /// (rows, L) u32: history item ids, 0 = padding.
        hist_item,
    }
}

/// Uniform and bind group of one call site, made by [`MaskKernels::bind`].
pub type MaskBinding = Binding<MaskParams>;

/// The pipeline of `shaders/mask.wgsl`, created once.
pub type MaskKernels = Kernels<MaskParams>;

impl MaskKernels {
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
        let storage = [bufs.hist_item.buffer, bufs.valid.buffer];
        Ok(self.binding(ctx, params, (dims.rows, 1), &storage, false, ()))
    }

    /// valid (B, T) from hist_item (B, L), as [`crate::cpu::mask::valid_mask`].
    pub fn valid_mask(&self, pass: &mut wgpu::ComputePass, b: &MaskBinding) {
        let n = b.params.b * (b.params.l + 1);
        self.run(pass, "valid_mask", b, flat_grid(n, WG, self.k.max_groups));
    }
}
