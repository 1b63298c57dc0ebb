//! Residual + inverted dropout on the GPU, `out = x + dropout(a)`: launcher for
//! `shaders/dropout.wgsl`. CPU reference: [`crate::cpu::dropout`].
//!
//! The mask is the CPU's bit for bit: the host computes `stream`, `threshold` and `scale`
//! with [`DropoutKey`]'s own methods and the shader applies the same integer hash, so
//! GPU and CPU outputs are identical. The key changes every step: [`DropoutBinding::set_key`].
//!
//! ```text
//! let dk = DropoutKernels::new(&ctx)?;                            // once
//! let mut s1 = dk.bind(&ctx, &bufs, Some(&grads), dims, key)?;    // once per dropout site
//! s1.set_key(&ctx, DropoutKey { step, ..key });                   // every step
//! s1.set_rows(&ctx, last_batch_rows);                             // when the batch size changes
//! dk.forward(&mut pass, &s1);
//! dk.backward(&mut pass, &s1);
//! ```

use bytemuck::{Pod, Zeroable};

use super::launch::{assert_bound, dispatch, strided_grid};
use super::{GpuContext, GpuError, Slot, TensorRef};
use crate::cpu::dropout::DropoutKey;

/// The uniform, field for field `Params` in `shaders/dropout.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
struct DropoutParams {
    n: u32,
    x_off: u32,
    a_off: u32,
    out_off: u32,
    dout_off: u32,
    da_off: u32,
    stream: u32,
    threshold: u32,
    scale: f32,
    /// Always 0 (see the shader: it keeps `x + a * mask` from being fused into an fma).
    opaque_zero: u32,
    /// The mask index of element 0 ([`DropoutBinding::set_first`]).
    first: u32,
    _pad1: u32,
}

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

/// The forward tensors. `out` may be `x` itself (same buffer and offset): each
/// invocation reads its elements before writing.
#[derive(Clone, Copy, Debug)]
pub struct DropoutBuffers<'a> {
    /// (rows, width)
    pub out: TensorRef<'a>,
    /// (rows, width): the residual stream.
    pub x: TensorRef<'a>,
    /// (rows, width): the branch that is dropped out.
    pub a: TensorRef<'a>,
}

/// The backward tensors (the gradient of `x` is `dout` itself). `da` may be `dout`.
#[derive(Clone, Copy, Debug)]
pub struct DropoutGradBuffers<'a> {
    /// (rows, width), overwritten.
    pub da: TensorRef<'a>,
    /// (rows, width)
    pub dout: TensorRef<'a>,
}

/// Uniform and bind group of one dropout site, made by [`DropoutKernels::bind`].
#[derive(Debug)]
pub struct DropoutBinding {
    rows: u32,
    max_rows: u32,
    width: u32,
    max_groups: u32,
    has_grads: bool,
    params: DropoutParams,
    uniform: wgpu::Buffer,
    group: wgpu::BindGroup,
}

impl DropoutBinding {
    /// Rows of the current batch.
    pub fn rows(&self) -> u32 {
        self.rows
    }

    /// Sets the batch rows (at most the `rows` bound) for the following dispatches: a
    /// `queue.write_buffer`, effective at the next submit (every dispatch of this
    /// binding in that submit sees the last value set). Panics if `rows` exceeds the
    /// bound maximum (the buffers are not big enough).
    pub fn set_rows(&mut self, ctx: &GpuContext, rows: u32) {
        assert_bound("dropout set_rows", rows, self.max_rows, "rows");
        self.rows = rows;
        self.params.n = rows * self.width;
        self.write(ctx);
    }

    /// Sets the mask (seed, step, site, p) for the following dispatches; like
    /// [`DropoutBinding::set_rows`], effective at the next submit, last value wins.
    /// `p = 0` keeps every element (eval). Panics if `p` is outside [0, 1).
    pub fn set_key(&mut self, ctx: &GpuContext, key: DropoutKey) {
        self.params.set_key(key);
        self.write(ctx);
    }

