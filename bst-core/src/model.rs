//! BST forward and backward on the CPU (spec section 2), composed from the reference ops
//! of `bst_kernels::cpu`. The backward is the forward read in reverse, line for line.
//! Parameter gradients accumulate (`+=`); activation gradients overwrite (`=`).

use crate::batch::Batch;
use crate::config::{ModelConfig, Pooling};
use crate::params::{BlockParams, ParamIndex, ParamLayout, VocabSizes};
use bst_kernels::cpu::activation::{leaky_relu_backward, leaky_relu_forward};
use bst_kernels::cpu::attention::{attention_backward, attention_forward};
use bst_kernels::cpu::dropout::{
    DropoutKey, residual_dropout_backward_at, residual_dropout_forward_at,
};
use bst_kernels::cpu::embedding::{
    other_embedding_backward, other_embedding_forward, token_embedding_backward,
    token_embedding_forward,
};
use bst_kernels::cpu::layernorm::{layernorm_backward, layernorm_forward};
use bst_kernels::cpu::loss::{bce_backward, bce_forward, sigmoid};
use bst_kernels::cpu::matmul::{matmul_backward, matmul_forward};
use bst_kernels::cpu::pooling::{PoolMode, pooling_backward, pooling_forward};
use std::ops::Range;

/// Training (dropout on, masks keyed by seed and step) or evaluation (no dropout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Dropout on.
    Train {
        /// The run's seed (`train.seed`).
        seed: u64,
        /// The update count: each step draws new masks.
        step: u32,
        /// Where the batch sits in the global batch of a data-parallel step (`None`: it
        /// is the whole batch).
        shard: Option<Shard>,
    },
    /// No dropout (validation, test, scoring).
    Eval,
}

/// A data-parallel rank's part of a global batch: rows `row0..row0 + B` of `global`. The
/// dropout masks are those of the global rows, and the loss gradient is that of the global
/// mean (each row's share is `1 / global`), so the ranks' gradients sum to a single
/// process's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// The batch's first row in the global batch.
    pub row0: usize,
    /// Rows of the global batch.
    pub global: usize,
}

impl Mode {
    /// The first dropout element of the batch in the global batch's `(B, T, d)` arrays.
    fn dropout_first(&self, row_elems: usize) -> usize {
        match self {
            Mode::Train { shard: Some(s), .. } => s.row0 * row_elems,
            _ => 0,
        }
    }
}

/// Every size the model's buffers depend on.
#[derive(Clone, Debug, PartialEq)]
pub struct Dims {
    /// History length L.
    pub l: usize,
    /// Tokens T = L + 1 (the target last).
    pub t: usize,
    /// Token width d = d_item + d_cat + d_pos.
    pub d: usize,
    /// Attention heads h.
    pub h: usize,
    /// Feed-forward width d_ff.
    pub dff: usize,
    /// (d_item, d_cat, d_pos).
    pub widths: (usize, usize, usize),
    /// Other-feature fields F.
    pub fields: usize,
    /// Width of each other-feature embedding d_o.
    pub d_o: usize,
    /// How the last block's tokens are pooled.
    pub pool: PoolMode,
    /// Pooled width; the other embeddings follow it in `z`.
    pub pw: usize,
    /// MLP input width `pw + F * d_o`.
    pub zw: usize,
    /// Output width of each MLP layer, ending with 1.
    pub mlp: Vec<usize>,
    /// Transformer blocks.
    pub blocks: usize,
    /// LeakyReLU's negative slope.
    pub alpha: f32,
    /// Dropout probability of the residual branches.
    pub dropout: f32,
}

impl Dims {
    /// The sizes of a model config with `fields` other-feature fields.
    pub fn new(cfg: &ModelConfig, fields: usize) -> Dims {
        let pool = match cfg.pooling {
            Pooling::Target => PoolMode::Target,
            Pooling::Mean => PoolMode::Mean,
            Pooling::Flatten => PoolMode::Flatten,
        };
        let pw = cfg.pooled_width();
        Dims {
            l: cfg.seq_len,
            t: cfg.tokens(),
            d: cfg.d(),
            h: cfg.heads,
            dff: cfg.d_ff,
            widths: (cfg.d_item, cfg.d_cat, cfg.d_pos),
            fields,
            d_o: cfg.d_other,
            pool,
            pw,
            zw: pw + fields * cfg.d_other,
            mlp: cfg.mlp.iter().copied().chain([1]).collect(),
            blocks: cfg.blocks,
            alpha: cfg.leaky_alpha,
            dropout: cfg.dropout,
        }
    }

