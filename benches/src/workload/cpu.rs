//! The cases of [`super::cases`] on the CPU reference ops.

use super::{Inputs, Op, Shapes, values};
use bst_kernels::cpu::activation::{leaky_relu_backward, leaky_relu_forward};
use bst_kernels::cpu::attention::{attention_backward, attention_forward};
use bst_kernels::cpu::dropout::{DropoutKey, residual_dropout_backward, residual_dropout_forward};
use bst_kernels::cpu::embedding::{
    TokenIds, other_embedding_backward, other_embedding_forward, token_embedding_backward,
    token_embedding_forward,
};
use bst_kernels::cpu::layernorm::{layernorm_backward, layernorm_forward};
use bst_kernels::cpu::loss::{bce_backward, bce_forward};
use bst_kernels::cpu::matmul::{matmul_backward, matmul_forward};
use bst_kernels::cpu::optim::{AdamHyper, adam_update};
use bst_kernels::cpu::pooling::{pooling_backward, pooling_forward};

/// One linear layer's tensors.
struct LinearData {
    inp: Vec<f32>,     // (rows, n_in)
    weight: Vec<f32>,  // (n_out, n_in)
    bias: Vec<f32>,    // (n_out)
    pre: Vec<f32>,     // (rows, n_out), with the LeakyReLU epilogue
    out: Vec<f32>,     // (rows, n_out)
    dinp: Vec<f32>,    // (rows, n_in)
    dweight: Vec<f32>, // (n_out, n_in)
    dbias: Vec<f32>,   // (n_out)
    dout: Vec<f32>,    // (rows, n_out)
}

/// Every tensor the cases touch, allocated once.
pub struct CpuWorkloads {
    s: Shapes,
    cases: Vec<super::Case>,
    inputs: Inputs,
    tables: [Vec<f32>; 4],  // E_item, E_cat, E_pos, E_other
    dtables: [Vec<f32>; 4], // their gradients
    /// (B, T, d): the embedding output, and the output of the other (B, T, d) ops.
    x: Vec<f32>,
    z: Vec<f32>,  // (B, zw)
    dx: Vec<f32>, // (B, T, d)
    dz: Vec<f32>, // (B, zw)
    linears: Vec<LinearData>,
    qkv: Vec<f32>,   // (B, T, 3d)
    att: Vec<f32>,   // (B, h, T, T)
    atty: Vec<f32>,  // (B, T, d)
    dqkv: Vec<f32>,  // (B, T, 3d)
    a: Vec<f32>,     // (B, T, d): a second (B, T, d) operand
    ln_w: Vec<f32>,  // (d)
    ln_b: Vec<f32>,  // (d)
    ln_dw: Vec<f32>, // (d)
    ln_db: Vec<f32>, // (d)
    mean: Vec<f32>,  // (B T)
    rstd: Vec<f32>,  // (B T)
    ff: Vec<f32>,    // (B T, d_ff)
    dff: Vec<f32>,   // (B T, d_ff)
    logits: Vec<f32>,
    probs: Vec<f32>,
    params: Vec<f32>,
    grads: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    adam_t: u64,
    key: DropoutKey,
}

impl CpuWorkloads {
    /// Allocates and fills every tensor of the cases at these shapes.
    pub fn new(s: &Shapes) -> CpuWorkloads {
        let (b, t, d) = (s.batch, s.t(), s.d());
        let (n, zw) = (b * t, s.z_width());
        let (di, dc, dp) = s.widths;
        let row_widths = [di, dc, dp, s.d_other];
        let mut seed = 0;
        let mut vals = |len: usize| {
            seed += 1;
            values(len, seed)
        };
        let tables = std::array::from_fn(|i| vals(s.vocab[i] * row_widths[i]));
        let dtables = std::array::from_fn(|i| vec![0.0; s.vocab[i] * row_widths[i]]);
        let linears = s
            .linears()
            .iter()
            .map(|l| {
                let (mi, mo, io) = (l.rows * l.n_in, l.rows * l.n_out, l.n_in * l.n_out);
                LinearData {
                    inp: vals(mi),
                    weight: vals(io),
                    bias: vals(l.n_out),
                    pre: vec![0.0; mo],
                    out: vec![0.0; mo],
                    dinp: vec![0.0; mi],
                    dweight: vec![0.0; io],
                    dbias: vec![0.0; l.n_out],
                    dout: vals(mo),
                }
            })
            .collect();
        CpuWorkloads {
            cases: super::cases(s),
            inputs: Inputs::new(s),
            tables,
            dtables,
            x: vec![0.0; n * d],
            z: vec![0.0; b * zw],
            dx: vals(n * d),
            dz: vals(b * zw),
            linears,
            qkv: vals(n * 3 * d),
            att: vec![0.0; b * s.heads * t * t],
            atty: vals(n * d),
            dqkv: vec![0.0; n * 3 * d],
            a: vals(n * d),
            ln_w: vals(d),
            ln_b: vals(d),
            ln_dw: vec![0.0; d],
            ln_db: vec![0.0; d],
            mean: vec![0.0; n],
            rstd: vec![0.0; n],
            ff: vals(n * s.d_ff),
            dff: vals(n * s.d_ff),
            logits: vals(b),
            probs: vec![0.0; b],
            params: vals(s.params),
            grads: vals(s.params),
            m: vec![0.0; s.params],
            v: vec![0.0; s.params],
            adam_t: 0,
            key: DropoutKey {
                p: s.dropout,
                seed: 0,
                step: 0,
                site: 0,
            },
            s: s.clone(),
        }
    }

