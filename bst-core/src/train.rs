//! The training loop: epochs of shuffled batches through a backend, validation metrics
//! after each epoch, the model with the best validation AUC kept and scored on test.

use crate::backend::Backend;
use crate::batch::Batch;
use crate::config::TrainConfig;
use crate::data::{Dataset, Samples};
use crate::metrics::{Metrics, auc};
use crate::rng::Rng;
use serde::Serialize;
use std::time::Instant;

#[derive(Clone, Debug, Serialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub train_loss: f64,
    pub valid: Metrics,
    pub seconds: f64,
    /// Training samples per second of this epoch (steps only, evaluation excluded).
    pub samples_per_sec: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct TrainReport {
    pub epochs: Vec<EpochReport>,
    /// 1-based epoch whose parameters scored `test`.
    pub best_epoch: usize,
    pub test: Metrics,
    /// AUC of the generator's true click probabilities on test (synthetic data only).
    pub oracle_test_auc: Option<f64>,
    pub train_samples_per_sec: f64,
    pub device: String,
}

/// What the loop reports while it runs.
pub enum Event<'a> {
    Step {
        epoch: usize,
        step: usize,
        steps: usize,
        loss: f32,
    },
    Epoch(&'a EpochReport),
}

/// Steps between two reads of the loss (for the progress bar and the non-finite check).
pub const LOSS_EVERY: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("the loss became {loss} by epoch {epoch}, step {step}: lower the learning rate (--lr)")]
    NonFinite {
        epoch: usize,
        step: usize,
        loss: f32,
    },
    #[error("the {0} split is empty: the data has too few users with 3 or more samples")]
    EmptySplit(&'static str),
}

/// Trains `backend` on `ds.train`, picks the epoch with the best validation AUC, and
/// reports its test metrics.
pub fn train(
    backend: &mut dyn Backend,
    ds: &Dataset,
    cfg: &TrainConfig,
    on_event: &mut dyn FnMut(Event),
) -> Result<TrainReport, TrainError> {
    for (name, s) in [
        ("train", &ds.train),
        ("validation", &ds.valid),
        ("test", &ds.test),
    ] {
        if s.is_empty() {
            return Err(TrainError::EmptySplit(name));
        }
    }
    let mut order: Vec<usize> = (0..ds.train.len()).collect();
    let mut batch = Batch::default();
    let mut epochs = Vec::new();
    let mut best: Option<(f64, usize, Vec<f32>)> = None;
    let mut train_secs = 0.0;
    for epoch in 1..=cfg.epochs {
        Rng::new(cfg.seed).fork(epoch as u64).shuffle(&mut order);
        let steps = order.len().div_ceil(cfg.batch);
        let start = Instant::now();
        let mut loss_sum = 0.0f64;
        for (step, idx) in order.chunks(cfg.batch).enumerate() {
            batch.gather(&ds.train, idx);
            backend.train_step(&batch);
            let step = step + 1;
            if step % LOSS_EVERY == 0 || step == steps {
                let (sum, n) = backend.take_loss();
                let loss = (sum / n.max(1) as f64) as f32;
                if !loss.is_finite() {
                    return Err(TrainError::NonFinite { epoch, step, loss });
                }
                loss_sum += sum;
                on_event(Event::Step {
                    epoch,
                    step,
                    steps,
                    loss,
                });
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        train_secs += seconds;
        let valid = evaluate(backend, &ds.valid, cfg.eval_batch);
        let report = EpochReport {
            epoch,
            train_loss: loss_sum / steps as f64,
            valid,
            seconds,
            samples_per_sec: order.len() as f64 / seconds,
        };
        on_event(Event::Epoch(&report));
        let score = if valid.auc.is_nan() {
            f64::NEG_INFINITY
        } else {
            valid.auc
        };
        if best.as_ref().is_none_or(|(s, _, _)| score > *s) {
            best = Some((score, epoch, backend.read_params()));
        }
        epochs.push(report);
    }
    let (_, best_epoch, params) = best.expect("at least one epoch");
    backend.write_params(&params);
    let test = evaluate(backend, &ds.test, cfg.eval_batch);
    let oracle_test_auc = ds
        .test
        .true_prob
        .as_ref()
        .and_then(|p| auc(p, &ds.test.label));
    Ok(TrainReport {
        train_samples_per_sec: (cfg.epochs * ds.train.len()) as f64 / train_secs,
        epochs,
        best_epoch,
        test,
        oracle_test_auc,
        device: backend.describe(),
    })
}

/// Click probabilities of every sample, in order, in evaluation mode.
pub fn predict_all(backend: &mut dyn Backend, s: &Samples, eval_batch: usize) -> Vec<f32> {
    let mut probs = vec![0.0; s.len()];
    let mut batch = Batch::default();
    let idx: Vec<usize> = (0..s.len()).collect();
    for (chunk, out) in idx.chunks(eval_batch).zip(probs.chunks_mut(eval_batch)) {
        batch.gather(s, chunk);
        backend.predict(&batch, out);
    }
    probs
}

/// AUC, GAUC and logloss of the backend's predictions on `s`.
pub fn evaluate(backend: &mut dyn Backend, s: &Samples, eval_batch: usize) -> Metrics {
    let probs = predict_all(backend, s, eval_batch);
    Metrics::compute(&probs, &s.label, &s.user)
}