    /// Input width of MLP layer `k`.
    pub fn mlp_in(&self, k: usize) -> usize {
        if k == 0 { self.zw } else { self.mlp[k - 1] }
    }
}

/// What one block's forward saves for its backward (capacity for `B` samples).
#[derive(Clone, Debug, Default)]
pub struct BlockActs {
    /// (B, T, 3d)
    pub qkv: Vec<f32>,
    /// (B, h, T, T)
    pub att: Vec<f32>,
    /// (B, T, d) attention output before the projection
    pub atty: Vec<f32>,
    /// (B, T, d) after the output projection
    pub a: Vec<f32>,
    /// (B, T, d) x + dropout(a)
    pub res1: Vec<f32>,
    /// (B, T, d) LN1(res1)
    pub x1: Vec<f32>,
    /// (B, T)
    pub ln1_mean: Vec<f32>,
    /// (B, T)
    pub ln1_rstd: Vec<f32>,
    /// (B, T, d_ff) before LeakyReLU
    pub ff_pre: Vec<f32>,
    /// (B, T, d_ff)
    pub ff: Vec<f32>,
    /// (B, T, d)
    pub f: Vec<f32>,
    /// (B, T, d) x1 + dropout(f)
    pub res2: Vec<f32>,
    /// (B, T, d) LN2(res2): the block's output
    pub x2: Vec<f32>,
    /// (B, T)
    pub ln2_mean: Vec<f32>,
    /// (B, T)
    pub ln2_rstd: Vec<f32>,
}

/// All activations of a forward pass, sized for `capacity` samples.
#[derive(Clone, Debug, Default)]
pub struct Activations {
    /// Samples these buffers hold.
    pub capacity: usize,
    /// (B, T)
    pub valid: Vec<u32>,
    /// (B, T, d) token embeddings
    pub x0: Vec<f32>,
    /// Per block, in order.
    pub blocks: Vec<BlockActs>,
    /// (B, zw) pooled tokens, then other embeddings
    pub z: Vec<f32>,
    /// (B, out_k) before LeakyReLU; the last is the logit
    pub mlp_pre: Vec<Vec<f32>>,
    /// (B, out_k) after LeakyReLU (hidden layers)
    pub mlp_act: Vec<Vec<f32>>,
    /// (B)
    pub probs: Vec<f32>,
}

impl Activations {
    /// The f32 values [`Activations::new`] allocates for `capacity` samples (u128, so an
    /// impossible request is sized rather than overflowing): what the memory check counts.
    pub fn floats(dims: &Dims, capacity: usize) -> u128 {
        let (b, t, d) = (capacity as u128, dims.t as u128, dims.d as u128);
        let (h, dff) = (dims.h as u128, dims.dff as u128);
        // qkv + att + 7 of (B, T, d) + 4 of (B, T) + 2 of (B, T, d_ff), per block.
        let block = b * t * 3 * d + b * h * t * t + 7 * b * t * d + 4 * b * t + 2 * b * t * dff;
        let mlp: u128 = dims.mlp.iter().map(|&w| 2 * b * w as u128).sum();
        // valid (u32) + x0 + blocks + z + MLP + probs.
        b * t + b * t * d + dims.blocks as u128 * block + b * dims.zw as u128 + mlp + b
    }

    /// Zeroed buffers for `capacity` samples.
    pub fn new(dims: &Dims, capacity: usize) -> Activations {
        let (b, t, d) = (capacity, dims.t, dims.d);
        let v = |n: usize| vec![0.0f32; n];
        let block = || BlockActs {
            qkv: v(b * t * 3 * d),
            att: v(b * dims.h * t * t),
            atty: v(b * t * d),
            a: v(b * t * d),
            res1: v(b * t * d),
            x1: v(b * t * d),
            ln1_mean: v(b * t),
            ln1_rstd: v(b * t),
            ff_pre: v(b * t * dims.dff),
            ff: v(b * t * dims.dff),
            f: v(b * t * d),
            res2: v(b * t * d),
            x2: v(b * t * d),
            ln2_mean: v(b * t),
            ln2_rstd: v(b * t),
        };
        Activations {
            capacity,
            valid: Vec::with_capacity(b * t),
            x0: v(b * t * d),
            blocks: (0..dims.blocks).map(|_| block()).collect(),
            z: v(b * dims.zw),
            mlp_pre: dims.mlp.iter().map(|&w| v(b * w)).collect(),
            mlp_act: dims.mlp.iter().map(|&w| v(b * w)).collect(),
            probs: v(b),
        }
    }
}

