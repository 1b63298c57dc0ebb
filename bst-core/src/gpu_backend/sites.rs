//! The GPU backend's call sites: every launcher bound once to the buffers of
//! `buffers.rs`, in the order of `crate::model`'s forward.

use std::ops::Range;

use bst_kernels::cpu::dropout::DropoutKey;
use bst_kernels::gpu::attention::{
    AttentionBinding, AttentionBuffers, AttentionDims, AttentionGradBuffers,
};
use bst_kernels::gpu::dropout::{DropoutBinding, DropoutBuffers, DropoutDims, DropoutGradBuffers};
use bst_kernels::gpu::elementwise::ElementwiseBinding;
use bst_kernels::gpu::embedding::EmbeddingSegments;
use bst_kernels::gpu::embedding::{EmbeddingBinding, EmbeddingBuffers, EmbeddingGradBuffers};
use bst_kernels::gpu::layernorm::{
    LayerNormBinding, LayerNormBuffers, LayerNormDims, LayerNormGradBuffers,
};
use bst_kernels::gpu::loss::{LossBinding, LossBuffers, LossDims};
use bst_kernels::gpu::mask::{MaskBinding, MaskBuffers, MaskDims};
use bst_kernels::gpu::matmul::{
    Activation, LeakyInput, MatmulBinding, MatmulBuffers, MatmulDims, MatmulGradBuffers,
};
use bst_kernels::gpu::optim::{AdagradHyper, AdamHyper, OptimBinding, TableRows, UpdateRule};
use bst_kernels::gpu::pooling::{PoolingBinding, PoolingBuffers, PoolingDims, PoolingGradBuffers};
use bst_kernels::gpu::{GpuContext, GpuError, SetRows, TensorRef, wgpu};

use super::Kernels;
use super::buffers::{BlockActs, Buffers, GradScratch, embedding_dims};
use crate::config::TrainConfig;
use crate::model::{Dims, Model};
use crate::optim::ADAGRAD_EPS;
use crate::params::BlockParams;

/// The bindings of one transformer block, in forward order.
pub(super) struct BlockSites {
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

/// Every call site, bound once.
pub(super) struct Sites {
    /// valid (B, T) from the batch's history ids.
    pub mask: MaskBinding,
    pub embedding: EmbeddingBinding,
    pub blocks: Vec<BlockSites>,
    pub pooling: PoolingBinding,
    /// Each MLP layer's linear (the LeakyReLU epilogue on hidden layers; the backward of
    /// the layer after a hidden one applies leaky' to its input gradient).
    pub mlp: Vec<MatmulBinding>,
    /// Training: accumulates the batch mean into `loss_sum`, writes dlogits.
    pub loss: LossBinding,
    /// Evaluation: probabilities only (its mean goes to `eval_loss`).
    pub eval_loss: LossBinding,
    /// The gradient arena, or with sparse updates its dense range only (the tables'
    /// gradients are consumed by `update_rows`).
    pub zero_grads: ElementwiseBinding,
    /// The dense range (blocks and MLP), with `train.weight_decay`.
    pub update: OptimBinding,
    /// Dense updates of trained f32 tables: the four tables, with `model.emb_l2`.
    pub update_tables: Option<OptimBinding>,
    /// Sparse updates: the touched rows of each embedding table (item, category,
    /// position, other), read from the segments' unique ids, with `model.emb_l2`.
    /// Empty for dense updates.
    pub update_rows: Vec<OptimBinding>,
}

impl Sites {
    /// Every optimiser update of a training step, in dispatch order: the dense range,
    /// the tables whole or their touched rows.
    pub fn updates(&self) -> impl Iterator<Item = &OptimBinding> {
        std::iter::once(&self.update)
            .chain(&self.update_tables)
            .chain(&self.update_rows)
    }

    /// The same, to set their step.
    pub fn updates_mut(&mut self) -> impl Iterator<Item = &mut OptimBinding> {
        std::iter::once(&mut self.update)
            .chain(&mut self.update_tables)
            .chain(&mut self.update_rows)
    }

    /// The updates of the embedding tables (whole or by rows), whose learning rate is
    /// scaled by `train.emb_lr_scale`.
    pub fn table_updates_mut(&mut self) -> impl Iterator<Item = &mut OptimBinding> {
        self.update_tables.iter_mut().chain(&mut self.update_rows)
    }

