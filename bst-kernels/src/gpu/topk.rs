//! Top-k selection on the GPU: launcher for `shaders/topk.wgsl`.
//! CPU reference: [`crate::cpu::topk`], which the kernel matches exactly.
//!
//! The `k` best of `n` f32 scores as `(index u32, score f32)` pairs, best first: a higher
//! score first, equal scores by lower index, NaN last. Only `2 * min(k, n)` words need to
//! come back to the host.
//!
//! Passes: each workgroup reduces 2048 scores (or pairs) to its best `K` (`k` rounded up
//! to a power of two), in workgroup memory with fixed compare-exchange networks; passes
//! chain until one workgroup is left, which writes the answer. `n = 1e6` takes 10 passes
//! for `k = 1000`, 3 for `k = 10`, all recorded into one compute pass.
//!
//! Limits: `k <= MAX_K` (1024), `n <= MAX_N` (2^31), the scores' buffer within the
//! device's `max_storage_buffer_binding_size`, and the first pass's scratch
//! (`8 * K * ceil(n / 2048)` bytes, 4 MB for `n = 1e6, k = 1000`) too.
//!
//! ```text
//! let topk = TopKKernels::new(&ctx)?;                                  // once
//! let mut b = topk.bind(&ctx, &TopKBuffers { out, scores }, dims)?;    // once per buffer set
//! b.set_len(&ctx, n);                                                  // when n changes
//! b.set_k(&ctx, k);                                                    // when k changes
//! topk.record(&mut pass, &b);                                          // after the scores
//! let mut readback = Readback::new("top-k");                          // once
//! let best = read_pairs(&ctx, &mut readback, out, b.pairs())?;         // (index, score)
//! ```

use super::launch::{Kernels, assert_bound, flat_grid, tensors, wgsl_params};
use super::{GpuContext, GpuError, Readback, TensorRef, uniform_slot};

/// Largest `k` the kernel selects (a workgroup keeps `K` of 2048 pairs, `K <= 1024`).
pub const MAX_K: u32 = 1024;
/// Largest `n` (indices stay below 2^31, far from the padding index `u32::MAX`).
pub const MAX_N: u32 = 1 << 31;
/// Pairs one workgroup sorts (`CHUNK` in the shader): 16 KiB of workgroup memory.
const CHUNK: u32 = 2048;

wgsl_params!(
    "topk.wgsl",
    /// One pass's uniform, and `Params` of `shaders/topk.wgsl`, written from it.
    pub struct TopKParams {
        /// Scores (first pass) or pairs (later passes) this pass reads.
        n: u32,
        /// Pairs the last pass writes: min(k, number of scores).
        k: u32,
        /// K: pairs each workgroup keeps, a power of two <= CHUNK / 2.
        run: u32,
        /// 1: read the scores; 0: read the previous pass's pairs (sorted runs of K).
        first: u32,
        /// 1: one workgroup; write the first k pairs to out.
        last: u32,
        /// Workgroups of this pass (the 2D grid's last row may overhang).
        groups: u32,
        scores_off: u32,
        out_off: u32,
    },
    // scores: f32 bits; src, dst, out: (key or index, score bits) pairs.
    storage [scores: u32, src: u32, dst: u32, out: u32],
    kernels ["topk_pass"]
);

/// Sizes of one call site. `n` is the largest number of scores the binding selects from,
/// `k` the largest number of pairs; fewer are set later with [`TopKBinding::set_len`] and
/// [`TopKBinding::set_k`] (the scratch and `out` are sized for these maxima).
#[derive(Clone, Copy, Debug)]
pub struct TopKDims {
    /// Scores (at most [`MAX_N`]).
    pub n: u32,
    /// Pairs to select (at most [`MAX_K`]); `min(k, n)` are written.
    pub k: u32,
}

tensors! {
    /// The tensors of the selection. `out` must not overlap `scores`.
    pub struct TopKBuffers {
        /// (min(k, n), 2) u32: `(index, score bits)` pairs, best first (overwritten).
        /// Read with [`read_pairs`].
        out,
        /// (n) f32.
        scores,
    }
}

