//! Multi-head softmax attention with a key-validity mask on the GPU: launcher for
//! `shaders/attention.wgsl`. CPU reference: [`crate::cpu::attention`].
//!
//! ```text
//! let at = AttentionKernels::new(&ctx)?;                    // once
//! let mut a1 = at.bind(&ctx, &bufs, Some(&grads), dims)?;   // once per block
//! a1.set_rows(&ctx, last_batch_samples);                    // when the batch size changes
//! at.forward(&mut pass, &a1);                               // every step
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

use super::launch::{Launcher, assert_bound, dispatch, wgsl_params};
use super::{GpuContext, GpuError, TensorRef};

wgsl_params!(
    "attention.wgsl",
    /// The uniform, field for field `Params` in `shaders/attention.wgsl`.
    pub(crate) struct AttentionParams {
        b: u32,
        t: u32,
        d: u32,
        h: u32,
        dh: u32,
        scale: f32,
        qkv_off: u32,
        valid_off: u32,
        out_off: u32,
        att_off: u32,
        dout_off: u32,
        dqkv_off: u32,
        fwd_staged: u32,
        bwd_staged: u32,
        _pad0: u32,
        _pad1: u32,
    }
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

/// The forward tensors of one layer.
#[derive(Clone, Copy, Debug)]
pub struct AttentionBuffers<'a> {
    /// (B, T, d)
    pub out: TensorRef<'a>,
    /// (B, h, T, T): the probabilities, written by the forward, read by the backward.
    pub att: TensorRef<'a>,
    /// (B, T, 3d): Q, K, V side by side.
    pub qkv: TensorRef<'a>,
    /// (B, T) u32: 0 masks the token as a key. A sample with no valid token gets zero
    /// probabilities, outputs and gradients, as on the CPU.
    pub valid: TensorRef<'a>,
}

/// The backward tensors of one layer.
#[derive(Clone, Copy, Debug)]
pub struct AttentionGradBuffers<'a> {
    /// (B, T, 3d), overwritten.
    pub dqkv: TensorRef<'a>,
    /// (B, T, d)
    pub dout: TensorRef<'a>,
}

/// Uniform and bind group of one layer, made by [`AttentionKernels::bind`].
#[derive(Debug)]
pub struct AttentionBinding {
    batch: u32,
    max_batch: u32,
    heads: u32,
    max_groups: u32,
    has_grads: bool,
    params: AttentionParams,
    uniform: wgpu::Buffer,
    group: wgpu::BindGroup,
}

impl AttentionBinding {
    /// Samples of the current batch.
    pub fn rows(&self) -> u32 {
        self.batch
    }

    /// Sets the samples of the batch (at most the `batch` bound) for the following
    /// dispatches: a `queue.write_buffer`, effective at the next submit (every dispatch
    /// of this binding in that submit sees the last value set). Panics if `batch`
    /// exceeds the bound maximum (the buffers are not big enough).
    pub fn set_rows(&mut self, ctx: &GpuContext, batch: u32) {
        assert_bound("attention set_rows", batch, self.max_batch, "samples");
        self.batch = batch;
        self.params.b = batch;
        ctx.write(&self.uniform, 0, &[self.params]);
    }

    /// Workgroups (heads, samples), grid-stride over samples past the device's limit.
    fn grid(&self) -> [u32; 3] {
        [self.heads, self.batch.min(self.max_groups), 1]
    }
}

/// Pipelines of `shaders/attention.wgsl`, created once.
#[derive(Debug)]
pub struct AttentionKernels {
    k: Launcher,
}

impl AttentionKernels {
    /// Compiles the shader and creates its pipelines.
    pub fn new(ctx: &GpuContext) -> Result<Self, GpuError> {
        let source = include_str!("../../../shaders/attention.wgsl");
        let entries = ["attention_forward", "attention_backward"];
        // Storage: qkv; valid; out; att; dout; dqkv.
        let k = Launcher::new(ctx, "attention", source, 6, &entries)?;
        Ok(Self { k })
    }

    /// Caps the workgroups of the grid-stride loops below the device's
    /// `max_compute_workgroups_per_dimension` (at least 1), so that each workgroup
    /// walks several samples: lets tests run the loop's stride without huge data.
    pub fn with_max_workgroups_per_dim(mut self, max: u32) -> Self {
        self.k.cap(max);
        self
    }

    /// Creates the uniform and bind group of one layer, after checking the shape and
    /// that every tensor lies inside its buffer. `grads = None` binds the forward pass
    /// only. With `grads`, T must be at most [`MAX_BACKWARD_T`].
    pub fn bind(
        &self,
        ctx: &GpuContext,
        bufs: &AttentionBuffers,
        grads: Option<&AttentionGradBuffers>,
        dims: AttentionDims,
    ) -> Result<AttentionBinding, GpuError> {
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

        let dh = d / heads;
        // u64: T and dh may be large when K and V are not staged.
        let (tt, kv) = (t_l * t_l, 2 * t_l * u64::from(dh));
        let smem = u64::from(SMEM_FLOATS);
        let params = AttentionParams {
            b: batch,
            t,
            d,
            h: heads,
            dh,
            // As cpu::attention computes it, so that both use the same f32.
            scale: 1.0 / (dh as f32).sqrt(),
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
        let uniform = ctx.uniform_buffer("attention params", &params);
        let dummy = &self.k.dummy;
        let group = ctx.kernel_bind_group(
            "attention",
            &self.k.layout,
            uniform.as_entire_binding(),
            &[
                bufs.qkv.buffer,
                bufs.valid.buffer,
                bufs.out.buffer,
                bufs.att.buffer,
                grads.map_or(dummy, |g| g.dout.buffer),
                grads.map_or(dummy, |g| g.dqkv.buffer),
            ],
        );
        Ok(AttentionBinding {
            batch,
            max_batch: batch,
            heads,
            max_groups: self.k.max_groups,
            has_grads: grads.is_some(),
            params,
            uniform,
            group,
        })
    }

    /// out and att from qkv and valid.
    pub fn forward(&self, pass: &mut wgpu::ComputePass, b: &AttentionBinding) {
        dispatch(
            pass,
            self.k.pipeline("attention_forward"),
            &b.group,
            b.grid(),
        );
    }

    /// dqkv (overwritten) from dout, att and qkv. Panics if the binding was made without
    /// gradient buffers.
    pub fn backward(&self, pass: &mut wgpu::ComputePass, b: &AttentionBinding) {
        assert!(
            b.has_grads,
            "attention backward: the binding was made without gradient buffers"
        );
        dispatch(
            pass,
            self.k.pipeline("attention_backward"),
            &b.group,
            b.grid(),
        );
    }
}
