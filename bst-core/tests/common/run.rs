//! A tiny synthetic run for the training-loop tests (checkpoints, the kept best epoch).

use bst_core::checkpoint::RunInfo;
use bst_core::config::Config;
use bst_core::data::{self, DataSource, Dataset};

/// 80 synthetic users, a model small enough that an epoch takes a moment, batch 64.
pub fn tiny_config() -> Config {
    let mut cfg = Config::synthetic(80);
    let m = &mut cfg.model;
    (m.seq_len, m.d_item, m.d_cat, m.d_pos, m.heads) = (8, 8, 4, 4, 2);
    (m.d_ff, m.d_other, m.mlp) = (32, 4, vec![32, 16]);
    cfg.train.batch = 64;
    cfg
}

/// The synthetic data of `cfg`.
pub fn dataset(cfg: &Config) -> Dataset {
    data::load(&DataSource::Synthetic, cfg).expect("synthetic data")
}

/// The run metadata a checkpoint of `cfg` on `ds` carries.
pub fn info<'a>(cfg: &'a Config, ds: &'a Dataset) -> RunInfo<'a> {
    RunInfo {
        config: cfg,
        vocab: &ds.vocab,
        data_source: "synthetic",
    }
}
