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

use super::launch::{Launcher, assert_bound, dispatch, strided_grid, wgsl_params};
use super::{GpuContext, GpuError, TensorRef};

wgsl_params!(
    "target_attention.wgsl",
    /// The uniform, field for field `Params` in `shaders/target_attention.wgsl`.
    pub(crate) struct TargetAttentionParams {
        n: u32,
        l: u32,
        d: u32,
        h: u32,
        dh: u32,
        scale: f32,
        qkv_off: u32,
        kv_off: u32,
        valid_off: u32,
        user_off: u32,
        out_off: u32,
        r: u32,
    }
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

/// The tensors of one call site.
#[derive(Clone, Copy, Debug)]
pub struct TargetAttentionBuffers<'a> {
    /// (N, d), written.
    pub out: TensorRef<'a>,
    /// (N, 3d): each candidate's own Q, K, V.
    pub qkv: TensorRef<'a>,
    /// (U, R, 2d): each user's history keys, then values (R = `user_rows`).
    pub hist_kv: TensorRef<'a>,
    /// (U, R) u32: 0 masks the slot.
    pub hist_valid: TensorRef<'a>,
    /// (N) u32: each candidate's user, below U (not checked on the device: a larger one
    /// reads outside the user's rows).
    pub user: TensorRef<'a>,
}

/// Uniform and bind group of one call site, made by [`TargetAttentionKernels::bind`].
#[derive(Debug)]
pub struct TargetAttentionBinding {
    rows: u32,
    max_rows: u32,
    heads: u32,
    max_groups: u32,
    params: TargetAttentionParams,
    uniform: wgpu::Buffer,
    group: wgpu::BindGroup,
}

impl TargetAttentionBinding {
    /// Candidates of the current batch.
    pub fn rows(&self) -> u32 {
        self.rows
    }

    /// Sets the candidates of the batch (at most the bound `rows`): a
    /// `queue.write_buffer`, effective at the next submit. Panics above the bound.
    pub fn set_rows(&mut self, ctx: &GpuContext, rows: u32) {
        assert_bound("target attention set_rows", rows, self.max_rows, "rows");
        self.rows = rows;
        self.params.n = rows;
        ctx.write(&self.uniform, 0, &[self.params]);
    }
}

/// The pipeline of `shaders/target_attention.wgsl`, created once.
#[derive(Debug)]
pub struct TargetAttentionKernels {
    k: Launcher,
}

impl TargetAttentionKernels {
    /// Compiles the shader and creates its pipeline.
    pub fn new(ctx: &GpuContext) -> Result<Self, GpuError> {
        let source = include_str!("../../../shaders/target_attention.wgsl");
        let entries = ["target_attention_forward"];
        // Storage: qkv; hist_kv; hist_valid; user; out.
        let k = Launcher::new(ctx, "target_attention", source, 5, &entries)?;
        Ok(Self { k })
    }

    /// Caps the workgroups of the grid-stride loop (at least 1), so that each
    /// invocation walks several (candidate, head) pairs: lets tests run the stride.
    pub fn with_max_workgroups_per_dim(mut self, max: u32) -> Self {
        self.k.cap(max);
        self
    }

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
        let dh = d / heads;
        let params = TargetAttentionParams {
            n: rows,
            l,
            d,
            h: heads,
            dh,
            // As cpu::target_attention computes it, so that both use the same f32.
            scale: 1.0 / (dh as f32).sqrt(),
            qkv_off: bufs.qkv.offset,
            kv_off: bufs.hist_kv.offset,
            valid_off: bufs.hist_valid.offset,
            user_off: bufs.user.offset,
            out_off: bufs.out.offset,
            r: user_rows,
        };
        let uniform = ctx.uniform_buffer("target attention params", &params);
        let group = ctx.kernel_bind_group(
            "target attention",
            &self.k.layout,
            uniform.as_entire_binding(),
            &[
                bufs.qkv.buffer,
                bufs.hist_kv.buffer,
                bufs.hist_valid.buffer,
                bufs.user.buffer,
                bufs.out.buffer,
            ],
        );
        Ok(TargetAttentionBinding {
            rows,
            max_rows: rows,
            heads,
            max_groups: self.k.max_groups,
            params,
            uniform,
            group,
        })
    }

    /// out from qkv, hist_kv, hist_valid and user.
    pub fn forward(&self, pass: &mut wgpu::ComputePass, b: &TargetAttentionBinding) {
        let grid = strided_grid(b.rows * b.heads, WG, self.k.max_groups.min(b.max_groups));
        dispatch(
            pass,
            self.k.pipeline("target_attention_forward"),
            &b.group,
            grid,
        );
    }
}
