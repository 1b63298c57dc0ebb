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

use bytemuck::{Pod, Zeroable};

use super::launch::{assert_bound, dispatch, strided_grid};
use super::{GpuContext, GpuError, Slot, TensorRef};

/// The uniform, field for field `Params` in `shaders/activation.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
struct ActivationParams {
    n: u32,
    inp_off: u32,
    out_off: u32,
    dout_off: u32,
    dinp_off: u32,
    alpha: f32,
    _pad0: u32,
    _pad1: u32,
}

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
    rows: u32,
    max_rows: u32,
    width: u32,
    max_groups: u32,
    has_grads: bool,
    params: ActivationParams,
    uniform: wgpu::Buffer,
    group: wgpu::BindGroup,
}

impl ActivationBinding {
    /// Rows of the current batch.
    pub fn rows(&self) -> u32 {
        self.rows
    }

    /// Sets the batch rows (at most the `rows` bound) for the following dispatches: a
    /// `queue.write_buffer`, effective at the next submit (every dispatch of this
    /// binding in that submit sees the last value set). Panics if `rows` exceeds the
    /// bound maximum (the buffers are not big enough).
    pub fn set_rows(&mut self, ctx: &GpuContext, rows: u32) {
        assert_bound("activation set_rows", rows, self.max_rows, "rows");
        self.rows = rows;
        self.params.n = rows * self.width;
        ctx.write(&self.uniform, 0, &[self.params]);
    }

    /// One invocation per element, grid-stride past the device's workgroup limit.
    fn grid(&self) -> [u32; 3] {
        strided_grid(self.rows * self.width, WG, self.max_groups)
    }
}

/// Pipelines of `shaders/activation.wgsl`, created once.
#[derive(Debug)]
pub struct ActivationKernels {
    layout: wgpu::BindGroupLayout,
    forward: wgpu::ComputePipeline,
    backward: wgpu::ComputePipeline,
    /// Bound where the gradient tensors are absent.
    dummy: wgpu::Buffer,
    /// Workgroups of a dispatch, at most; the loops stride over the rest.
    max_groups: u32,
}

impl ActivationKernels {
    /// Compiles the shader and creates its pipelines.
    pub fn new(ctx: &GpuContext) -> Result<Self, GpuError> {
        ctx.checked("creating the activation kernels", || {
            let layout = ctx.bind_group_layout(
                "activation",
                &[
                    Slot::Uniform, // params
                    Slot::Storage, // inp
                    Slot::Storage, // out
                    Slot::Storage, // dout
                    Slot::Storage, // dinp
                ],
            );
            let module = ctx.shader_module(
                "activation.wgsl",
                include_str!("../../../shaders/activation.wgsl"),
            );
            let pipeline = |entry| ctx.compute_pipeline(&module, entry, Some(&layout));
            Self {
                forward: pipeline("leaky_relu_forward"),
                backward: pipeline("leaky_relu_backward"),
                dummy: ctx.storage_buffer_zeroed("activation dummy", 4),
                max_groups: ctx.limits.max_compute_workgroups_per_dimension,
                layout,
            }
        })
    }

    /// Caps the workgroups of the grid-stride loops below the device's
    /// `max_compute_workgroups_per_dimension` (at least 1), so that each invocation
    /// walks several elements: lets tests run the loop's stride without huge data.
    pub fn with_max_workgroups_per_dim(mut self, max: u32) -> Self {
        self.max_groups = max.clamp(1, self.max_groups);
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
        let uniform = ctx.uniform_buffer("activation params", &params);
        let d = &self.dummy;
        let group = ctx.kernel_bind_group(
            "activation",
            &self.layout,
            uniform.as_entire_binding(),
            &[
                bufs.inp.buffer,
                bufs.out.buffer,
                grads.map_or(d, |g| g.dout.buffer),
                grads.map_or(d, |g| g.dinp.buffer),
            ],
        );
        Ok(ActivationBinding {
            rows,
            max_rows: rows,
            width,
            max_groups: self.max_groups,
            has_grads: grads.is_some(),
            params,
            uniform,
            group,
        })
    }

    /// out = leaky_relu(inp)
    pub fn forward(&self, pass: &mut wgpu::ComputePass, b: &ActivationBinding) {
        dispatch(pass, &self.forward, &b.group, b.grid());
    }

    /// dinp = dout * (inp > 0 ? 1 : alpha). Panics if the binding was made without
    /// gradient buffers.
    pub fn backward(&self, pass: &mut wgpu::ComputePass, b: &ActivationBinding) {
        assert!(
            b.has_grads,
            "activation backward: the binding was made without gradient buffers"
        );
        dispatch(pass, &self.backward, &b.group, b.grid());
    }
}
