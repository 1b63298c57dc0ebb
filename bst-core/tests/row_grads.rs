//! The CPU backend's gradients kept by rows (`grad_store::RowGrads`, issue 12) against the
//! whole gradient arena (`GradStore::Full`, what a data-parallel group keeps): the same
//! gradients, parameters and optimiser state after every step, bit for bit, for Adam and
//! Adagrad, dense and sparse updates, with and without L2 on the tables, and for a batch
//! larger than the configured one (more slots are made).

mod common;

use bst_core::backend::{Backend, CpuBackend};
use bst_core::batch::Batch;
use bst_core::config::{Config, Optimizer, Pooling};
use bst_core::grad_store::GradStore;
use bst_core::params::VocabSizes;
use common::{random_samples, small_config};

/// Tables larger than a batch touches (the samples' ids stay below `common::SIZES`'), so
/// the compact tables are smaller than the model's and most rows have no gradient.
const BIG: VocabSizes = VocabSizes {
    items: 500,
    cats: 60,
    other: 200,
    fields: 3,
};

fn steps_match(opt: Optimizer, sparse: bool, emb_l2: f32) {
    let mut cfg: Config = small_config(1, Pooling::Target);
    cfg.train.optimizer = opt;
    cfg.train.sparse_embeddings = sparse;
    cfg.model.emb_l2 = emb_l2;
    cfg.train.weight_decay = 0.01;
    let what = format!("{opt:?}, sparse {sparse}, emb_l2 {emb_l2}");
    let mut rows = CpuBackend::new(&cfg, BIG);
    let mut full = CpuBackend::new(&cfg, BIG);
    full.grad_store = GradStore::Full(vec![0.0; full.model.layout.total]);
    assert!(matches!(rows.grad_store, GradStore::Rows(_)), "{what}");
    // Batches of 7 (the configured size), 20 (more rows than the slots made for 7) and 3.
    let s = random_samples(37, &cfg.model, 11);
    for (k, range) in [0..7, 7..27, 27..30, 30..37].into_iter().enumerate() {
        let batch = Batch::from_range(&s, range);
        rows.train_step(&batch).unwrap();
        full.train_step(&batch).unwrap();
        assert!(rows.grads() == full.grads(), "{what}: step {k} gradients");
        assert!(rows.params == full.params, "{what}: step {k} parameters");
        assert_eq!(
            rows.read_optim_state().unwrap(),
            full.read_optim_state().unwrap(),
            "{what}: step {k} optimiser state"
        );
    }
    if let GradStore::Rows(r) = &rows.grad_store {
        let [items, ..] = r.layout.embedding_tables();
        assert!(items.0.len() < rows.model.layout.embedding_tables()[0].0.len());
    }
}

#[test]
fn adam_by_rows_is_the_whole_arenas_update_bit_for_bit() {
    for sparse in [false, true] {
        for emb_l2 in [0.0, 0.01] {
            steps_match(Optimizer::Adam, sparse, emb_l2);
        }
    }
}

#[test]
fn adagrad_by_rows_is_the_whole_arenas_update_bit_for_bit() {
    for sparse in [false, true] {
        for emb_l2 in [0.0, 0.01] {
            steps_match(Optimizer::Adagrad, sparse, emb_l2);
        }
    }
}
