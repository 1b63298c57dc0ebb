//! Every kernel family at a model's shapes, on the GPU (the launchers of [`bst_kernels::gpu`])
//! and on the CPU (the reference ops of [`bst_kernels::cpu`]), each with the work it does in
//! bytes and floating-point operations: what the benchmarks time.
//!
//! ```text
//! let shapes = kernel_shapes(&model, 256);                // a model's dims, batch 256
//! let cases = cases(&shapes);                             // names, bytes, flops
//! let gpu = GpuWorkloads::new(&ctx, &model, 256)?;        // the model's own bindings
//! let t = gpu.time_batched(&ctx, i, 50)?;                 // 50 calls in one pass
//! let mut cpu = CpuWorkloads::new(&shapes);
//! cpu.run(i);
//! ```
//!
//! A case is one call of one kernel family as one layer of the training step makes it
//! (one block, one MLP layer), on seeded random inputs with a few padded history slots.
//! Backward calls of layers with parameters accumulate into their gradients, so repeated
//! calls keep working on finite values.
//!
//! # Cost model
//! `flop` counts the arithmetic of the mathematical op (a multiply-add is 2); `bytes`
//! counts each tensor the op reads or writes once (4 bytes per element), i.e. the
//! traffic of an ideal kernel that keeps everything else on chip. So GB/s = bytes / time
//! is a lower bound of the traffic a kernel really moves (a GEMM tile reloads its inputs),
//! and GFLOP/s = flop / time the useful arithmetic rate. The formulas are in [`cases`].

mod cpu;
mod gpu;

pub use cpu::CpuWorkloads;
pub use gpu::{GpuWorkloads, Timing};

use bst_kernels::cpu::pooling::PoolMode;

/// The shapes of one BST layer stack and batch (see the spec's notation).
#[derive(Clone, Debug, PartialEq)]
pub struct Shapes {
    /// B, samples per batch.
    pub batch: usize,
    /// L, history slots; T = L + 1 tokens.
    pub seq_len: usize,
    /// (d_item, d_cat, d_pos); d is their sum.
    pub widths: (usize, usize, usize),
    /// h, attention heads.
    pub heads: usize,
    /// Hidden width of the FFN.
    pub d_ff: usize,
    /// F, other-feature fields per sample.
    pub fields: usize,
    /// Width of each other-feature embedding.
    pub d_other: usize,
    /// Pooling of the last block's tokens.
    pub pool: PoolMode,
    /// Output width of each MLP layer, ending with 1 (the logit).
    pub mlp: Vec<usize>,
    /// Rows of E_item, E_cat, E_pos, E_other.
    pub vocab: [usize; 4],
    /// Elements of the parameter arena (what one optimiser update walks).
    pub params: usize,
    /// LeakyReLU slope.
    pub alpha: f32,
    /// Dropout probability.
    pub dropout: f32,
}

impl Shapes {
    /// T = L + 1.
    pub fn t(&self) -> usize {
        self.seq_len + 1
    }

    /// d = d_item + d_cat + d_pos.
    pub fn d(&self) -> usize {
        self.widths.0 + self.widths.1 + self.widths.2
    }

    /// Width of the pooled vector.
    pub fn pooled(&self) -> usize {
        self.pool.width(self.t(), self.d())
    }

    /// Width of z, the MLP input: the pooled vector, then the F other embeddings.
    pub fn z_width(&self) -> usize {
        self.pooled() + self.fields * self.d_other
    }

    /// The linear layers, in forward order: the block's four, then the MLP's.
    pub fn linears(&self) -> Vec<Linear> {
        let (n, d, dff) = (self.batch * self.t(), self.d(), self.d_ff);
        let mut v = vec![
            Linear::new("qkv", n, d, 3 * d, false),
            Linear::new("attn_out", n, d, d, false),
            Linear::new("ffn1", n, d, dff, true),
            Linear::new("ffn2", n, dff, d, false),
        ];
        let mut n_in = self.z_width();
        let last = self.mlp.len().saturating_sub(1);
        for (k, &n_out) in self.mlp.iter().enumerate() {
            v.push(Linear::new(
                &format!("mlp.{k}"),
                self.batch,
                n_in,
                n_out,
                k < last,
            ));
            n_in = n_out;
        }
        v
    }
}

/// One linear layer `out = act(inp W^T + b)`: `rows x n_in -> rows x n_out`.
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    /// `qkv`, `attn_out`, `ffn1`, `ffn2`, `mlp.0`, ...
    pub name: String,
    /// Rows of the input: tokens (B T) in the block, samples (B) in the MLP.
    pub rows: usize,
    /// Input width.
    pub n_in: usize,
    /// Output width.
    pub n_out: usize,
    /// LeakyReLU epilogue (the pre-activation is stored too).
    pub leaky: bool,
}

