//! Attention of the target token alone over its user's shared history keys and values
//! and its own: launcher for `shaders/target_attention.wgsl`. CPU reference:
//! [`crate::cpu::target_attention`].
//!
//! ```text
//! let ta = TargetAttentionKernels::new(&ctx)?;          // once
//! let mut b = ta.bind(&ctx, &bufs, dims)?;              // once per buffer set
//! b.set_rows(&ctx, candidates);                         // when the candidate count changes
//! ta.forward(&mut pass, &b);                            // every request batch
//! ```
//!
//! One invocation per (candidate, head) keeps the scores of its `L + 1` keys in a private
//! array, so **L + 1 <= [`MAX_KEYS`] = 128** ([`TargetAttentionKernels::bind`] refuses
//! longer histories).

use super::launch::{Binding, Kernels, strided_grid, tensors, wgsl_params};
use super::{GpuContext, GpuError};
use crate::cpu::attention::head_dims;

wgsl_params!(
    "target_attention.wgsl",
    /// The uniform, and `Params` of `shaders/target_attention.wgsl`, written from it.
    pub struct TargetAttentionParams {
        /// Rows in this batch.
        n: u32,
        l: u32,
        d: u32,
        h: u32,
        /// D / h.
        dh: u32,
        /// 1 / sqrt(dh).
        scale: f32,
        qkv_off: u32,
        kv_off: u32,
        valid_off: u32,
        user_off: u32,
        out_off: u32,
        /// Rows per user in hist_kv and hist_valid, >= l.
        r: u32,
    },
    storage [qkv: f32, hist_kv: f32, hist_valid: u32, user: u32, out: f32],
    kernels ["target_attention_forward"],
    rows n
);

/// Keys per candidate at most (the history's `L` and its own): the shader's private
/// array of scores.
pub const MAX_KEYS: u32 = 128;
/// Invocations per workgroup (the shader's `WG`).
const WG: u32 = 64;

/// Sizes of one call site. `rows` and `users` are what the buffers hold; fewer rows are
/// set later with [`TargetAttentionBinding::set_rows`].
#[derive(Clone, Copy, Debug)]
pub struct TargetAttentionDims {
    /// Candidates the buffers hold.
    pub rows: u32,
    /// Users the history buffers hold.
    pub users: u32,
    /// History length L (the keys are L + 1).
    pub l: u32,
    /// Rows per user in `hist_kv` and `hist_valid`, at least L: its first L are the
    /// history (L + 1 when they come from a batch of T-token samples, target last).
    pub user_rows: u32,
    /// Model width; each head has `d / heads` columns.
    pub d: u32,
    /// Attention heads (must divide `d`).
    pub heads: u32,
}

tensors! {
    /// The tensors of one call site.
    pub struct TargetAttentionBuffers {
        /// (N, d), written.
        out,
        /// (N, 3d): each candidate's own Q, K, V.
        qkv,
        /// (U, R, 2d): each user's history keys, then values (R = `user_rows`).
        hist_kv,
        /// (U, R) u32: 0 masks the slot.
        hist_valid,
        /// (N) u32: each candidate's user, below U (not checked on the device: a larger
        /// one reads outside the user's rows).
        user,
    }
}

/// Uniform and bind group of one call site, made by [`TargetAttentionKernels::bind`]; its
/// rows are candidates.
pub type TargetAttentionBinding = Binding<TargetAttentionParams>;

/// The pipeline of `shaders/target_attention.wgsl`, created once.
pub type TargetAttentionKernels = Kernels<TargetAttentionParams>;

impl TargetAttentionKernels {
    /// Creates the uniform and bind group of one call site, after checking the shape and
    /// that every tensor lies inside its buffer.
    pub fn bind(
        &self,
        ctx: &GpuContext,
        bufs: &TargetAttentionBuffers,
        dims: TargetAttentionDims,
    ) -> Result<TargetAttentionBinding, GpuError> {
        let TargetAttentionDims {
            rows,
            users,
            l,
            user_rows,
            d,
            heads,
        } = dims;
        let shape =
            format!("target attention (rows {rows}, users {users}, L {l}, d {d}, heads {heads})");
        if heads == 0 || d == 0 || d % heads != 0 {
            return Err(GpuError::Binding(format!(
                "{shape}: d and heads must be positive and heads must divide d"
            )));
        }
        if user_rows < l {
            return Err(GpuError::Binding(format!(
                "{shape}: {user_rows} rows per user, fewer than the history's {l}"
            )));
        }
        if l + 1 > MAX_KEYS {
            return Err(GpuError::Binding(format!(
                "{shape}: each candidate keeps the scores of its L + 1 keys in a private \
                 array of {MAX_KEYS}; shorten the history"
            )));
        }
        let (n, u, r_, d_) = (
            u64::from(rows),
            u64::from(users),
            u64::from(user_rows),
            u64::from(d),
        );
        let what = |name: &str, dims: &str| format!("{shape} {name} {dims}");
        bufs.out.check(ctx, &what("out", "(N, d)"), n * d_)?;
        bufs.qkv.check(ctx, &what("qkv", "(N, 3d)"), n * 3 * d_)?;
        bufs.hist_kv
            .check(ctx, &what("hist_kv", "(U, R, 2d)"), u * r_ * 2 * d_)?;
        bufs.hist_valid
            .check(ctx, &what("hist_valid", "(U, R)"), u * r_)?;
        bufs.user.check(ctx, &what("user", "(N)"), n)?;
        // As the CPU computes them, so that both use the same f32 scale.
        let (dh, scale) = head_dims(d as usize, heads as usize);
        let dh = dh as u32;
        let params = TargetAttentionParams {
            n: rows,
            l,
            d,
            h: heads,
            dh,
            scale,
            qkv_off: bufs.qkv.offset,
            kv_off: bufs.hist_kv.offset,
            valid_off: bufs.hist_valid.offset,
            user_off: bufs.user.offset,
            out_off: bufs.out.offset,
            r: user_rows,
        };
        let storage = [
            bufs.qkv.buffer,
            bufs.hist_kv.buffer,
            bufs.hist_valid.buffer,
            bufs.user.buffer,
            bufs.out.buffer,
        ];
        Ok(self.binding(ctx, params, (rows, 1), &storage, false, ()))
    }

    /// out from qkv, hist_kv, hist_valid and user.
    pub fn forward(&self, pass: &mut wgpu::ComputePass, b: &TargetAttentionBinding) {
        let grid = strided_grid(b.rows * b.params.h, WG, self.k.max_groups);
        self.run(pass, "target_attention_forward", b, grid);
    }
}
