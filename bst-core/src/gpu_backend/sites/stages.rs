//! The call sites outside the blocks, one binding helper each: the valid mask, the
//! embedding, the pooling, the MLP and the loss.

use bst_kernels::gpu::Site;
use bst_kernels::gpu::embedding::{EmbeddingBinding, EmbeddingBuffers, EmbeddingGradBuffers};
use bst_kernels::gpu::loss::{LossBinding, LossBuffers, LossDims};
use bst_kernels::gpu::mask::{MaskBinding, MaskBuffers, MaskDims};
use bst_kernels::gpu::matmul::{Activation, MatmulBinding};
use bst_kernels::gpu::pooling::{PoolingBinding, PoolingBuffers, PoolingDims, PoolingGradBuffers};
use bst_kernels::gpu::{GpuError, TensorRef, wgpu};

use super::binder::{Binder, LinearShape, all};
use super::block_plan::LinearArgs;
use crate::gpu_backend::buffers::embedding_dims;

impl<'a> Binder<'a> {
    /// The batch id at element `off` of the ids buffer.
    fn ids(&self, off: u32) -> TensorRef<'a> {
        TensorRef::new(&self.bufs.inputs.ids, off)
    }

    /// valid (B, T) from the batch's history ids.
    pub fn mask(&self) -> Result<MaskBinding, GpuError> {
        let inputs = &self.bufs.inputs;
        let bufs = MaskBuffers {
            valid: all(&inputs.valid),
            hist_item: self.ids(inputs.ids_at.hist_item),
        };
        let dims = MaskDims {
            rows: self.cap as u32,
            seq_len: self.dims().l as u32,
        };
        self.k.mask.bind(self.ctx, &bufs, dims)
    }

    /// The token embeddings into x0 and the other features into z, with the scatter-add
    /// of dx and dz into the tables' gradients; scoring only (no gradients) with f16
    /// tables.
    pub fn embedding(&self) -> Result<EmbeddingBinding, GpuError> {
        let (inputs, arenas, s) = (&self.bufs.inputs, &self.bufs.arenas, &self.bufs.scratch);
        let (pi, at) = (&self.model.layout.index, inputs.ids_at);
        // The tables: in the parameter arena, or f16 at the same (layout) offsets.
        let table = |r: &std::ops::Range<usize>| match &arenas.tables_f16 {
            Some(f16) => TensorRef::new(f16, r.start as u32),
            None => self.param(r),
        };
        let bufs = EmbeddingBuffers {
            x: all(&self.bufs.acts.x0),
            z: all(&self.bufs.acts.z),
            e_item: table(&pi.emb_item),
            e_cat: table(&pi.emb_cat),
            e_pos: table(&pi.emb_pos),
            e_other: table(&pi.emb_other),
            hist_item: self.ids(at.hist_item),
            hist_cat: self.ids(at.hist_cat),
            hist_pos: self.ids(at.hist_pos),
            target_item: self.ids(at.target_item),
            target_cat: self.ids(at.target_cat),
            other: self.ids(at.other),
        };
        let dims = embedding_dims(self.model, self.cap);
        match &arenas.tables_f16 {
            Some(_) => self.k.emb.bind_f16(self.ctx, &bufs, dims),
            None => {
                let grads = EmbeddingGradBuffers {
                    de_item: self.grad(&pi.emb_item),
                    de_cat: self.grad(&pi.emb_cat),
                    de_pos: self.grad(&pi.emb_pos),
                    de_other: self.grad(&pi.emb_other),
                    dx: all(&s.dx),
                    dz: all(&s.dz),
                    segments: all(&inputs.segments),
                };
                self.k
                    .emb
                    .bind(self.ctx, Site::with_grads(bufs, grads, dims))
            }
        }
    }

    /// The last block's tokens (or x0) pooled into z's first columns; backward dx from dz.
    pub fn pooling(&self) -> Result<PoolingBinding, GpuError> {
        let (acts, s, dm) = (&self.bufs.acts, &self.bufs.scratch, self.dims());
        let top = match acts.blocks.last() {
            Some(b) => b.x2()?,
            None => &acts.x0,
        };
        self.k.pool.bind(
            self.ctx,
            Site::with_grads(
                PoolingBuffers {
                    out: all(&acts.z),
                    x: all(top),
                    valid: all(&self.bufs.inputs.valid),
                },
                PoolingGradBuffers {
                    dx: all(&s.dx),
                    dout: all(&s.dz),
                },
                PoolingDims {
                    rows: self.cap as u32,
                    t: dm.t as u32,
                    d: dm.d as u32,
                    row: dm.zw as u32,
                    off: 0,
                    mode: dm.pool,
                },
            ),
        )
    }

    /// Each MLP layer's linear: the LeakyReLU epilogue on hidden layers. Backward: the
    /// loss writes dlogit; layer k > 0, after its weight gradient has read its input
    /// act_{k-1}, writes that input's gradient times leaky'(act_{k-1}) over act_{k-1}
    /// (in place), which is layer k-1's dout; layer 0 writes dz. No pre-activation is
    /// kept: act_{k-1} has its signs.
    pub fn mlp(&self) -> Result<Vec<MatmulBinding>, GpuError> {
        let (acts, s, dm) = (&self.bufs.acts, &self.bufs.scratch, self.dims());
        let last = dm.mlp.len() - 1;
        let leaky = Activation::LeakyRelu { alpha: dm.alpha };
        let layers = self.model.layout.index.mlp.iter().enumerate();
        let layer_args = |layer: usize| -> LinearArgs<&'a wgpu::Buffer> {
            let (inp, dinp) = match layer {
                0 => (&acts.z, &s.dz),
                _ => (&acts.mlp_act[layer - 1], &acts.mlp_act[layer - 1]),
            };
            let (out, dout) = match layer < last {
                true => (&acts.mlp_act[layer], &acts.mlp_act[layer]),
                false => (&acts.logit, &s.dlogit),
            };
            LinearArgs {
                out,
                inp,
                dout,
                dinp,
            }
        };
        layers
            .map(|(layer, (w, b))| {
                let shape = LinearShape {
                    w,
                    b,
                    rows: self.cap,
                    n_in: dm.mlp_in(layer),
                    n_out: dm.mlp[layer],
                    act: if layer < last {
                        leaky
                    } else {
                        Activation::None
                    },
                    leaky_input: layer > 0,
                };
                self.linear(layer_args(layer), shape)
            })
            .collect()
    }

    /// The loss over the logits: for training (`train`) its batch mean added into
    /// `loss_sum` and dlogits written; else probabilities only, the mean into
    /// `eval_loss`.
    pub fn loss(&self, train: bool) -> Result<LossBinding, GpuError> {
        let (acts, s) = (&self.bufs.acts, &self.bufs.scratch);
        let bufs = LossBuffers {
            probs: all(&acts.probs),
            losses: all(&acts.losses),
            mean: all(if train {
                &acts.loss_sum
            } else {
                &acts.eval_loss
            }),
            logits: all(&acts.logit),
            labels: all(&self.bufs.inputs.labels),
        };
        let dims = LossDims {
            rows: self.cap as u32,
            accumulate_mean: train,
        };
        let dlogits = train.then(|| all(&s.dlogit));
        self.k.loss.bind(self.ctx, &bufs, dlogits, dims)
    }
}