impl Linear {
    fn new(name: &str, rows: usize, n_in: usize, n_out: usize, leaky: bool) -> Linear {
        Linear {
            name: name.into(),
            rows,
            n_in,
            n_out,
            leaky,
        }
    }
}

/// What a case runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Token embeddings into x and the other-feature embeddings into z.
    EmbeddingForward,
    /// Scatter-add of dx and dz into the four tables' gradients.
    EmbeddingBackward,
    /// Linear layer `i` of [`Shapes::linears`]: `out = act(inp W^T + b)`.
    LinearForward(usize),
    /// `dinp`, `dW +=`, `db +=` of linear layer `i`.
    LinearBackward(usize),
    /// Masked softmax attention of every head: the output and the probabilities.
    AttentionForward,
    /// `dqkv` from the output's gradient, the probabilities and qkv.
    AttentionBackward,
    /// `out = x + dropout(a)` over (B T, d).
    ResidualDropoutForward,
    /// `da = dout * mask`.
    ResidualDropoutBackward,
    /// LayerNorm over (B T) rows of d, saving mean and rstd.
    LayerNormForward,
    /// `dinp`, `dweight +=`, `dbias +=`.
    LayerNormBackward,
    /// The FFN's LeakyReLU backward over (B T, d_ff) (its forward is the matmul epilogue).
    LeakyReluBackward,
    /// The pooled vector into z's first columns.
    PoolingForward,
    /// dx from z's pooled columns.
    PoolingBackward,
    /// Sigmoid, BCE and the batch mean.
    LossForward,
    /// `dlogits = (sigmoid(logits) - labels) / B`.
    LossBackward,
    /// One Adam update of the whole parameter arena.
    Adam,
}

/// One timed unit: a kernel family's call, with its cost (see the module doc).
#[derive(Clone, Debug, PartialEq)]
pub struct Case {
    /// e.g. `qkv_forward`, `attention_backward`, `mlp.0_forward`, `adam`.
    pub name: String,
    /// What it runs.
    pub op: Op,
    /// Floating-point operations of one call.
    pub flop: f64,
    /// Bytes one call reads and writes at least.
    pub bytes: f64,
}

/// Bytes of `n` f32 or u32 elements.
fn f32s(n: usize) -> f64 {
    4.0 * n as f64
}

