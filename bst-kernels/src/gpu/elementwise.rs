//! Element-wise ops on the GPU: the residual sum (`add`), `fill`, and LeakyReLU forward
//! and backward; launcher for `shaders/elementwise.wgsl`. CPU references:
//! [`crate::cpu::elementwise`] and [`crate::cpu::activation`]; GPU and CPU results are
//! bit-identical.
//!
//! ```text
//! let elt = ElementwiseKernels::new(&ctx)?;                           // once
//! let mut a1 = elt.bind(&ctx, Site::with_grads(bufs, grads, dims))?;  // LeakyReLU, once a site
//! let sum = elt.bind_add(&ctx, out, x, y, rows, width)?;              // out = x + y
//! let zero = elt.bind_fill(&ctx, target, n, 0.0)?;                    // target = 0
//! a1.set_rows(&ctx, last_batch_rows);                                 // a smaller batch
//! elt.forward(&mut pass, &a1);                                        // every step: the op bound
//! elt.backward(&mut pass, &a1);                                       // LeakyReLU only
//! ```

use super::launch::{Binding, Kernels, Site, strided_grid, tensors, wgsl_params};
use super::{GpuContext, GpuError, GpuResult, TensorRef};

wgsl_params!(
    "elementwise.wgsl",
    /// The uniform, and `Params` of `shaders/elementwise.wgsl`, written from it.
    pub struct ElementwiseParams {
        n: u32,
        x_off: u32,
        y_off: u32,
        out_off: u32,
        dout_off: u32,
        dx_off: u32,
        /// `fill`: the value; LeakyReLU: alpha.
        value: f32,
        _pad0: u32,
    },
    storage [x: f32, y: f32, out: f32, dout: f32, dx: f32],
    kernels ["add", "fill", "leaky_relu_forward", "leaky_relu_backward"],
    rows n
);

/// Workgroup size of both kernels (`WG` in the shader).
const WG: u32 = 256;

/// Sizes of one call site: `rows x width` elements. `rows` is the largest batch the
/// buffers hold; smaller batches are set later with [`ElementwiseBinding::set_rows`].
#[derive(Clone, Copy, Debug)]
pub struct ActivationDims {
    /// Rows the buffers hold (a smaller batch: `set_rows`).
    pub rows: u32,
    /// Elements per row.
    pub width: u32,
    /// Slope for `x <= 0`.
    pub alpha: f32,
}

tensors! {
    /// The forward tensors. `out` may be `inp` itself (same buffer and offset): each
    /// invocation reads its element before writing it.
    pub struct ActivationBuffers {
        /// (rows, width)
        out,
        /// (rows, width): the input of the forward pass, also read by the backward.
        inp,
    }
}

tensors! {
    /// The backward tensors. `dinp` may be `dout` itself, as `out` may be `inp`.
    pub struct ActivationGradBuffers {
        /// (rows, width), overwritten.
        dinp,
        /// (rows, width)
        dout,
    }
}

/// What [`ElementwiseKernels::bind`] takes.
pub type ActivationSite<'a> =
    Site<ActivationBuffers<'a>, ActivationGradBuffers<'a>, ActivationDims>;

/// The op of a binding: the entry point its `forward` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElementwiseOp {
    /// `out = x + y`
    Add,
    /// `out = value`
    Fill,
    /// `out = leaky_relu(inp)`, with a backward.
    LeakyRelu,
}

/// Uniform and bind group of one call site, made by [`ElementwiseKernels::bind`]
/// (LeakyReLU), [`ElementwiseKernels::bind_add`] or [`ElementwiseKernels::bind_fill`];
/// its `set_rows` counts rows of `width` elements.
pub type ElementwiseBinding = Binding<ElementwiseParams, ElementwiseOp>;

impl ElementwiseBinding {
    /// Elements the next dispatch covers.
    pub fn len(&self) -> u32 {
        self.params.n
    }

    /// No elements.
    pub fn is_empty(&self) -> bool {
        self.params.n == 0
    }

    /// A fill's element count (at most the bound `n`; a fill's rows are its elements), as
    /// [`ElementwiseBinding::set_rows`].
    pub fn set_len(&mut self, ctx: &GpuContext, n: u32) {
        self.set_rows(ctx, n);
    }
}

/// Pipelines of `shaders/elementwise.wgsl`, created once.
pub type ElementwiseKernels = Kernels<ElementwiseParams>;