/// Uniforms, scratch and bind groups of one call site, made by [`TopKKernels::bind`].
#[derive(Debug)]
pub struct TopKBinding {
    n: u32,
    max_n: u32,
    k: u32,
    max_k: u32,
    scores_off: u32,
    out_off: u32,
    /// The current `n`'s passes (at most `groups.len()`).
    passes: Vec<TopKParams>,
    uniform: wgpu::Buffer,
    /// One per pass of the largest `n`: pass `p` reads scratch `(p - 1) % 2` and writes
    /// scratch `p % 2`.
    groups: Vec<wgpu::BindGroup>,
    _scratch: [wgpu::Buffer; 2],
}

impl TopKBinding {
    /// Scores the next selection reads.
    pub fn len(&self) -> u32 {
        self.n
    }

    /// No scores: [`TopKKernels::record`] records nothing.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Pairs the next selection asks for (`min(k, n)` are written).
    pub fn k(&self) -> u32 {
        self.k
    }

    /// Pairs the next selection writes to `out`: `min(k, n)`.
    pub fn pairs(&self) -> usize {
        self.k.min(self.n) as usize
    }

    /// Selects from the first `n` scores (at most the bound `n`) from the next submit on.
    /// A `queue.write_buffer`: every dispatch of this binding in that submit sees the last
    /// value set. Panics if `n` exceeds the bound maximum.
    pub fn set_len(&mut self, ctx: &GpuContext, n: u32) {
        assert_bound("topk set_len", n, self.max_n, "scores");
        self.n = n;
        self.replan(ctx);
    }

    /// Selects `k` pairs (at most the bound `k`) from the next submit on, with the same
    /// scratch and bind groups: only the uniforms change. A `queue.write_buffer`, like
    /// [`TopKBinding::set_len`]. Panics if `k` exceeds the bound maximum.
    pub fn set_k(&mut self, ctx: &GpuContext, k: u32) {
        assert_bound("topk set_k", k, self.max_k, "pairs");
        self.k = k;
        self.replan(ctx);
    }

    /// The passes of the current `n` and `k`, written into the uniform slots. A smaller
    /// `K` (`k` rounded up to a power of two) keeps fewer pairs per pass, so it needs no
    /// more passes, and no more scratch, than the bound `k`.
    fn replan(&mut self, ctx: &GpuContext) {
        let run = run_of(self.k);
        self.passes = plan(self.n, self.k, run, self.scores_off, self.out_off);
        ctx.write_uniform_slots(&self.uniform, &self.passes);
    }
}

/// The pipeline of `shaders/topk.wgsl`, created once.
pub type TopKKernels = Kernels<TopKParams>;

impl TopKKernels {
    /// Allocates the scratch and creates the uniforms and bind groups for selecting `k` of
    /// up to `n` scores, after checking the limits and that both tensors lie inside their
    /// buffers.
    pub fn bind(
        &self,
        ctx: &GpuContext,
        bufs: &TopKBuffers,
        dims: TopKDims,
    ) -> Result<TopKBinding, GpuError> {
        let TopKDims { n, k } = dims;
        if k > MAX_K {
            return Err(GpuError::Binding(format!(
                "top-k: k = {k} is more than the kernel's {MAX_K}; select on the host \
                 (bst_kernels::cpu::topk) or in rounds"
            )));
        }
        if n > MAX_N {
            return Err(GpuError::Binding(format!(
                "top-k: n = {n} scores is more than the kernel's {MAX_N}; split the scores"
            )));
        }
        bufs.scores.check(ctx, "top-k scores (n)", u64::from(n))?;
        bufs.out
            .check(ctx, "top-k out (min(k, n), 2)", 2 * u64::from(k.min(n)))?;
        let run = run_of(k);
        let (scores_off, out_off) = (bufs.scores.offset, bufs.out.offset);
        let passes = plan(n, k, run, scores_off, out_off);

        // Pass p writes scratch p % 2; the first two passes write the most.
        let limit = ctx
            .limits
            .max_storage_buffer_binding_size
            .min(ctx.limits.max_buffer_size);
        let mut scratch = Vec::new();
        for (p, name) in ["top-k scratch 0", "top-k scratch 1"]
            .into_iter()
            .enumerate()
        {
            let pairs = passes
                .get(p)
                .filter(|pass| pass.last == 0)
                .map_or(0, |pass| u64::from(pass.groups) * u64::from(run));
            if 8 * pairs > limit {
                return Err(GpuError::Binding(format!(
                    "{name}: {} bytes for n = {n}, k = {k}, more than the device's \
                     max_storage_buffer_binding_size ({limit} bytes); split the scores",
                    8 * pairs
                )));
            }
            scratch.push(ctx.storage_buffer_zeroed(name, 2 * pairs as usize));
        }
        let scratch: [wgpu::Buffer; 2] = scratch.try_into().expect("two scratch buffers");

        // One uniform slot per pass.
        let uniform = ctx.uniform_slots_buffer("topk params", &passes);
        let groups = (0..passes.len())
            .map(|p| {
                let src = if p == 0 {
                    &self.k.dummy
                } else {
                    &scratch[(p - 1) % 2]
                };
                ctx.kernel_bind_group(
                    "topk",
                    &self.k.layout,
                    uniform_slot::<TopKParams>(&uniform, p),
                    &[bufs.scores.buffer, src, &scratch[p % 2], bufs.out.buffer],
                )
            })
            .collect();
        Ok(TopKBinding {
            n,
            max_n: n,
            k,
            max_k: k,
            scores_off,
            out_off,
            passes,
            uniform,
            groups,
            _scratch: scratch,
        })
    }

