//! Where a training run stands, as the loop keeps it and checkpoints store it: the epoch
//! reports, the best epoch, the progress, and what a checkpoint or a resume holds. Plain
//! data, shared by [`crate::train`] and [`crate::checkpoint`] without either importing
//! the other.

use crate::data::SampleSource;
use crate::metrics::{Metrics, nan_as_null};
use crate::optim::{OptimRef, OptimSnapshot};
use serde::{Deserialize, Serialize};

/// What one epoch did, as `metrics.json` and checkpoints record it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochReport {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean batch loss of the epoch (NaN, JSON `null`, if undefined).
    #[serde(with = "nan_as_null")]
    pub train_loss: f64,
    /// Validation metrics after the epoch.
    pub valid: Metrics,
    /// Wall seconds of the epoch (steps and validation).
    pub seconds: f64,
    /// Training samples per second of this epoch (steps only, evaluation excluded).
    pub samples_per_sec: f64,
}

/// The epoch with the best validation AUC so far.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Best {
    /// 1-based epoch.
    pub epoch: usize,
    /// NaN (JSON `null`) when that epoch's AUC was undefined.
    #[serde(with = "nan_as_null")]
    pub valid_auc: f64,
}

impl Best {
    /// The selection score: an undefined AUC loses to every defined one.
    pub(crate) fn score(&self) -> f64 {
        if self.valid_auc.is_nan() {
            f64::NEG_INFINITY
        } else {
            self.valid_auc
        }
    }
}

/// Where a run stands between two steps. With the parameters and the optimiser state it
/// is all a resumed run needs; a checkpoint stores it as JSON (`bst.progress`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Epochs completed.
    pub epoch: usize,
    /// Steps completed of epoch `epoch + 1` (0 at an epoch boundary).
    pub step: usize,
    /// Sum of the batch mean losses of those steps (for the epoch's train loss).
    pub loss_sum: f64,
    /// Training seconds of those steps.
    pub epoch_seconds: f64,
    /// Training seconds of the completed epochs.
    pub train_seconds: f64,
    /// Reports of the completed epochs: the learning curve.
    pub epochs: Vec<EpochReport>,
    /// The best epoch so far by validation AUC; `None` before the first epoch ends.
    pub best: Option<Best>,
    /// The shuffling seed (`train.seed`): see [`crate::train::epoch_order`].
    pub shuffle_seed: u64,
    /// Number of training samples: a resumed run must see the same samples.
    pub train_samples: usize,
    /// Their [`crate::data::SampleSource::fingerprint`].
    pub train_fingerprint: u64,
}

impl Progress {
    /// The start of a run on `train` with `seed`.
    pub fn start<S: SampleSource + ?Sized>(train: &S, seed: u64) -> Progress {
        Progress {
            shuffle_seed: seed,
            train_samples: train.len(),
            train_fingerprint: train.fingerprint(),
            ..Progress::default()
        }
    }
}

/// A saved run to continue: its progress, parameters and optimiser state.
#[derive(Clone, Debug)]
pub struct Resume {
    /// Where the run stood.
    pub progress: Progress,
    /// The parameters at that point.
    pub params: Vec<f32>,
    /// The optimiser state and update count.
    pub optim: OptimSnapshot,
    /// The parameters of `progress.best` (needed once an epoch has ended).
    pub best_params: Option<Vec<f32>>,
}

/// What a checkpoint of the run holds, handed to a [`Checkpointer`].
pub struct Snapshot<'a> {
    /// Where the run stands.
    pub progress: &'a Progress,
    /// The current parameters.
    pub params: &'a [f32],
    /// The optimiser state (for the latest checkpoint; `None` for the best model).
    pub optim: Option<OptimRef<'a>>,
    /// The parameters of `progress.best` (for the latest checkpoint).
    pub best_params: BestParams<'a>,
}

/// Where a [`Snapshot`]'s parameters of `progress.best` are.
#[derive(Clone, Copy, Debug)]
pub enum BestParams<'a> {
    /// Not saved: a best checkpoint's snapshot, or no epoch has ended yet.
    None,
    /// In memory.
    Here(&'a [f32]),
    /// In the checkpointer's own best checkpoint, saved when that epoch ended: the
    /// training loop keeps no copy of them
    /// ([`Checkpointer::keeps_best`](crate::checkpoint::Checkpointer::keeps_best)).
    Kept,
}

impl<'a> From<Option<&'a [f32]>> for BestParams<'a> {
    fn from(p: Option<&'a [f32]>) -> Self {
        p.map_or(BestParams::None, BestParams::Here)
    }
}

/// Which checkpoint to save.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Save {
    /// The state to resume from: after every epoch, when stopped, at the end.
    Latest,
    /// The model of the best epoch so far: when validation AUC improves, at the end.
    Best,
}
