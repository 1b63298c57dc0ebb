//! The GPU backend's shared-history scoring ([`crate::shared_history`] on the device):
//! per user, once, the history's token embeddings, its keys and values and its valid
//! mask; per candidate, one token through the block (`shaders/target_attention.wgsl` for
//! its attention over the user's keys) and the MLP. Its own buffers, every kernel bound
//! once for `users` users and `rows` candidates, and one submit per call.
//!
//! Unlike the CPU path, the first MLP layer runs whole on each candidate's `z` (the
//! pooled target token and the user's other-feature embeddings, gathered per candidate):
//! the matmul kernel has no column-slice form, and that layer's other-feature part is a
//! small share of the work on a GPU. So the GPU sums every layer as the full forward does.

use bst_kernels::gpu::Site;
use std::ops::Range;

use bst_kernels::cpu::dropout::DropoutKey;
use bst_kernels::cpu::pooling::PoolMode;
use bst_kernels::gpu::dropout::{DropoutBinding, DropoutBuffers, DropoutDims};
use bst_kernels::gpu::embedding::{EmbeddingBinding, EmbeddingBuffers};
use bst_kernels::gpu::layernorm::{LayerNormBinding, LayerNormBuffers, LayerNormDims};
use bst_kernels::gpu::loss::{LossBinding, LossBuffers, LossDims};
use bst_kernels::gpu::mask::{MaskBinding, MaskBuffers, MaskDims};
use bst_kernels::gpu::matmul::{Activation, MatmulBinding, MatmulBuffers, MatmulDims};
use bst_kernels::gpu::pooling::{PoolingBinding, PoolingBuffers, PoolingDims};
use bst_kernels::gpu::target_attention::{
    TargetAttentionBinding, TargetAttentionBuffers, TargetAttentionDims, TargetAttentionKernels,
};
use bst_kernels::gpu::{GpuContext, GpuError, TensorRef, wgpu};

use super::Kernels;
use super::buffers::{Arenas, embedding_dims};
use crate::model::Model;
use crate::requests::Requests;

/// Where each id tensor starts in the ids buffer (u32).
#[derive(Clone, Copy, Debug)]
struct IdsAt {
    hist_item: u32,   // (U, L)
    hist_cat: u32,    // (U, L)
    hist_pos: u32,    // (U, L)
    zeros: u32,       // (U * F) zeros: the users' unused target and other ids
    target_item: u32, // (N)
    target_cat: u32,  // (N)
    user: u32,        // (N)
    other: u32,       // (N, F) each candidate's user's other-feature rows
    len: usize,
}

impl IdsAt {
    fn new(users: usize, rows: usize, l: usize, f: usize) -> IdsAt {
        let mut at = 0;
        let mut next = |n: usize| {
            let start = at as u32;
            at += n;
            start
        };
        IdsAt {
            hist_item: next(users * l),
            hist_cat: next(users * l),
            hist_pos: next(users * l),
            zeros: next(users * f.max(1)),
            target_item: next(rows),
            target_cat: next(rows),
            user: next(rows),
            other: next(rows * f),
            len: at,
        }
    }
}

/// The block's call sites (none with zero blocks).
struct BlockSites {
    kv: MatmulBinding,            // kv_u = x_u [Wk; Wv]^T + [bk; bv]  (U*T rows)
    qkv: MatmulBinding,           // qkv = x Wqkv^T + bqkv
    attn: TargetAttentionBinding, // atty
    out: MatmulBinding,           // a = atty Wout^T + bout
    res1: DropoutBinding,         // res1 = x + a
    ln1: LayerNormBinding,        // x1
    ffn1: MatmulBinding,          // ff = LeakyReLU(x1 W1^T + b1)
    ffn2: MatmulBinding,          // f
    res2: DropoutBinding,         // res2 = x1 + f
    ln2: LayerNormBinding,        // x2
}

/// Buffers and bindings for up to `users` users and `rows` candidates per call.
pub(super) struct SharedPath {
    pub users: usize,
    pub rows: usize,
    ids: wgpu::Buffer,
    at: IdsAt,
    probs: wgpu::Buffer, // (N)
    mask_u: MaskBinding,
    emb_u: EmbeddingBinding,
    emb_c: EmbeddingBinding,
    block: Option<BlockSites>,
    pool: PoolingBinding,
    mlp: Vec<MatmulBinding>,
    loss: LossBinding,
    attn_k: TargetAttentionKernels,
    /// Every buffer, kept alive with the bind groups that use them.
    _keep: Vec<wgpu::Buffer>,
}

/// A fresh zeroed f32 or u32 buffer of `len` elements.
fn buf(ctx: &GpuContext, label: &str, len: usize) -> wgpu::Buffer {
    ctx.storage_buffer_zeroed(label, len)
}