    /// The cases, as [`super::cases`] lists them.
    pub fn cases(&self) -> &[super::Case] {
        &self.cases
    }

    /// One call of case `i`.
    pub fn run(&mut self, i: usize) {
        let s = &self.s;
        let (b, l, t, d, h) = (s.batch, s.seq_len, s.t(), s.d(), s.heads);
        let (n, zw, pw) = (b * t, s.z_width(), s.pooled());
        let (f, d_o) = (s.fields, s.d_other);
        let x = &self.inputs;
        let ids = TokenIds {
            hist_item: &x.hist_item,
            hist_cat: &x.hist_cat,
            hist_pos: &x.hist_pos,
            target_item: &x.target_item,
            target_cat: &x.target_cat,
        };
        match self.cases[i].op {
            Op::EmbeddingForward => {
                let [e_item, e_cat, e_pos, e_other] = &self.tables;
                token_embedding_forward(&mut self.x, ids, e_item, e_cat, e_pos, b, l, s.widths);
                other_embedding_forward(&mut self.z, &x.other, e_other, b, f, d_o, zw, pw);
            }
            Op::EmbeddingBackward => {
                let [de_item, de_cat, de_pos, de_other] = &mut self.dtables;
                token_embedding_backward(de_item, de_cat, de_pos, &self.dx, ids, b, l, s.widths);
                other_embedding_backward(de_other, &self.dz, &x.other, b, f, d_o, zw, pw);
            }
            Op::LinearForward(k) => {
                let lin = &s.linears()[k];
                let ld = &mut self.linears[k];
                let dst = if lin.leaky { &mut ld.pre } else { &mut ld.out };
                matmul_forward(
                    dst,
                    &ld.inp,
                    &ld.weight,
                    Some(&ld.bias),
                    lin.rows,
                    lin.n_in,
                    lin.n_out,
                );
                if lin.leaky {
                    leaky_relu_forward(&mut ld.out, &ld.pre, s.alpha);
                }
            }
            Op::LinearBackward(k) => {
                let lin = &s.linears()[k];
                let ld = &mut self.linears[k];
                matmul_backward(
                    Some(&mut ld.dinp),
                    &mut ld.dweight,
                    Some(&mut ld.dbias),
                    &ld.dout,
                    &ld.inp,
                    &ld.weight,
                    lin.rows,
                    lin.n_in,
                    lin.n_out,
                );
            }
            Op::AttentionForward => attention_forward(
                &mut self.atty,
                &mut self.att,
                &self.qkv,
                &x.valid,
                b,
                t,
                d,
                h,
            ),
            Op::AttentionBackward => {
                attention_backward(&mut self.dqkv, &self.atty, &self.att, &self.qkv, b, t, d, h)
            }
            Op::ResidualDropoutForward => {
                residual_dropout_forward(&mut self.x, &self.dx, &self.a, self.key)
            }
            Op::ResidualDropoutBackward => {
                residual_dropout_backward(&mut self.x, &self.dx, self.key)
            }
            Op::LayerNormForward => layernorm_forward(
                &mut self.x,
                &mut self.mean,
                &mut self.rstd,
                &self.a,
                &self.ln_w,
                &self.ln_b,
                n,
                d,
            ),
            Op::LayerNormBackward => {
                layernorm_backward(
                    &mut self.x,
                    &mut self.ln_dw,
                    &mut self.ln_db,
                    &self.dx,
                    &self.a,
                    &self.ln_w,
                    &self.mean,
                    &self.rstd,
                    n,
                    d,
                );
            }
            Op::LeakyReluBackward => {
                let ffn1 = &mut self.linears[2];
                leaky_relu_backward(&mut ffn1.dout, &self.dff, &self.ff, s.alpha)
            }
            Op::PoolingForward => {
                pooling_forward(&mut self.z, &self.a, &x.valid, s.pool, b, t, d, zw, 0)
            }
            Op::PoolingBackward => {
                pooling_backward(&mut self.dx, &self.dz, &x.valid, s.pool, b, t, d, zw, 0)
            }
            Op::LossForward => {
                bce_forward(&mut self.probs, &self.logits, &x.labels);
            }
            Op::LossBackward => bce_backward(&mut self.probs, &self.logits, &x.labels),
            Op::Adam => {
                self.adam_t += 1;
                let hp = AdamHyper::default();
                adam_update(
                    &mut self.params,
                    &mut self.m,
                    &mut self.v,
                    &self.grads,
                    hp,
                    self.adam_t,
                );
            }
        }
    }
}
