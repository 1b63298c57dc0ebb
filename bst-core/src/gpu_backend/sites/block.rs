//! One transformer block's call sites: bound from `block_plan.rs`'s tables (which value
//! each site reads and writes, and where each gradient lives) and recorded in its
//! dispatch order.

use bst_kernels::gpu::attention::{AttentionBinding, AttentionKernels};
use bst_kernels::gpu::dropout::{DropoutBinding, DropoutKernels};
use bst_kernels::gpu::elementwise::ElementwiseBinding;
use bst_kernels::gpu::layernorm::{LayerNormBinding, LayerNormKernels};
use bst_kernels::gpu::matmul::{Activation, MatmulBinding, MatmulKernels};
use bst_kernels::gpu::{GpuError, SetRows, wgpu};

use super::super::Kernels;
use super::super::buffers::{BlockActs, GradScratch};
use super::binder::{Binder, LinearShape};
use super::block_plan::{BACKWARD, BLOCK, BackwardCall, BlockOp, Buf, FORWARD, GradHomes, Value};
use super::{Direction, RowUnit};
use crate::params::BlockParams;

/// The bindings of one transformer block, in forward order.
pub(in crate::gpu_backend) struct BlockSites {
    pub qkv: MatmulBinding,          // qkv = x Wqkv^T + bqkv
    pub attention: AttentionBinding, // atty = attention(qkv)
    pub out: MatmulBinding,          // a = atty Wout^T + bout
    pub res1: DropoutBinding,        // res1 = x + dropout(a)
    pub ln1: LayerNormBinding,       // x1 = LN1(res1)
    pub ffn1: MatmulBinding,         // ff = LeakyReLU(x1 W1^T + b1)
    pub ffn2: MatmulBinding,         // f = ff W2^T + b2 (backward: dff_pre, leaky' fused)
    pub res2: DropoutBinding,        // res2 = x1 + dropout(f)
    pub ln2: LayerNormBinding,       // x2 = LN2(res2)
    /// Backward, `dx1 = dres + dtmp` (an elementwise add).
    pub sum_dx1: ElementwiseBinding,
    /// Backward, `dx = dres + dtmp`.
    pub sum_dx: ElementwiseBinding,
    /// Backward: the key bias gradient is exactly 0 (see `Model::block_backward`).
    pub zero_key_bias: ElementwiseBinding,
}

/// The buffers of one block by [`Buf`]: its input `x`, its activations and the shared
/// gradient scratch.
pub(super) struct BlockBufs<'a> {
    pub x: &'a wgpu::Buffer,
    pub acts: &'a BlockActs,
    pub scratch: &'a GradScratch,
}

impl<'a> BlockBufs<'a> {
    fn get(&self, b: Buf) -> Result<&'a wgpu::Buffer, GpuError> {
        let missing = || GpuError::Binding(format!("a block's {b:?}: no buffer was made for it"));
        match b {
            Buf::X => Ok(self.x),
            Buf::Dx => Ok(&self.scratch.dx),
            Buf::Dqkv => self.scratch.dqkv.as_ref().ok_or_else(missing),
            owned => self.acts.get(owned).ok_or_else(missing),
        }
    }
}

