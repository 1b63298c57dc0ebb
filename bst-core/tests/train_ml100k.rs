//! Acceptance on MovieLens-100k (fetched by scripts/fetch-data.sh): BST with one block,
//! default config, 3 epochs, model chosen by validation AUC, seed 0, beats the best public
//! BSTs on the same samples (FuxiCTR and torch-rechub: test AUC 0.7932, spec section 5).
//! The default scores 0.7950 (README, "Model quality"); the bar of 0.7935 leaves room for
//! rounding on other machines (another matmul's summation order moved it by 0.0009), stays
//! above both libraries, and fails for the spec's earlier defaults (0.7624 with embeddings
//! N(0, 1); 0.7896 with N(0, 1e-4) and one learning rate of 1e-3).
//!
//! Fails when the data is missing, unless BST_SKIP_ML100K=1.

use bst_core::backend::CpuBackend;
use bst_core::config::Config;
use bst_core::data::{self, DataSource};
use bst_core::train::train;
use std::path::PathBuf;

#[test]
fn bst_on_ml100k_reaches_the_parity_bar() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/ml-100k");
    if !dir.join("ml-100k.inter").exists() {
        if std::env::var("BST_SKIP_ML100K").as_deref() == Ok("1") {
            eprintln!("BST_SKIP_ML100K=1: skipping the ml-100k training test");
            return;
        }
        panic!(
            "{} is missing: run scripts/fetch-data.sh (or set BST_SKIP_ML100K=1)",
            dir.display()
        );
    }
    let cfg = Config::default();
    let ds = data::load(&DataSource::Recbole(dir), &cfg).expect("ml-100k loads");
    let sizes = ds.vocab.sizes();
    let mut backend = CpuBackend::new(&cfg, sizes);
    let r = train(&mut backend, &ds, &cfg.train, &mut |_| {}).expect("training runs");
    for e in &r.epochs {
        eprintln!(
            "epoch {}: train loss {:.4}, valid {}",
            e.epoch, e.train_loss, e.valid
        );
    }
    eprintln!(
        "test {} (best epoch {}), {:.0} samples/s",
        r.test, r.best_epoch, r.train_samples_per_sec
    );
    assert!(
        r.test.auc >= 0.7935,
        "test AUC {:.4} is below 0.7935 (FuxiCTR and torch-rechub: 0.7932)",
        r.test.auc
    );
    assert!(
        r.test.logloss < 0.56,
        "test logloss {:.4} is not below 0.56",
        r.test.logloss
    );
}