/// Every case at these shapes, in the order of a training step's families: embedding,
/// the block's ops, pooling, the MLP, the loss, the update.
pub fn cases(s: &Shapes) -> Vec<Case> {
    let (b, l, t, d, h) = (s.batch, s.seq_len, s.t(), s.d(), s.heads);
    let (f, d_o, dff) = (s.fields, s.d_other, s.d_ff);
    let n = b * t; // tokens
    let case = |name: &str, op, flop: f64, bytes: f64| Case {
        name: name.into(),
        op,
        flop,
        bytes,
    };
    let linears = s.linears();
    let linear_cases = |i: usize| -> [Case; 2] {
        let Linear {
            name,
            rows: m,
            n_in: k,
            n_out: nn,
            leaky,
        } = &linears[i];
        let (m, k, nn) = (*m, *k, *nn);
        let mnk = (m * nn * k) as f64;
        [
            // out = inp W^T + b: 2MNK + MN (bias); reads inp (M,K), W (N,K), b (N);
            // writes out (M,N), and pre (M,N) with the LeakyReLU epilogue.
            case(
                &format!("{name}_forward"),
                Op::LinearForward(i),
                2.0 * mnk + (m * nn) as f64,
                f32s(m * k + nn * k + nn + m * nn * (1 + usize::from(*leaky))),
            ),
            // dinp = dout W and dW += dout^T inp (2MNK each), db += column sums (MN);
            // reads dout, W, inp; writes dinp; reads and writes dW and db.
            case(
                &format!("{name}_backward"),
                Op::LinearBackward(i),
                4.0 * mnk + (m * nn) as f64,
                f32s(m * nn + nn * k + m * k + m * k + 2 * nn * k + 2 * nn),
            ),
        ]
    };

    let mut v = Vec::new();
    // Gathers: no arithmetic; reads the ids (3 per history slot, 2 per target, F) and
    // the rows gathered, writes x (B,T,d) and z's F d_o columns.
    let ids = 3 * b * l + 2 * b + b * f;
    v.push(case(
        "embedding_forward",
        Op::EmbeddingForward,
        0.0,
        f32s(ids + 2 * (n * d + b * f * d_o)),
    ));
    // Scatter-add: one add per gradient element; reads dx and dz's F d_o columns, the
    // segments (ids, starts, order: about 3 per token and table), and reads and writes
    // at most one table row per token.
    v.push(case(
        "embedding_backward",
        Op::EmbeddingBackward,
        (n * d + b * f * d_o) as f64,
        f32s(3 * (n * d + b * f * d_o) + 3 * (3 * n + b * f)),
    ));
    v.extend(linear_cases(0)); // qkv
    // Attention: scores Q K^T and the output att V are 2 B T^2 d each; softmax about
    // 5 per score (max, subtract, exp, sum, divide). Reads qkv (B,T,3d) and valid (B,T),
    // writes out (B,T,d) and att (B,h,T,T).
    let scores = b * h * t * t;
    let (btd, t2d) = (n * d, (b * t * t * d) as f64);
    v.push(case(
        "attention_forward",
        Op::AttentionForward,
        4.0 * t2d + 5.0 * scores as f64,
        f32s(3 * btd + n + btd + scores),
    ));
    // dV = att^T dout, datt = dout V^T, dQ = dS K, dK = dS^T Q: 2 B T^2 d each; the
    // softmax backward about 4 per score. Reads dout, att, qkv; writes dqkv.
    v.push(case(
        "attention_backward",
        Op::AttentionBackward,
        8.0 * t2d + 4.0 * scores as f64,
        f32s(btd + scores + 3 * btd + 3 * btd),
    ));
    v.extend(linear_cases(1)); // attn_out
    // out = x + a * mask: 2 per element (the mask's hash is not counted); reads x and a,
    // writes out. Backward: da = dout * mask, 1 per element; reads dout, writes da.
    v.push(case(
        "residual_dropout_forward",
        Op::ResidualDropoutForward,
        2.0 * btd as f64,
        f32s(3 * btd),
    ));
    v.push(case(
        "residual_dropout_backward",
        Op::ResidualDropoutBackward,
        btd as f64,
        f32s(2 * btd),
    ));
    // LayerNorm over (B T) rows of d: mean (1), variance (2), normalise (2), affine (2)
    // and a few per row: about 8 per element. Reads inp, weight, bias; writes out, mean,
    // rstd.
    v.push(case(
        "layernorm_forward",
        Op::LayerNormForward,
        8.0 * btd as f64,
        f32s(btd + 2 * d + btd + 2 * n),
    ));
    // dinp: x_hat, dout * w, two row means, the combination: about 11 per element;
    // dweight += dout * x_hat and dbias += dout: 3. Reads dout, inp, mean, rstd, weight;
    // writes dinp; reads and writes dweight and dbias.
    v.push(case(
        "layernorm_backward",
        Op::LayerNormBackward,
        14.0 * btd as f64,
        f32s(2 * btd + 2 * n + d + btd + 4 * d),
    ));
    v.extend(linear_cases(2)); // ffn1
    // dinp = dout * (inp > 0 ? 1 : alpha): 1 per element; reads dout and inp, writes dinp.
    let ff = n * dff;
    v.push(case(
        "leaky_relu_backward",
        Op::LeakyReluBackward,
        ff as f64,
        f32s(3 * ff),
    ));
    v.extend(linear_cases(3)); // ffn2
    // Pooling: reads valid (B,T) and the tokens pooled (the target's, or all of them),
    // writes the pooled columns of z; mean pooling adds every valid token (1 per
    // element). Backward: reads dout's pooled columns and valid, writes all of dx.
    let (pw, mean) = (s.pooled(), s.pool == PoolMode::Mean);
    let read_x = if s.pool == PoolMode::Target {
        b * d
    } else {
        btd
    };
    let pool_flop = if mean { btd as f64 } else { 0.0 };
    v.push(case(
        "pooling_forward",
        Op::PoolingForward,
        pool_flop,
        f32s(n + read_x + b * pw),
    ));
    v.push(case(
        "pooling_backward",
        Op::PoolingBackward,
        pool_flop,
        f32s(b * pw + n + btd),
    ));
    for i in 4..linears.len() {
        v.extend(linear_cases(i)); // mlp.k
    }
    // BCE from logits: sigmoid, the stable log-loss and the mean, about 10 per sample;
    // reads logits and labels, writes probs, losses and the mean. Backward: 4 per
    // sample (sigmoid, subtract, divide); reads logits and labels, writes dlogits.
    v.push(case(
        "bce_forward",
        Op::LossForward,
        10.0 * b as f64,
        f32s(4 * b + 1),
    ));
    v.push(case(
        "bce_backward",
        Op::LossBackward,
        4.0 * b as f64,
        f32s(3 * b),
    ));
    // Adam: m (3), v (4), the step (about 5) per parameter; reads params, grads, m, v,
    // writes params, m, v.
    let p = s.params;
    v.push(case("adam", Op::Adam, 12.0 * p as f64, f32s(7 * p)));
    v
}

