//! Scoring at serving speed: each user's history is computed once per request, not once
//! per candidate (spec section 2, read for the rank stage).
//!
//! With at most one transformer block and `target` pooling, the MLP reads only the target
//! token's output. That output needs the history tokens' keys and values, which do not
//! depend on the candidate, and the candidate's own query, key and value; LayerNorm and
//! the FFN act per token. The other features (user fields, hour, weekday) enter only the
//! first MLP layer, linearly. So, per user, once:
//!
//! ```text
//! x_hist (L, d)   = the history's token embeddings
//! kv_hist (L, 2d) = x_hist [Wk; Wv]^T + [bk; bv]
//! u (m0)          = b0 + W0[:, pw..] concat(E_other[other_f])   the user's part of MLP layer 0
//! ```
//!
//! and per candidate, for all of a call's candidates in one pass:
//!
//! ```text
//! x (d)   = concat(E_item[item], E_cat[cat], E_pos[0])
//! qkv     = x Wqkv^T + bqkv
//! atty    = attention of q over [kv_hist (valid slots); (k, v)]   (target_attention)
//! x2      = LN2(x1 + FFN(x1)),  x1 = LN1(x + atty Wout^T + bout)
//! h0      = LeakyReLU(u + x2 W0[:, ..pw]^T), then the rest of the MLP, sigmoid
//! ```
//!
//! With no block, `x2 = x` and the history is not read. The probabilities equal the full
//! forward's ([`crate::model::Model::forward`]) up to the rounding of the first MLP layer's
//! sum, split in two (`bst-core/tests/shared_history.rs` checks 1e-6 absolute).
//!
//! With `mean` or `flatten` pooling, or two blocks or more, the history tokens' outputs
//! attend to the candidate, so they differ per candidate: [`is_exact`] is false and the
//! backends score those models one sample per candidate, as before.

use crate::config::{ModelConfig, Pooling};
use crate::model::Model;
use crate::requests::Requests;
use bst_kernels::cpu::activation::leaky_relu_forward;
use bst_kernels::cpu::embedding::{TokenIds, other_embedding_forward, token_embedding_forward};
use bst_kernels::cpu::layernorm::layernorm_forward;
use bst_kernels::cpu::loss::sigmoid;
use bst_kernels::cpu::matmul::{matmul_accumulate, matmul_forward, matmul_forward_chunked};
use bst_kernels::cpu::target_attention::target_attention_forward;
use rayon::prelude::*;
use std::sync::Mutex;

/// Candidates per task at most: a task's buffers hold this many rows, so memory does not
/// grow with the number of candidates.
pub const CHUNK: usize = 512;

/// Whether the shared-history path computes exactly this model: `target` pooling and at
/// most one block.
pub fn is_exact(cfg: &ModelConfig) -> bool {
    cfg.pooling == Pooling::Target && cfg.blocks <= 1
}

/// Buffers of the shared-history path; they grow to the largest call and are reused.
#[derive(Debug, Default)]
pub struct SharedScratch {
    users: UserParts,
    /// One per task running at once (tasks take one and put it back).
    tasks: Mutex<Vec<TaskScratch>>,
}

/// What the users' candidates share (U users).
#[derive(Clone, Debug, Default)]
struct UserParts {
    x_user: Vec<f32>,     // (U, T, d) token embeddings, the target slot unused
    x_hist: Vec<f32>,     // (U, L, d) the history's tokens
    kv_hist: Vec<f32>,    // (U, L, 2d) their keys, then values
    valid_hist: Vec<u32>, // (U, L)
    z_user: Vec<f32>,     // (U, zw) 0 in the pooled columns, then the other embeddings
    u: Vec<f32>,          // (U, m0) the user's part of MLP layer 0, bias included
    no_target: Vec<u32>,  // (U) zeros: the unused target slot's ids
}

/// One task's candidates (C, at most CHUNK rows).
#[derive(Clone, Debug, Default)]
struct TaskScratch {
    x: Vec<f32>,            // (C, d) the candidate's token
    qkv: Vec<f32>,          // (C, 3d)
    atty: Vec<f32>,         // (C, d)
    a: Vec<f32>,            // (C, d)
    res1: Vec<f32>,         // (C, d)
    x1: Vec<f32>,           // (C, d)
    ff_pre: Vec<f32>,       // (C, d_ff)
    ff: Vec<f32>,           // (C, d_ff)
    f: Vec<f32>,            // (C, d)
    res2: Vec<f32>,         // (C, d)
    x2: Vec<f32>,           // (C, d)
    mean: Vec<f32>,         // (C) LayerNorm statistics (not needed, but written)
    rstd: Vec<f32>,         // (C)
    mlp_pre: Vec<Vec<f32>>, // (C, out_k)
    mlp_act: Vec<Vec<f32>>, // (C, out_k)
}