/// Scratch buffers for activation gradients (capacity for `B` samples).
#[derive(Clone, Debug, Default)]
pub struct GradScratch {
    dx: Vec<f32>,       // (B, T, d) gradient of the current block's output, then input
    dx1: Vec<f32>,      // (B, T, d)
    dres: Vec<f32>,     // (B, T, d)
    dbr: Vec<f32>,      // (B, T, d) gradient of a branch (a or f)
    datty: Vec<f32>,    // (B, T, d)
    dtmp: Vec<f32>,     // (B, T, d) a second contribution, added into dx or dx1
    dqkv: Vec<f32>,     // (B, T, 3d)
    dff: Vec<f32>,      // (B, T, d_ff)
    dff_pre: Vec<f32>,  // (B, T, d_ff)
    dz: Vec<f32>,       // (B, zw)
    dmlp: Vec<f32>,     // (B, max width)
    dmlp_pre: Vec<f32>, // (B, max width)
}

impl GradScratch {
    /// Samples these buffers hold.
    pub fn capacity(&self, dims: &Dims) -> usize {
        self.dz.len() / dims.zw
    }

    /// The f32 values [`GradScratch::new`] allocates for `capacity` samples.
    pub fn floats(dims: &Dims, capacity: usize) -> u128 {
        let (b, t, d) = (capacity as u128, dims.t as u128, dims.d as u128);
        let wmax = dims.mlp.iter().copied().max().unwrap_or(1) as u128;
        9 * b * t * d + 2 * b * t * dims.dff as u128 + b * dims.zw as u128 + 2 * b * wmax
    }

    /// Zeroed buffers for `capacity` samples.
    pub fn new(dims: &Dims, capacity: usize) -> GradScratch {
        let (b, t, d) = (capacity, dims.t, dims.d);
        let v = |n: usize| vec![0.0f32; n];
        let wmax = dims.mlp.iter().copied().max().unwrap_or(1);
        GradScratch {
            dx: v(b * t * d),
            dx1: v(b * t * d),
            dres: v(b * t * d),
            dbr: v(b * t * d),
            datty: v(b * t * d),
            dtmp: v(b * t * d),
            dqkv: v(b * t * 3 * d),
            dff: v(b * t * dims.dff),
            dff_pre: v(b * t * dims.dff),
            dz: v(b * dims.zw),
            dmlp: v(b * wmax),
            dmlp_pre: v(b * wmax),
        }
    }
}

/// The model: its configuration, parameter layout and derived sizes. Holds no state;
/// parameters, gradients and activations are passed in.
#[derive(Clone, Debug)]
pub struct Model {
    /// The config the model was built from.
    pub cfg: ModelConfig,
    /// The parameter table.
    pub layout: ParamLayout,
    /// Derived sizes.
    pub dims: Dims,
}

impl Model {
    /// The model of `cfg` for vocabularies of `sizes`.
    pub fn new(cfg: &ModelConfig, sizes: VocabSizes) -> Model {
        Model {
            cfg: cfg.clone(),
            layout: ParamLayout::new(cfg, sizes),
            dims: Dims::new(cfg, sizes.fields),
        }
    }

    /// The key of dropout site `(block, branch)` (branch 0: after attention, 1: after
    /// the FFN) in `mode`; the GPU backend's too.
    pub(crate) fn dropout_key(&self, mode: Mode, block: usize, branch: u32) -> DropoutKey {
        match mode {
            Mode::Train { seed, step, .. } => DropoutKey {
                p: self.dims.dropout,
                seed,
                step,
                site: 2 * block as u32 + branch,
            },
            Mode::Eval => DropoutKey {
                p: 0.0,
                seed: 0,
                step: 0,
                site: 0,
            },
        }
    }

