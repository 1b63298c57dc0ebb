//! Linear layer `out = act(inp W^T + b)` on the GPU: launcher for `shaders/matmul.wgsl`.
//! CPU reference: [`crate::cpu::matmul`] (and [`crate::cpu::activation`] for the epilogue).
//!
//! ```text
//! let mm = MatmulKernels::new(&ctx)?;                                // once
//! let mut l1 = mm.bind(&ctx, Site::with_grads(bufs, grads, dims))?;  // once per layer
//! l1.set_rows(&ctx, last_batch_rows);                                // a smaller batch
//! mm.forward(&mut pass, &l1);                                        // every step
//! mm.backward(&mut pass, &l1);
//! ```
//!
//! The weight and bias gradients reduce over the batch's rows into few output tiles; the
//! rows are split over up to [`SPLIT_GROUPS`] workgroups whose partial sums, in a scratch
//! buffer the kernels share, are then added in a fixed order ([`row_splits`]).

use std::sync::OnceLock;

use super::launch::{Launcher, Site, assert_bound, dispatch, flat_grid, wgsl_params};
use super::{GpuContext, GpuError, GpuResult, TensorRef, uniform_slot};

wgsl_params!(
    "matmul.wgsl",
    /// The GEMM's uniform, and `Params` of `shaders/matmul.wgsl`, written from it.
    pub(crate) struct GemmParams {
        m: u32,
        n: u32,
        k: u32,
        a_off: u32,
        a_sm: u32,
        a_sk: u32,
        b_off: u32,
        b_sk: u32,
        b_sn: u32,
        c_off: u32,
        /// Row stride of C and of pre.
        c_sm: u32,
        bias_off: u32,
        pre_off: u32,
        /// 1: C += A B; 0: C = A B (+ bias, act).
        accumulate: u32,
        has_bias: u32,
        /// 1: also write the pre-activation to `pre`.
        store_pre: u32,
        /// 0: none; 1: LeakyReLU, x > 0 ? x : alpha * x.
        act: u32,
        alpha: f32,
        /// 1: C = (A B) * (pre > 0 ? 1 : alpha), pre (m, n) at pre_off with C's row stride.
        /// Each element's pre is read just before its C is written, by the same invocation, so
        /// pre may be C itself (the backward overwrites a dead pre-activation in place).
        act_grad: u32,
        /// Reduction rows per workgroup z (>= k: unsplit).
        k_chunk: u32,
        /// Elements between the partial C of workgroups z and z + 1.
        c_split: u32,
        _pad1: u32,
        _pad2: u32,
        _pad3: u32,
    },
    storage [a: f32, b: f32, c: f32, bias: f32, pre: f32]
);

/// Output tile of one workgroup, per side (`TILE_M`, `TILE_N` in the shader).
const TILE: u32 = 64;
/// Reduction depth of one staged tile (`TILE_K`): split chunks are multiples of it.
const TILE_K: u32 = 16;
/// Workgroup size of `matmul_backward_dbias`.
const DBIAS_WG: u32 = 64;
/// Workgroup size of `matmul_sum_splits`.
const SUM_WG: u32 = 256;
/// Workgroups a split weight or bias gradient aims at: about two per multiprocessor of a
/// large GPU (132 on an H200).
pub const SPLIT_GROUPS: u32 = 256;
/// Fewest batch rows one split reduces (sixteen staged tiles).
const MIN_SPLIT_ROWS: u32 = 256;
/// Floats of the split scratch: splits x tiles <= SPLIT_GROUPS, and a tile holds at most
/// TILE x TILE partial sums (4 MiB).
const SCRATCH_LEN: usize = (SPLIT_GROUPS * TILE * TILE) as usize;
/// Slots of the kernels' uniforms in the binding's one uniform buffer.
const FWD: usize = 0;
const DINP: usize = 1;
const DWEIGHT: usize = 2;
const DBIAS: usize = 3;
const DWEIGHT_SUM: usize = 4;
const DBIAS_SUM: usize = 5;
const SLOTS: usize = 6;