    /// Binds every call site to `bufs`, for batches of up to `cap` samples. The dropout
    /// keys are set per step.
    pub fn new(
        ctx: &GpuContext,
        k: &Kernels,
        model: &Model,
        train: &TrainConfig,
        cap: usize,
        bufs: &Buffers,
    ) -> Result<Sites, GpuError> {
        let (dm, pi) = (&model.dims, &model.layout.index);
        let Buffers {
            arenas,
            inputs,
            acts,
            scratch: s,
            memory: _,
        } = bufs;
        let emb_dims = embedding_dims(model, cap);
        let bind = Binder {
            ctx,
            k,
            params: &arenas.params,
            grads: &arenas.grads,
            base: arenas.base,
        };
        let ids = |off: u32| TensorRef::new(&inputs.ids, off);
        let at = inputs.ids_at;
        let mask = k.mask.bind(
            ctx,
            &MaskBuffers {
                valid: all(&inputs.valid),
                hist_item: ids(at.hist_item),
            },
            MaskDims {
                rows: cap as u32,
                seq_len: dm.l as u32,
            },
        )?;
        // The tables: in the parameter arena, or f16 at the same (layout) offsets.
        let table = |r: &Range<usize>| match &arenas.tables_f16 {
            Some(f16) => TensorRef::new(f16, r.start as u32),
            None => bind.param(r),
        };
        let emb_bufs = EmbeddingBuffers {
            x: all(&acts.x0),
            z: all(&acts.z),
            e_item: table(&pi.emb_item),
            e_cat: table(&pi.emb_cat),
            e_pos: table(&pi.emb_pos),
            e_other: table(&pi.emb_other),
            hist_item: ids(at.hist_item),
            hist_cat: ids(at.hist_cat),
            hist_pos: ids(at.hist_pos),
            target_item: ids(at.target_item),
            target_cat: ids(at.target_cat),
            other: ids(at.other),
        };
        let embedding = match &arenas.tables_f16 {
            // Scoring only: the f16 tables have no gradients.
            Some(_) => k.emb.bind_f16(ctx, &emb_bufs, emb_dims)?,
            None => k.emb.bind(
                ctx,
                &emb_bufs,
                Some(&EmbeddingGradBuffers {
                    de_item: bind.grad(&pi.emb_item),
                    de_cat: bind.grad(&pi.emb_cat),
                    de_pos: bind.grad(&pi.emb_pos),
                    de_other: bind.grad(&pi.emb_other),
                    dx: all(&s.dx),
                    dz: all(&s.dz),
                    segments: all(&inputs.segments),
                }),
                emb_dims,
            )?,
        };
        let mut blocks = Vec::new();
        for i in 0..dm.blocks {
            let x = if i == 0 {
                &acts.x0
            } else {
                &acts.blocks[i - 1].x2
            };
            blocks.push(bind.block(
                x,
                &acts.blocks[i],
                s,
                &pi.blocks[i],
                &inputs.valid,
                dm,
                cap,
            )?);
        }
        let top = acts.blocks.last().map_or(&acts.x0, |b| &b.x2);
        let pooling = k.pool.bind(
            ctx,
            &PoolingBuffers {
                out: all(&acts.z),
                x: all(top),
                valid: all(&inputs.valid),
            },
            Some(&PoolingGradBuffers {
                dx: all(&s.dx),
                dout: all(&s.dz),
            }),
            PoolingDims {
                rows: cap as u32,
                t: dm.t as u32,
                d: dm.d as u32,
                row: dm.zw as u32,
                off: 0,
                mode: dm.pool,
            },
        )?;
        // Backward: the loss writes dlogit; layer k > 0, after its weight gradient has
        // read its input act_{k-1}, writes that input's gradient times leaky'(act_{k-1})
        // over act_{k-1} (in place), which is layer k-1's dout; layer 0 writes dz. No
        // pre-activation is kept: act_{k-1} has its signs.
        let last = dm.mlp.len() - 1;
        let mut mlp = Vec::new();
        for (layer, (w, b)) in pi.mlp.iter().enumerate() {
            let (inp, dinp, dinp_act) = match layer {
                0 => (&acts.z, &s.dz, None),
                _ => {
                    let act_in = &acts.mlp_act[layer - 1];
                    (act_in, act_in, Some((act_in, dm.alpha)))
                }
            };
            let (out, dout, act) = match layer < last {
                true => (
                    &acts.mlp_act[layer],
                    &acts.mlp_act[layer],
                    Activation::LeakyRelu { alpha: dm.alpha },
                ),
                false => (&acts.logit, &s.dlogit, Activation::None),
            };
            mlp.push(bind.linear(Linear {
                out,
                inp,
                w,
                b,
                dinp_over: dinp,
                dinp_leaky: dinp_act,
                dout,
                rows: cap,
                n_in: dm.mlp_in(layer),
                n_out: dm.mlp[layer],
                act,
            })?);
        }
        let loss_bufs = |mean| LossBuffers {
            probs: all(&acts.probs),
            losses: all(&acts.losses),
            mean: all(mean),
            logits: all(&acts.logit),
            labels: all(&inputs.labels),
        };
        let loss = k.loss.bind(
            ctx,
            &loss_bufs(&acts.loss_sum),
            Some(all(&s.dlogit)),
            LossDims {
                rows: cap as u32,
                accumulate_mean: true,
            },
        )?;
        let eval_loss = k.loss.bind(
            ctx,
            &loss_bufs(&acts.eval_loss),
            None,
            LossDims {
                rows: cap as u32,
                accumulate_mean: false,
            },
        )?;
        let layout = &model.layout;
        // Dense updates cover the arena; sparse ones the blocks and MLP, plus each
        // table's touched rows below. With f16 tables the arenas hold only the blocks
        // and the MLP (and nothing trains the tables).
        let base = arenas.base;
        if base > 0 && train.sparse_embeddings {
            return Err(GpuError::Binding(
                "sparse embedding updates: the embedding tables are stored in f16 for \
                 scoring, and f16 tables are not trained; keep them in f32 to train"
                    .into(),
            ));
        }
        // Gradients zeroed each step: the whole arena, or with sparse updates (and f16
        // tables) its dense range.
        let zeroed = if train.sparse_embeddings || base > 0 {
            layout.dense_range()
        } else {
            0..layout.total
        };
        let zero_grads = k.elt.bind_fill(
            ctx,
            TensorRef::new(&arenas.grads, (zeroed.start - base) as u32),
            zeroed.len() as u32,
            0.0,
        )?;
        let lr = train.lr();
        // The rule with its state tensors at layout offset `off` (element `off - base`
        // of the state arenas), with L2 coefficient `weight_decay`.
        let rule = |off: usize, lr: f32, weight_decay: f32| match &arenas.v {
            Some(v) => UpdateRule::Adam {
                hp: AdamHyper {
                    lr,
                    weight_decay,
                    ..AdamHyper::default()
                },
                m: TensorRef::new(&arenas.m, (off - base) as u32),
                v: TensorRef::new(v, (off - base) as u32),
            },
            None => UpdateRule::Adagrad {
                hp: AdagradHyper {
                    lr,
                    eps: ADAGRAD_EPS,
                    weight_decay,
                },
                sum: TensorRef::new(&arenas.m, (off - base) as u32),
            },
        };
        // An update of the layout's range `r` (at `r.start - base` of the arenas).
        let bind_range = |r: std::ops::Range<usize>, lr: f32, weight_decay: f32| {
            let at = (r.start - base) as u32;
            k.optim.bind(
                ctx,
                TensorRef::new(&arenas.params, at),
                TensorRef::new(&arenas.grads, at),
                rule(r.start, lr, weight_decay),
                r.len() as u32,
            )
        };
        let dense = layout.dense_range();
        let update = bind_range(dense.clone(), lr, train.weight_decay)?;
        let table_lr = lr * train.emb_lr_scale();
        let update_tables = if train.sparse_embeddings || base > 0 {
            None
        } else {
            Some(bind_range(0..dense.start, table_lr, model.cfg.emb_l2)?)
        };
        let mut update_rows = Vec::new();
        if train.sparse_embeddings {
            let unique = EmbeddingSegments::unique_ids_at(&emb_dims)?;
            for ((r, w), (ids_at, room)) in layout.embedding_tables().into_iter().zip(unique) {
                let off = r.start as u32;
                let rows = TableRows {
                    ids: TensorRef::new(&inputs.segments, ids_at),
                    max_rows: room,
                    table_rows: (r.len() / w) as u32,
                    width: w as u32,
                };
                update_rows.push(k.optim.bind_rows(
                    ctx,
                    TensorRef::new(&arenas.params, off),
                    TensorRef::new(&arenas.grads, off),
                    rule(r.start, table_lr, model.cfg.emb_l2),
                    rows,
                )?);
            }
        }
        Ok(Sites {
            mask,
            embedding,
            blocks,
            pooling,
            mlp,
            loss,
            eval_loss,
            zero_grads,
            update,
            update_tables,
            update_rows,
        })
    }