    /// Forward pass; fills `acts` and returns the mean loss against `batch.label`.
    pub fn forward(
        &self,
        acts: &mut Activations,
        params: &[f32],
        batch: &Batch,
        mode: Mode,
    ) -> f32 {
        let dm = &self.dims;
        let pi = &self.layout.index;
        let (b, t, d) = (batch.size, dm.t, dm.d);
        assert!(
            b <= acts.capacity,
            "batch of {b} exceeds activation capacity {}",
            acts.capacity
        );
        let n = b * t;
        batch.valid_mask(&mut acts.valid);
        token_embedding_forward(
            &mut acts.x0,
            batch.token_ids(),
            &params[pi.emb_item.clone()],
            &params[pi.emb_cat.clone()],
            &params[pi.emb_pos.clone()],
            b,
            dm.l,
            dm.widths,
        );
        for i in 0..dm.blocks {
            let (before, rest) = acts.blocks.split_at_mut(i);
            let x: &[f32] = if i == 0 { &acts.x0 } else { &before[i - 1].x2 };
            let blk = &mut rest[0];
            let p = &pi.blocks[i];
            // out (n, n_out) = inp (n, n_in) W^T + bias
            let linear = |out: &mut [f32], inp: &[f32], layer: Layer| {
                let ([w, bias], (n_in, n_out)) = (layer.tensors(p), layer.widths(d, dm.dff));
                let (w, bias) = (&params[w.clone()], &params[bias.clone()]);
                matmul_forward(out, inp, w, Some(bias), n, n_in, n_out)
            };
            linear(&mut blk.qkv, x, Layer::Qkv);
            attention_forward(
                &mut blk.atty,
                &mut blk.att,
                &blk.qkv,
                &acts.valid,
                b,
                t,
                d,
                dm.h,
            );
            linear(&mut blk.a, &blk.atty, Layer::Out);
            self.tail_forward(blk, x, p, params, Branch::Attention, b, mode, i);
            linear(&mut blk.ff_pre, &blk.x1, Layer::Ffn1);
            leaky_relu_forward(&mut blk.ff[..n * dm.dff], &blk.ff_pre, dm.alpha);
            linear(&mut blk.f, &blk.ff, Layer::Ffn2);
            self.tail_forward(blk, x, p, params, Branch::Ffn, b, mode, i);
        }
        let top: &[f32] = acts.blocks.last().map_or(&acts.x0, |blk| &blk.x2);
        pooling_forward(&mut acts.z, top, &acts.valid, dm.pool, b, t, d, dm.zw, 0);
        other_embedding_forward(
            &mut acts.z,
            &batch.other,
            &params[pi.emb_other.clone()],
            b,
            dm.fields,
            dm.d_o,
            dm.zw,
            dm.pw,
        );
        let last = dm.mlp.len() - 1;
        for k in 0..=last {
            let (w, bias) = &pi.mlp[k];
            let (n_in, n_out) = (dm.mlp_in(k), dm.mlp[k]);
            let inp: &[f32] = if k == 0 {
                &acts.z
            } else {
                &acts.mlp_act[k - 1]
            };
            matmul_forward(
                &mut acts.mlp_pre[k],
                inp,
                &params[w.clone()],
                Some(&params[bias.clone()]),
                b,
                n_in,
                n_out,
            );
            if k < last {
                leaky_relu_forward(
                    &mut acts.mlp_act[k][..b * n_out],
                    &acts.mlp_pre[k][..b * n_out],
                    dm.alpha,
                );
            }
        }
        bce_forward(&mut acts.probs[..b], &acts.mlp_pre[last][..b], &batch.label)
    }

    /// The forward of a branch's tail `res = skip + dropout(y)`, `out = LN(res)`: the
    /// attention's (`skip` the block's input `x`, `y = a`, `out = x1`) or the feed-forward
    /// network's (`skip = x1`, `y = f`, `out = x2`), as [`Branch`] numbers them.
    fn tail_forward(
        &self,
        blk: &mut BlockActs,
        x: &[f32],
        p: &BlockParams,
        params: &[f32],
        branch: Branch,
        b: usize,
        mode: Mode,
        i: usize,
    ) {
        let (t, d) = (self.dims.t, self.dims.d);
        let n = b * t;
        // res = skip + dropout(y)
        let (res, skip, y) = match branch {
            Branch::Attention => (&mut blk.res1, x, &blk.a),
            Branch::Ffn => (&mut blk.res2, &blk.x1[..], &blk.f),
        };
        let key = self.dropout_key(mode, i, branch as u32);
        residual_dropout_forward_at(&mut res[..n * d], skip, y, key, mode.dropout_first(t * d));
        // out = LN(res)
        let (out, mean, rstd) = match branch {
            Branch::Attention => (&mut blk.x1, &mut blk.ln1_mean, &mut blk.ln1_rstd),
            Branch::Ffn => (&mut blk.x2, &mut blk.ln2_mean, &mut blk.ln2_rstd),
        };
        let [ln_w, ln_b] = branch.layernorm(p);
        let (weight, bias) = (&params[ln_w.clone()], &params[ln_b.clone()]);
        layernorm_forward(out, mean, rstd, res, weight, bias, n, d);
    }