/// How a reduction over `rows` into `groups` workgroups of output (64 x 64 tiles of a
/// weight gradient, 64-wide column groups of a bias gradient) is split: (splits, rows per
/// split), with splits x groups <= [`SPLIT_GROUPS`], at least [`MIN_SPLIT_ROWS`] rows a
/// split, and every split non-empty. From the shapes alone, so that every device adds in
/// the same order.
pub fn row_splits(rows: u32, groups: u32) -> (u32, u32) {
    let most = (SPLIT_GROUPS / groups.max(1))
        .max(1)
        .min((rows / MIN_SPLIT_ROWS).max(1));
    let chunk = rows.div_ceil(most).next_multiple_of(TILE_K).max(TILE_K);
    (rows.div_ceil(chunk).max(1), chunk)
}

/// Epilogue applied to `inp W^T + b` in the forward pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    /// No epilogue.
    None,
    /// `x > 0 ? x : alpha * x`, as [`crate::cpu::activation::leaky_relu_forward`].
    LeakyRelu {
        /// Slope for negative inputs.
        alpha: f32,
    },
}

/// Sizes of one linear layer. `rows` is the largest batch the buffers hold; smaller
/// batches are set later with [`MatmulBinding::set_rows`].
#[derive(Clone, Copy, Debug)]
pub struct MatmulDims {
    /// Rows the buffers hold (a smaller batch: `set_rows`).
    pub rows: u32,
    /// Input features.
    pub n_in: u32,
    /// Output features.
    pub n_out: u32,
    /// The epilogue after the bias.
    pub act: Activation,
}

/// The forward tensors of one layer.
#[derive(Clone, Copy, Debug)]
pub struct MatmulBuffers<'a> {
    /// (rows, n_out), after the activation.
    pub out: TensorRef<'a>,
    /// (rows, n_out), before the activation; `None` to not store it. The backward
    /// kernels take the gradient with respect to this pre-activation: run the activation
    /// backward first (with `act = LeakyRelu`, `out > 0` exactly where `pre > 0` for
    /// `alpha >= 0`, so `out` can stand in for `pre` there).
    pub pre: Option<TensorRef<'a>>,
    /// (rows, n_in)
    pub inp: TensorRef<'a>,
    /// (n_out, n_in)
    pub weight: TensorRef<'a>,
    /// (n_out)
    pub bias: Option<TensorRef<'a>>,
}

/// The backward tensors of one layer.
#[derive(Clone, Copy, Debug)]
pub struct MatmulGradBuffers<'a> {
    /// (rows, n_in), overwritten; `None` when the input needs no gradient (first layer).
    pub dinp: Option<TensorRef<'a>>,
    /// (n_out, n_in), accumulated.
    pub dweight: TensorRef<'a>,
    /// (n_out), accumulated; `None` for no bias (or a frozen one).
    pub dbias: Option<TensorRef<'a>>,
    /// (rows, n_out): gradient of the loss with respect to the pre-activation.
    pub dout: TensorRef<'a>,
    /// When the input is a LeakyReLU's output `inp = LeakyReLU(pre)`: `dinp` then
    /// receives the gradient of `pre`, `dout W * leaky'(pre)` (the activation backward
    /// fused into the epilogue), and may be the sign tensor itself.
    pub dinp_act: Option<LeakyInput<'a>>,
}

/// What [`MatmulKernels::bind`] takes.
pub type MatmulSite<'a> = Site<MatmulBuffers<'a>, MatmulGradBuffers<'a>, MatmulDims>;

/// A layer input that is `LeakyReLU(pre)`, for [`MatmulGradBuffers::dinp_act`].
///
/// The gradient needs only where `pre > 0`, and for `alpha >= 0` that is exactly where
/// `LeakyReLU(pre) > 0` (zeros, negative zeros and NaNs included). So `sign` may be the
/// layer's input itself, and `dinp` may be written over it: the backward runs the weight
/// gradient, which reads the input, before `dinp`. Then the pre-activation need not be
/// kept at all.
#[derive(Clone, Copy, Debug)]
pub struct LeakyInput<'a> {
    /// (rows, n_in): the pre-activation, or (for `alpha >= 0`) the activation itself.
    pub sign: TensorRef<'a>,
    /// Slope for negative inputs, as [`crate::cpu::activation::leaky_relu_backward`].
    pub alpha: f32,
}