    /// Sets every binding to batches of `b` samples of `t` tokens: one loop over
    /// [`Sites::row_bindings`], each binding with its row unit.
    pub fn set_rows(&mut self, ctx: &GpuContext, b: usize, t: usize) {
        for (unit, binding) in self.row_bindings() {
            binding.set_rows(ctx, unit.rows(b, t));
        }
    }

    /// Every binding whose sizes follow the batch, with what its rows count.
    fn row_bindings(&mut self) -> Vec<(RowUnit, &mut dyn SetRows)> {
        use RowUnit::Samples;
        let mut all: Vec<(RowUnit, &mut dyn SetRows)> =
            vec![(Samples, &mut self.mask), (Samples, &mut self.embedding)];
        for blk in &mut self.blocks {
            all.extend(blk.row_bindings());
        }
        all.push((Samples, &mut self.pooling));
        all.extend(
            self.mlp
                .iter_mut()
                .map(|l| (Samples, l as &mut dyn SetRows)),
        );
        all.push((Samples, &mut self.loss));
        all.push((Samples, &mut self.eval_loss));
        all
    }
}

/// What a binding's rows count: samples (`b`) or tokens (`b * t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RowUnit {
    Samples,
    Tokens,
}

impl RowUnit {
    /// The rows of a batch of `b` samples of `t` tokens.
    fn rows(self, b: usize, t: usize) -> u32 {
        match self {
            RowUnit::Samples => b as u32,
            RowUnit::Tokens => (b * t) as u32,
        }
    }
}

