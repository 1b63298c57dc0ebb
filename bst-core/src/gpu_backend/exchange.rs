//! Data-parallel training of the GPU backend ([`crate::collective`]): a rank runs forward
//! and backward on its shard of the global batch in one submit, with the dropout masks
//! of its global rows (`DropoutBinding::set_first`) and the loss gradient of the global
//! mean (`LossBinding::set_divisor`); reads the gradient arena back; sums it over the
//! group with the CPU's [`GradientExchange`]; writes it back; and runs the optimiser
//! updates in a second submit. With sparse embedding updates the row-wise updates walk
//! the union of the ranks' touched rows, written over the segments' unique ids (which
//! nothing reads after the backward until the next batch's segments).
//!
//! The whole gradient arena travels to the host and back every step, sparse updates
//! included: simple, and the exchange's own cost dominates across machines.

use std::sync::Arc;

use bst_kernels::gpu::embedding::EmbeddingSegments;

use super::GpuBackend;
use crate::backend::{Backend, BackendError, Prepared};
use crate::batch::Batch;
use crate::collective::{Collective, ExchangePolicy, ExchangeStats, GradientExchange};
use crate::model::Shard;

/// A GPU backend's group, its exchange and the host copy of the gradients.
pub(super) struct DataParallel {
    group: Arc<dyn Collective>,
    exchange: GradientExchange,
    /// The rows of each table (item, category, position, other) the shard touched.
    touched: [Vec<u32>; 4],
    grads: Vec<f32>,
}

impl GpuBackend {
    /// [`Backend::join_group`]: refused for f16 tables (they do not train).
    pub(super) fn join(&mut self, group: Arc<dyn Collective>) -> Result<(), BackendError> {
        if self.bufs.arenas.tables_f16.is_some() {
            return Err(BackendError::Unsupported {
                backend: self.describe(),
                what: "train with f16 embedding tables",
            });
        }
        self.dp = Some(DataParallel {
            group,
            exchange: GradientExchange::default(),
            touched: Default::default(),
            grads: Vec::new(),
        });
        Ok(())
    }

    /// How the embedding tables' gradients are exchanged (the CPU backend's
    /// `exchange.policy`); after [`Backend::join_group`], else nothing.
    pub fn set_exchange_policy(&mut self, policy: ExchangePolicy) {
        if let Some(dp) = &mut self.dp {
            dp.exchange.policy = policy;
        }
    }

    /// [`Backend::take_exchange_stats`].
    pub(super) fn exchange_stats(&mut self) -> Option<ExchangeStats> {
        Some(self.dp.as_mut()?.exchange.take_total())
    }

    /// `sum` (a loss sum) summed over the group, if any.
    pub(super) fn sum_over_group(&self, sum: f64) -> f64 {
        let Some(dp) = &self.dp else { return sum };
        let mut s = [sum];
        dp.group.sum_f64(&mut s);
        s[0]
    }

    /// [`Backend::train_step_shard`].
    pub(super) fn train_shard(
        &mut self,
        batch: &Batch,
        prepared: Option<&mut Prepared>,
        shard: Shard,
    ) -> Result<(), BackendError> {
        let Some(mut dp) = self.dp.take() else {
            return self.train_step_prepared(batch, prepared);
        };
        // The group stays joined whatever the step's outcome.
        let stepped = self.shard_step(&mut dp, batch, prepared, shard);
        self.dp = Some(dp);
        stepped
    }

    /// [`GpuBackend::train_shard`] in the group `dp`.
    fn shard_step(
        &mut self,
        dp: &mut DataParallel,
        batch: &Batch,
        prepared: Option<&mut Prepared>,
        shard: Shard,
    ) -> Result<(), BackendError> {
        self.check_trainable("train")?;
        let ctx = self.ctx.clone();
        let (t, d) = (self.model.dims.t, self.model.dims.d);
        let first = u32::try_from(shard.row0 * t * d)
            .expect("the global batch's dropout elements fit a u32");
        for blk in &mut self.sites.blocks {
            blk.res1.set_first(&ctx, first);
            blk.res2.set_first(&ctx, first);
        }
        let global = u32::try_from(shard.global).expect("a global batch below 2^32 rows");
        self.sites.loss.set_divisor(&ctx, global);
        let sparse = !self.sites.update_rows.is_empty();
        // A shard may be empty (a last batch smaller than the group): no forward, zero
        // gradients.
        if batch.size > 0 {
            self.begin_step(batch, prepared.map(|p| &*p))?;
            let doing = "running a training step (forward, backward)";
            self.submit("train step: forward, backward", doing, |pass| {
                self.sites.record_gradients(&self.k, pass);
            })?;
            dp.grads = self.read_grads()?;
        } else {
            self.set_update_step();
            dp.grads.clear();
            dp.grads.resize(self.model.layout.total, 0.0);
        }
        let layout = &self.model.layout;
        let (dense, tables) = (layout.dense_range(), layout.embedding_tables());
        batch.touched_rows_into(&mut dp.touched);
        let group = dp.group.clone();
        dp.exchange.exchange(
            &*group,
            &mut dp.grads,
            dense,
            &tables,
            &mut dp.touched,
            sparse,
        );
        // Trainable backends keep the tables in the arena: it starts at element 0.
        ctx.write(&self.bufs.arenas.grads, 0, &dp.grads);
        if sparse {
            let at = EmbeddingSegments::unique_ids_at(&self.emb_dims)
                .unwrap_or_else(|e| panic!("the segments' unique ids: {e}"));
            let updates = self.sites.update_rows.iter_mut();
            for ((rows, (off, room)), ids) in updates.zip(at).zip(&dp.touched) {
                assert!(
                    ids.len() <= room as usize,
                    "the ranks touched {} rows of a table, the segments hold {room}",
                    ids.len()
                );
                ctx.write(&self.bufs.inputs.segments, off, ids);
                rows.set_rows(&ctx, ids.len() as u32);
            }
        }
        let doing = "running a training step (the update)";
        self.submit("train step: update", doing, |pass| {
            for update in self.sites.updates() {
                self.k.optim.update(pass, update);
            }
        })?;
        self.steps += 1;
        self.loss_steps += 1;
        Ok(())
    }
}