    /// Backward pass after `forward` with the same batch and mode: `grads += dloss/dparams`
    /// into a gradient arena laid out by `gi` (the parameters' layout, or the compact one
    /// of [`crate::grad_store`], whose tables hold a batch's rows only: `batch`'s ids are
    /// then their rows there, its other fields the forward's). Hands `sink` each part of
    /// the arena as soon as its gradients are final ([`KeepGrads`]: none): the suffixes
    /// from [`Model::final_suffixes`] of `gi`, in that order (the MLP's, then each
    /// block's, last block first), with [`GradSink::between`] between layers. Returns the
    /// rest, the embedding tables (`grads[..first start]`), final once it returns.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<'g>(
        &self,
        gi: &ParamIndex,
        grads: &'g mut [f32],
        s: &mut GradScratch,
        acts: &Activations,
        params: &[f32],
        batch: &Batch,
        mode: Mode,
        sink: &mut dyn GradSink<'g>,
    ) -> &'g mut [f32] {
        let dm = &self.dims;
        let pi = &self.layout.index;
        let (b, t, d) = (batch.size, dm.t, dm.d);
        let n = b * t;
        let last = dm.mlp.len() - 1;
        bce_backward(&mut s.dmlp_pre[..b], &acts.mlp_pre[last][..b], &batch.label);
        if let Mode::Train {
            shard: Some(shard), ..
        } = mode
        {
            // The global mean's gradient: (p - y) / global, as a single process computes it.
            let g = shard.global as f32;
            let logits = &acts.mlp_pre[last][..b];
            for ((d, &z), &y) in s.dmlp_pre[..b].iter_mut().zip(logits).zip(&batch.label) {
                *d = (sigmoid(z) - y) / g;
            }
        }
        for k in (0..=last).rev() {
            let w = &pi.mlp[k].0;
            let (n_in, n_out) = (dm.mlp_in(k), dm.mlp[k]);
            if k < last {
                leaky_relu_backward(
                    &mut s.dmlp_pre[..b * n_out],
                    &s.dmlp[..b * n_out],
                    &acts.mlp_pre[k],
                    dm.alpha,
                );
            }
            let inp: &[f32] = if k == 0 {
                &acts.z
            } else {
                &acts.mlp_act[k - 1]
            };
            let dinp: &mut [f32] = if k == 0 { &mut s.dz } else { &mut s.dmlp };
            let (dw, db) = split_two(grads, &gi.mlp[k].0, &gi.mlp[k].1);
            matmul_backward(
                Some(dinp),
                dw,
                Some(db),
                &s.dmlp_pre,
                inp,
                &params[w.clone()],
                b,
                n_in,
                n_out,
            );
        }
        let mut suffixes = Model::final_suffixes(gi);
        let grads = hand_over(grads, suffixes.next(), sink);
        other_embedding_backward(
            &mut grads[gi.emb_other.clone()],
            &s.dz,
            &batch.other,
            b,
            dm.fields,
            dm.d_o,
            dm.zw,
            dm.pw,
        );
        sink.between();
        pooling_backward(&mut s.dx, &s.dz, &acts.valid, dm.pool, b, t, d, dm.zw, 0);
        sink.between();
        let mut grads = grads;
        for i in (0..dm.blocks).rev() {
            let x: &[f32] = if i == 0 {
                &acts.x0
            } else {
                &acts.blocks[i - 1].x2
            };
            self.block_backward(
                grads,
                s,
                &acts.blocks[i],
                (&pi.blocks[i], &gi.blocks[i]),
                x,
                params,
                b,
                mode,
                i,
                sink,
            );
            grads = hand_over(grads, suffixes.next(), sink);
        }
        debug_assert!(suffixes.next().is_none(), "every final suffix handed over");
        let (de_item, de_cat, de_pos) = split_three(grads, &gi.emb_item, &gi.emb_cat, &gi.emb_pos);
        token_embedding_backward(
            de_item,
            de_cat,
            de_pos,
            &s.dx[..n * d],
            batch.token_ids(),
            b,
            dm.l,
            dm.widths,
        );
        grads
    }

    /// Where the parts of the gradient arena start that [`Model::backward`] hands
    /// over as they become final, in the order it does: the MLP's (to the arena's end),
    /// then each block's (to the next part), last block first, in an arena laid out by
    /// `gi`. The arena holds the tables, the blocks in order, then the MLP, and the
    /// backward runs the other way.
    pub fn final_suffixes(gi: &ParamIndex) -> impl Iterator<Item = usize> + '_ {
        let mlp = gi.mlp[0].0.start;
        std::iter::once(mlp).chain(gi.blocks.iter().rev().map(|p| p.qkv_w.start))
    }

    /// One block backward, the forward read in reverse: `s.dx` holds the gradient of the
    /// block's output on entry and of its input `x` on exit. `(p, g)`: the block's tensors
    /// in the parameter and the gradient arenas.
    fn block_backward(
        &self,
        grads: &mut [f32],
        s: &mut GradScratch,
        blk: &BlockActs,
        (p, g): (&BlockParams, &BlockParams),
        x: &[f32],
        params: &[f32],
        b: usize,
        mode: Mode,
        i: usize,
        sink: &mut dyn GradSink<'_>,
    ) {
        let dm = &self.dims;
        let (t, d, dff) = (dm.t, dm.d, dm.dff);
        let n = b * t;
        let linears = Linears {
            p,
            g,
            params,
            n,
            d,
            dff,
        };
        // x2 = LN2(x1 + dropout(f))
        self.tail_backward(Branch::Ffn, grads, s, blk, (p, g), params, b, mode, i);
        // f = ff W2^T + b2
        linears.backward(Layer::Ffn2, grads, &mut s.dff, &s.dbr, &blk.ff);
        sink.between();
        // ff = LeakyReLU(ff_pre)
        let (dff_pre, dff_out) = (&mut s.dff_pre[..n * dff], &s.dff[..n * dff]);
        leaky_relu_backward(dff_pre, dff_out, &blk.ff_pre, dm.alpha);
        // ff_pre = x1 W1^T + b1
        linears.backward(Layer::Ffn1, grads, &mut s.dtmp, &s.dff_pre, &blk.x1);
        add_into(&mut s.dx1[..n * d], &s.dtmp[..n * d]);
        sink.between();
        // x1 = LN1(x + dropout(a))
        self.tail_backward(Branch::Attention, grads, s, blk, (p, g), params, b, mode, i);
        // a = atty Wout^T + bout
        linears.backward(Layer::Out, grads, &mut s.datty, &s.dbr, &blk.atty);
        sink.between();
        // atty = attention(qkv)
        attention_backward(&mut s.dqkv, &s.datty, &blk.att, &blk.qkv, b, t, d, dm.h);
        sink.between();
        // qkv = x Wqkv^T + bqkv
        linears.backward(Layer::Qkv, grads, &mut s.dtmp, &s.dqkv, x);
        // The key bias adds the same q.b_k to every score of a query, which softmax
        // ignores: its gradient is exactly 0. Say so, rather than keep the f32 round-off
        // of a sum that is 0 in exact arithmetic (Adam would amplify it into steps).
        grads[g.qkv_b.clone()][d..2 * d].fill(0.0);
        add_into(&mut s.dx[..n * d], &s.dtmp[..n * d]);
    }

    /// The backward of a branch's tail `out = LN(res)`, `res = skip + dropout(y)`: from
    /// the gradient of `out` (`s.dx` for the feed-forward branch, `s.dx1` for the
    /// attention's), the gradient of `skip` (into the other of the two) and of `y` (into
    /// `s.dbr`); the LayerNorm's parameter gradients are added into `grads`.
    fn tail_backward(
        &self,
        branch: Branch,
        grads: &mut [f32],
        s: &mut GradScratch,
        blk: &BlockActs,
        (p, g): (&BlockParams, &BlockParams),
        params: &[f32],
        b: usize,
        mode: Mode,
        i: usize,
    ) {
        let (t, d) = (self.dims.t, self.dims.d);
        let n = b * t;
        let [res, mean, rstd] = branch.saved(blk);
        let ([ln_w, _], [dln_w, dln_b]) = (branch.layernorm(p), branch.layernorm(g));
        let (dout, dskip) = match branch {
            Branch::Attention => (&s.dx1, &mut s.dx),
            Branch::Ffn => (&s.dx, &mut s.dx1),
        };
        let (dw, db) = split_two(grads, dln_w, dln_b);
        let weight = &params[ln_w.clone()];
        layernorm_backward(&mut s.dres, dw, db, dout, res, weight, mean, rstd, n, d);
        residual_dropout_backward_at(
            &mut s.dbr[..n * d],
            &s.dres[..n * d],
            self.dropout_key(mode, i, branch as u32),
            mode.dropout_first(t * d),
        );
        dskip[..n * d].copy_from_slice(&s.dres[..n * d]);
    }
}

