//! Residual + inverted dropout on the GPU, `out = x + dropout(a)`: launcher for
//! `shaders/dropout.wgsl`. CPU reference: [`crate::cpu::dropout`].
//!
//! The mask is the CPU's bit for bit: the host computes `stream`, `threshold` and `scale`
//! with [`DropoutKey`]'s own methods and the shader applies the same integer hash, so
//! GPU and CPU outputs are identical. The key changes every step: [`DropoutBinding::set_key`].
//!
//! ```text
//! let dk = DropoutKernels::new(&ctx)?;                                    // once
//! let mut s1 = dk.bind(&ctx, Site::with_grads(bufs, grads, dims), key)?;  // once a site
//! s1.set_key(&ctx, DropoutKey { step, ..key });                           // every step
//! s1.set_rows(&ctx, last_batch_rows);                                     // a smaller batch
//! dk.forward(&mut pass, &s1);
//! dk.backward(&mut pass, &s1);
//! ```

use super::launch::{Binding, Kernels, Site, strided_grid, tensors, wgsl_params};
use super::{GpuContext, GpuResult};
use crate::cpu::dropout::DropoutKey;

wgsl_params!(
    "dropout.wgsl",
    /// The uniform, and `Params` of `shaders/dropout.wgsl`, written from it.
    pub struct DropoutParams {
        n: u32,
        x_off: u32,
        a_off: u32,
        out_off: u32,
        dout_off: u32,
        da_off: u32,
        stream: u32,
        threshold: u32,
        scale: f32,
        /// Always 0. XORed into the bits of `a * mask`, which stops the compiler from fusing
        /// `x + a * mask` into one fma (rounded once, unlike the CPU's multiply then add).
        opaque_zero: u32,
        /// The mask index of element 0 ([`DropoutBinding::set_first`]): a data-parallel
        /// rank's shard of a batch takes the masks of its rows in the global batch.
        first: u32,
        _pad1: u32,
    },
    storage [x: f32, a: f32, out: f32, dout: f32, da: f32],
    kernels ["residual_dropout_forward", "residual_dropout_backward"],
    rows n
);

impl DropoutParams {
    fn set_key(&mut self, key: DropoutKey) {
        assert!(
            (0.0..1.0).contains(&key.p),
            "dropout key: p = {} is outside [0, 1)",
            key.p
        );
        self.stream = key.stream();
        self.threshold = key.threshold();
        self.scale = key.scale();
    }
}

/// Workgroup size of both kernels (`WG` in the shader).
const WG: u32 = 256;

/// Sizes of one dropout site: `rows x width` elements, element `i` of the mask being
/// element `i` of the row-major tensor (as on the CPU). `rows` is the largest batch the
/// buffers hold; smaller batches are set later with [`DropoutBinding::set_rows`].
#[derive(Clone, Copy, Debug)]
pub struct DropoutDims {
    /// Rows the buffers hold (a smaller batch: `set_rows`).
    pub rows: u32,
    /// Elements per row.
    pub width: u32,
}

tensors! {
    /// The forward tensors. `out` may be `x` itself (same buffer and offset): each
    /// invocation reads its elements before writing.
    pub struct DropoutBuffers {
        /// (rows, width)
        out,
        /// (rows, width): the residual stream.
        x,
        /// (rows, width): the branch that is dropped out.
        a,
    }
}

tensors! {
    /// The backward tensors (the gradient of `x` is `dout` itself). `da` may be `dout`.
    pub struct DropoutGradBuffers {
        /// (rows, width), overwritten.
        da,
        /// (rows, width)
        dout,
    }
}

/// What [`DropoutKernels::bind`] takes.
pub type DropoutSite<'a> = Site<DropoutBuffers<'a>, DropoutGradBuffers<'a>, DropoutDims>;

/// Uniform and bind group of one dropout site, made by [`DropoutKernels::bind`]; its
/// `set_rows` counts rows of `width` elements.
pub type DropoutBinding = Binding<DropoutParams>;

impl DropoutBinding {
    /// Sets the mask (seed, step, site, p) for the following dispatches; like
    /// [`DropoutBinding::set_rows`], effective at the next submit, last value wins.
    /// `p = 0` keeps every element (eval). Panics if `p` is outside [0, 1).
    pub fn set_key(&mut self, ctx: &GpuContext, key: DropoutKey) {
        self.update(ctx, |p| p.set_key(key));
    }

    /// Element `i` takes the mask of index `first + i` from the next submit on (as
    /// `cpu::dropout::residual_dropout_forward_at`): a data-parallel rank's shard of a
    /// batch, with `first` its first row times the row's elements, draws the masks of
    /// its rows in the global batch. 0 when bound.
    pub fn set_first(&mut self, ctx: &GpuContext, first: u32) {
        self.update(ctx, |p| p.first = first);
    }
}

/// Pipelines of `shaders/dropout.wgsl`, created once.
pub type DropoutKernels = Kernels<DropoutParams>;

impl DropoutKernels {
    /// Creates the uniform and bind group of one dropout site with its first `key`,
    /// after checking every tensor lies inside its buffer. `grads = None` binds the
    /// forward pass only. Panics if `key.p` is outside [0, 1).
    pub fn bind(
        &self,
        ctx: &GpuContext,
        site: DropoutSite,
        key: DropoutKey,
    ) -> GpuResult<DropoutBinding> {
        let Site { bufs, grads, dims } = site;
        let DropoutDims { rows, width } = dims;
        let n = u64::from(rows) * u64::from(width);
        let what = |t: &str| format!("dropout {t} (rows {rows}, width {width})");
        bufs.out.check(ctx, &what("out"), n)?;
        bufs.x.check(ctx, &what("x"), n)?;
        bufs.a.check(ctx, &what("a"), n)?;
        if let Some(g) = grads {
            g.da.check(ctx, &what("da"), n)?;
            g.dout.check(ctx, &what("dout"), n)?;
        }
        // The checks above bound n by a buffer's element count, so it fits a u32.
        let mut params = DropoutParams {
            n: n as u32,
            x_off: bufs.x.offset,
            a_off: bufs.a.offset,
            out_off: bufs.out.offset,
            dout_off: grads.map_or(0, |g| g.dout.offset),
            da_off: grads.map_or(0, |g| g.da.offset),
            ..Default::default()
        };
        params.set_key(key);
        let d = &self.k.dummy;
        let storage = [
            bufs.x.buffer,
            bufs.a.buffer,
            bufs.out.buffer,
            grads.map_or(d, |g| g.dout.buffer),
            grads.map_or(d, |g| g.da.buffer),
        ];
        let has_grads = grads.is_some();
        Ok(self.binding(ctx, params, (rows, width), &storage, has_grads, ()))
    }

    /// out = x + a * mask
    pub fn forward(&self, pass: &mut wgpu::ComputePass, b: &DropoutBinding) {
        self.run(pass, "residual_dropout_forward", b, self.grid(b));
    }

    /// da = dout * mask (the gradient of `x` is `dout` itself). Panics if the binding was
    /// made without gradient buffers.
    pub fn backward(&self, pass: &mut wgpu::ComputePass, b: &DropoutBinding) {
        b.require_grads("dropout backward");
        self.run(pass, "residual_dropout_backward", b, self.grid(b));
    }

    /// One invocation per element, grid-stride past the device's workgroup limit.
    fn grid(&self, b: &DropoutBinding) -> [u32; 3] {
        strided_grid(b.params.n, WG, self.k.max_groups)
    }
}