fn all(b: &wgpu::Buffer) -> TensorRef<'_> {
    TensorRef::whole(b)
}

impl SharedPath {
    /// Allocates and binds for `users` users and `rows` candidates.
    pub fn new(
        ctx: &GpuContext,
        k: &Kernels,
        model: &Model,
        arenas: &Arenas,
        users: usize,
        rows: usize,
    ) -> Result<SharedPath, GpuError> {
        let (dm, pi) = (&model.dims, &model.layout.index);
        let (l, t, d, f) = (dm.l, dm.t, dm.d, dm.fields);
        let at = IdsAt::new(users, rows, l, f);
        let ids = buf(ctx, "shared ids", at.len);
        let id = |o: u32| TensorRef::new(&ids, o);
        let param = |r: &Range<usize>, plus: usize| {
            TensorRef::new(&arenas.params, (r.start + plus - arenas.base) as u32)
        };
        let table = |r: &Range<usize>| match &arenas.tables_f16 {
            Some(f16) => TensorRef::new(f16, r.start as u32),
            None => param(r, 0),
        };
        // Per user.
        let valid_u = buf(ctx, "shared valid_u", users * t); // (U, T) u32
        let x_u = buf(ctx, "shared x_u", users * t * d); // (U, T, d)
        let kv_u = buf(ctx, "shared kv_u", users * t * 2 * d); // (U, T, 2d)
        let z_u = buf(ctx, "shared z_u", users * dm.zw); // (U, zw), unused
        // Per candidate.
        let valid_c = ctx.storage_buffer("shared valid_c", &vec![1u32; rows.max(1)]); // (N, 1)
        let x = buf(ctx, "shared x", rows * d); // (N, d)
        let z = buf(ctx, "shared z", rows * dm.zw); // (N, zw)
        let probs = buf(ctx, "shared probs", rows); // (N)
        let logit = buf(ctx, "shared logit", rows); // (N)
        let losses = buf(ctx, "shared losses", rows); // (N)
        let labels = buf(ctx, "shared labels", rows); // (N)
        let mean = buf(ctx, "shared eval mean", 1);

        let mask_u = k.mask.bind(
            ctx,
            &MaskBuffers {
                valid: all(&valid_u),
                hist_item: id(at.hist_item),
            },
            MaskDims {
                rows: users as u32,
                seq_len: l as u32,
            },
        )?;
        let tables = [&pi.emb_item, &pi.emb_cat, &pi.emb_pos, &pi.emb_other].map(table);
        let emb_u_bufs = EmbeddingBuffers {
            x: all(&x_u),
            z: all(&z_u),
            e_item: tables[0],
            e_cat: tables[1],
            e_pos: tables[2],
            e_other: tables[3],
            hist_item: id(at.hist_item),
            hist_cat: id(at.hist_cat),
            hist_pos: id(at.hist_pos),
            target_item: id(at.zeros),
            target_cat: id(at.zeros),
            other: id(at.zeros),
        };
        // The candidates: samples of no history (T = 1, the target alone).
        let emb_c_bufs = EmbeddingBuffers {
            x: all(&x),
            z: all(&z),
            hist_item: id(0),
            hist_cat: id(0),
            hist_pos: id(0),
            target_item: id(at.target_item),
            target_cat: id(at.target_cat),
            other: id(at.other),
            ..emb_u_bufs
        };
        let bind_emb = |bufs: &EmbeddingBuffers, dims| match &arenas.tables_f16 {
            Some(_) => k.emb.bind_f16(ctx, bufs, dims),
            None => k.emb.bind(ctx, Site::forward(*bufs, dims)),
        };
        let emb_u = bind_emb(&emb_u_bufs, embedding_dims(model, users))?;
        let mut c_dims = embedding_dims(model, rows);
        c_dims.seq_len = 0;
        let emb_c = bind_emb(&emb_c_bufs, c_dims)?;

        let linear = |out: &wgpu::Buffer,
                      inp: &wgpu::Buffer,
                      (w, b): (TensorRef, TensorRef),
                      rows: usize,
                      (n_in, n_out): (usize, usize),
                      act| {
            k.mm.bind(
                ctx,
                Site::forward(
                    MatmulBuffers {
                        out: all(out),
                        pre: None,
                        inp: all(inp),
                        weight: w,
                        bias: Some(b),
                    },
                    MatmulDims {
                        rows: rows as u32,
                        n_in: n_in as u32,
                        n_out: n_out as u32,
                        act,
                    },
                ),
            )
        };
        let residual = |out: &wgpu::Buffer, x: &wgpu::Buffer, a: &wgpu::Buffer| {
            let key = DropoutKey {
                p: 0.0,
                seed: 0,
                step: 0,
                site: 0,
            };
            let bufs = DropoutBuffers {
                out: all(out),
                x: all(x),
                a: all(a),
            };
            let dims = DropoutDims {
                rows: rows as u32,
                width: d as u32,
            };
            k.drop.bind(ctx, Site::forward(bufs, dims), key)
        };
        let mut keep = vec![];
        let attn_k = TargetAttentionKernels::new(ctx)?;
        let block = match pi.blocks.first() {
            None => None,
            Some(p) => {
                let qkv = buf(ctx, "shared qkv", rows * 3 * d);
                let atty = buf(ctx, "shared atty", rows * d);
                let a = buf(ctx, "shared a", rows * d);
                let res1 = buf(ctx, "shared res1", rows * d);
                let x1 = buf(ctx, "shared x1", rows * d);
                let (ln_mean, ln_rstd) =
                    (buf(ctx, "shared mean", rows), buf(ctx, "shared rstd", rows));
                let ff = buf(ctx, "shared ff", rows * dm.dff);
                let fb = buf(ctx, "shared f", rows * d);
                let res2 = buf(ctx, "shared res2", rows * d);
                let x2 = buf(ctx, "shared x2", rows * d);
                let none = Activation::None;
                let ln = |out: &wgpu::Buffer,
                          inp: &wgpu::Buffer,
                          (w, b): (&Range<usize>, &Range<usize>)| {
                    k.ln.bind(
                        ctx,
                        Site::forward(
                            LayerNormBuffers {
                                out: all(out),
                                mean: all(&ln_mean),
                                rstd: all(&ln_rstd),
                                inp: all(inp),
                                weight: param(w, 0),
                                bias: param(b, 0),
                            },
                            LayerNormDims {
                                rows: rows as u32,
                                c: d as u32,
                            },
                        ),
                    )
                };
                let sites = BlockSites {
                    // Rows d..3d of Wqkv and its bias: the keys' and values'.
                    kv: linear(
                        &kv_u,
                        &x_u,
                        (param(&p.qkv_w, d * d), param(&p.qkv_b, d)),
                        users * t,
                        (d, 2 * d),
                        none,
                    )?,
                    qkv: linear(
                        &qkv,
                        &x,
                        (param(&p.qkv_w, 0), param(&p.qkv_b, 0)),
                        rows,
                        (d, 3 * d),
                        none,
                    )?,
                    attn: attn_k.bind(
                        ctx,
                        &TargetAttentionBuffers {
                            out: all(&atty),
                            qkv: all(&qkv),
                            hist_kv: all(&kv_u),
                            hist_valid: all(&valid_u),
                            user: id(at.user),
                        },
                        TargetAttentionDims {
                            rows: rows as u32,
                            users: users as u32,
                            l: l as u32,
                            user_rows: t as u32,
                            d: d as u32,
                            heads: dm.h as u32,
                        },
                    )?,
                    out: linear(
                        &a,
                        &atty,
                        (param(&p.out_w, 0), param(&p.out_b, 0)),
                        rows,
                        (d, d),
                        none,
                    )?,
                    res1: residual(&res1, &x, &a)?,
                    ln1: ln(&x1, &res1, (&p.ln1_w, &p.ln1_b))?,
                    ffn1: linear(
                        &ff,
                        &x1,
                        (param(&p.ffn1_w, 0), param(&p.ffn1_b, 0)),
                        rows,
                        (d, dm.dff),
                        Activation::LeakyRelu { alpha: dm.alpha },
                    )?,
                    ffn2: linear(
                        &fb,
                        &ff,
                        (param(&p.ffn2_w, 0), param(&p.ffn2_b, 0)),
                        rows,
                        (dm.dff, d),
                        none,
                    )?,
                    res2: residual(&res2, &x1, &fb)?,
                    ln2: ln(&x2, &res2, (&p.ln2_w, &p.ln2_b))?,
                };
                keep.extend([
                    qkv,
                    atty,
                    a,
                    res1,
                    x1,
                    ln_mean,
                    ln_rstd,
                    ff,
                    fb,
                    res2,
                    x2.clone(),
                ]);
                Some((sites, x2))
            }
        };
        let top = block.as_ref().map_or(&x, |(_, x2)| x2);
        let pool = k.pool.bind(
            ctx,
            Site::forward(
                PoolingBuffers {
                    out: all(&z),
                    x: all(top),
                    valid: all(&valid_c),
                },
                PoolingDims {
                    rows: rows as u32,
                    t: 1,
                    d: d as u32,
                    row: dm.zw as u32,
                    off: 0,
                    mode: PoolMode::Target,
                },
            ),
        )?;
        let last = dm.mlp.len() - 1;
        let mut mlp = Vec::new();
        let mut acts: Vec<wgpu::Buffer> = Vec::new();
        for (layer, (w, b)) in pi.mlp.iter().enumerate() {
            let out = match layer < last {
                true => buf(ctx, "shared mlp act", rows * dm.mlp[layer]),
                false => logit.clone(),
            };
            let inp = if layer == 0 { &z } else { &acts[layer - 1] };
            let act = match layer < last {
                true => Activation::LeakyRelu { alpha: dm.alpha },
                false => Activation::None,
            };
            mlp.push(linear(
                &out,
                inp,
                (param(w, 0), param(b, 0)),
                rows,
                (dm.mlp_in(layer), dm.mlp[layer]),
                act,
            )?);
            acts.push(out);
        }
        let loss = k.loss.bind(
            ctx,
            &LossBuffers {
                probs: all(&probs),
                losses: all(&losses),
                mean: all(&mean),
                logits: all(&logit),
                labels: all(&labels),
            },
            None,
            LossDims {
                rows: rows as u32,
                accumulate_mean: false,
            },
        )?;
        keep.extend([
            valid_u, x_u, kv_u, z_u, valid_c, x, z, logit, losses, labels, mean,
        ]);
        keep.extend(acts);
        Ok(SharedPath {
            users,
            rows,
            ids,
            at,
            probs,
            mask_u,
            emb_u,
            emb_c,
            block: block.map(|(s, _)| s),
            pool,
            mlp,
            loss,
            attn_k,
            _keep: keep,
        })
    }