/// Uniforms and bind groups of one call site (one layer), made by [`MatmulKernels::bind`].
#[derive(Debug)]
pub struct MatmulBinding {
    rows: u32,
    max_rows: u32,
    n_in: u32,
    n_out: u32,
    params: [GemmParams; SLOTS],
    uniform: wgpu::Buffer,
    max_groups: u32,
    forward: wgpu::BindGroup,
    dinp: Option<wgpu::BindGroup>,
    dweight: Option<wgpu::BindGroup>,
    dbias: Option<wgpu::BindGroup>,
    /// Split reductions: the pass that adds the partials to dweight (dbias), and the
    /// current number of splits (1 unsplit).
    dweight_sum: Option<wgpu::BindGroup>,
    dbias_sum: Option<wgpu::BindGroup>,
    dweight_splits: u32,
    dbias_splits: u32,
}

impl MatmulBinding {
    /// Rows of the current batch.
    pub fn rows(&self) -> u32 {
        self.rows
    }

    /// Sets the batch rows (at most the `rows` bound) for the following dispatches. This
    /// is a `queue.write_buffer`: it takes effect at the next submit, and every dispatch
    /// of this binding in that submit sees the last value set. Panics if `rows` exceeds
    /// the bound maximum (the buffers are not big enough).
    pub fn set_rows(&mut self, ctx: &GpuContext, rows: u32) {
        assert_bound("matmul set_rows", rows, self.max_rows, "rows");
        self.rows = rows;
        self.params[FWD].m = rows;
        self.params[DINP].m = rows;
        self.params[DWEIGHT].k = rows;
        self.params[DBIAS].m = rows;
        self.split_rows();
        ctx.write_uniform_slots(&self.uniform, &self.params);
    }

    /// The chunks and split counts of the weight and bias gradients for `self.rows`.
    fn split_rows(&mut self) {
        let rows = self.rows;
        (self.dweight_splits, self.params[DWEIGHT].k_chunk) = match self.dweight_sum {
            Some(_) => row_splits(rows, weight_tiles(self.n_out, self.n_in)),
            None => (1, rows),
        };
        self.params[DWEIGHT_SUM].k = self.dweight_splits;
        (self.dbias_splits, self.params[DBIAS].k_chunk) = match self.dbias_sum {
            Some(_) => row_splits(rows, self.n_out.div_ceil(DBIAS_WG)),
            None => (1, rows),
        };
        self.params[DBIAS_SUM].k = self.dbias_splits;
    }
}

/// 64 x 64 output tiles of a (n_out, n_in) weight gradient.
fn weight_tiles(n_out: u32, n_in: u32) -> u32 {
    n_out.div_ceil(TILE) * n_in.div_ceil(TILE)
}

/// Pipelines of `shaders/matmul.wgsl`, created once.
#[derive(Debug)]
pub struct MatmulKernels {
    k: Launcher,
    /// The partial sums of split reductions ([`SCRATCH_LEN`] floats), shared by every
    /// binding (their dispatches run one after another), made by the first that splits.
    scratch: OnceLock<wgpu::Buffer>,
}

impl MatmulKernels {
    /// Compiles the shader and creates its pipelines.
    pub fn new(ctx: &GpuContext) -> Result<Self, GpuError> {
        // The forward and the dinp and dweight GEMMs share matmul_gemm (by uniform slot).
        let entries = ["matmul_gemm", "matmul_backward_dbias", "matmul_sum_splits"];
        let k = Launcher::new::<GemmParams>(ctx, &entries)?;
        Ok(Self {
            k,
            scratch: OnceLock::new(),
        })
    }

    fn scratch(&self, ctx: &GpuContext) -> &wgpu::Buffer {
        self.scratch
            .get_or_init(|| ctx.storage_buffer_zeroed("matmul split scratch", SCRATCH_LEN))
    }

