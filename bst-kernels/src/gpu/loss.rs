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

use super::launch::{Binding, Kernels, flat_grid, tensors, wgsl_params};
use super::{GpuContext, GpuError, TensorRef};

wgsl_params!(
    "loss.wgsl",
    /// The kernels' uniform, and `Params` of `shaders/loss.wgsl`, written from it.
    pub struct LossParams {
        /// Rows of the current batch.
        b: u32,
        logits_off: u32,
        labels_off: u32,
        probs_off: u32,
        losses_off: u32,
        mean_off: u32,
        dlogits_off: u32,
        /// 1: mean += this batch's mean; 0: mean = it.
        accumulate_mean: u32,
        /// The mean's and the gradient's divisor, 0: `b` ([`LossBinding::set_divisor`]). A
        /// data-parallel rank's shard of a global batch divides by the global rows, so the
        /// ranks' sums are the global mean's.
        divisor: u32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    },
    storage [logits: f32, labels: f32, probs: f32, losses: f32, mean: f32, dlogits: f32],
    kernels ["bce_forward", "bce_mean", "bce_backward"],
    rows b
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

tensors! {
    /// The forward tensors.
    pub struct LossBuffers {
        /// (rows), sigmoid of the logits.
        probs,
        /// (rows), the per-sample losses.
        losses,
        /// (1), the batch's mean loss (see [`LossDims::accumulate_mean`]).
        mean,
        /// (rows), the last layer's output.
        logits,
        /// (rows), 0.0 or 1.0.
        labels,
    }
}

/// Uniform and bind group of the loss, made by [`LossKernels::bind`]. A new batch size
/// (`set_rows`) is also what the mean and `dlogits` divide by.
pub type LossBinding = Binding<LossParams>;

impl LossBinding {
    /// Divides the mean and `dlogits` by `divisor` instead of the batch rows from the
    /// next submit on (0: the rows again): a data-parallel rank's shard of a global batch
    /// divides by the global rows, so the ranks' gradients (and means) sum to the global
    /// mean's.
    pub fn set_divisor(&mut self, ctx: &GpuContext, divisor: u32) {
        self.update(ctx, |p| p.divisor = divisor);
    }
}

/// Pipelines of `shaders/loss.wgsl`, created once.
pub type LossKernels = Kernels<LossParams>;

impl LossKernels {
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
        let storage = [
            bufs.logits.buffer,
            bufs.labels.buffer,
            bufs.probs.buffer,
            bufs.losses.buffer,
            bufs.mean.buffer,
            dlogits.map_or(&self.k.dummy, |t| t.buffer),
        ];
        let has_dlogits = dlogits.is_some();
        Ok(self.binding(ctx, params, (dims.rows, 1), &storage, has_dlogits, ()))
    }

    /// probs, losses, then the mean loss (one workgroup, fixed order), as
    /// [`crate::cpu::loss::bce_forward`] (which sums in f64: expect 1e-6 relative).
    pub fn forward(&self, pass: &mut wgpu::ComputePass, b: &LossBinding) {
        self.run(pass, "bce_forward", b, self.grid(b));
        self.run(pass, "bce_mean", b, [1, 1, 1]);
    }

    /// dlogits = (sigmoid(logits) - labels) / rows (overwrites), as
    /// [`crate::cpu::loss::bce_backward`]. Panics if the binding has no `dlogits`.
    pub fn backward(&self, pass: &mut wgpu::ComputePass, b: &LossBinding) {
        b.require_grads("loss backward (dlogits)");
        self.run(pass, "bce_backward", b, self.grid(b));
    }

    /// One invocation per row.
    fn grid(&self, b: &LossBinding) -> [u32; 3] {
        flat_grid(b.params.b, WG, self.k.max_groups)
    }
}
