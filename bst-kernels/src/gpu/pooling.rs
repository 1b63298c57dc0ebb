//! Pooling of the last block's tokens into the MLP input on the GPU: launcher for
//! `shaders/pooling.wgsl`. CPU reference: [`crate::cpu::pooling`].
//!
//! ```text
//! let pool = PoolingKernels::new(&ctx)?;                              // once
//! let mut b = pool.bind(&ctx, Site::with_grads(bufs, grads, dims))?;  // once per buffer set
//! b.set_rows(&ctx, last_batch_rows);                                  // a smaller batch
//! pool.forward(&mut pass, &b);                                        // every step
//! pool.backward(&mut pass, &b);
//! ```

use super::launch::{Binding, Kernels, Site, flat_grid, tensors, wgsl_params};
use super::{GpuContext, GpuError, GpuResult};
pub use crate::cpu::pooling::PoolMode;

wgsl_params!(
    "pooling.wgsl",
    /// The kernels' uniform, and `Params` of `shaders/pooling.wgsl`, written from it.
    pub struct PoolParams {
        /// Rows of the current batch.
        b: u32,
        t: u32,
        d: u32,
        /// Row stride of out and dout.
        row: u32,
        /// First pooled column in a row of out / dout.
        off: u32,
        /// Pooled columns: d, 2d or T*d.
        width: u32,
        mode: u32,
        x_off: u32,
        valid_off: u32,
        out_off: u32,
        dout_off: u32,
        dx_off: u32,
    },
    storage [x: f32, valid: u32, out: f32, dout: f32, dx: f32],
    kernels ["pooling_forward", "pooling_backward"],
    rows b
);

/// Invocations per workgroup (`WG` in the shader).
const WG: u32 = 256;

/// Sizes of one pooling call site. `rows` is the largest batch the buffers hold; smaller
/// batches are set later with [`PoolingBinding::set_rows`]. The pooled vector
/// (`mode.width(t, d)` columns) goes to columns `off..off + width` of rows `row` wide.
#[derive(Clone, Copy, Debug)]
pub struct PoolingDims {
    /// Samples the buffers hold (a smaller batch: `set_rows`).
    pub rows: u32,
    /// Tokens per sample (T).
    pub t: u32,
    /// Token width (d).
    pub d: u32,
    /// Row width of `out` (the MLP input).
    pub row: u32,
    /// First column of `out` the pooled vector fills.
    pub off: u32,
    /// Target, mean or flatten.
    pub mode: PoolMode,
}

tensors! {
    /// The forward tensors.
    pub struct PoolingBuffers {
        /// (rows, row) f32; only columns `off..off + width` are written.
        out,
        /// (rows, T, d) f32: the last block's output.
        x,
        /// (rows, T) u32: nonzero where the token is valid (not padding).
        valid,
    }
}

tensors! {
    /// The backward tensors.
    pub struct PoolingGradBuffers {
        /// (rows, T, d), overwritten.
        dx,
        /// (rows, row); only columns `off..off + width` are read.
        dout,
    }
}

/// What [`PoolingKernels::bind`] takes.
pub type PoolingSite<'a> = Site<PoolingBuffers<'a>, PoolingGradBuffers<'a>, PoolingDims>;

/// Uniform and bind group of one call site, made by [`PoolingKernels::bind`].
pub type PoolingBinding = Binding<PoolParams>;

/// Pipelines of `shaders/pooling.wgsl`, created once.
pub type PoolingKernels = Kernels<PoolParams>;

impl PoolingKernels {
    /// Creates the uniform and bind group of one call site, after checking the sizes and
    /// that every tensor lies inside its buffer. `grads = None` binds the forward only.
    pub fn bind(&self, ctx: &GpuContext, site: PoolingSite) -> GpuResult<PoolingBinding> {
        let Site { bufs, grads, dims } = site;
        let PoolingDims {
            rows,
            t,
            d,
            row,
            off,
            mode,
        } = dims;
        if t == 0 || d == 0 {
            return Err(GpuError::Binding(format!(
                "pooling with T = {t}, d = {d}: both must be at least 1"
            )));
        }
        let width = mode.width(t as usize, d as usize) as u64;
        if u64::from(off) + width > u64::from(row) {
            return Err(GpuError::Binding(format!(
                "pooling {mode:?} (T = {t}, d = {d}): columns {off}..{} lie past the row \
                 width {row}; widen the row or lower the offset",
                u64::from(off) + width
            )));
        }
        let (rows_l, t_l, d_l, row_l) =
            (u64::from(rows), u64::from(t), u64::from(d), u64::from(row));
        let mut tensors = vec![
            ("pooling out (rows, row)", bufs.out, rows_l * row_l),
            ("pooling x (rows, T, d)", bufs.x, rows_l * t_l * d_l),
            ("pooling valid (rows, T)", bufs.valid, rows_l * t_l),
        ];
        if let Some(g) = grads {
            tensors.extend([
                ("pooling dx (rows, T, d)", g.dx, rows_l * t_l * d_l),
                ("pooling dout (rows, row)", g.dout, rows_l * row_l),
            ]);
        }
        for (what, tensor, len) in tensors {
            tensor.check(ctx, what, len)?;
        }

        let params = PoolParams {
            b: rows,
            t,
            d,
            row,
            off,
            width: width as u32, // <= row
            mode: mode as u32,
            x_off: bufs.x.offset,
            valid_off: bufs.valid.offset,
            out_off: bufs.out.offset,
            dout_off: grads.map_or(0, |g| g.dout.offset),
            dx_off: grads.map_or(0, |g| g.dx.offset),
        };
        let dout = grads.map_or(&self.k.dummy, |g| g.dout.buffer);
        let dx = grads.map_or(&self.k.dummy, |g| g.dx.buffer);
        let storage = [bufs.x.buffer, bufs.valid.buffer, bufs.out.buffer, dout, dx];
        Ok(self.binding(ctx, params, (rows, 1), &storage, grads.is_some(), ()))
    }

    /// `out[b, off..off + width] = pool(x[b])`, as [`crate::cpu::pooling::pooling_forward`].
    pub fn forward(&self, pass: &mut wgpu::ComputePass, b: &PoolingBinding) {
        let n = b.params.b * b.params.width;
        self.run(
            pass,
            "pooling_forward",
            b,
            flat_grid(n, WG, self.k.max_groups),
        );
    }

    /// dx = gradient of the pooled columns of dout (overwrites), as
    /// [`crate::cpu::pooling::pooling_backward`]. Panics if the binding was made without
    /// gradient buffers.
    pub fn backward(&self, pass: &mut wgpu::ComputePass, b: &PoolingBinding) {
        b.require_grads("pooling backward");
        // One invocation per (sample, channel), each over the sample's T tokens.
        let n = b.params.b * b.params.d;
        self.run(
            pass,
            "pooling_backward",
            b,
            flat_grid(n, WG, self.k.max_groups),
        );
    }
}