    /// Creates the uniforms and bind groups of one layer, after checking every tensor
    /// lies inside its buffer. `grads = None` binds the forward pass only.
    pub fn bind(&self, ctx: &GpuContext, site: MatmulSite) -> GpuResult<MatmulBinding> {
        let Site { bufs, grads, dims } = site;
        let MatmulDims {
            rows,
            n_in,
            n_out,
            act,
        } = dims;
        let (rows_l, n_in_l, n_out_l) = (u64::from(rows), u64::from(n_in), u64::from(n_out));
        let mut tensors = vec![
            ("matmul out (rows, n_out)", Some(bufs.out), rows_l * n_out_l),
            ("matmul pre (rows, n_out)", bufs.pre, rows_l * n_out_l),
            ("matmul inp (rows, n_in)", Some(bufs.inp), rows_l * n_in_l),
            (
                "matmul weight (n_out, n_in)",
                Some(bufs.weight),
                n_out_l * n_in_l,
            ),
            ("matmul bias (n_out)", bufs.bias, n_out_l),
        ];
        if let Some(g) = grads {
            tensors.extend([
                ("matmul dinp (rows, n_in)", g.dinp, rows_l * n_in_l),
                (
                    "matmul dweight (n_out, n_in)",
                    Some(g.dweight),
                    n_out_l * n_in_l,
                ),
                ("matmul dbias (n_out)", g.dbias, n_out_l),
                ("matmul dout (rows, n_out)", Some(g.dout), rows_l * n_out_l),
                (
                    "matmul dinp_act sign (rows, n_in)",
                    g.dinp_act.map(|a| a.sign),
                    rows_l * n_in_l,
                ),
            ]);
            if g.dinp_act.is_some() && g.dinp.is_none() {
                return Err(GpuError::Binding(
                    "matmul: dinp_act needs a dinp to write the fused gradient to".into(),
                ));
            }
        }
        for (what, t, len) in tensors {
            if let Some(t) = t {
                t.check(ctx, what, len)?;
            }
        }
        let max_groups = u64::from(ctx.limits.max_compute_workgroups_per_dimension);
        let most = rows_l.max(n_in_l).max(n_out_l);
        if most.div_ceil(u64::from(TILE)) > max_groups {
            return Err(GpuError::Binding(format!(
                "matmul ({rows} x {n_in} -> {n_out}): a side of {most} needs more than the \
                 device's {max_groups} workgroups per dimension; split the batch"
            )));
        }

        let (act, alpha) = match act {
            Activation::None => (0, 0.0),
            Activation::LeakyRelu { alpha } => (1, alpha),
        };
        let off = |t: Option<TensorRef>| t.map_or(0, |t| t.offset);
        // Split the gradients' reductions when the largest batch would.
        let split_w = grads.is_some() && row_splits(rows, weight_tiles(n_out, n_in)).0 > 1;
        let split_b = grads.is_some_and(|g| g.dbias.is_some())
            && row_splits(rows, n_out.div_ceil(DBIAS_WG)).0 > 1;
        debug_assert!(
            row_splits(rows, weight_tiles(n_out, n_in)).0 as usize * (n_out * n_in) as usize
                <= SCRATCH_LEN.max((n_out * n_in) as usize)
        );
        let mut params = [GemmParams::default(); SLOTS];
        // out (rows, n_out) = inp (rows, n_in) . W^T, B(k, n) = W[n, k]
        params[FWD] = GemmParams {
            m: rows,
            n: n_out,
            k: n_in,
            a_off: bufs.inp.offset,
            a_sm: n_in,
            a_sk: 1,
            b_off: bufs.weight.offset,
            b_sk: 1,
            b_sn: n_in,
            c_off: bufs.out.offset,
            c_sm: n_out,
            k_chunk: n_in,
            bias_off: off(bufs.bias),
            pre_off: off(bufs.pre),
            has_bias: bufs.bias.is_some().into(),
            store_pre: bufs.pre.is_some().into(),
            act,
            alpha,
            ..Default::default()
        };
        if let Some(g) = grads {
            // dinp (rows, n_in) = dout (rows, n_out) . W (n_out, n_in)
            params[DINP] = GemmParams {
                m: rows,
                n: n_in,
                k: n_out,
                a_off: g.dout.offset,
                a_sm: n_out,
                a_sk: 1,
                b_off: bufs.weight.offset,
                b_sk: n_in,
                b_sn: 1,
                c_off: off(g.dinp),
                c_sm: n_in,
                k_chunk: n_out,
                pre_off: g.dinp_act.map_or(0, |a| a.sign.offset),
                act_grad: g.dinp_act.is_some().into(),
                alpha: g.dinp_act.map_or(0.0, |a| a.alpha),
                ..Default::default()
            };
            // dweight (n_out, n_in) += dout^T (n_out, rows) . inp (rows, n_in); split:
            // partial z (n_out, n_in) at scratch[z n_out n_in], then added in order.
            let weight_len = n_out * n_in;
            params[DWEIGHT] = GemmParams {
                m: n_out,
                n: n_in,
                k: rows,
                a_off: g.dout.offset,
                a_sm: 1,
                a_sk: n_out,
                b_off: bufs.inp.offset,
                b_sk: n_in,
                b_sn: 1,
                c_off: if split_w { 0 } else { g.dweight.offset },
                c_sm: n_in,
                c_split: weight_len,
                accumulate: (!split_w).into(),
                ..Default::default()
            };
            params[DWEIGHT_SUM] = GemmParams {
                m: n_out,
                n: n_in,
                a_sk: weight_len,
                c_off: g.dweight.offset,
                c_sm: n_in,
                ..Default::default()
            };
            // dbias (n_out) += column sums of dout (rows, n_out); split: partial z (n_out)
            // at scratch[z n_out], then added in order.
            params[DBIAS] = GemmParams {
                m: rows,
                n: n_out,
                a_off: g.dout.offset,
                a_sm: n_out,
                a_sk: 1,
                c_off: if split_b { 0 } else { off(g.dbias) },
                c_split: n_out,
                accumulate: (!split_b).into(),
                ..Default::default()
            };
            params[DBIAS_SUM] = GemmParams {
                m: 1,
                n: n_out,
                a_sk: n_out,
                c_off: off(g.dbias),
                c_sm: n_out,
                ..Default::default()
            };
        }

        let uniform = ctx.uniform_slots_buffer("matmul params", &params);

        // One bind group per kernel: (params, a, b, c, bias, pre) as in the shader.
        let group = |label: &str, which: usize, bufs: [&wgpu::Buffer; 5]| {
            let params = uniform_slot::<GemmParams>(&uniform, which);
            ctx.kernel_bind_group(label, &self.k.layout, params, &bufs)
        };
        let d = &self.k.dummy;
        let (inp, weight) = (bufs.inp.buffer, bufs.weight.buffer);
        let bias = bufs.bias.map_or(d, |t| t.buffer);
        let pre = bufs.pre.map_or(d, |t| t.buffer);
        let forward = group(
            "matmul forward",
            FWD,
            [inp, weight, bufs.out.buffer, bias, pre],
        );
        let (mut dinp, mut dweight, mut dbias) = (None, None, None);
        let (mut dweight_sum, mut dbias_sum) = (None, None);
        if let Some(g) = grads {
            let dout = g.dout.buffer;
            let act_sign = g.dinp_act.map_or(d, |a| a.sign.buffer);
            dinp = g
                .dinp
                .map(|t| group("matmul dinp", DINP, [dout, weight, t.buffer, d, act_sign]));
            let dw = g.dweight.buffer;
            let scratch = (split_w || split_b).then(|| self.scratch(ctx));
            let partials = |split: bool, to| if split { scratch.unwrap() } else { to };
            let into = partials(split_w, dw);
            dweight = Some(group("matmul dweight", DWEIGHT, [dout, inp, into, d, d]));
            if split_w {
                let sum = [scratch.unwrap(), d, dw, d, d];
                dweight_sum = Some(group("matmul dweight sum", DWEIGHT_SUM, sum));
            }
            if let Some(t) = g.dbias {
                let into = partials(split_b, t.buffer);
                dbias = Some(group("matmul dbias", DBIAS, [dout, d, into, d, d]));
                if split_b {
                    let sum = [scratch.unwrap(), d, t.buffer, d, d];
                    dbias_sum = Some(group("matmul dbias sum", DBIAS_SUM, sum));
                }
            }
        }
        let mut binding = MatmulBinding {
            rows,
            max_rows: rows,
            n_in,
            n_out,
            params,
            uniform,
            max_groups: ctx.limits.max_compute_workgroups_per_dimension,
            forward,
            dinp,
            dweight,
            dbias,
            dweight_sum,
            dbias_sum,
            dweight_splits: 1,
            dbias_splits: 1,
        };
        binding.split_rows();
        ctx.write_uniform_slots(&binding.uniform, &binding.params);
        Ok(binding)
    }