impl BlockSites {
    /// The block's bindings with their row unit: attention counts samples, the rest
    /// tokens.
    fn row_bindings(&mut self) -> [(RowUnit, &mut dyn SetRows); 11] {
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

/// The arguments of [`Binder::linear`], by name: `out (rows, n_out) = act(inp (rows, n_in)
/// W^T + b)`, with its backward: `dinp = dout W`, `dW += dout^T inp`, `db += sum dout`.
/// `dinp_over` names the activation buffer the input gradient is written over (it must be
/// dead by then: the table on [`Binder::block`]). With `dinp_leaky = (sign, alpha)` (the
/// input is `LeakyReLU(pre)`, and `sign` has the signs of `pre`: the input itself),
/// `dinp` receives `dout W * leaky'(pre)` and may be `sign` itself.
struct Linear<'b> {
    out: &'b wgpu::Buffer,
    inp: &'b wgpu::Buffer,
    w: &'b Range<usize>,
    b: &'b Range<usize>,
    /// Where `dinp` goes: a buffer whose activation is no longer read.
    dinp_over: &'b wgpu::Buffer,
    /// `Some((pre, alpha))`: `dinp` is also multiplied by LeakyReLU' of `pre` (the
    /// previous layer's activation, fused).
    dinp_leaky: Option<(&'b wgpu::Buffer, f32)>,
    dout: &'b wgpu::Buffer,
    rows: usize,
    n_in: usize,
    n_out: usize,
    act: Activation,
}

/// What the binding helpers share: the device, the kernels and the two arenas, which
/// hold the layout's elements from `base` on.
struct Binder<'a> {
    ctx: &'a GpuContext,
    k: &'a Kernels,
    params: &'a wgpu::Buffer,
    grads: &'a wgpu::Buffer,
    base: usize,
}

/// The whole buffer as a tensor from element 0.
fn all(b: &wgpu::Buffer) -> TensorRef<'_> {
    TensorRef::whole(b)
}