/// One of a block's two residual branches, numbered as their dropouts: the attention's
/// in `x1 = LN1(x + dropout(a))`, the feed-forward network's in `x2 = LN2(x1 +
/// dropout(f))`.
#[derive(Clone, Copy, Debug)]
enum Branch {
    Attention = 0,
    Ffn = 1,
}

impl Branch {
    /// The weight and bias of the branch's LayerNorm in `q` (either arena).
    fn layernorm(self, q: &BlockParams) -> [&Range<usize>; 2] {
        match self {
            Branch::Attention => [&q.ln1_w, &q.ln1_b],
            Branch::Ffn => [&q.ln2_w, &q.ln2_b],
        }
    }

    /// What the forward saved of the LayerNorm: its input `res` (B, T, d), and its mean
    /// and rstd (B, T).
    fn saved(self, blk: &BlockActs) -> [&[f32]; 3] {
        match self {
            Branch::Attention => [&blk.res1, &blk.ln1_mean, &blk.ln1_rstd],
            Branch::Ffn => [&blk.res2, &blk.ln2_mean, &blk.ln2_rstd],
        }
    }
}

/// A block's linear layers: `qkv = x Wqkv^T + bqkv`, `a = atty Wout^T + bout`,
/// `ff_pre = x1 W1^T + b1`, `f = ff W2^T + b2`.
#[derive(Clone, Copy, Debug)]
enum Layer {
    Qkv,
    Out,
    Ffn1,
    Ffn2,
}