    /// out = act(inp W^T + bias), and pre if bound.
    pub fn forward(&self, pass: &mut wgpu::ComputePass, b: &MatmulBinding) {
        self.gemm(
            pass,
            self.k.pipeline("matmul_gemm"),
            &b.forward,
            b.rows,
            b.n_out,
        );
    }

    /// dweight += dout^T inp, dbias += column sums of dout (if bound), then dinp = dout W
    /// (if bound; `* leaky'(sign)` with `dinp_act`). The input gradient comes last, so it
    /// may overwrite the input (see [`LeakyInput`]). Panics if the binding was made
    /// without gradient buffers.
    pub fn backward(&self, pass: &mut wgpu::ComputePass, b: &MatmulBinding) {
        let dweight = b
            .dweight
            .as_ref()
            .expect("matmul backward: the binding was made without gradient buffers");
        let groups = [
            b.n_in.div_ceil(TILE),
            b.n_out.div_ceil(TILE),
            b.dweight_splits,
        ];
        dispatch(pass, self.k.pipeline("matmul_gemm"), dweight, groups);
        if let Some(bg) = &b.dweight_sum {
            let grid = flat_grid(b.n_out * b.n_in, SUM_WG, b.max_groups);
            dispatch(pass, self.k.pipeline("matmul_sum_splits"), bg, grid);
        }
        if let Some(bg) = &b.dbias {
            // One invocation per bias element and split.
            let groups = [b.n_out.div_ceil(DBIAS_WG), 1, b.dbias_splits];
            dispatch(pass, self.k.pipeline("matmul_backward_dbias"), bg, groups);
        }
        if let Some(bg) = &b.dbias_sum {
            dispatch(
                pass,
                self.k.pipeline("matmul_sum_splits"),
                bg,
                flat_grid(b.n_out, SUM_WG, b.max_groups),
            );
        }
        if let Some(bg) = &b.dinp {
            self.gemm(pass, self.k.pipeline("matmul_gemm"), bg, b.rows, b.n_in);
        }
    }