impl<'a> Binder<'a> {
    fn param(&self, r: &Range<usize>) -> TensorRef<'a> {
        TensorRef::new(self.params, (r.start - self.base) as u32)
    }

    fn grad(&self, r: &Range<usize>) -> TensorRef<'a> {
        TensorRef::new(self.grads, (r.start - self.base) as u32)
    }

    /// One linear layer with its backward (see [`Linear`]).
    fn linear(&self, l: Linear) -> Result<MatmulBinding, GpuError> {
        let bufs = MatmulBuffers {
            out: all(l.out),
            pre: None,
            inp: all(l.inp),
            weight: self.param(l.w),
            bias: Some(self.param(l.b)),
        };
        let grads = MatmulGradBuffers {
            dinp: Some(all(l.dinp_over)),
            dweight: self.grad(l.w),
            dbias: Some(self.grad(l.b)),
            dout: all(l.dout),
            dinp_act: l.dinp_leaky.map(|(sign, alpha)| LeakyInput {
                sign: all(sign),
                alpha,
            }),
        };
        let dims = MatmulDims {
            rows: l.rows as u32,
            n_in: l.n_in as u32,
            n_out: l.n_out as u32,
            act: l.act,
        };
        self.k.mm.bind(self.ctx, &bufs, Some(&grads), dims)
    }

    /// `out = x + dropout(a)` over `rows x width`, with `da = dout * mask` (`grads`:
    /// `(da, dout)`).
    fn residual(
        &self,
        out: &wgpu::Buffer,
        x: &wgpu::Buffer,
        a: &wgpu::Buffer,
        (da, dout): (&wgpu::Buffer, &wgpu::Buffer),
        rows: usize,
        width: usize,
        key: DropoutKey,
    ) -> Result<DropoutBinding, GpuError> {
        let bufs = DropoutBuffers {
            out: all(out),
            x: all(x),
            a: all(a),
        };
        let grads = DropoutGradBuffers {
            da: all(da),
            dout: all(dout),
        };
        let dims = DropoutDims {
            rows: rows as u32,
            width: width as u32,
        };
        self.k.drop.bind(self.ctx, &bufs, Some(&grads), dims, key)
    }

    /// `out = x + y` over `rows x width`.
    fn add(
        &self,
        out: &wgpu::Buffer,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        rows: usize,
        width: usize,
    ) -> Result<ElementwiseBinding, GpuError> {
        let (rows, width) = (rows as u32, width as u32);
        let k = &self.k.elt;
        k.bind_add(self.ctx, all(out), all(x), all(y), rows, width)
    }

    /// `out = LN(inp)` (saving mean and rstd), with `dinp`, `dW += `, `db +=` from `dout`.
    fn layernorm(
        &self,
        out: &wgpu::Buffer,
        (mean, rstd): (&wgpu::Buffer, &wgpu::Buffer),
        inp: &wgpu::Buffer,
        (w, b): (&Range<usize>, &Range<usize>),
        dinp: &wgpu::Buffer,
        dout: &wgpu::Buffer,
        rows: usize,
        c: usize,
    ) -> Result<LayerNormBinding, GpuError> {
        let bufs = LayerNormBuffers {
            out: all(out),
            mean: all(mean),
            rstd: all(rstd),
            inp: all(inp),
            weight: self.param(w),
            bias: self.param(b),
        };
        let grads = LayerNormGradBuffers {
            dinp: all(dinp),
            dweight: self.grad(w),
            dbias: self.grad(b),
            dout: all(dout),
        };
        let dims = LayerNormDims {
            rows: rows as u32,
            c: c as u32,
        };
        self.k.ln.bind(self.ctx, &bufs, Some(&grads), dims)
    }

    /// One block with input `x` (x0 or the previous block's x2), as `Model::forward` and
    /// `Model::block_backward`. Dropout keys are set per step.
    ///
    /// The backward writes its gradients over the block's activations it no longer reads,
    /// in this order (`dx` is the scratch carrying the gradient between blocks):
    ///
    /// | step | reads | writes |
    /// |---|---|---|
    /// | ln2 backward | dx, res2 | dres -> x2 |
    /// | res2 dropout backward | dres (x2) | dbr -> f |
    /// | ffn2 backward, leaky' fused | dbr (f), ff | dff_pre -> ff (in place, after dW2) |
    /// | ffn1 backward | dff_pre (ff), x1 | dtmp -> a |
    /// | dx1 = dres + dtmp | x2, a | dx1 -> x2 (in place) |
    /// | ln1 backward | dx1 (x2), res1 | dres' -> res2 |
    /// | res1 dropout backward | dres' (res2) | dbr' -> f |
    /// | out backward | dbr' (f), atty | datty -> a |
    /// | attention backward | datty (a), att, qkv | dqkv -> ff (or scratch when d_ff < 3d) |
    /// | qkv backward | dqkv, x | dtmp' -> x1 |
    /// | dx = dres' + dtmp' | res2, x1 | dx |
    ///
    /// (`a` and `f` are dead once the forward's residuals have read them; x2 once the
    /// next block's qkv backward, or the pooling backward, has run.)
    fn block(
        &self,
        x: &wgpu::Buffer,
        a: &BlockActs,
        s: &GradScratch,
        p: &BlockParams,
        valid: &wgpu::Buffer,
        dm: &Dims,
        cap: usize,
    ) -> Result<BlockSites, GpuError> {
        let (t, d, dff) = (dm.t, dm.d, dm.dff);
        let n = cap * t;
        let none = Activation::None;
        let leaky = Activation::LeakyRelu { alpha: dm.alpha };
        let keep_all = DropoutKey {
            p: 0.0,
            seed: 0,
            step: 0,
            site: 0,
        };
        let dqkv = s.dqkv.as_ref().unwrap_or(&a.ff);
        let attention = self.k.attn.bind(
            self.ctx,
            &AttentionBuffers {
                out: all(&a.atty),
                att: all(&a.att),
                qkv: all(&a.qkv),
                valid: all(valid),
            },
            Some(&AttentionGradBuffers {
                dqkv: all(dqkv),
                dout: all(&a.a),
            }),
            AttentionDims {
                batch: cap as u32,
                t: t as u32,
                d: d as u32,
                heads: dm.h as u32,
            },
        )?;
        Ok(BlockSites {
            qkv: self.linear(Linear {
                out: &a.qkv,
                inp: x,
                w: &p.qkv_w,
                b: &p.qkv_b,
                dinp_over: &a.x1,
                dinp_leaky: None,
                dout: dqkv,
                rows: n,
                n_in: d,
                n_out: 3 * d,
                act: none,
            })?,
            attention,
            out: self.linear(Linear {
                out: &a.a,
                inp: &a.atty,
                w: &p.out_w,
                b: &p.out_b,
                dinp_over: &a.a,
                dinp_leaky: None,
                dout: &a.f,
                rows: n,
                n_in: d,
                n_out: d,
                act: none,
            })?,
            res1: self.residual(&a.res1, x, &a.a, (&a.f, &a.res2), n, d, keep_all)?,
            ln1: self.layernorm(
                &a.x1,
                (&a.ln1_mean, &a.ln1_rstd),
                &a.res1,
                (&p.ln1_w, &p.ln1_b),
                &a.res2,
                &a.x2,
                n,
                d,
            )?,
            ffn1: self.linear(Linear {
                out: &a.ff,
                inp: &a.x1,
                w: &p.ffn1_w,
                b: &p.ffn1_b,
                dinp_over: &a.a,
                dinp_leaky: None,
                dout: &a.ff,
                rows: n,
                n_in: d,
                n_out: dff,
                act: leaky,
            })?,
            ffn2: self.linear(Linear {
                out: &a.f,
                inp: &a.ff,
                w: &p.ffn2_w,
                b: &p.ffn2_b,
                dinp_over: &a.ff,
                dinp_leaky: Some((&a.ff, dm.alpha)),
                dout: &a.f,
                rows: n,
                n_in: dff,
                n_out: d,
                act: none,
            })?,
            res2: self.residual(&a.res2, &a.x1, &a.f, (&a.f, &a.x2), n, d, keep_all)?,
            ln2: self.layernorm(
                &a.x2,
                (&a.ln2_mean, &a.ln2_rstd),
                &a.res2,
                (&p.ln2_w, &p.ln2_b),
                &a.x2,
                &s.dx,
                n,
                d,
            )?,
            sum_dx1: self.add(&a.x2, &a.x2, &a.a, n, d)?,
            sum_dx: self.add(&s.dx, &a.res2, &a.x1, n, d)?,
            zero_key_bias: self.k.elt.bind_fill(
                self.ctx,
                TensorRef::new(self.grads, (p.qkv_b.start + d - self.base) as u32),
                d as u32,
                0.0,
            )?,
        })
    }
}
