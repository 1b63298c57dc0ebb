//! `bst-train ablate`: the paper's Table 4 on one split.

use crate::cli::RunArgs;
use crate::device::{Start, make_backend};
use crate::run::{load_data, run_training};
use bst_core::config::{Config, Pooling};

/// The five models of the paper's comparison: (name, blocks, pooling).
pub const MODELS: [(&str, usize, Pooling); 5] = [
    ("WDL", 0, Pooling::Target),
    ("WDL(+Seq)", 0, Pooling::Mean),
    ("BST b=1", 1, Pooling::Target),
    ("BST b=2", 2, Pooling::Target),
    ("BST b=3", 3, Pooling::Target),
];

pub fn ablate(args: &RunArgs) -> anyhow::Result<()> {
    if args.resume.is_some() {
        anyhow::bail!("ablate trains five fresh models and cannot --resume");
    }
    let base = args.config()?;
    let src = args.source()?;
    let ds = load_data(&src, &base, args.quiet)?;
    let mut rows = Vec::new();
    for (name, blocks, pooling) in MODELS {
        let mut cfg: Config = base.clone();
        cfg.model.blocks = blocks;
        cfg.model.pooling = pooling;
        eprintln!("== {name}");
        let mut backend = make_backend(args.device, &cfg, &ds, Start::Init)?;
        let r = run_training(backend.as_mut(), &ds, &cfg, args.quiet)?;
        rows.push((name, r));
    }
    println!(
        "{:<10} {:>8} {:>8} {:>8} {:>10}",
        "model", "AUC", "GAUC", "logloss", "samples/s"
    );
    for (name, r) in &rows {
        println!(
            "{:<10} {:>8.4} {:>8.4} {:>8.4} {:>10.0}",
            name, r.test.auc, r.test.gauc, r.test.logloss, r.train_samples_per_sec
        );
    }
    if let Some(oracle) = rows[0].1.oracle_test_auc {
        println!("{:<10} {:>8.4}", "oracle", oracle);
    }
    Ok(())
}