    /// One 64 x 64 tile per workgroup over C (m, n).
    fn gemm(
        &self,
        pass: &mut wgpu::ComputePass,
        pipeline: &wgpu::ComputePipeline,
        bg: &wgpu::BindGroup,
        m: u32,
        n: u32,
    ) {
        dispatch(pass, pipeline, bg, [n.div_ceil(TILE), m.div_ceil(TILE), 1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_splits_cover_the_rows_in_nonempty_chunks_within_the_workgroup_budget() {
        for rows in [0, 1, 15, 16, 255, 256, 257, 1000, 5376, 86016, 1 << 20] {
            for groups in [1, 2, 3, 16, 255, 256, 257, 1000] {
                let (splits, chunk) = row_splits(rows, groups);
                let what = format!("rows {rows}, groups {groups}: ({splits}, {chunk})");
                assert!(splits >= 1 && chunk % TILE_K == 0, "{what}");
                assert!(splits * chunk >= rows, "{what}: rows left over");
                assert!((splits - 1) * chunk < rows.max(1), "{what}: an empty split");
                if splits > 1 {
                    assert!(splits * groups <= SPLIT_GROUPS, "{what}: too many groups");
                    assert!(chunk >= MIN_SPLIT_ROWS, "{what}: too short a split");
                    // The partial sums fit the scratch: a group holds at most a tile.
                    assert!((splits * groups) as usize * (TILE * TILE) as usize <= SCRATCH_LEN);
                }
            }
        }
        // The default model at batch 4096 (K = 86016): a 64 x 64 weight in 256 splits.
        assert_eq!(row_splits(86016, 1), (256, 336));
    }
}
