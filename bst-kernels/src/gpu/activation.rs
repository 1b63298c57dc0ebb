//! LeakyReLU on the GPU, element-wise: launcher for `shaders/activation.wgsl`.
//! CPU reference: [`crate::cpu::activation`]; GPU and CPU results are bit-identical.
//!
//! ```text
//! let act = ActivationKernels::new(&ctx)?;                   // once
//! let mut a1 = act.bind(&ctx, &bufs, Some(&grads), dims)?;   // once per call site
//! a1.set_rows(&ctx, last_batch_rows);                        // when the batch size changes
//! act.forward(&mut pass, &a1);                               // every step
//! act.backward(&mut pass, &a1);
//! ```

use super::launch::{Launcher, RowUniform, strided_grid, wgsl_params};
use super::{GpuContext, GpuError, TensorRef};

wgsl_params!(
    "activation.wgsl",
    /// The uniform, field for field `Params` in `shaders/activation.wgsl`.
    pub(crate) struct ActivationParams {
        n: u32,
        inp_off: u32,
        out_off: u32,
        dout_off: u32,
        dinp_off: u32,
        alpha: f32,
        _pad0: u32,
        _pad1: u32,
    }
);

/// Workgroup size of both kernels (`WG` in the shader).
const WG: u32 = 256;

/// Sizes of one call site: `rows x width` elements. `rows` is the largest batch the
/// buffers hold; smaller batches are set later with [`ActivationBinding::set_rows`].
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

/// Uniform and bind group of one call site, made by [`ActivationKernels::bind`].
#[derive(Debug)]
pub struct ActivationBinding {
    u: RowUniform<ActivationParams>,
    width: u32,
    max_groups: u32,
    has_grads: bool,
    group: wgpu::BindGroup,
}

impl ActivationBinding {
    /// Rows of the current batch.
    pub fn rows(&self) -> u32 {
        self.u.rows
    }

    /// Sets the batch rows (at most the `rows` bound), effective at the next submit.
    /// Panics if `rows` exceeds the bound maximum (the buffers are not big enough).
    pub fn set_rows(&mut self, ctx: &GpuContext, rows: u32) {
        let width = self.width;
        self.u
            .set_rows(ctx, "activation set_rows", rows, |p, r| p.n = r * width);
    }

    /// One invocation per element, grid-stride past the device's workgroup limit.
    fn grid(&self) -> [u32; 3] {
        strided_grid(self.u.params.n, WG, self.max_groups)
    }
}

/// Pipelines of `shaders/activation.wgsl`, created once.
#[derive(Debug)]
pub struct ActivationKernels {
    k: Launcher,
}

impl ActivationKernels {
    /// Compiles the shader and creates its pipelines.
    pub fn new(ctx: &GpuContext) -> Result<Self, GpuError> {
        let source = include_str!("../../../shaders/activation.wgsl");
        let entries = ["leaky_relu_forward", "leaky_relu_backward"];
        // Storage: inp, out, dout, dinp.
        let k = Launcher::new(ctx, "activation", source, 4, &entries)?;
        Ok(Self { k })
    }

    /// Caps the workgroups of the grid-stride loops (tests: several elements per
    /// invocation).
    pub fn with_max_workgroups_per_dim(mut self, max: u32) -> Self {
        self.k.cap(max);
        self
    }

    /// Creates the uniform and bind group of one call site, after checking every tensor
    /// lies inside its buffer. `grads = None` binds the forward pass only.
    pub fn bind(
        &self,
        ctx: &GpuContext,
        bufs: &ActivationBuffers,
        grads: Option<&ActivationGradBuffers>,
        dims: ActivationDims,
    ) -> Result<ActivationBinding, GpuError> {
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
        let params = ActivationParams {
            n: n as u32,
            inp_off: bufs.inp.offset,
            out_off: bufs.out.offset,
            dout_off: grads.map_or(0, |g| g.dout.offset),
            dinp_off: grads.map_or(0, |g| g.dinp.offset),
            alpha,
            ..Default::default()
        };
        let u = RowUniform::new(ctx, "activation params", rows, params);
        let d = &self.k.dummy;
        let group = self.k.bind_group(
            ctx,
            "activation",
            &u.buffer,
            &[
                bufs.inp.buffer,
                bufs.out.buffer,
                grads.map_or(d, |g| g.dout.buffer),
                grads.map_or(d, |g| g.dinp.buffer),
            ],
        );
        Ok(ActivationBinding {
            u,
            width,
            max_groups: self.k.max_groups,
            has_grads: grads.is_some(),
            group,
        })
    }

    /// out = leaky_relu(inp)
    pub fn forward(&self, pass: &mut wgpu::ComputePass, b: &ActivationBinding) {
        self.k.run(pass, "leaky_relu_forward", &b.group, b.grid());
    }

    /// dinp = dout * (inp > 0 ? 1 : alpha). Panics if the binding was made without
    /// gradient buffers.
    pub fn backward(&self, pass: &mut wgpu::ComputePass, b: &ActivationBinding) {
        assert!(
            b.has_grads,
            "activation backward: the binding was made without gradient buffers"
        );
        self.k.run(pass, "leaky_relu_backward", &b.group, b.grid());
    }
}