fn grow(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// probs (N) = click probabilities of every candidate of `req` (evaluation mode), for a
/// model where [`is_exact`] holds; `req` must fit the model ([`Requests::check`]).
pub fn predict_requests(
    probs: &mut [f32],
    s: &mut SharedScratch,
    model: &Model,
    params: &[f32],
    req: &Requests,
) {
    assert!(
        is_exact(&model.cfg),
        "the shared-history path needs one block or none and target pooling"
    );
    let n = req.candidates();
    assert_eq!(probs.len(), n, "probs (N)");
    user_parts(&mut s.users, model, params, req);
    // Then the candidates: one task per thread (at most CHUNK rows each), every op of a
    // task on its own rows. Each of a task's matmuls packs its whole weight once, so
    // fewer, larger tasks are faster than each op split in small ones.
    let rows = n.div_ceil(rayon::current_num_threads()).clamp(1, CHUNK);
    let users = &s.users;
    let tasks = &s.tasks;
    probs
        .par_chunks_mut(rows)
        .enumerate()
        .for_each(|(ci, probs)| {
            let taken = tasks.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let mut t = taken.unwrap_or_default();
            score_rows(probs, &mut t, users, model, params, req, ci * rows);
            tasks.lock().unwrap_or_else(|e| e.into_inner()).push(t);
        });
}

/// Once per user: the history's keys and values, and the user's part of MLP layer 0.
fn user_parts(s: &mut UserParts, model: &Model, params: &[f32], req: &Requests) {
    let dm = &model.dims;
    let pi = &model.layout.index;
    let (l, t, d) = (dm.l, dm.t, dm.d);
    let u_n = req.users();
    let m0 = dm.mlp[0];
    let w = |r: &std::ops::Range<usize>| &params[r.clone()];
    s.no_target.clear();
    s.no_target.resize(u_n, 0);
    let ids = TokenIds {
        hist_item: &req.hist_item,
        hist_cat: &req.hist_cat,
        hist_pos: &req.hist_pos,
        target_item: &s.no_target,
        target_cat: &s.no_target,
    };
    let x_user = grow(&mut s.x_user, u_n * t * d);
    let e = (w(&pi.emb_item), w(&pi.emb_cat), w(&pi.emb_pos));
    token_embedding_forward(x_user, ids, e.0, e.1, e.2, u_n, l, dm.widths);
    if let Some(p) = pi.blocks.first() {
        let x_hist = grow(&mut s.x_hist, u_n * l * d);
        for (h, x) in x_hist
            .chunks_exact_mut(l * d)
            .zip(x_user.chunks_exact(t * d))
        {
            h.copy_from_slice(&x[..l * d]);
        }
        // Rows d..3d of Wqkv (and of its bias) are the keys' and values'.
        let (qkv_w, qkv_b) = (w(&p.qkv_w), w(&p.qkv_b));
        let kv = grow(&mut s.kv_hist, u_n * l * 2 * d);
        matmul_forward(
            kv,
            x_hist,
            &qkv_w[d * d..],
            Some(&qkv_b[d..]),
            u_n * l,
            d,
            2 * d,
        );
        s.valid_hist.clear();
        s.valid_hist
            .extend(req.hist_item.iter().map(|&i| (i != 0) as u32));
    }
    let z = grow(&mut s.z_user, u_n * dm.zw);
    z.fill(0.0);
    other_embedding_forward(
        z,
        &req.other,
        w(&pi.emb_other),
        u_n,
        dm.fields,
        dm.d_o,
        dm.zw,
        dm.pw,
    );
    let (w0, b0) = &pi.mlp[0];
    let u = grow(&mut s.u, u_n * m0);
    matmul_forward(u, z, w(w0), Some(w(b0)), u_n, dm.zw, m0);
}

/// probs (C) of candidates `c0 .. c0 + C`, with their users' shared parts `us`.
fn score_rows(
    probs: &mut [f32],
    s: &mut TaskScratch,
    us: &UserParts,
    model: &Model,
    params: &[f32],
    req: &Requests,
    c0: usize,
) {
    let dm = &model.dims;
    let pi = &model.layout.index;
    let (l, d, dff) = (dm.l, dm.d, dm.dff);
    let c = probs.len();
    let user = &req.user[c0..c0 + c];
    let w = |r: &std::ops::Range<usize>| &params[r.clone()];
    // Each matmul in one piece (the task is already one of the parallel ones).
    let mm = |out: &mut [f32], inp: &[f32], (wr, br), n_in, n_out| {
        matmul_forward_chunked(out, inp, w(wr), Some(w(br)), c, n_in, n_out, c);
    };
    let ids = TokenIds {
        hist_item: &[],
        hist_cat: &[],
        hist_pos: &[],
        target_item: &req.target_item[c0..c0 + c],
        target_cat: &req.target_cat[c0..c0 + c],
    };
    let x = grow(&mut s.x, c * d);
    let e = (w(&pi.emb_item), w(&pi.emb_cat), w(&pi.emb_pos));
    token_embedding_forward(x, ids, e.0, e.1, e.2, c, 0, dm.widths);
    let top: &[f32] = match pi.blocks.first() {
        None => &s.x[..c * d],
        Some(p) => {
            let qkv = grow(&mut s.qkv, c * 3 * d);
            mm(qkv, x, (&p.qkv_w, &p.qkv_b), d, 3 * d);
            let atty = grow(&mut s.atty, c * d);
            target_attention_forward(atty, qkv, &us.kv_hist, &us.valid_hist, user, c, l, d, dm.h);
            let a = grow(&mut s.a, c * d);
            mm(a, atty, (&p.out_w, &p.out_b), d, d);
            let res1 = grow(&mut s.res1, c * d);
            add(res1, x, a);
            let (mean, rstd) = (grow(&mut s.mean, c), grow(&mut s.rstd, c));
            let x1 = grow(&mut s.x1, c * d);
            layernorm_forward(x1, mean, rstd, res1, w(&p.ln1_w), w(&p.ln1_b), c, d);
            let ff_pre = grow(&mut s.ff_pre, c * dff);
            mm(ff_pre, x1, (&p.ffn1_w, &p.ffn1_b), d, dff);
            let ff = grow(&mut s.ff, c * dff);
            leaky_relu_forward(ff, ff_pre, dm.alpha);
            let f = grow(&mut s.f, c * d);
            mm(f, ff, (&p.ffn2_w, &p.ffn2_b), dff, d);
            let res2 = grow(&mut s.res2, c * d);
            add(res2, x1, f);
            let x2 = grow(&mut s.x2, c * d);
            layernorm_forward(x2, mean, rstd, res2, w(&p.ln2_w), w(&p.ln2_b), c, d);
            &s.x2[..c * d]
        }
    };
    // MLP layer 0: the user's part, then the candidate's pooled columns added.
    let m0 = dm.mlp[0];
    s.mlp_pre.resize(dm.mlp.len(), Vec::new());
    s.mlp_act.resize(dm.mlp.len(), Vec::new());
    let pre0 = grow(&mut s.mlp_pre[0], c * m0);
    for (row, &u) in pre0.chunks_exact_mut(m0).zip(user) {
        row.copy_from_slice(&us.u[u as usize * m0..][..m0]);
    }
    matmul_accumulate(pre0, top, w(&pi.mlp[0].0), (0, dm.zw), c, dm.pw, m0, c);
    let last = dm.mlp.len() - 1;
    for k in 0..=last {
        let n_out = dm.mlp[k];
        if k > 0 {
            let pre = grow(&mut s.mlp_pre[k], c * n_out);
            let inp = &s.mlp_act[k - 1][..c * dm.mlp[k - 1]];
            let (wk, bk) = &pi.mlp[k];
            mm(pre, inp, (wk, bk), dm.mlp[k - 1], n_out);
        }
        if k < last {
            let act = grow(&mut s.mlp_act[k], c * n_out);
            leaky_relu_forward(act, &s.mlp_pre[k][..c * n_out], dm.alpha);
        }
    }
    for (p, &z) in probs.iter_mut().zip(&s.mlp_pre[last]) {
        *p = sigmoid(z);
    }
}

/// out = x + y: the residual sum of evaluation mode (dropout off).
fn add(out: &mut [f32], x: &[f32], y: &[f32]) {
    for ((o, &a), &b) in out.iter_mut().zip(x).zip(y) {
        *o = a + b;
    }
}