impl ElementwiseKernels {
    /// Creates the uniform and bind group of one LeakyReLU call site, after checking every
    /// tensor lies inside its buffer. `grads = None` binds the forward pass only.
    pub fn bind(&self, ctx: &GpuContext, site: ActivationSite) -> GpuResult<ElementwiseBinding> {
        let Site { bufs, grads, dims } = site;
        let ActivationDims { rows, width, alpha } = dims;
        let n = u64::from(rows) * u64::from(width);
        let what = |t: &str| format!("activation {t} (rows {rows}, width {width})");
        bufs.out.check(ctx, &what("out"), n)?;
        bufs.inp.check(ctx, &what("inp"), n)?;
        if let Some(g) = grads {
            g.dinp.check(ctx, &what("dinp"), n)?;
            g.dout.check(ctx, &what("dout"), n)?;
        }
        // The checks above bound n by a buffer's element count, so it fits a u32.
        let params = ElementwiseParams {
            n: n as u32,
            x_off: bufs.inp.offset,
            out_off: bufs.out.offset,
            dout_off: grads.map_or(0, |g| g.dout.offset),
            dx_off: grads.map_or(0, |g| g.dinp.offset),
            value: alpha,
            ..Default::default()
        };
        let d = &self.k.dummy;
        let storage = [
            bufs.inp.buffer,
            d,
            bufs.out.buffer,
            grads.map_or(d, |g| g.dout.buffer),
            grads.map_or(d, |g| g.dinp.buffer),
        ];
        let op = ElementwiseOp::LeakyRelu;
        Ok(self.binding(ctx, params, (rows, width), &storage, grads.is_some(), op))
    }

    /// Binds `out = x + y` over `rows x width` elements (the residual sums of the
    /// backward), after checking every tensor lies inside its buffer. `out` may be `x` or
    /// `y` itself.
    pub fn bind_add(
        &self,
        ctx: &GpuContext,
        out: TensorRef,
        x: TensorRef,
        y: TensorRef,
        rows: u32,
        width: u32,
    ) -> Result<ElementwiseBinding, GpuError> {
        let n = u64::from(rows) * u64::from(width);
        let what = |t: &str| format!("add {t} (rows {rows}, width {width})");
        out.check(ctx, &what("out"), n)?;
        x.check(ctx, &what("x"), n)?;
        y.check(ctx, &what("y"), n)?;
        let params = ElementwiseParams {
            n: n as u32,
            x_off: x.offset,
            y_off: y.offset,
            out_off: out.offset,
            ..Default::default()
        };
        let d = &self.k.dummy;
        let storage = [x.buffer, y.buffer, out.buffer, d, d];
        let op = ElementwiseOp::Add;
        Ok(self.binding(ctx, params, (rows, width), &storage, false, op))
    }

    /// Binds a fill of `n` elements of `target` with `value` (0.0 to zero a gradient),
    /// after checking the range lies inside its buffer. A smaller count later:
    /// [`ElementwiseBinding::set_len`].
    pub fn bind_fill(
        &self,
        ctx: &GpuContext,
        target: TensorRef,
        n: u32,
        value: f32,
    ) -> Result<ElementwiseBinding, GpuError> {
        target.check(ctx, "fill target (n)", u64::from(n))?;
        let params = ElementwiseParams {
            n,
            out_off: target.offset,
            value,
            ..Default::default()
        };
        let d = &self.k.dummy;
        let storage = [d, d, target.buffer, d, d];
        let op = ElementwiseOp::Fill;
        Ok(self.binding(ctx, params, (n, 1), &storage, false, op))
    }

    /// The op bound: `out = x + y`, `out = value`, or `out = leaky_relu(inp)`.
    pub fn forward(&self, pass: &mut wgpu::ComputePass, b: &ElementwiseBinding) {
        let entry = match b.extra {
            ElementwiseOp::Add => "add",
            ElementwiseOp::Fill => "fill",
            ElementwiseOp::LeakyRelu => "leaky_relu_forward",
        };
        self.run(pass, entry, b, self.grid(b));
    }

    /// dinp = dout * (inp > 0 ? 1 : alpha). Panics if the binding was made without
    /// gradient buffers.
    pub fn backward(&self, pass: &mut wgpu::ComputePass, b: &ElementwiseBinding) {
        assert_eq!(
            b.extra,
            ElementwiseOp::LeakyRelu,
            "backward of a {:?}",
            b.extra
        );
        b.require_grads("activation backward");
        self.run(pass, "leaky_relu_backward", b, self.grid(b));
    }

    /// One invocation per element, grid-stride past the device's workgroup limit.
    fn grid(&self, b: &ElementwiseBinding) -> [u32; 3] {
        strided_grid(b.params.n, WG, self.k.max_groups)
    }
}
