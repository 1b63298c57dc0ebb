//! Acceptance on the built-in synthetic data with the default config (3 epochs, model
//! chosen by validation AUC): BST with one block comes within 0.02 of the oracle AUC, and
//! the paper's ablation orders WDL < WDL(+Seq) < BST with clear margins.

use bst_core::backend::CpuBackend;
use bst_core::config::{Config, Pooling};
use bst_core::data::{self, DataSource, Dataset};
use bst_core::params::VocabSizes;
use bst_core::train::{TrainReport, train};

fn sizes(ds: &Dataset) -> VocabSizes {
    ds.vocab.sizes()
}

fn run(ds: &Dataset, blocks: usize, pooling: Pooling) -> TrainReport {
    let mut cfg = Config::default();
    cfg.model.blocks = blocks;
    cfg.model.pooling = pooling;
    let mut backend = CpuBackend::new(&cfg, sizes(ds));
    let r = train(&mut backend, ds, &cfg.train, &mut |_| {}).expect("training runs");
    eprintln!(
        "blocks {blocks}, pooling {pooling:?}: test {} (best epoch {}), {:.0} samples/s",
        r.test, r.best_epoch, r.train_samples_per_sec
    );
    r
}

#[test]
fn bst_nears_the_oracle_and_the_ablation_is_ordered() {
    let ds = data::load(&DataSource::Synthetic, &Config::default()).expect("synthetic data");
    let wdl = run(&ds, 0, Pooling::Target);
    let wdl_seq = run(&ds, 0, Pooling::Mean);
    let bst = run(&ds, 1, Pooling::Target);
    let oracle = bst
        .oracle_test_auc
        .expect("synthetic data knows its true probabilities");
    eprintln!("oracle test AUC {oracle:.4}");
    assert!(
        bst.test.auc >= oracle - 0.02,
        "BST test AUC {:.4} is not within 0.02 of the oracle {oracle:.4}",
        bst.test.auc
    );
    assert!(
        wdl_seq.test.auc >= wdl.test.auc + 0.01,
        "WDL(+Seq) {:.4} does not beat WDL {:.4} by 0.01",
        wdl_seq.test.auc,
        wdl.test.auc
    );
    assert!(
        bst.test.auc >= wdl_seq.test.auc + 0.01,
        "BST {:.4} does not beat WDL(+Seq) {:.4} by 0.01",
        bst.test.auc,
        wdl_seq.test.auc
    );
}