    /// out = the best `min(k, n)` `(index, score)` pairs of `scores (n)`, best first, as
    /// [`crate::cpu::topk::top_k_reference`]. Nothing when `k = 0` or `n = 0`.
    pub fn record(&self, pass: &mut wgpu::ComputePass, b: &TopKBinding) {
        if b.pairs() == 0 {
            return;
        }
        for (params, group) in b.passes.iter().zip(&b.groups) {
            let grid = flat_grid(params.groups, 1, self.k.max_groups);
            self.k.run(pass, "topk_pass", group, grid);
        }
    }
}

/// Reads `pairs` `(index, score)` pairs back from `out` (blocking) through `readback`'s
/// staging buffer, in a submit of its own. To read in the submit of the selection, record
/// `readback.copy(ctx, encoder, out, 2 * pairs)` after it and decode
/// `readback.finish()`'s words with [`pairs_of_words`].
pub fn read_pairs(
    ctx: &GpuContext,
    readback: &mut Readback,
    out: TensorRef,
    pairs: usize,
) -> Result<Vec<(u32, f32)>, GpuError> {
    Ok(pairs_of_words(&readback.read(ctx, out, 2 * pairs)?))
}

/// `(index, score)` pairs from the words of `out`: `(index, score bits)` each.
pub fn pairs_of_words(words: &[u32]) -> Vec<(u32, f32)> {
    words
        .chunks_exact(2)
        .map(|w| (w[0], f32::from_bits(w[1])))
        .collect()
}

/// `K`, the pairs each workgroup keeps when selecting `k`: `k` rounded up to a power of two.
fn run_of(k: u32) -> u32 {
    k.max(1).next_power_of_two()
}

/// The passes for `n` scores: the first reads the scores, each keeps `run` pairs of every
/// `CHUNK`, and the last is the first with one workgroup.
fn plan(n: u32, k: u32, run: u32, scores_off: u32, out_off: u32) -> Vec<TopKParams> {
    let mut passes = Vec::new();
    let mut m = n;
    loop {
        let groups = m.div_ceil(CHUNK).max(1);
        let last = groups == 1;
        passes.push(TopKParams {
            n: m,
            k: k.min(n),
            run,
            first: passes.is_empty().into(),
            last: last.into(),
            groups,
            scores_off,
            out_off,
        });
        if last {
            return passes;
        }
        m = groups * run;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_shrink_to_one_workgroup() {
        let counts = |n, k: u32| plan(n, k, run_of(k), 0, 0).len();
        assert_eq!(counts(0, 5), 1);
        assert_eq!(counts(1, 1), 1);
        assert_eq!(counts(2048, 1000), 1);
        assert_eq!(counts(2049, 1000), 2);
        assert_eq!(counts(1_000_000, 10), 3);
        assert_eq!(counts(1_000_000, 1000), 10);
        let p = plan(5000, 3, 4, 7, 9);
        assert_eq!(
            p.iter()
                .map(|p| (p.n, p.groups, p.first, p.last))
                .collect::<Vec<_>>(),
            [(5000, 3, 1, 0), (12, 1, 0, 1)]
        );
        assert!(
            p.iter()
                .all(|p| p.k == 3 && p.scores_off == 7 && p.out_off == 9)
        );
    }
}
