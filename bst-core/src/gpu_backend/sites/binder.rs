//! What the binding of every call site shares: the device, the kernels, the model, the
//! buffers and the batch capacity, and one helper per launcher taking its buffers by
//! name (the argument structs of `block_plan.rs`).

use bst_kernels::gpu::Site;
use std::ops::Range;

use bst_kernels::cpu::dropout::DropoutKey;
use bst_kernels::gpu::attention::{
    AttentionBinding, AttentionBuffers, AttentionDims, AttentionGradBuffers,
};
use bst_kernels::gpu::dropout::{DropoutBinding, DropoutBuffers, DropoutDims, DropoutGradBuffers};
use bst_kernels::gpu::elementwise::ElementwiseBinding;
use bst_kernels::gpu::layernorm::{
    LayerNormBinding, LayerNormBuffers, LayerNormDims, LayerNormGradBuffers,
};
use bst_kernels::gpu::matmul::{
    Activation, LeakyInput, MatmulBinding, MatmulBuffers, MatmulDims, MatmulGradBuffers,
};
use bst_kernels::gpu::{GpuContext, GpuError, TensorRef, wgpu};

use super::super::Kernels;
use super::super::buffers::Buffers;
use super::block_plan::{AddArgs, AttentionArgs, LayerNormArgs, LinearArgs, ResidualArgs};
use crate::model::{Dims, Model};

/// The device, kernels, model and buffers every binding reads, for batches of up to
/// `cap` samples.
pub(super) struct Binder<'a> {
    pub ctx: &'a GpuContext,
    pub k: &'a Kernels,
    pub model: &'a Model,
    pub bufs: &'a Buffers,
    pub cap: usize,
}

/// The whole buffer as a tensor from element 0.
pub(super) fn all(b: &wgpu::Buffer) -> TensorRef<'_> {
    TensorRef::whole(b)
}

/// A linear layer's parameters and sizes: weight `w` (n_out, n_in) and bias `b` at
/// their layout ranges, `rows` inputs of `n_in`, the forward's epilogue `act`, and
/// `leaky_input`: the input is a LeakyReLU output, so the backward multiplies `dinp`
/// by leaky' of the input's signs (fused; `bst_kernels::gpu::matmul::LeakyInput`).
pub(super) struct LinearShape<'r> {
    pub w: &'r Range<usize>,
    pub b: &'r Range<usize>,
    pub rows: usize,
    pub n_in: usize,
    pub n_out: usize,
    pub act: Activation,
    pub leaky_input: bool,
}

impl<'a> Binder<'a> {
    pub fn dims(&self) -> &'a Dims {
        &self.model.dims
    }

    /// The parameter at layout range `r` (the arenas hold the layout from `base` on).
    pub fn param(&self, r: &Range<usize>) -> TensorRef<'a> {
        let a = &self.bufs.arenas;
        TensorRef::new(&a.params, (r.start - a.base) as u32)
    }

    /// Its gradient.
    pub fn grad(&self, r: &Range<usize>) -> TensorRef<'a> {
        let a = &self.bufs.arenas;
        TensorRef::new(&a.grads, (r.start - a.base) as u32)
    }

    /// One linear layer with its backward (see [`LinearArgs`]).
    pub fn linear(
        &self,
        l: LinearArgs<&wgpu::Buffer>,
        s: LinearShape,
    ) -> Result<MatmulBinding, GpuError> {
        let bufs = MatmulBuffers {
            out: all(l.out),
            pre: None,
            inp: all(l.inp),
            weight: self.param(s.w),
            bias: Some(self.param(s.b)),
        };
        let alpha = self.dims().alpha;
        let grads = MatmulGradBuffers {
            dinp: Some(all(l.dinp)),
            dweight: self.grad(s.w),
            dbias: Some(self.grad(s.b)),
            dout: all(l.dout),
            dinp_act: s.leaky_input.then(|| LeakyInput {
                sign: all(l.inp),
                alpha,
            }),
        };
        let dims = MatmulDims {
            rows: s.rows as u32,
            n_in: s.n_in as u32,
            n_out: s.n_out as u32,
            act: s.act,
        };
        self.k
            .mm
            .bind(self.ctx, Site::with_grads(bufs, grads, dims))
    }

    /// Every head's attention over `valid` (B, T), with its backward.
    pub fn attention(
        &self,
        a: AttentionArgs<&wgpu::Buffer>,
        valid: &wgpu::Buffer,
    ) -> Result<AttentionBinding, GpuError> {
        let dm = self.dims();
        self.k.attn.bind(
            self.ctx,
            Site::with_grads(
                AttentionBuffers {
                    out: all(a.out),
                    att: all(a.att),
                    qkv: all(a.qkv),
                    valid: all(valid),
                },
                AttentionGradBuffers {
                    dqkv: all(a.dqkv),
                    dout: all(a.dout),
                },
                AttentionDims {
                    batch: self.cap as u32,
                    t: dm.t as u32,
                    d: dm.d as u32,
                    heads: dm.h as u32,
                },
            ),
        )
    }

    /// `out = x + dropout(a)` over the tokens' `d` columns, with `da = dout * mask`. The
    /// dropout key is set per step.
    pub fn residual(&self, r: ResidualArgs<&wgpu::Buffer>) -> Result<DropoutBinding, GpuError> {
        let bufs = DropoutBuffers {
            out: all(r.out),
            x: all(r.x),
            a: all(r.a),
        };
        let grads = DropoutGradBuffers {
            da: all(r.da),
            dout: all(r.dout),
        };
        let (rows, width) = self.tokens();
        let dims = DropoutDims { rows, width };
        let keep_all = DropoutKey {
            p: 0.0,
            seed: 0,
            step: 0,
            site: 0,
        };
        self.k
            .drop
            .bind(self.ctx, Site::with_grads(bufs, grads, dims), keep_all)
    }

    /// `out = x + y` over the tokens' `d` columns.
    pub fn add(&self, s: AddArgs<&wgpu::Buffer>) -> Result<ElementwiseBinding, GpuError> {
        let (rows, width) = self.tokens();
        let k = &self.k.elt;
        k.bind_add(self.ctx, all(s.out), all(s.x), all(s.y), rows, width)
    }

    /// `out = LN(inp)` over the tokens (saving mean and rstd) with weight and bias `wb`,
    /// and its backward: `dinp`, `dW +=`, `db +=` from `dout`.
    pub fn layernorm(
        &self,
        n: LayerNormArgs<&wgpu::Buffer>,
        (w, b): (&Range<usize>, &Range<usize>),
    ) -> Result<LayerNormBinding, GpuError> {
        let bufs = LayerNormBuffers {
            out: all(n.out),
            mean: all(n.mean),
            rstd: all(n.rstd),
            inp: all(n.inp),
            weight: self.param(w),
            bias: self.param(b),
        };
        let grads = LayerNormGradBuffers {
            dinp: all(n.dinp),
            dweight: self.grad(w),
            dbias: self.grad(b),
            dout: all(n.dout),
        };
        let (rows, c) = self.tokens();
        self.k.ln.bind(
            self.ctx,
            Site::with_grads(bufs, grads, LayerNormDims { rows, c }),
        )
    }

    /// (B T, d): the rows and width of a block's token tensors.
    pub fn tokens(&self) -> (u32, u32) {
        let dm = self.dims();
        ((self.cap * dm.t) as u32, dm.d as u32)
    }
}