impl Layer {
    /// The layer's weight and bias in `q` (either arena).
    fn tensors(self, q: &BlockParams) -> [&Range<usize>; 2] {
        match self {
            Layer::Qkv => [&q.qkv_w, &q.qkv_b],
            Layer::Out => [&q.out_w, &q.out_b],
            Layer::Ffn1 => [&q.ffn1_w, &q.ffn1_b],
            Layer::Ffn2 => [&q.ffn2_w, &q.ffn2_b],
        }
    }

    /// `(n_in, n_out)` in a model of width `d` and feed-forward width `dff`.
    fn widths(self, d: usize, dff: usize) -> (usize, usize) {
        match self {
            Layer::Qkv => (d, 3 * d),
            Layer::Out => (d, d),
            Layer::Ffn1 => (d, dff),
            Layer::Ffn2 => (dff, d),
        }
    }
}

/// A block's linear layers over `n` rows: their tensors in the parameter arena `params`
/// (`p`) and in the gradient arena (`g`), and the model's widths `d` and `d_ff`.
struct Linears<'a> {
    p: &'a BlockParams,
    g: &'a BlockParams,
    params: &'a [f32],
    n: usize,
    d: usize,
    dff: usize,
}

impl Linears<'_> {
    /// The backward of `layer`, `out (n, n_out) = inp (n, n_in) W^T + bias`:
    /// `dinp = dout W` (overwritten); `dW += dout^T inp` and `dbias += dout` summed over
    /// rows, in `grads`.
    fn backward(
        &self,
        layer: Layer,
        grads: &mut [f32],
        dinp: &mut [f32],
        dout: &[f32],
        inp: &[f32],
    ) {
        let ([w, _], [dw, db]) = (layer.tensors(self.p), layer.tensors(self.g));
        let (n_in, n_out) = layer.widths(self.d, self.dff);
        let (dw, db) = split_two(grads, dw, db);
        let w = &self.params[w.clone()];
        matmul_backward(Some(dinp), dw, Some(db), dout, inp, w, self.n, n_in, n_out);
    }
}