    /// Writes the users of `req` and its candidates `range` (at most `rows`, users at most
    /// `users`), and sets every binding to them.
    pub fn upload(&mut self, ctx: &GpuContext, req: &Requests, range: Range<usize>) {
        let (u, n, f) = (req.users(), range.len(), req.fields);
        assert!(u <= self.users && n <= self.rows, "shared path: capacity");
        let at = self.at;
        ctx.write(&self.ids, at.hist_item, &req.hist_item);
        ctx.write(&self.ids, at.hist_cat, &req.hist_cat);
        ctx.write(&self.ids, at.hist_pos, &req.hist_pos);
        ctx.write(&self.ids, at.target_item, &req.target_item[range.clone()]);
        ctx.write(&self.ids, at.target_cat, &req.target_cat[range.clone()]);
        ctx.write(&self.ids, at.user, &req.user[range.clone()]);
        let mut other = Vec::with_capacity(n * f);
        for &user in &req.user[range] {
            other.extend_from_slice(&req.other[user as usize * f..][..f]);
        }
        ctx.write(&self.ids, at.other, &other);
        let (u32_, n32) = (u as u32, n as u32);
        self.mask_u.set_rows(ctx, u32_);
        self.emb_u.set_rows(ctx, u32_);
        self.emb_c.set_rows(ctx, n32);
        if let Some(b) = &mut self.block {
            b.kv.set_rows(ctx, u32_ * (req.seq_len as u32 + 1));
            b.qkv.set_rows(ctx, n32);
            b.attn.set_rows(ctx, n32);
            b.out.set_rows(ctx, n32);
            b.res1.set_rows(ctx, n32);
            b.ln1.set_rows(ctx, n32);
            b.ffn1.set_rows(ctx, n32);
            b.ffn2.set_rows(ctx, n32);
            b.res2.set_rows(ctx, n32);
            b.ln2.set_rows(ctx, n32);
        }
        self.pool.set_rows(ctx, n32);
        for layer in &mut self.mlp {
            layer.set_rows(ctx, n32);
        }
        self.loss.set_rows(ctx, n32);
    }

