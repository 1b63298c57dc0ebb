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

use super::launch::{Launcher, RowUniform, strided_grid, wgsl_params};
use super::{GpuContext, GpuError, TensorRef};
use crate::cpu::dropout::DropoutKey;

wgsl_params!(
    "dropout.wgsl",
    /// The uniform, field for field `Params` in `shaders/dropout.wgsl`.
    pub(crate) struct DropoutParams {
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
    u: RowUniform<DropoutParams>,
    width: u32,
    max_groups: u32,
    has_grads: bool,
    group: wgpu::BindGroup,
}

impl DropoutBinding {
    /// Rows of the current batch.
    pub fn rows(&self) -> u32 {
        self.u.rows
    }

    /// Sets the batch rows (at most the `rows` bound), effective at the next submit.
    /// Panics if `rows` exceeds the bound maximum (the buffers are not big enough).
    pub fn set_rows(&mut self, ctx: &GpuContext, rows: u32) {
        let width = self.width;
        self.u
            .set_rows(ctx, "dropout set_rows", rows, |p, r| p.n = r * width);
    }

    /// Sets the mask (seed, step, site, p) for the following dispatches; like
    /// [`DropoutBinding::set_rows`], effective at the next submit, last value wins.
    /// `p = 0` keeps every element (eval). Panics if `p` is outside [0, 1).
    pub fn set_key(&mut self, ctx: &GpuContext, key: DropoutKey) {
        self.u.params.set_key(key);
        self.u.write(ctx);
    }

    /// Element `i` takes the mask of index `first + i` from the next submit on (as
    /// `cpu::dropout::residual_dropout_forward_at`): a data-parallel rank's shard of a
    /// batch, with `first` its first row times the row's elements, draws the masks of
    /// its rows in the global batch. 0 when bound.
    pub fn set_first(&mut self, ctx: &GpuContext, first: u32) {
        if self.u.params.first != first {
            self.u.params.first = first;
            self.u.write(ctx);
        }
    }

    /// One invocation per element, grid-stride past the device's workgroup limit.
    fn grid(&self) -> [u32; 3] {
        strided_grid(self.u.params.n, WG, self.max_groups)
    }
}

/// Pipelines of `shaders/dropout.wgsl`, created once.
#[derive(Debug)]
pub struct DropoutKernels {
    k: Launcher,
}

impl DropoutKernels {
    /// Compiles the shader and creates its pipelines.
    pub fn new(ctx: &GpuContext) -> Result<Self, GpuError> {
        let source = include_str!("../../../shaders/dropout.wgsl");
        let entries = ["residual_dropout_forward", "residual_dropout_backward"];
        // Storage: x, a, out, dout, da.
        let k = Launcher::new(ctx, "dropout", source, 5, &entries)?;
        Ok(Self { k })
    }

    /// Caps the workgroups of the grid-stride loops (tests: several elements per
    /// invocation).
    pub fn with_max_workgroups_per_dim(mut self, max: u32) -> Self {
        self.k.cap(max);
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
        let u = RowUniform::new(ctx, "dropout params", rows, params);
        let d = &self.k.dummy;
        let group = self.k.bind_group(
            ctx,
            "dropout",
            &u.buffer,
            &[
                bufs.x.buffer,
                bufs.a.buffer,
                bufs.out.buffer,
                grads.map_or(d, |g| g.dout.buffer),
                grads.map_or(d, |g| g.da.buffer),
            ],
        );
        Ok(DropoutBinding {
            u,
            width,
            max_groups: self.k.max_groups,
            has_grads: grads.is_some(),
            group,
        })
    }

    /// out = x + a * mask
    pub fn forward(&self, pass: &mut wgpu::ComputePass, b: &DropoutBinding) {
        self.k
            .run(pass, "residual_dropout_forward", &b.group, b.grid());
    }

    /// da = dout * mask (the gradient of `x` is `dout` itself). Panics if the binding was
    /// made without gradient buffers.
    pub fn backward(&self, pass: &mut wgpu::ComputePass, b: &DropoutBinding) {
        assert!(
            b.has_grads,
            "dropout backward: the binding was made without gradient buffers"
        );
        self.k
            .run(pass, "residual_dropout_backward", &b.group, b.grid());
    }
}