    /// Element `i` takes the mask of index `first + i` from the next submit on (as
    /// `cpu::dropout::residual_dropout_forward_at`): a data-parallel rank's shard of a
    /// batch, with `first` its first row times the row's elements, draws the masks of
    /// its rows in the global batch. 0 when bound.
    pub fn set_first(&mut self, ctx: &GpuContext, first: u32) {
        if self.params.first != first {
            self.params.first = first;
            self.write(ctx);
        }
    }

    fn write(&self, ctx: &GpuContext) {
        ctx.write(&self.uniform, 0, &[self.params]);
    }

    /// One invocation per element, grid-stride past the device's workgroup limit.
    fn grid(&self) -> [u32; 3] {
        strided_grid(self.rows * self.width, WG, self.max_groups)
    }
}

/// Pipelines of `shaders/dropout.wgsl`, created once.
#[derive(Debug)]
pub struct DropoutKernels {
    layout: wgpu::BindGroupLayout,
    forward: wgpu::ComputePipeline,
    backward: wgpu::ComputePipeline,
    /// Bound where the gradient tensors are absent.
    dummy: wgpu::Buffer,
    /// Workgroups of a dispatch, at most; the loops stride over the rest.
    max_groups: u32,
}

impl DropoutKernels {
    /// Compiles the shader and creates its pipelines.
    pub fn new(ctx: &GpuContext) -> Result<Self, GpuError> {
        ctx.checked("creating the dropout kernels", || {
            let layout = ctx.bind_group_layout(
                "dropout",
                &[
                    Slot::Uniform, // params
                    Slot::Storage, // x
                    Slot::Storage, // a
                    Slot::Storage, // out
                    Slot::Storage, // dout
                    Slot::Storage, // da
                ],
            );
            let module = ctx.shader_module(
                "dropout.wgsl",
                include_str!("../../../shaders/dropout.wgsl"),
            );
            let pipeline = |entry| ctx.compute_pipeline(&module, entry, Some(&layout));
            Self {
                forward: pipeline("residual_dropout_forward"),
                backward: pipeline("residual_dropout_backward"),
                dummy: ctx.storage_buffer_zeroed("dropout dummy", 4),
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

    /// Creates the uniform and bind group of one dropout site with its first `key`,
    /// after checking every tensor lies inside its buffer. `grads = None` binds the
    /// forward pass only. Panics if `key.p` is outside [0, 1).
    pub fn bind(
        &self,
        ctx: &GpuContext,
        bufs: &DropoutBuffers,
        grads: Option<&DropoutGradBuffers>,
        dims: DropoutDims,
        key: DropoutKey,
    ) -> Result<DropoutBinding, GpuError> {
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
        let uniform = ctx.uniform_buffer("dropout params", &params);
        let d = &self.dummy;
        let group = ctx.kernel_bind_group(
            "dropout",
            &self.layout,
            uniform.as_entire_binding(),
            &[
                bufs.x.buffer,
                bufs.a.buffer,
                bufs.out.buffer,
                grads.map_or(d, |g| g.dout.buffer),
                grads.map_or(d, |g| g.da.buffer),
            ],
        );
        Ok(DropoutBinding {
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

    /// out = x + a * mask
    pub fn forward(&self, pass: &mut wgpu::ComputePass, b: &DropoutBinding) {
        dispatch(pass, &self.forward, &b.group, b.grid());
    }

    /// da = dout * mask (the gradient of `x` is `dout` itself). Panics if the binding was
    /// made without gradient buffers.
    pub fn backward(&self, pass: &mut wgpu::ComputePass, b: &DropoutBinding) {
        assert!(
            b.has_grads,
            "dropout backward: the binding was made without gradient buffers"
        );
        dispatch(pass, &self.backward, &b.group, b.grid());
    }
}
