//! Sparse embedding updates (`train.sparse_embeddings`) on the CPU backend: the
//! gradients are those of the dense step, Adagrad's parameters are the dense update's bit
//! for bit, and lazy Adam leaves the rows a batch does not touch exactly where they are.

mod common;

use bst_core::backend::{Backend, CpuBackend};
use bst_core::batch::Batch;
use bst_core::config::{Config, Optimizer, Pooling};
use bst_core::model::Mode;
use common::{SIZES, random_samples, small_config};

const STEPS: usize = 4;

fn config(opt: Optimizer, sparse: bool) -> Config {
    let mut cfg = small_config(1, Pooling::Target);
    cfg.train.optimizer = opt;
    cfg.train.sparse_embeddings = sparse;
    cfg
}

/// `STEPS` batches of 7 distinct samples each.
fn batches(cfg: &Config) -> Vec<Batch> {
    let s = random_samples(7 * STEPS, &cfg.model, 3);
    (0..STEPS)
        .map(|k| Batch::from_range(&s, 7 * k..7 * (k + 1)))
        .collect()
}

#[test]
fn gradients_are_the_dense_ones_after_every_step() {
    let (dense_cfg, sparse_cfg) = (
        config(Optimizer::Adam, false),
        config(Optimizer::Adam, true),
    );
    let mut dense = CpuBackend::new(&dense_cfg, SIZES);
    let mut sparse = CpuBackend::new(&sparse_cfg, SIZES);
    for (k, batch) in batches(&dense_cfg).iter().enumerate() {
        // Same parameters, so the same gradients: the sparse backend zeroes only the
        // last batch's rows and the dense part, which must leave no stale gradient.
        sparse.write_params(&dense.params).unwrap();
        let mode = Mode::Train {
            seed: 0,
            step: k as u32,
            shard: None,
        };
        dense.loss_and_grads(batch, mode);
        sparse.loss_and_grads(batch, mode);
        assert!(
            dense.grads() == sparse.grads(),
            "step {k}: gradients differ"
        );
        dense.train_step(batch).unwrap();
    }
}

#[test]
fn sparse_adagrad_is_the_dense_update_bit_for_bit() {
    let (dense_cfg, sparse_cfg) = (
        config(Optimizer::Adagrad, false),
        config(Optimizer::Adagrad, true),
    );
    let mut dense = CpuBackend::new(&dense_cfg, SIZES);
    let mut sparse = CpuBackend::new(&sparse_cfg, SIZES);
    for batch in &batches(&dense_cfg) {
        dense.train_step(batch).unwrap();
        sparse.train_step(batch).unwrap();
    }
    assert!(dense.params == sparse.params, "parameters differ");
    assert_eq!(
        dense.read_optim_state().unwrap(),
        sparse.read_optim_state().unwrap()
    );
}

#[test]
fn lazy_adam_moves_only_touched_rows_and_matches_dense_adam_on_the_first_step() {
    let (dense_cfg, sparse_cfg) = (
        config(Optimizer::Adam, false),
        config(Optimizer::Adam, true),
    );
    let mut dense = CpuBackend::new(&dense_cfg, SIZES);
    let mut sparse = CpuBackend::new(&sparse_cfg, SIZES);
    let batches = batches(&dense_cfg);
    dense.train_step(&batches[0]).unwrap();
    sparse.train_step(&batches[0]).unwrap();
    // Step 1: zero moments everywhere, so untouched rows do not move in dense Adam either.
    assert!(dense.params == sparse.params, "step 1 differs");

    let tables = sparse.model.layout.embedding_tables();
    let last = batches[STEPS - 1].touched_rows();
    let mut ever = [vec![], vec![], vec![], vec![]];
    for (k, batch) in batches.iter().enumerate().skip(1) {
        let before = sparse.params.clone();
        let touched = batch.touched_rows();
        sparse.train_step(batch).unwrap();
        dense.train_step(batch).unwrap();
        for (t, ((r, w), rows)) in tables.iter().zip(&touched).enumerate() {
            for row in 0..r.len() / w {
                let at = r.start + row * w..r.start + (row + 1) * w;
                if !rows.contains(&(row as u32)) {
                    assert_eq!(
                        &sparse.params[at.clone()],
                        &before[at],
                        "step {k}: table {t} row {row} moved without a gradient"
                    );
                }
            }
        }
        for (e, rows) in ever.iter_mut().zip(&touched) {
            e.extend_from_slice(rows);
        }
    }
    // Dense Adam keeps moving rows through their momentum after the batches that
    // touched them; lazy Adam does not. Some item row shows the difference.
    let (r, w) = &tables[0];
    let moved_by_momentum = (0..r.len() / w).any(|row| {
        let at = r.start + row * w..r.start + (row + 1) * w;
        !last[0].contains(&(row as u32))
            && ever[0].contains(&(row as u32))
            && dense.params[at.clone()] != sparse.params[at]
    });
    assert!(moved_by_momentum, "lazy and dense Adam did not differ");
}
