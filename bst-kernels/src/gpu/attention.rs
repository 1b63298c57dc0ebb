//! Multi-head softmax attention with a key-validity mask on the GPU: launcher for
//! `shaders/attention.wgsl`. CPU reference: [`crate::cpu::attention`].
//!
//! ```text
//! let at = AttentionKernels::new(&ctx)?;                             // once
//! let mut a1 = at.bind(&ctx, Site::with_grads(bufs, grads, dims))?;  // once per block
//! a1.set_rows(&ctx, last_batch_samples);                             // a smaller batch
//! at.forward(&mut pass, &a1);                                        // every step
//! at.backward(&mut pass, &a1);
//! ```
//!
//! One workgroup per (head, sample) keeps what it reuses in 16 KiB of workgroup memory
//! (the WebGPU minimum, [`SMEM_FLOATS`] f32):
//! - forward: K and V of the head when `2 T dh <= 4096` (e.g. T = 64 with dh = 32, or
//!   T = 32 with dh = 64); otherwise they are read from `qkv` (any shape works). The
//!   probabilities are written to `att` and read back from it.
//! - backward: the (T, T) score gradients always, so **T <= [`MAX_BACKWARD_T`] = 64**
//!   ([`AttentionKernels::bind`] returns an error otherwise), and K and V too when
//!   `T^2 + 2 T dh <= 4096` (e.g. T = 21 with dh up to 87, T = 32 with dh up to 48);
//!   otherwise K and V are read from `qkv`.

use super::launch::{Binding, Kernels, Site, tensors, wgsl_params};
use super::{GpuContext, GpuError, GpuResult};
use crate::cpu::attention::head_dims;

wgsl_params!(
    "attention.wgsl",
    /// The uniform, and `Params` of `shaders/attention.wgsl`, written from it.
    pub struct AttentionParams {
        /// Samples in this batch.
        b: u32,
        t: u32,
        d: u32,
        h: u32,
        /// D / h.
        dh: u32,
        /// 1 / sqrt(dh).
        scale: f32,
        qkv_off: u32,
        valid_off: u32,
        out_off: u32,
        att_off: u32,
        dout_off: u32,
        dqkv_off: u32,
        /// 1: the forward keeps K and V in smem.
        fwd_staged: u32,
        /// 1: the backward keeps K and V in smem after dS.
        bwd_staged: u32,
        _pad0: u32,
        _pad1: u32,
    },
    storage [qkv: f32, valid: u32, out: f32, att: f32, dout: f32, dqkv: f32],
    kernels ["attention_forward", "attention_backward"],
    rows b
);

/// f32 elements of the shaders' workgroup array `smem`: 16 KiB.
pub const SMEM_FLOATS: u32 = 4096;
/// Longest sequence the backward supports: its (T, T) score gradients fill `smem`.
pub const MAX_BACKWARD_T: u32 = 64;

/// Sizes of one attention layer. `batch` is the largest number of samples the buffers
/// hold; smaller batches are set later with [`AttentionBinding::set_rows`].
#[derive(Clone, Copy, Debug)]
pub struct AttentionDims {
    /// Samples the buffers hold (a smaller batch: `set_rows`).
    pub batch: u32,
    /// Tokens per sample (history and target).
    pub t: u32,
    /// Model width; each head has `d / heads` columns.
    pub d: u32,
    /// Attention heads (must divide `d`).
    pub heads: u32,
}

tensors! {
    /// The forward tensors of one layer.
    pub struct AttentionBuffers {
        /// (B, T, d)
        out,
        /// (B, h, T, T): the probabilities, written by the forward, read by the backward.
        att,
        /// (B, T, 3d): Q, K, V side by side.
        qkv,
        /// (B, T) u32: 0 masks the token as a key. A sample with no valid token gets zero
        /// probabilities, outputs and gradients, as on the CPU.
        valid,
    }
}

tensors! {
    /// The backward tensors of one layer.
    pub struct AttentionGradBuffers {
        /// (B, T, 3d), overwritten.
        dqkv,
        /// (B, T, d)
        dout,
    }
}

/// What [`AttentionKernels::bind`] takes.
pub type AttentionSite<'a> = Site<AttentionBuffers<'a>, AttentionGradBuffers<'a>, AttentionDims>;

/// Uniform and bind group of one layer, made by [`AttentionKernels::bind`]; its rows are
/// samples.
pub type AttentionBinding = Binding<AttentionParams>;

