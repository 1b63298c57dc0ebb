//! Early stopping (`train.patience`): a run whose validation AUC stops improving ends
//! after `patience` more epochs, keeps the best epoch, and stays stopped when resumed.

use bst_core::backend::{Backend, BackendError, CpuBackend};
use bst_core::batch::Batch;
use bst_core::checkpoint::{self, Checkpoint, RunCheckpointer, RunInfo};
use bst_core::config::Config;
use bst_core::data::{self, DataSource, Dataset};
use bst_core::model::Model;
use bst_core::optim::OptimSnapshot;
use bst_core::train::{TrainOptions, TrainReport, train_with};
use std::path::Path;

fn tiny_config(epochs: usize, patience: usize) -> Config {
    let mut cfg = Config::default();
    cfg.data.synthetic_users = 60;
    let m = &mut cfg.model;
    (m.seq_len, m.d_item, m.d_cat, m.d_pos, m.heads) = (6, 8, 4, 4, 2);
    (m.d_ff, m.d_other, m.mlp) = (16, 4, vec![16]);
    cfg.train.batch = 64;
    (cfg.train.epochs, cfg.train.patience) = (epochs, patience);
    cfg
}

/// A CPU backend whose steps count (loss, update count) but leave the parameters as they
/// were after `learn` steps: from then on validation AUC never improves.
struct Stalling {
    inner: CpuBackend,
    learn: u64,
}

impl Backend for Stalling {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn model(&self) -> &Model {
        self.inner.model()
    }
    fn train_step(&mut self, batch: &Batch) -> Result<(), BackendError> {
        let before = self.inner.params.clone();
        self.inner.train_step(batch)?;
        if self.inner.optim.steps > self.learn {
            self.inner.params = before;
        }
        Ok(())
    }
    fn take_loss(&mut self) -> Result<(f64, usize), BackendError> {
        self.inner.take_loss()
    }
    fn set_lr(&mut self, lr: f32) {
        self.inner.set_lr(lr)
    }
    fn predict(&mut self, batch: &Batch, probs: &mut [f32]) -> Result<(), BackendError> {
        self.inner.predict(batch, probs)
    }
    fn read_params(&self) -> Result<Vec<f32>, BackendError> {
        self.inner.read_params()
    }
    fn write_params(&mut self, params: &[f32]) -> Result<(), BackendError> {
        self.inner.write_params(params)
    }
    fn read_optim_state(&self) -> Result<OptimSnapshot, BackendError> {
        self.inner.read_optim_state()
    }
    fn write_optim_state(&mut self, s: &OptimSnapshot) -> Result<(), BackendError> {
        self.inner.write_optim_state(s)
    }
}

/// Trains `cfg` on a backend that learns for one epoch and then stalls, with checkpoints
/// in `dir` (resuming from `resume`).
fn run(cfg: &Config, ds: &Dataset, dir: &Path, resume: Option<&Path>) -> TrainReport {
    let steps = ds.train.len().div_ceil(cfg.train.batch) as u64;
    let mut backend = Stalling {
        inner: CpuBackend::new(cfg, ds.vocab.sizes()),
        learn: steps,
    };
    let resume = resume.map(|p| Checkpoint::load(p).unwrap().into_resume(p).unwrap());
    let info = RunInfo {
        config: cfg,
        vocab: &ds.vocab,
        data_source: "synthetic",
    };
    let mut ckpt = RunCheckpointer::new(dir, info);
    let opts = TrainOptions {
        resume,
        checkpointer: Some(&mut ckpt),
        ..TrainOptions::default()
    };
    train_with(&mut backend, ds, &cfg.train, opts, &mut |_| {}).unwrap()
}

#[test]
fn a_run_stops_after_patience_epochs_without_improvement_and_stays_stopped() {
    let cfg = tiny_config(6, 2);
    cfg.validate().unwrap();
    let ds = data::load(&DataSource::Synthetic, &cfg).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let r = run(&cfg, &ds, dir, None);
    // Epoch 1 learns; epochs 2 and 3 score the same parameters, no better: stop.
    assert_eq!(r.best_epoch, 1);
    assert_eq!(r.epochs.len(), 3, "epochs run");
    assert!(r.stopped_early);
    let aucs: Vec<f64> = r.epochs.iter().map(|e| e.valid.auc).collect();
    assert!(aucs[1] == aucs[0] && aucs[2] == aucs[0], "{aucs:?}");

    // Resuming the stopped run trains no further epoch.
    let latest = dir.join(checkpoint::LATEST);
    let again = run(&cfg, &ds, dir, Some(&latest));
    assert_eq!(again.epochs.len(), 3);
    assert!(again.stopped_early);
    assert_eq!(again.test, r.test, "the same best model is scored");

    // Without patience every epoch runs.
    let all_dir = tempfile::tempdir().unwrap();
    let all = run(&tiny_config(4, 0), &ds, all_dir.path(), None);
    assert_eq!((all.epochs.len(), all.stopped_early), (4, false));
}
