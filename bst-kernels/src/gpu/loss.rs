//! Sigmoid + binary cross-entropy on the GPU: launcher for `shaders/loss.wgsl`.
//! CPU reference: [`crate::cpu::loss`].
//!
//! The forward also reduces the batch's mean loss into one f32 on the device, so the host
//! reads it only when it logs (every N steps), never once per step.
//!
//! ```text
//! let bce = LossKernels::new(&ctx)?;                              // once
//! let mut b = bce.bind(&ctx, &bufs, Some(dlogits), dims)?;        // once
//! b.set_rows(&ctx, last_batch_rows);                              // when the batch size changes
//! bce.forward(&mut pass, &b);                                     // every step
//! bce.backward(&mut pass, &b);
//! let loss = ctx.read_f32(bufs.mean.buffer, bufs.mean.offset, 1)?[0];   // when logging
//! ```

use super::launch::{Launcher, assert_bound, dispatch, flat_grid, wgsl_params};
use super::{GpuContext, GpuError, TensorRef};

wgsl_params!(
    "loss.wgsl",
    /// The kernels' uniform, field for field `Params` in `shaders/loss.wgsl`.
    pub(crate) struct LossParams {
        b: u32,
        logits_off: u32,
        labels_off: u32,
        probs_off: u32,
        losses_off: u32,
        mean_off: u32,
        dlogits_off: u32,
        accumulate_mean: u32,
        /// [`LossBinding::set_divisor`]; 0: `b`.
        divisor: u32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
);

/// Invocations per workgroup (`WG` in the shader), also of the one-workgroup reduction.
const WG: u32 = 256;

/// Sizes of the loss. `rows` is the largest batch the buffers hold; smaller batches are
/// set later with [`LossBinding::set_rows`].
#[derive(Clone, Copy, Debug)]
pub struct LossDims {
    /// Rows the buffers hold (a smaller batch: `set_rows`).
    pub rows: u32,
    /// `false`: `mean` = this batch's mean loss. `true`: `mean +=` it, so that one read
    /// every N steps gives the sum of N batch means; the host zeroes it after reading
    /// (e.g. `ctx.write(mean.buffer, mean.offset, &[0.0f32])`).
    pub accumulate_mean: bool,
}

/// The forward tensors.
#[derive(Clone, Copy, Debug)]
pub struct LossBuffers<'a> {
    /// (rows), sigmoid of the logits.
    pub probs: TensorRef<'a>,
    /// (rows), the per-sample losses.
    pub losses: TensorRef<'a>,
    /// (1), the batch's mean loss (see [`LossDims::accumulate_mean`]).
    pub mean: TensorRef<'a>,
    /// (rows), the last layer's output.
    pub logits: TensorRef<'a>,
    /// (rows), 0.0 or 1.0.
    pub labels: TensorRef<'a>,
}

/// Uniform and bind group of the loss, made by [`LossKernels::bind`].
#[derive(Debug)]
pub struct LossBinding {
    params: LossParams,
    max_rows: u32,
    has_dlogits: bool,
    uniform: wgpu::Buffer,
    group: wgpu::BindGroup,
}

impl LossBinding {
    /// Rows of the current batch.
    pub fn rows(&self) -> u32 {
        self.params.b
    }

    /// Sets the batch rows (at most the `rows` bound) for the following dispatches: the
    /// mean and `dlogits` then divide by this count. A `queue.write_buffer`: it takes
    /// effect at the next submit, and every dispatch of this binding in that submit sees
    /// the last value set. Panics if `rows` exceeds the bound maximum.
    pub fn set_rows(&mut self, ctx: &GpuContext, rows: u32) {
        assert_bound("loss set_rows", rows, self.max_rows, "rows");
        self.params.b = rows;
        ctx.write(&self.uniform, 0, &[self.params]);
    }

    /// Divides the mean and `dlogits` by `divisor` instead of the batch rows from the
    /// next submit on (0: the rows again): a data-parallel rank's shard of a global batch
    /// divides by the global rows, so the ranks' gradients (and means) sum to the global
    /// mean's.
    pub fn set_divisor(&mut self, ctx: &GpuContext, divisor: u32) {
        if self.params.divisor != divisor {
            self.params.divisor = divisor;
            ctx.write(&self.uniform, 0, &[self.params]);
        }
    }
}

