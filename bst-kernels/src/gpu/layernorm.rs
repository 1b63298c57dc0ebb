//! LayerNorm over the last dimension on the GPU: launcher for `shaders/layernorm.wgsl`.
//! CPU reference: [`crate::cpu::layernorm`] (eps [`LN_EPS`]).
//!
//! ```text
//! let ln = LayerNormKernels::new(&ctx)?;                             // once
//! let mut l1 = ln.bind(&ctx, Site::with_grads(bufs, grads, dims))?;  // once per layer
//! l1.set_rows(&ctx, last_batch_rows);                                // a smaller batch
//! ln.forward(&mut pass, &l1);                                        // every step
//! ln.backward(&mut pass, &l1);
//! ```
//!
//! The parameter gradients are reduced over rows in two deterministic passes: partial
//! sums per chunk of [`CHUNK_ROWS`] rows into a scratch buffer that the binding owns
//! (`2 * ceil(rows / CHUNK_ROWS) * C` floats), then the chunks' sums in order.

use super::launch::{Binding, Kernels, Site, strided_grid, tensors, wgsl_params};
use super::{GpuContext, GpuError, GpuResult};
use crate::cpu::layernorm::LN_EPS;

wgsl_params!(
    "layernorm.wgsl",
    /// The uniform, and `Params` of `shaders/layernorm.wgsl`, written from it.
    pub struct LayerNormParams {
        /// N, rows of this batch.
        rows: u32,
        c: u32,
        inp_off: u32,
        out_off: u32,
        mean_off: u32,
        rstd_off: u32,
        weight_off: u32,
        bias_off: u32,
        dinp_off: u32,
        dout_off: u32,
        dweight_off: u32,
        dbias_off: u32,
        eps: f32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    },
    // The backward binds dweight, dbias and dinp at weight's, bias's and out's slots
    // (the shader's aliases).
    storage [
        inp: f32, mean: f32, rstd: f32, weight: f32, bias: f32, out: f32, dout: f32, scratch: f32,
    ],
    kernels ["layernorm_forward", "layernorm_backward_dinp", "layernorm_backward_partials", "layernorm_backward_dparams",],
    rows rows
);

/// Workgroup size of every kernel (`WG` in the shader).
const WG: u32 = 64;
/// Rows per chunk of the parameter-gradient reduction (`CHUNK` in the shader).
pub const CHUNK_ROWS: u32 = 256;

/// Sizes of one LayerNorm: `rows` rows of `c` features. `rows` is the largest batch the
/// buffers hold; smaller batches are set later with [`LayerNormBinding::set_rows`].
#[derive(Clone, Copy, Debug)]
pub struct LayerNormDims {
    /// Rows the buffers hold (a smaller batch: `set_rows`).
    pub rows: u32,
    /// Channels per row (the normalised width).
    pub c: u32,
}

tensors! {
    /// The forward tensors of one layer.
    pub struct LayerNormBuffers {
        /// (rows, c)
        out,
        /// (rows), written by the forward, read by the backward.
        mean,
        /// (rows), written by the forward, read by the backward.
        rstd,
        /// (rows, c)
        inp,
        /// (c)
        weight,
        /// (c)
        bias,
    }
}

tensors! {
    /// The backward tensors of one layer.
    pub struct LayerNormGradBuffers {
        /// (rows, c), overwritten.
        dinp,
        /// (c), accumulated.
        dweight,
        /// (c), accumulated.
        dbias,
        /// (rows, c)
        dout,
    }
}

/// What [`LayerNormKernels::bind`] takes.
pub type LayerNormSite<'a> = Site<LayerNormBuffers<'a>, LayerNormGradBuffers<'a>, LayerNormDims>;

/// Bind groups of the backward kernels, and the scratch they share.
#[derive(Debug)]
pub struct LayerNormBackward {
    dinp: wgpu::BindGroup,
    partials: wgpu::BindGroup,
    dparams: wgpu::BindGroup,
    _scratch: wgpu::Buffer,
}

/// Uniform, bind groups and scratch of one layer, made by [`LayerNormKernels::bind`]: the
/// forward's group, and the backward's when bound with gradients.
pub type LayerNormBinding = Binding<LayerNormParams, Option<LayerNormBackward>>;

/// Pipelines of `shaders/layernorm.wgsl`, created once.
pub type LayerNormKernels = Kernels<LayerNormParams>;