impl Binder<'_> {
    /// One block (parameters `p`) over `bufs`, as `Model::forward` and
    /// `Model::block_backward`, each gradient written where `homes` says. Dropout keys
    /// are set per step.
    pub fn block(
        &self,
        bufs: &BlockBufs,
        homes: &GradHomes,
        p: &BlockParams,
    ) -> Result<BlockSites, GpuError> {
        let dm = self.dims();
        let (rows, d, dff) = (self.cap * dm.t, dm.d, dm.dff);
        let at = |v: Value| bufs.get(homes.buf(v));
        let none = Activation::None;
        let shape = |(w, b), (n_in, n_out), act| LinearShape {
            w,
            b,
            rows,
            n_in,
            n_out,
            act,
            leaky_input: false,
        };
        let s = &BLOCK;
        Ok(BlockSites {
            qkv: self.linear(
                s.qkv.try_map(at)?,
                shape((&p.qkv_w, &p.qkv_b), (d, 3 * d), none),
            )?,
            attention: self.attention(s.attention.try_map(at)?, &self.bufs.inputs.valid)?,
            out: self.linear(
                s.out.try_map(at)?,
                shape((&p.out_w, &p.out_b), (d, d), none),
            )?,
            res1: self.residual(s.res1.try_map(at)?)?,
            ln1: self.layernorm(s.ln1.try_map(at)?, (&p.ln1_w, &p.ln1_b))?,
            ffn1: self.linear(
                s.ffn1.try_map(at)?,
                shape(
                    (&p.ffn1_w, &p.ffn1_b),
                    (d, dff),
                    Activation::LeakyRelu { alpha: dm.alpha },
                ),
            )?,
            ffn2: self.linear(
                s.ffn2.try_map(at)?,
                LinearShape {
                    leaky_input: true,
                    ..shape((&p.ffn2_w, &p.ffn2_b), (dff, d), none)
                },
            )?,
            res2: self.residual(s.res2.try_map(at)?)?,
            ln2: self.layernorm(s.ln2.try_map(at)?, (&p.ln2_w, &p.ln2_b))?,
            sum_dx1: self.add(s.sum_dx1.try_map(at)?)?,
            sum_dx: self.add(s.sum_dx.try_map(at)?)?,
            zero_key_bias: self.k.elt.bind_fill(
                self.ctx,
                self.grad(&(p.qkv_b.start + d..p.qkv_b.end)),
                d as u32,
                0.0,
            )?,
        })
    }
}

impl BlockSites {
    /// Records the block's forward, in [`FORWARD`]'s order.
    pub fn record_forward(&self, k: &Kernels, pass: &mut wgpu::ComputePass) {
        for op in FORWARD {
            self.record(k, op, Direction::Forward, pass);
        }
    }

    /// Records the block's backward, in [`BACKWARD`]'s order: `dx` holds the gradient of
    /// the block's output; on exit, of its input.
    pub fn record_backward(&self, k: &Kernels, pass: &mut wgpu::ComputePass) {
        for call in BACKWARD {
            match call {
                BackwardCall::Of(op) => self.record(k, op, Direction::Backward, pass),
                BackwardCall::SumDx1 => k.elt.forward(pass, &self.sum_dx1),
                BackwardCall::ZeroKeyBias => k.elt.forward(pass, &self.zero_key_bias),
                BackwardCall::SumDx => k.elt.forward(pass, &self.sum_dx),
            }
        }
    }

    /// Records the forward or the backward of one site.
    pub fn record(&self, k: &Kernels, op: BlockOp, dir: Direction, pass: &mut wgpu::ComputePass) {
        use BlockOp::*;
        let i = usize::from(dir == Direction::Backward);
        let mm = [MatmulKernels::forward, MatmulKernels::backward][i];
        let attn = [AttentionKernels::forward, AttentionKernels::backward][i];
        let drop = [DropoutKernels::forward, DropoutKernels::backward][i];
        let ln = [LayerNormKernels::forward, LayerNormKernels::backward][i];
        match op {
            Qkv => mm(&k.mm, pass, &self.qkv),
            Attention => attn(&k.attn, pass, &self.attention),
            Out => mm(&k.mm, pass, &self.out),
            Res1 => drop(&k.drop, pass, &self.res1),
            Ln1 => ln(&k.ln, pass, &self.ln1),
            Ffn1 => mm(&k.mm, pass, &self.ffn1),
            Ffn2 => mm(&k.mm, pass, &self.ffn2),
            Res2 => drop(&k.drop, pass, &self.res2),
            Ln2 => ln(&k.ln, pass, &self.ln2),
        }
    }

    /// The block's bindings with their row unit: attention counts samples, the rest
    /// tokens.
    pub(super) fn row_bindings(&mut self) -> [(RowUnit, &mut dyn SetRows); 11] {
        use RowUnit::{Samples, Tokens};
        [
            (Tokens, &mut self.qkv),
            (Samples, &mut self.attention),
            (Tokens, &mut self.out),
            (Tokens, &mut self.res1),
            (Tokens, &mut self.ln1),
            (Tokens, &mut self.ffn1),
            (Tokens, &mut self.ffn2),
            (Tokens, &mut self.res2),
            (Tokens, &mut self.ln2),
            (Tokens, &mut self.sum_dx1),
            (Tokens, &mut self.sum_dx),
        ]
    }
}