/// Where [`Model::backward`] hands the gradients it has finished: a data-parallel
/// step sums them over the ranks while the backward goes on ([`crate::collective`]).
pub trait GradSink<'g> {
    /// `grads` is the arena from element `start` on (to the end of what is left): the
    /// backward writes no more of it.
    fn take(&mut self, start: usize, grads: &'g mut [f32]);
    /// Between two layers of the backward: the finished gradients' exchange may advance.
    fn between(&mut self) {}
}

/// The sink of a plain backward: the gradients stay where they are.
pub struct KeepGrads;

impl GradSink<'_> for KeepGrads {
    fn take(&mut self, _: usize, _: &mut [f32]) {}
}

/// Hands `sink` the part of `grads` from `start` on (nothing when `None`) and returns the
/// rest.
pub fn hand_over<'g>(
    grads: &'g mut [f32],
    start: Option<usize>,
    sink: &mut dyn GradSink<'g>,
) -> &'g mut [f32] {
    let Some(start) = start else { return grads };
    let (rest, done) = grads.split_at_mut(start);
    sink.take(start, done);
    rest
}

fn add_into(dst: &mut [f32], src: &[f32]) {
    for (a, &b) in dst.iter_mut().zip(src) {
        *a += b;
    }
}

/// Two disjoint mutable tensors of the arena; `r1` must lie before `r2`.
fn split_two<'a>(
    arena: &'a mut [f32],
    r1: &Range<usize>,
    r2: &Range<usize>,
) -> (&'a mut [f32], &'a mut [f32]) {
    assert!(r1.end <= r2.start, "tensors out of arena order");
    let (a, rest) = arena.split_at_mut(r2.start);
    (&mut a[r1.clone()], &mut rest[..r2.len()])
}

/// Three disjoint mutable tensors of the arena, in arena order.
fn split_three<'a>(
    arena: &'a mut [f32],
    r1: &Range<usize>,
    r2: &Range<usize>,
    r3: &Range<usize>,
) -> (&'a mut [f32], &'a mut [f32], &'a mut [f32]) {
    assert!(r2.end <= r3.start, "tensors out of arena order");
    let (a, rest) = arena.split_at_mut(r3.start);
    let (x, y) = split_two(a, r1, r2);
    (x, y, &mut rest[..r3.len()])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Pooling};

    /// The memory check's counts are what `new` allocates.
    #[test]
    fn floats_count_what_new_allocates() {
        for (blocks, pooling) in [
            (0, Pooling::Mean),
            (2, Pooling::Target),
            (1, Pooling::Flatten),
        ] {
            let mut cfg = Config::default().model;
            (cfg.blocks, cfg.pooling, cfg.seq_len) = (blocks, pooling, 7);
            let dims = Dims::new(&cfg, 3);
            let a = Activations::new(&dims, 5);
            let b = &a.blocks;
            let block: usize = b
                .iter()
                .map(|k| {
                    [
                        &k.qkv,
                        &k.att,
                        &k.atty,
                        &k.a,
                        &k.res1,
                        &k.x1,
                        &k.ln1_mean,
                        &k.ln1_rstd,
                        &k.ff_pre,
                        &k.ff,
                        &k.f,
                        &k.res2,
                        &k.x2,
                        &k.ln2_mean,
                        &k.ln2_rstd,
                    ]
                    .iter()
                    .map(|v| v.len())
                    .sum::<usize>()
                })
                .sum();
            let mlp: usize = a.mlp_pre.iter().chain(&a.mlp_act).map(Vec::len).sum();
            let n = a.valid.capacity() + a.x0.len() + block + a.z.len() + mlp + a.probs.len();
            assert_eq!(Activations::floats(&dims, 5), n as u128, "blocks {blocks}");
            let g = GradScratch::new(&dims, 5);
            let m = [
                &g.dx,
                &g.dx1,
                &g.dres,
                &g.dbr,
                &g.datty,
                &g.dtmp,
                &g.dqkv,
                &g.dff,
                &g.dff_pre,
                &g.dz,
                &g.dmlp,
                &g.dmlp_pre,
            ];
            let n: usize = m.iter().map(|v| v.len()).sum();
            assert_eq!(GradScratch::floats(&dims, 5), n as u128, "blocks {blocks}");
        }
    }
}