/// Pipelines of `shaders/attention.wgsl`, created once.
pub type AttentionKernels = Kernels<AttentionParams>;

impl AttentionKernels {
    /// Creates the uniform and bind group of one layer, after checking the shape and
    /// that every tensor lies inside its buffer. `grads = None` binds the forward pass
    /// only. With `grads`, T must be at most [`MAX_BACKWARD_T`].
    pub fn bind(&self, ctx: &GpuContext, site: AttentionSite) -> GpuResult<AttentionBinding> {
        let Site { bufs, grads, dims } = site;
        let AttentionDims { batch, t, d, heads } = dims;
        let shape = format!("attention (batch {batch}, T {t}, d {d}, heads {heads})");
        if t == 0 || heads == 0 || d == 0 || d % heads != 0 {
            return Err(GpuError::Binding(format!(
                "{shape}: T, d and heads must be positive and heads must divide d"
            )));
        }
        let max_groups = ctx.limits.max_compute_workgroups_per_dimension;
        if heads > max_groups {
            return Err(GpuError::Binding(format!(
                "{shape}: one workgroup per head, more than the device's {max_groups}"
            )));
        }
        if grads.is_some() && t > MAX_BACKWARD_T {
            return Err(GpuError::Binding(format!(
                "{shape}: the backward keeps a head's (T, T) score gradients in 16 KiB of \
                 workgroup memory, so T is at most {MAX_BACKWARD_T}; shorten the history"
            )));
        }
        let (b, t_l, d_l, h) = (
            u64::from(batch),
            u64::from(t),
            u64::from(d),
            u64::from(heads),
        );
        let what = |name: &str, dims: &str| format!("{shape} {name} {dims}");
        bufs.out
            .check(ctx, &what("out", "(B, T, d)"), b * t_l * d_l)?;
        bufs.att
            .check(ctx, &what("att", "(B, h, T, T)"), b * h * t_l * t_l)?;
        bufs.qkv
            .check(ctx, &what("qkv", "(B, T, 3d)"), b * t_l * 3 * d_l)?;
        bufs.valid.check(ctx, &what("valid", "(B, T)"), b * t_l)?;
        if let Some(g) = grads {
            g.dqkv
                .check(ctx, &what("dqkv", "(B, T, 3d)"), b * t_l * 3 * d_l)?;
            g.dout
                .check(ctx, &what("dout", "(B, T, d)"), b * t_l * d_l)?;
        }

        // As the CPU computes them, so that both use the same f32 scale.
        let (dh, scale) = head_dims(d as usize, heads as usize);
        let dh = dh as u32;
        // u64: T and dh may be large when K and V are not staged.
        let (tt, kv) = (t_l * t_l, 2 * t_l * u64::from(dh));
        let smem = u64::from(SMEM_FLOATS);
        let params = AttentionParams {
            b: batch,
            t,
            d,
            h: heads,
            dh,
            scale,
            qkv_off: bufs.qkv.offset,
            valid_off: bufs.valid.offset,
            out_off: bufs.out.offset,
            att_off: bufs.att.offset,
            dout_off: grads.map_or(0, |g| g.dout.offset),
            dqkv_off: grads.map_or(0, |g| g.dqkv.offset),
            fwd_staged: (kv <= smem).into(),
            bwd_staged: (tt + kv <= smem).into(),
            ..Default::default()
        };
        let dummy = &self.k.dummy;
        let storage = [
            bufs.qkv.buffer,
            bufs.valid.buffer,
            bufs.out.buffer,
            bufs.att.buffer,
            grads.map_or(dummy, |g| g.dout.buffer),
            grads.map_or(dummy, |g| g.dqkv.buffer),
        ];
        Ok(self.binding(ctx, params, (batch, 1), &storage, grads.is_some(), ()))
    }

    /// out and att from qkv and valid.
    pub fn forward(&self, pass: &mut wgpu::ComputePass, b: &AttentionBinding) {
        self.run(pass, "attention_forward", b, self.grid(b));
    }

    /// dqkv (overwritten) from dout, att and qkv. Panics if the binding was made without
    /// gradient buffers.
    pub fn backward(&self, pass: &mut wgpu::ComputePass, b: &AttentionBinding) {
        b.require_grads("attention backward");
        self.run(pass, "attention_backward", b, self.grid(b));
    }

    /// Workgroups (heads, samples), grid-stride over samples past the device's limit.
    fn grid(&self, b: &AttentionBinding) -> [u32; 3] {
        [b.params.h, b.rows.min(self.k.max_groups), 1]
    }
}
