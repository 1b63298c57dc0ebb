//! The optimiser's call sites: the gradient fill of each step and the updates of the
//! dense range and of the embedding tables (whole, or their touched rows).

use std::ops::Range;

use bst_kernels::gpu::elementwise::ElementwiseBinding;
use bst_kernels::gpu::embedding::EmbeddingSegments;
use bst_kernels::gpu::optim::{AdagradHyper, AdamHyper, OptimBinding, TableRows, UpdateRule};
use bst_kernels::gpu::{GpuError, TensorRef};

use super::binder::Binder;
use crate::config::TrainConfig;
use crate::gpu_backend::buffers::embedding_dims;
use crate::optim::ADAGRAD_EPS;

/// The optimiser's bindings (the fields of the same names in `Sites`).
pub(super) struct Updates {
    pub zero_grads: ElementwiseBinding,
    pub update: OptimBinding,
    pub update_tables: Option<OptimBinding>,
    pub update_rows: Vec<OptimBinding>,
}

impl Binder<'_> {
    /// The gradient fill and the updates of `train`'s optimiser. Dense updates cover the
    /// arena; sparse ones the blocks and MLP, plus each table's touched rows. With f16
    /// tables the arenas hold only the blocks and the MLP (and nothing trains the tables).
    pub fn updates(&self, train: &TrainConfig) -> Result<Updates, GpuError> {
        let (layout, arenas) = (&self.model.layout, &self.bufs.arenas);
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
        let zero_grads =
            self.k
                .elt
                .bind_fill(self.ctx, self.grad(&zeroed), zeroed.len() as u32, 0.0)?;
        let lr = train.lr();
        let dense = layout.dense_range();
        let update = self.update_range(dense.clone(), lr, train.weight_decay)?;
        let table_lr = lr * train.emb_lr_scale();
        let emb_l2 = self.model.cfg.emb_l2;
        let update_tables = if train.sparse_embeddings || base > 0 {
            None
        } else {
            Some(self.update_range(0..dense.start, table_lr, emb_l2)?)
        };
        let mut update_rows = Vec::new();
        if train.sparse_embeddings {
            let unique = EmbeddingSegments::unique_ids_at(&embedding_dims(self.model, self.cap))?;
            for ((r, w), (ids_at, room)) in layout.embedding_tables().into_iter().zip(unique) {
                let rows = TableRows {
                    ids: TensorRef::new(&self.bufs.inputs.segments, ids_at),
                    max_rows: room,
                    table_rows: (r.len() / w) as u32,
                    width: w as u32,
                };
                update_rows.push(self.k.optim.bind_rows(
                    self.ctx,
                    self.param(&r),
                    self.grad(&r),
                    self.rule(r.start, table_lr, emb_l2),
                    rows,
                )?);
            }
        }
        Ok(Updates {
            zero_grads,
            update,
            update_tables,
            update_rows,
        })
    }

    /// The optimiser's rule with its state tensors at layout offset `off` (element
    /// `off - base` of the state arenas), with L2 coefficient `weight_decay`.
    fn rule(&self, off: usize, lr: f32, weight_decay: f32) -> UpdateRule<'_> {
        let arenas = &self.bufs.arenas;
        let at = (off - arenas.base) as u32;
        match &arenas.v {
            Some(v) => UpdateRule::Adam {
                hp: AdamHyper {
                    lr,
                    weight_decay,
                    ..AdamHyper::default()
                },
                m: TensorRef::new(&arenas.m, at),
                v: TensorRef::new(v, at),
            },
            None => UpdateRule::Adagrad {
                hp: AdagradHyper {
                    lr,
                    eps: ADAGRAD_EPS,
                    weight_decay,
                },
                sum: TensorRef::new(&arenas.m, at),
            },
        }
    }

    /// An update of the layout's range `r`.
    fn update_range(
        &self,
        r: Range<usize>,
        lr: f32,
        weight_decay: f32,
    ) -> Result<OptimBinding, GpuError> {
        let rule = self.rule(r.start, lr, weight_decay);
        let k = &self.k.optim;
        k.bind(
            self.ctx,
            self.param(&r),
            self.grad(&r),
            rule,
            r.len() as u32,
        )
    }
}
