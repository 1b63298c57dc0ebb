//! Element-wise ops on the GPU: the residual sum (`add`), `fill`, and LeakyReLU forward
//! and backward; launcher for `shaders/elementwise.wgsl`. CPU references:
//! [`crate::cpu::elementwise`] and [`crate::cpu::activation`]; GPU and CPU results are
//! bit-identical.
//!
//! ```text
//! let elt = ElementwiseKernels::new(&ctx)?;                  // once
//! let mut a1 = elt.bind(&ctx, &bufs, Some(&grads), dims)?;   // LeakyReLU, once per call site
//! let sum = elt.bind_add(&ctx, out, x, y, rows, width)?;     // out = x + y
//! let zero = elt.bind_fill(&ctx, target, n, 0.0)?;           // target = 0
//! a1.set_rows(&ctx, last_batch_rows);                        // when the batch size changes
//! elt.forward(&mut pass, &a1);                               // every step: the op bound
//! elt.backward(&mut pass, &a1);                              // LeakyReLU only
//! ```

use super::launch::{Launcher, RowUniform, strided_grid, wgsl_params};
use super::{GpuContext, GpuError, TensorRef};

wgsl_params!(
    "elementwise.wgsl",
    /// The uniform, field for field `Params` in `shaders/elementwise.wgsl`.
    pub(crate) struct ElementwiseParams {
        n: u32,
        x_off: u32,
        y_off: u32,
        out_off: u32,
        dout_off: u32,
        dx_off: u32,
        /// `fill`: the value; LeakyReLU: alpha.
        value: f32,
        _pad0: u32,
    }
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

/// The forward tensors. `out` may be `inp` itself (same buffer and offset): each
/// invocation reads its element before writing it.
#[derive(Clone, Copy, Debug)]
pub struct ActivationBuffers<'a> {
    /// (rows, width)
    pub out: TensorRef<'a>,
    /// (rows, width): the input of the forward pass, also read by the backward.
    pub inp: TensorRef<'a>,
}

/// The backward tensors. `dinp` may be `dout` itself, as `out` may be `inp`.
#[derive(Clone, Copy, Debug)]
pub struct ActivationGradBuffers<'a> {
    /// (rows, width), overwritten.
    pub dinp: TensorRef<'a>,
    /// (rows, width)
    pub dout: TensorRef<'a>,
}

/// The op of a binding: the entry point its `forward` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Add,
    Fill,
    LeakyRelu,
}

/// Uniform and bind group of one call site, made by [`ElementwiseKernels::bind`] (LeakyReLU),
/// [`ElementwiseKernels::bind_add`] or [`ElementwiseKernels::bind_fill`].
#[derive(Debug)]
pub struct ElementwiseBinding {
    op: Op,
    u: RowUniform<ElementwiseParams>,
    width: u32,
    max_groups: u32,
    has_grads: bool,
    group: wgpu::BindGroup,
}

impl ElementwiseBinding {
    /// Rows of the current batch.
    pub fn rows(&self) -> u32 {
        self.u.rows
    }

    /// Sets the batch rows (at most the `rows` bound), effective at the next submit.
    /// Panics if `rows` exceeds the bound maximum (the buffers are not big enough).
    pub fn set_rows(&mut self, ctx: &GpuContext, rows: u32) {
        let width = self.width;
        self.u
            .set_rows(ctx, "elementwise set_rows", rows, |p, r| p.n = r * width);
    }

    /// Elements the next dispatch covers.
    pub fn len(&self) -> u32 {
        self.u.params.n
    }

    /// No elements.
    pub fn is_empty(&self) -> bool {
        self.u.params.n == 0
    }

    /// A fill's element count (at most the bound `n`; a fill's rows are its elements), as
    /// [`ElementwiseBinding::set_rows`].
    pub fn set_len(&mut self, ctx: &GpuContext, n: u32) {
        self.set_rows(ctx, n);
    }

    /// One invocation per element, grid-stride past the device's workgroup limit.
    fn grid(&self) -> [u32; 3] {
        strided_grid(self.u.params.n, WG, self.max_groups)
    }
}

/// Pipelines of `shaders/elementwise.wgsl`, created once.
#[derive(Debug)]
pub struct ElementwiseKernels {
    k: Launcher,
}

impl ElementwiseKernels {
    /// Compiles the shader and creates its pipelines.
    pub fn new(ctx: &GpuContext) -> Result<Self, GpuError> {
        let source = include_str!("../../../shaders/elementwise.wgsl");
        let entries = ["add", "fill", "leaky_relu_forward", "leaky_relu_backward"];
        // Storage: x, y, out, dout, dx.
        let k = Launcher::new(ctx, "elementwise", source, 5, &entries)?;
        Ok(Self { k })
    }

    /// Caps the workgroups of the grid-stride loops (tests: several elements per
    /// invocation).
    pub fn with_max_workgroups_per_dim(mut self, max: u32) -> Self {
        self.k.cap(max);
        self
    }

    /// Creates the uniform and bind group of one LeakyReLU call site, after checking every
    /// tensor lies inside its buffer. `grads = None` binds the forward pass only.
    pub fn bind(
        &self,
        ctx: &GpuContext,
        bufs: &ActivationBuffers,
        grads: Option<&ActivationGradBuffers>,
        dims: ActivationDims,
    ) -> Result<ElementwiseBinding, GpuError> {
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
        Ok(self.binding(
            ctx,
            Op::LeakyRelu,
            params,
            (rows, width),
            &storage,
            grads.is_some(),
        ))
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
        Ok(self.binding(ctx, Op::Add, params, (rows, width), &storage, false))
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
        Ok(self.binding(ctx, Op::Fill, params, (n, 1), &storage, false))
    }

    fn binding(
        &self,
        ctx: &GpuContext,
        op: Op,
        params: ElementwiseParams,
        (rows, width): (u32, u32),
        storage: &[&wgpu::Buffer; 5],
        has_grads: bool,
    ) -> ElementwiseBinding {
        let u = RowUniform::new(ctx, "elementwise params", rows, params);
        let group = self.k.bind_group(ctx, "elementwise", &u.buffer, storage);
        ElementwiseBinding {
            op,
            u,
            width,
            max_groups: self.k.max_groups,
            has_grads,
            group,
        }
    }

    /// The op bound: `out = x + y`, `out = value`, or `out = leaky_relu(inp)`.
    pub fn forward(&self, pass: &mut wgpu::ComputePass, b: &ElementwiseBinding) {
        let entry = match b.op {
            Op::Add => "add",
            Op::Fill => "fill",
            Op::LeakyRelu => "leaky_relu_forward",
        };
        self.k.run(pass, entry, &b.group, b.grid());
    }

    /// dinp = dout * (inp > 0 ? 1 : alpha). Panics if the binding was made without
    /// gradient buffers.
    pub fn backward(&self, pass: &mut wgpu::ComputePass, b: &ElementwiseBinding) {
        assert!(
            b.op == Op::LeakyRelu && b.has_grads,
            "activation backward: the binding was made without gradient buffers"
        );
        self.k.run(pass, "leaky_relu_backward", &b.group, b.grid());
    }
}