    /// Records the scoring of the uploaded candidates: probabilities into `probs()`.
    pub fn record(&self, k: &Kernels, pass: &mut wgpu::ComputePass) {
        k.mask.valid_mask(pass, &self.mask_u);
        k.emb.token_embedding_forward(pass, &self.emb_u);
        k.emb.token_embedding_forward(pass, &self.emb_c);
        k.emb.other_embedding_forward(pass, &self.emb_c);
        if let Some(b) = &self.block {
            k.mm.forward(pass, &b.kv);
            k.mm.forward(pass, &b.qkv);
            self.attn_k.forward(pass, &b.attn);
            k.mm.forward(pass, &b.out);
            k.drop.forward(pass, &b.res1);
            k.ln.forward(pass, &b.ln1);
            k.mm.forward(pass, &b.ffn1);
            k.mm.forward(pass, &b.ffn2);
            k.drop.forward(pass, &b.res2);
            k.ln.forward(pass, &b.ln2);
        }
        k.pool.forward(pass, &self.pool);
        for layer in &self.mlp {
            k.mm.forward(pass, layer);
        }
        k.loss.forward(pass, &self.loss);
    }

    /// probs (N): the click probabilities of the last recorded call.
    pub fn probs(&self) -> &wgpu::Buffer {
        &self.probs
    }
}