impl LayerNormKernels {
    /// Creates the uniform, bind groups and (with `grads`) the scratch of one layer,
    /// after checking every tensor lies inside its buffer. `grads = None` binds the
    /// forward pass only.
    pub fn bind(&self, ctx: &GpuContext, site: LayerNormSite) -> GpuResult<LayerNormBinding> {
        let Site { bufs, grads, dims } = site;
        let LayerNormDims { rows, c } = dims;
        if c == 0 {
            return Err(GpuError::Binding(
                "layernorm with c = 0 features: there is nothing to normalise".into(),
            ));
        }
        let (rows_l, c_l) = (u64::from(rows), u64::from(c));
        let what = |t: &str, shape: &str| format!("layernorm {t} {shape} (rows {rows}, c {c})");
        bufs.out
            .check(ctx, &what("out", "(rows, c)"), rows_l * c_l)?;
        bufs.mean.check(ctx, &what("mean", "(rows)"), rows_l)?;
        bufs.rstd.check(ctx, &what("rstd", "(rows)"), rows_l)?;
        bufs.inp
            .check(ctx, &what("inp", "(rows, c)"), rows_l * c_l)?;
        bufs.weight.check(ctx, &what("weight", "(c)"), c_l)?;
        bufs.bias.check(ctx, &what("bias", "(c)"), c_l)?;
        if let Some(g) = grads {
            g.dinp
                .check(ctx, &what("dinp", "(rows, c)"), rows_l * c_l)?;
            g.dweight.check(ctx, &what("dweight", "(c)"), c_l)?;
            g.dbias.check(ctx, &what("dbias", "(c)"), c_l)?;
            g.dout
                .check(ctx, &what("dout", "(rows, c)"), rows_l * c_l)?;
        }
        // The parameter-gradient passes do not loop: their grid is the whole problem.
        let max_groups = ctx.limits.max_compute_workgroups_per_dimension;
        let chunks = rows.div_ceil(CHUNK_ROWS);
        if chunks > max_groups || c.div_ceil(WG) > max_groups {
            return Err(GpuError::Binding(format!(
                "layernorm (rows {rows}, c {c}): the backward needs {chunks} x {} workgroups, \
                 more than the device's {max_groups} per dimension; split the batch",
                c.div_ceil(WG)
            )));
        }

        let params = LayerNormParams {
            rows,
            c,
            inp_off: bufs.inp.offset,
            out_off: bufs.out.offset,
            mean_off: bufs.mean.offset,
            rstd_off: bufs.rstd.offset,
            weight_off: bufs.weight.offset,
            bias_off: bufs.bias.offset,
            dinp_off: grads.map_or(0, |g| g.dinp.offset),
            dout_off: grads.map_or(0, |g| g.dout.offset),
            dweight_off: grads.map_or(0, |g| g.dweight.offset),
            dbias_off: grads.map_or(0, |g| g.dbias.offset),
            eps: LN_EPS,
            ..Default::default()
        };
        // Slots (params, inp, mean, rstd, weight | dweight, bias | dbias, out | dinp, dout,
        // scratch), as in the shader.
        let d = &self.k.dummy;
        let (inp, mean, rstd) = (bufs.inp.buffer, bufs.mean.buffer, bufs.rstd.buffer);
        let (weight, bias) = (bufs.weight.buffer, bufs.bias.buffer);
        let forward = [inp, mean, rstd, weight, bias, bufs.out.buffer, d, d];
        let mut binding = self.binding(ctx, params, (rows, 1), &forward, grads.is_some(), None);
        binding.extra = grads.map(|g| {
            let group = |label: &str, bufs: [&wgpu::Buffer; 8]| {
                self.k.bind_group(ctx, label, &binding.uniform, &bufs)
            };
            let len = 2 * chunks as usize * c as usize;
            let scratch = ctx.storage_buffer_zeroed("layernorm scratch", len);
            let dout = g.dout.buffer;
            LayerNormBackward {
                dinp: group(
                    "layernorm dinp",
                    [inp, mean, rstd, weight, d, g.dinp.buffer, dout, d],
                ),
                partials: group(
                    "layernorm partials",
                    [inp, mean, rstd, d, d, d, dout, &scratch],
                ),
                dparams: group(
                    "layernorm dparams",
                    [d, d, d, g.dweight.buffer, g.dbias.buffer, d, d, &scratch],
                ),
                _scratch: scratch,
            }
        });
        Ok(binding)
    }

    /// out = (inp - mean) * rstd * weight + bias; mean and rstd saved.
    pub fn forward(&self, pass: &mut wgpu::ComputePass, b: &LayerNormBinding) {
        self.run(pass, "layernorm_forward", b, self.row_grid(b));
    }

    /// dinp (overwritten), dweight and dbias (accumulated). Panics if the binding was
    /// made without gradient buffers.
    pub fn backward(&self, pass: &mut wgpu::ComputePass, b: &LayerNormBinding) {
        let g = b
            .extra
            .as_ref()
            .expect("layernorm backward: the binding was made without gradient buffers");
        if b.rows == 0 {
            return;
        }
        self.k
            .run(pass, "layernorm_backward_dinp", &g.dinp, self.row_grid(b));
        // One invocation per (chunk, column), then one per column.
        let col_groups = b.params.c.div_ceil(WG);
        let chunks = b.rows.div_ceil(CHUNK_ROWS);
        let partials = [col_groups, chunks, 1];
        self.k
            .run(pass, "layernorm_backward_partials", &g.partials, partials);
        let dparams = [col_groups, 1, 1];
        self.k
            .run(pass, "layernorm_backward_dparams", &g.dparams, dparams);
    }

    /// One workgroup per row, grid-stride past the device's workgroup limit.
    fn row_grid(&self, b: &LayerNormBinding) -> [u32; 3] {
        strided_grid(b.rows, 1, self.k.max_groups)
    }
}