/// Seeded inputs shared by the CPU and GPU workloads, so both run the same data.
struct Inputs {
    hist_item: Vec<u32>,   // (B, L)
    hist_cat: Vec<u32>,    // (B, L)
    hist_pos: Vec<u32>,    // (B, L)
    target_item: Vec<u32>, // (B)
    target_cat: Vec<u32>,  // (B)
    other: Vec<u32>,       // (B, F)
    valid: Vec<u32>,       // (B, T)
    labels: Vec<f32>,      // (B)
}

impl Inputs {
    /// Sample `b` has its first `b % (L/2 + 1)` history slots padded; ids are hashed
    /// uniformly over each table's real rows (1..), other features over all rows.
    fn new(s: &Shapes) -> Inputs {
        let (b, l, f) = (s.batch, s.seq_len, s.fields);
        let id = |salt: u32, i: usize, rows: usize| -> u32 {
            1 + hash(salt ^ hash(i as u32)) % (rows.max(2) as u32 - 1)
        };
        let padded = |bi: usize, slot: usize| slot < bi % (l / 2 + 1);
        let hist = |salt, rows| -> Vec<u32> {
            (0..b * l)
                .map(|i| {
                    if padded(i / l, i % l) {
                        0
                    } else {
                        id(salt, i, rows)
                    }
                })
                .collect()
        };
        let [n_item, n_cat, n_pos, n_other] = s.vocab;
        let valid = (0..b * s.t())
            .map(|i| {
                let (bi, ti) = (i / s.t(), i % s.t());
                u32::from(ti == l || !padded(bi, ti))
            })
            .collect();
        Inputs {
            hist_item: hist(1, n_item),
            hist_cat: hist(2, n_cat),
            hist_pos: hist(3, n_pos),
            target_item: (0..b).map(|i| id(4, i, n_item)).collect(),
            target_cat: (0..b).map(|i| id(5, i, n_cat)).collect(),
            other: (0..b * f)
                .map(|i| hash(6 ^ hash(i as u32)) % n_other.max(1) as u32)
                .collect(),
            valid,
            labels: (0..b)
                .map(|i| (hash(7 ^ hash(i as u32)) & 1) as f32)
                .collect(),
        }
    }
}

/// `n` values uniform in [-1, 1), from `seed`.
fn values(n: usize, seed: u32) -> Vec<f32> {
    let s = hash(seed.wrapping_mul(0x9e37_79b9));
    (0..n)
        .map(|i| (hash(s ^ i as u32) >> 8) as f32 / (1u32 << 23) as f32 - 1.0)
        .collect()
}

fn hash(x: u32) -> u32 {
    bst_kernels::cpu::dropout::hash_u32(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn small() -> Shapes {
        Shapes {
            batch: 5,
            seq_len: 4,
            widths: (4, 2, 2),
            heads: 2,
            d_ff: 16,
            fields: 3,
            d_other: 2,
            pool: PoolMode::Target,
            mlp: vec![12, 6, 1],
            vocab: [30, 5, 8, 20],
            params: 1000,
            alpha: 0.01,
            dropout: 0.2,
        }
    }

    #[test]
    fn cases_cover_every_family_once_with_positive_traffic() {
        let s = small();
        let cases = cases(&s);
        // 2 embedding + 2 attention + 2 dropout + 2 layernorm + 1 leaky + 2 pooling + 2
        // loss + adam, and forward and backward of each linear.
        assert_eq!(cases.len(), 14 + 2 * s.linears().len());
        let mut names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), cases.len(), "names are unique");
        assert!(cases.iter().all(|c| c.bytes > 0.0 && c.flop >= 0.0));
        let qkv = cases.iter().find(|c| c.name == "qkv_forward").unwrap();
        // 2 M N K + M N with M = 5 * 5 tokens, K = 8, N = 24.
        assert_eq!(qkv.flop, (2 * 25 * 24 * 8 + 25 * 24) as f64);
    }

    #[test]
    fn inputs_pad_some_history_slots_and_keep_the_target_valid() {
        let s = small();
        let x = Inputs::new(&s);
        assert!(x.hist_item.contains(&0));
        let t = s.t();
        for bi in 0..s.batch {
            assert_eq!(x.valid[bi * t + t - 1], 1);
            for slot in 0..s.seq_len {
                let v = x.valid[bi * t + slot] == 1;
                assert_eq!(v, x.hist_item[bi * s.seq_len + slot] != 0);
            }
        }
        assert!(x.other.iter().all(|&o| (o as usize) < s.vocab[3]));
    }
}