/// Pipelines of `shaders/loss.wgsl`, created once.
#[derive(Debug)]
pub struct LossKernels {
    k: Launcher,
}

impl LossKernels {
    /// Compiles the shader and creates its pipelines.
    pub fn new(ctx: &GpuContext) -> Result<Self, GpuError> {
        let source = include_str!("../../../shaders/loss.wgsl");
        let entries = ["bce_forward", "bce_mean", "bce_backward"];
        // Storage: logits; labels; probs; losses; mean; dlogits.
        let k = Launcher::new(ctx, "loss", source, 6, &entries)?;
        Ok(Self { k })
    }

    /// Caps the workgroups per grid row below the device's
    /// `max_compute_workgroups_per_dimension` (at least 1), so that small problems
    /// spread over a 2D grid: lets tests reach the grid's second row without huge data.
    pub fn with_max_workgroups_per_dim(mut self, max: u32) -> Self {
        self.k.cap(max);
        self
    }

    /// Creates the uniform and bind group, after checking every tensor lies inside its
    /// buffer. `dlogits` (rows), overwritten by the backward; `None` binds the forward only.
    pub fn bind(
        &self,
        ctx: &GpuContext,
        bufs: &LossBuffers,
        dlogits: Option<TensorRef>,
        dims: LossDims,
    ) -> Result<LossBinding, GpuError> {
        let rows = u64::from(dims.rows);
        let tensors = [
            ("loss probs (rows)", Some(bufs.probs), rows),
            ("loss losses (rows)", Some(bufs.losses), rows),
            ("loss mean (1)", Some(bufs.mean), 1),
            ("loss logits (rows)", Some(bufs.logits), rows),
            ("loss labels (rows)", Some(bufs.labels), rows),
            ("loss dlogits (rows)", dlogits, rows),
        ];
        for (what, tensor, len) in tensors {
            if let Some(t) = tensor {
                t.check(ctx, what, len)?;
            }
        }
        let params = LossParams {
            b: dims.rows,
            logits_off: bufs.logits.offset,
            labels_off: bufs.labels.offset,
            probs_off: bufs.probs.offset,
            losses_off: bufs.losses.offset,
            mean_off: bufs.mean.offset,
            dlogits_off: dlogits.map_or(0, |t| t.offset),
            accumulate_mean: dims.accumulate_mean.into(),
            ..Default::default()
        };
        let uniform = ctx.uniform_buffer("loss params", &params);
        let dlogits_buf = dlogits.map_or(&self.k.dummy, |t| t.buffer);
        let group = ctx.kernel_bind_group(
            "loss",
            &self.k.layout,
            uniform.as_entire_binding(),
            &[
                bufs.logits.buffer,
                bufs.labels.buffer,
                bufs.probs.buffer,
                bufs.losses.buffer,
                bufs.mean.buffer,
                dlogits_buf,
            ],
        );
        Ok(LossBinding {
            params,
            max_rows: dims.rows,
            has_dlogits: dlogits.is_some(),
            uniform,
            group,
        })
    }

    /// probs, losses, then the mean loss (one workgroup, fixed order), as
    /// [`crate::cpu::loss::bce_forward`] (which sums in f64: expect 1e-6 relative).
    pub fn forward(&self, pass: &mut wgpu::ComputePass, b: &LossBinding) {
        dispatch(pass, self.k.pipeline("bce_forward"), &b.group, self.grid(b));
        dispatch(pass, self.k.pipeline("bce_mean"), &b.group, [1, 1, 1]);
    }

    /// dlogits = (sigmoid(logits) - labels) / rows (overwrites), as
    /// [`crate::cpu::loss::bce_backward`]. Panics if the binding has no `dlogits`.
    pub fn backward(&self, pass: &mut wgpu::ComputePass, b: &LossBinding) {
        assert!(
            b.has_dlogits,
            "loss backward: the binding was made without dlogits"
        );
        dispatch(
            pass,
            self.k.pipeline("bce_backward"),
            &b.group,
            self.grid(b),
        );
    }

    /// One invocation per row.
    fn grid(&self, b: &LossBinding) -> [u32; 3] {
        flat_grid(b.params.b, WG, self.k.max_groups)
    }
}
