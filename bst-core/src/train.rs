//! The training loop: epochs of shuffled batches through a backend, validation metrics
//! after each epoch, the model with the best validation AUC kept and scored on test.
//!
//! With [`TrainOptions`] the loop also saves checkpoints through a [`Checkpointer`] after
//! every epoch, stops cleanly between two steps, or two batches of a validation or test,
//! when asked (Ctrl-C), and resumes a saved run exactly where it stopped: the same
//! parameters, optimiser state and update count, the same shuffled order at the same
//! step. A resumed CPU run ends bit for bit where an uninterrupted one does.
//!
//! Data order: epoch `e` trains on `0..n` shuffled in place by `Rng::new(seed).fork(k)` for
//! `k = 1..=e` in turn ([`epoch_order`]), so the order is a function of the seed and the
//! epoch alone. Dropout masks are keyed by the seed and the update count.

use crate::backend::{Backend, BackendError};
use crate::batch::Batch;
use crate::checkpoint::CheckpointError;
pub use crate::checkpoint::Checkpointer;
use crate::collective::{Collective, shard_range};
use crate::config::TrainConfig;
use crate::data::{Dataset, SampleSource};
use crate::metrics::{Metrics, auc};
use crate::model::Shard;
use crate::optim::OptimRef;
use crate::prefetch::for_each_shard;
use crate::rng::Rng;
pub use crate::run_state::{Best, BestParams, EpochReport, Progress, Resume, Save, Snapshot};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// What a whole run did.
#[derive(Clone, Debug, Serialize)]
pub struct TrainReport {
    /// Every epoch, in order.
    pub epochs: Vec<EpochReport>,
    /// 1-based epoch whose parameters scored `test`.
    pub best_epoch: usize,
    /// Test metrics of the best epoch's parameters.
    pub test: Metrics,
    /// AUC of the generator's true click probabilities on test (synthetic data only).
    pub oracle_test_auc: Option<f64>,
    /// Training samples per second over all epochs.
    pub train_samples_per_sec: f64,
    /// Training ended before `epochs` because validation AUC had not improved for
    /// `patience` epochs.
    pub stopped_early: bool,
    /// The backend's description.
    pub device: String,
}

/// What the loop reports while it runs. Non-exhaustive: later versions may report more,
/// so a `match` ends with `_ => {}`.
#[non_exhaustive]
pub enum Event<'a> {
    /// The loss was read (every [`TrainOptions::loss_every`] steps and at the epoch's end).
    Step {
        /// 1-based epoch.
        epoch: usize,
        /// Steps done in this epoch.
        step: usize,
        /// Steps of the epoch.
        steps: usize,
        /// Mean batch loss since the previous read.
        loss: f32,
    },
    /// An epoch ended and was validated.
    Epoch(&'a EpochReport),
    /// A split is being scored (after each evaluation batch): a validation or test split
    /// of tens of millions of samples takes minutes.
    Evaluating {
        /// `validation` or `test`.
        split: &'static str,
        /// Samples scored so far (by this rank, in a group).
        done: usize,
        /// Samples to score (by this rank).
        total: usize,
    },
}

/// Default steps between two reads of the loss (for the progress bar and the non-finite
/// check): a GPU step then needs no readback.
pub const LOSS_EVERY: usize = 10;

/// How [`train_with`] runs beyond the config.
pub struct TrainOptions<'a> {
    /// A saved run to continue; `None` starts from the backend's current parameters.
    pub resume: Option<Resume>,
    /// Saves checkpoints after every epoch, when stopped, and at the end.
    pub checkpointer: Option<&'a mut dyn Checkpointer>,
    /// Checked before every step and every batch of scoring: when set, the loop saves and
    /// returns [`TrainError::Interrupted`] (stopped in a validation, it saves the epoch
    /// at its last step, and a resumed run validates it again).
    pub stop: Option<&'a AtomicBool>,
    /// Steps between two reads of the loss (>= 1): the resolution of the non-finite check.
    pub loss_every: usize,
}

impl Default for TrainOptions<'_> {
    fn default() -> Self {
        TrainOptions {
            resume: None,
            checkpointer: None,
            stop: None,
            loss_every: LOSS_EVERY,
        }
    }
}

/// Where the last good checkpoint was saved: `(epochs completed, step)`, for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SavedAt {
    /// Epochs completed.
    pub epoch: usize,
    /// Steps completed of the next epoch.
    pub step: usize,
}

impl std::fmt::Display for SavedAt {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self.step {
            0 if self.epoch == 0 => write!(f, "before the first step"),
            0 => write!(f, "after epoch {}", self.epoch),
            s => write!(f, "at epoch {}, step {s}", self.epoch + 1),
        }
    }
}

fn kept(saved: &Option<SavedAt>) -> String {
    match saved {
        Some(at) => format!("the last good checkpoint ({at}) is kept"),
        None => "no checkpoint was saved".into(),
    }
}

fn steps_read(first: &usize, step: &usize) -> String {
    if first == step {
        format!("step {step}")
    } else {
        format!(
            "steps {first}-{step} (the loss is read every {} steps)",
            step - first + 1
        )
    }
}

/// Why training stopped early.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The loss became NaN or infinite; the last good checkpoint is kept.
    #[error(
        "the loss became {loss} in epoch {epoch}, {}: lower the learning rate (--lr); {}",
        steps_read(.first_step, .step),
        kept(.saved)
    )]
    NonFinite {
        /// 1-based epoch.
        epoch: usize,
        /// The loss is read every few steps: it went bad in `first_step..=step`.
        first_step: usize,
        /// The step whose read saw it.
        step: usize,
        /// The value read.
        loss: f32,
        /// The last good checkpoint, if any was saved.
        saved: Option<SavedAt>,
    },
    /// A split has no samples.
    #[error("the {0} split is empty: the data has too few users with 3 or more samples")]
    EmptySplit(&'static str),
    /// Stopped on request (`TrainOptions::stop`), after saving when a checkpointer is set.
    #[error("interrupted {at}; {}", if *.saved { "a checkpoint was saved" } else { "no checkpoint was saved" })]
    Interrupted {
        /// Where the run stopped.
        at: SavedAt,
        /// Whether a checkpoint was saved there.
        saved: bool,
    },
    /// The resume state does not fit the data, config or model.
    #[error("cannot resume: {0}")]
    Resume(String),
    /// The backend refused before training (e.g. an optimiser state of another kind).
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The backend failed during the run (a lost GPU, out of memory); nothing of its
    /// state after the failure is saved, the last good checkpoint is kept.
    #[error("{during}: {source}; {}", kept(.saved))]
    Failed {
        /// What the loop was doing, e.g. "epoch 2, step 31".
        during: String,
        /// The backend's error.
        source: BackendError,
        /// The last good checkpoint, if any was saved.
        saved: Option<SavedAt>,
    },
    /// Saving a checkpoint failed.
    #[error("saving a checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
}

/// Wraps a backend failure during `during`, when `saved` was the last checkpoint.
fn failed(during: String, saved: Option<SavedAt>) -> impl FnOnce(BackendError) -> TrainError {
    move |source| TrainError::Failed {
        during,
        source,
        saved,
    }
}

/// The sample order of epoch `epoch` (1-based) of a run with `n` samples and `seed`:
/// `0..n` shuffled by `Rng::new(seed).fork(k)` for `k = 1..=epoch` in turn. As `u32`
/// (half the memory of `usize` for the hundreds of millions of samples of a large log;
/// the shuffle is the same permutation).
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<u32> {
    // The data refuses more (`data::samples::check_counts`).
    let n = u32::try_from(n).expect("at most u32::MAX training samples");
    let mut order: Vec<u32> = (0..n).collect();
    let root = Rng::new(seed);
    for k in 1..=epoch {
        root.fork(k as u64).shuffle(&mut order);
    }
    order
}

/// Trains `backend` on `ds.train`, picks the epoch with the best validation AUC, and
/// reports its test metrics. No checkpoints; see [`train_with`].
pub fn train(
    backend: &mut dyn Backend,
    ds: &Dataset,
    cfg: &TrainConfig,
    on_event: &mut dyn FnMut(Event),
) -> Result<TrainReport, TrainError> {
    train_with(backend, ds, cfg, TrainOptions::default(), on_event)
}

/// [`train`] with checkpoints, a stop flag, and resuming (see the module docs).
pub fn train_with(
    backend: &mut dyn Backend,
    ds: &Dataset,
    cfg: &TrainConfig,
    opts: TrainOptions,
    on_event: &mut dyn FnMut(Event),
) -> Result<TrainReport, TrainError> {
    train_in_group(backend, ds, cfg, opts, None, on_event)
}

/// [`train_with`] on one rank of a data-parallel `group` ([`crate::collective`]); `None`
/// or a group of one is a single process. Every rank holds the whole dataset and trains
/// on its shard of each global batch; the ranks agree on the stop flag before each step
/// and evaluate a part of each split each, so every rank returns the same report. Give
/// only one rank (0) a checkpointer: every rank holds the same state.
pub fn train_in_group(
    backend: &mut dyn Backend,
    ds: &Dataset,
    cfg: &TrainConfig,
    opts: TrainOptions,
    group: Option<Arc<dyn Collective>>,
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
    let TrainOptions {
        resume,
        mut checkpointer,
        stop,
        loss_every,
    } = opts;
    let loss_every = loss_every.max(1);
    let group = group.filter(|g| g.size() > 1);
    if let Some(g) = &group {
        backend.join_group(g.clone())?;
    }
    let (rank, ranks) = group.as_ref().map_or((0, 1), |g| (g.rank(), g.size()));
    let group = group.as_deref();
    // With a group, every rank stops at the same step when any was asked to.
    let stop_requested = || {
        let asked = stop.is_some_and(|s| s.load(Ordering::SeqCst));
        group.map_or(asked, |g| g.any(asked))
    };
    // Samples trained per epoch: the whole split, or `epoch_steps` batches of it.
    let n = cfg.epoch_samples(ds.train.len());
    let steps = n.div_ceil(cfg.batch);

    let (progress, best_params, mut saved) = match resume {
        Some(r) => {
            check_resume(&r, ds, cfg, backend.model().layout.total)?;
            let at = SavedAt {
                epoch: r.progress.epoch,
                step: r.progress.step,
            };
            backend.restore(r.params, r.optim)?;
            (r.progress, r.best_params, Some(at))
        }
        None => (Progress::start(&ds.train, cfg.seed), None, None),
    };
    let mut progress = progress;
    // A checkpointer that keeps the best parameters gets them again here (a resumed run
    // may come from another folder, or have stopped between its two writes).
    let mut best = match (best_params, checkpointer.as_deref_mut()) {
        (None, _) => HeldBest::None,
        (Some(p), Some(c)) if c.keeps_best() => {
            c.save(Save::Best, &best_snapshot(&progress, &p))?;
            HeldBest::Kept
        }
        (Some(p), _) => HeldBest::Here(p),
    };

    // Batches are gathered (and, on a GPU, segmented) on a producer thread, ahead of the
    // step that takes them.
    let preparer = backend.batch_preparer();
    let mut stopped_early = false;
    for epoch in progress.epoch + 1..=cfg.epochs {
        if patience_spent(&progress, cfg.patience) {
            stopped_early = true;
            break;
        }
        backend.set_lr(cfg.lr_at(epoch));
        // Built for the epoch and freed before its validation, which then does not hold it
        // beside the scores (550 MB at 143.6M samples). Epoch `e` replays `e` shuffles:
        // measured at 143.6M samples, about 10 s for epoch 2 on 2 busy cores, against a
        // day for the epoch itself; nothing at ml-100k's size.
        let order = epoch_order(ds.train.len(), cfg.seed, epoch);
        let start = Instant::now();
        let mut window_start = progress.step + 1;
        let skip = progress.step;
        let prep = preparer.as_deref();
        for_each_shard(
            &ds.train,
            &order[..n],
            cfg.batch,
            skip,
            (rank, ranks),
            prep,
            |i, batch, prepared| {
                if stop_requested() {
                    // Fold the unread loss in, so the epoch's train loss stays whole.
                    let (sum, k) = backend
                        .take_loss()
                        .map_err(failed(format!("epoch {epoch}, step {i}"), saved))?;
                    let loss = (sum / k.max(1) as f64) as f32;
                    if !loss.is_finite() {
                        return Err(TrainError::NonFinite {
                            epoch,
                            first_step: window_start,
                            step: i,
                            loss,
                            saved,
                        });
                    }
                    progress.loss_sum += sum;
                    progress.epoch_seconds += start.elapsed().as_secs_f64();
                    let c = checkpointer.as_deref_mut();
                    return Err(stop_here(c, &*backend, &progress, best.params(), saved)?);
                }
                let step = i + 1;
                let fail = || failed(format!("epoch {epoch}, step {step}"), saved);
                if group.is_some() {
                    let global = cfg.batch.min(n - i * cfg.batch);
                    let row0 = shard_range(global, rank, ranks).start;
                    backend.train_step_shard(batch, prepared, Shard { row0, global })
                } else {
                    backend.train_step_prepared(batch, prepared)
                }
                .map_err(fail())?;
                progress.step = step;
                if step % loss_every == 0 || step == steps {
                    let (sum, k) = backend.take_loss().map_err(fail())?;
                    let loss = (sum / k.max(1) as f64) as f32;
                    if !loss.is_finite() {
                        return Err(TrainError::NonFinite {
                            epoch,
                            first_step: window_start,
                            step,
                            loss,
                            saved,
                        });
                    }
                    progress.loss_sum += sum;
                    window_start = step + 1;
                    on_event(Event::Step {
                        epoch,
                        step,
                        steps,
                        loss,
                    });
                }
                Ok(())
            },
        )?;
        drop(order);
        let seconds = progress.epoch_seconds + start.elapsed().as_secs_f64();
        let stop = &mut || stop_requested();
        let valid = evaluate_split(backend, &ds.valid, "validation", cfg, group, stop, on_event)
            .map_err(failed(format!("validating epoch {epoch}"), saved))?;
        let Some(valid) = valid else {
            // Stopped while scoring: the epoch's steps are all taken, and it is saved at
            // its last step; a resumed run validates it (the split is scored again).
            progress.epoch_seconds = seconds;
            let c = checkpointer.as_deref_mut();
            return Err(stop_here(c, &*backend, &progress, best.params(), saved)?);
        };
        let report = EpochReport {
            epoch,
            train_loss: progress.loss_sum / steps as f64,
            valid,
            seconds,
            samples_per_sec: n as f64 / seconds,
        };
        on_event(Event::Epoch(&report));
        progress.epoch = epoch;
        progress.step = 0;
        progress.loss_sum = 0.0;
        progress.epoch_seconds = 0.0;
        progress.train_seconds += seconds;
        progress.epochs.push(report);
        let this = Best {
            epoch,
            valid_auc: valid.auc,
        };
        let improved = progress.best.is_none_or(|b| this.score() > b.score());
        if improved {
            progress.best = Some(this);
            let fail = failed(format!("reading epoch {epoch}'s parameters"), saved);
            best = match checkpointer.as_deref_mut() {
                Some(c) if c.keeps_best() => {
                    save_best(c, &*backend, &progress, fail)?;
                    HeldBest::Kept
                }
                c => {
                    let params = backend.read_params().map_err(fail)?;
                    if let Some(c) = c {
                        c.save(Save::Best, &best_snapshot(&progress, &params))?;
                    }
                    HeldBest::Here(params)
                }
            };
        }
        if let Some(c) = checkpointer.as_deref_mut() {
            let fail = failed(format!("saving the checkpoint of epoch {epoch}"), saved);
            save_latest(c, &*backend, &progress, best.params(), fail)?;
            saved = Some(SavedAt { epoch, step: 0 });
        }
        if stop_requested() && epoch < cfg.epochs {
            return Err(TrainError::Interrupted {
                at: SavedAt { epoch, step: 0 },
                saved: saved.is_some_and(|s| s.epoch == epoch),
            });
        }
    }

    let best_epoch = progress.best.expect("at least one epoch").epoch;
    let params = match best {
        HeldBest::Here(p) => p,
        HeldBest::Kept => checkpointer
            .as_deref()
            .expect("kept by the checkpointer")
            .read_best(best_epoch)?,
        HeldBest::None => unreachable!("an epoch ended, so it has a best"),
    };
    let restoring = || failed("restoring the best epoch's parameters".into(), saved);
    backend.write_params(&params).map_err(restoring())?;
    drop(params);
    if let Some(c) = checkpointer {
        // Again at the end: a run stopped between its two writes may have left it older.
        save_best(c, &*backend, &progress, restoring())?;
    }
    let stop = &mut || stop_requested();
    let test = evaluate_split(backend, &ds.test, "test", cfg, group, stop, on_event)
        .map_err(failed("testing the best epoch's parameters".into(), saved))?;
    let Some(test) = test else {
        // Everything is saved: a resumed run goes straight to the test.
        let at = SavedAt {
            epoch: progress.epoch,
            step: 0,
        };
        let saved = saved == Some(at);
        return Err(TrainError::Interrupted { at, saved });
    };
    let oracle_test_auc = ds.test.true_prob().and_then(|p| auc(&p, &ds.test.labels()));
    Ok(TrainReport {
        train_samples_per_sec: (progress.epochs.len() * n) as f64 / progress.train_seconds,
        stopped_early,
        epochs: progress.epochs,
        best_epoch,
        test,
        oracle_test_auc,
        device: backend.describe(),
    })
}

/// The metrics of the split named `split` ([`predict_all_in`] on `group`), its progress
/// sent to `on_event`; `None` when `stop` said so before a batch.
fn evaluate_split<S: SampleSource + ?Sized>(
    backend: &mut dyn Backend,
    s: &S,
    split: &'static str,
    cfg: &TrainConfig,
    group: Option<&dyn Collective>,
    stop: &mut dyn FnMut() -> bool,
    on_event: &mut dyn FnMut(Event),
) -> Result<Option<Metrics>, BackendError> {
    let mut progress = |done, total| on_event(Event::Evaluating { split, done, total });
    let probs = predict_all_in(backend, s, cfg.eval_batch, group, &mut progress, stop)?;
    Ok(probs.map(|p| metrics_of(s, &p)))
}

/// Stops the training loop where `progress` stands: saves a checkpoint there (unless it
/// is saved already, or nothing was trained yet), then gives the error that says so.
fn stop_here(
    checkpointer: Option<&mut (dyn Checkpointer + '_)>,
    backend: &dyn Backend,
    progress: &Progress,
    best: BestParams,
    mut saved: Option<SavedAt>,
) -> Result<TrainError, TrainError> {
    let at = SavedAt {
        epoch: progress.epoch,
        step: progress.step,
    };
    // Nothing to save before the first step, nor twice the same state.
    let fresh = saved != Some(at) && (at.epoch, at.step) != (0, 0);
    if let (Some(c), true) = (checkpointer, fresh) {
        let fail = failed(format!("saving a checkpoint {at}"), saved);
        save_latest(c, backend, progress, best, fail)?;
        saved = Some(at);
    }
    Ok(TrainError::Interrupted {
        at,
        saved: saved == Some(at),
    })
}

/// Early stopping: `patience > 0` epochs have passed since the best one. Checked before
/// each epoch, so a resumed run that had stopped early stops again.
fn patience_spent(progress: &Progress, patience: usize) -> bool {
    patience > 0
        && progress
            .best
            .is_some_and(|b| progress.epoch - b.epoch >= patience)
}

/// The best epoch's parameters, as the training loop holds them.
enum HeldBest {
    /// No epoch has ended yet.
    None,
    /// A copy in memory.
    Here(Vec<f32>),
    /// Only in the checkpointer's best checkpoint ([`Checkpointer::keeps_best`]).
    Kept,
}

impl HeldBest {
    fn params(&self) -> BestParams<'_> {
        match self {
            HeldBest::None => BestParams::None,
            HeldBest::Here(p) => BestParams::Here(p),
            HeldBest::Kept => BestParams::Kept,
        }
    }
}

/// Saves the backend's parameters as the best checkpoint ([`Save::Best`]), borrowed from
/// the backend where it allows, else read back; `fail` wraps a failed read.
fn save_best(
    c: &mut dyn Checkpointer,
    backend: &dyn Backend,
    progress: &Progress,
    fail: impl FnOnce(BackendError) -> TrainError,
) -> Result<(), TrainError> {
    let owned;
    let params = match backend.checkpoint_state() {
        Some((params, _)) => params,
        None => {
            owned = backend.read_params().map_err(fail)?;
            &owned[..]
        }
    };
    c.save(Save::Best, &best_snapshot(progress, params))?;
    Ok(())
}

/// Saves the latest state ([`Save::Latest`]): the parameters and optimiser state
/// borrowed from the backend where it allows (the CPU one: no copy of the model or of the
/// optimiser's arenas), else read back; `fail` wraps a failed read.
fn save_latest(
    c: &mut dyn Checkpointer,
    backend: &dyn Backend,
    progress: &Progress,
    best_params: BestParams,
    fail: impl FnOnce(BackendError) -> TrainError,
) -> Result<(), TrainError> {
    let owned;
    let (params, optim) = match backend.checkpoint_state() {
        Some(s) => s,
        None => {
            let read = || Ok((backend.read_params()?, backend.read_optim_state()?));
            owned = read().map_err(fail)?;
            (&owned.0[..], OptimRef::from(&owned.1))
        }
    };
    let snapshot = Snapshot {
        progress,
        params,
        optim: Some(optim),
        best_params,
    };
    c.save(Save::Latest, &snapshot)?;
    Ok(())
}

fn best_snapshot<'a>(progress: &'a Progress, params: &'a [f32]) -> Snapshot<'a> {
    Snapshot {
        progress,
        params,
        optim: None,
        best_params: BestParams::None,
    }
}

/// Refuses a resume state that does not fit this data, config or model.
fn check_resume(
    r: &Resume,
    ds: &Dataset,
    cfg: &TrainConfig,
    n_params: usize,
) -> Result<(), TrainError> {
    let bad = |m: String| Err(TrainError::Resume(m));
    let p = &r.progress;
    if p.train_samples != ds.train.len() || p.train_fingerprint != ds.train.fingerprint() {
        return bad(format!(
            "the training samples differ from the checkpoint's ({} samples then, {} now, or \
             other contents): use the same data and data settings",
            p.train_samples,
            ds.train.len()
        ));
    }
    if p.shuffle_seed != cfg.seed {
        return bad(format!(
            "the checkpoint was shuffled with seed {}, the config has seed {}",
            p.shuffle_seed, cfg.seed
        ));
    }
    let steps = cfg.epoch_samples(ds.train.len()).div_ceil(cfg.batch);
    // `steps` itself: the epoch's steps all taken, stopped while validating it.
    if p.step > steps {
        return bad(format!(
            "the checkpoint stopped at step {} of an epoch of {steps} steps: the batch size \
             or train.epoch_steps differs",
            p.step
        ));
    }
    if p.epoch > cfg.epochs || (p.epoch == cfg.epochs && p.step > 0) {
        let at = SavedAt {
            epoch: p.epoch,
            step: p.step,
        };
        return bad(format!(
            "the checkpoint stopped {at}, past the {} epoch(s) asked for: ask for more epochs",
            cfg.epochs
        ));
    }
    if p.epoch != p.epochs.len() {
        return bad(format!(
            "the progress lists {} epoch reports for {} epochs",
            p.epochs.len(),
            p.epoch
        ));
    }
    if p.best.is_some() != r.best_params.is_some() || (p.epoch > 0 && p.best.is_none()) {
        return bad("the best epoch and its parameters are not both saved".into());
    }
    for (what, len) in [
        ("parameter", Some(r.params.len())),
        ("best parameter", r.best_params.as_ref().map(Vec::len)),
        ("optimiser state", Some(r.optim.state.len())),
    ] {
        if let Some(len) = len.filter(|&l| l != n_params) {
            return bad(format!(
                "the {what} arena holds {len} values, the model has {n_params}"
            ));
        }
    }
    Ok(())
}

/// Click probabilities of every sample of `s`, in order, `eval_batch` at a time.
pub fn predict_all<S: SampleSource + ?Sized>(
    backend: &mut dyn Backend,
    s: &S,
    eval_batch: usize,
) -> Result<Vec<f32>, BackendError> {
    let mut probs = vec![0.0; s.len()];
    predict_rows(
        backend,
        s,
        0,
        eval_batch,
        &mut probs,
        &mut |_, _| {},
        &mut || false,
    )?;
    Ok(probs)
}

/// Probabilities of the samples `first..first + out.len()` of `s` into `out`,
/// `eval_batch` at a time; `progress(done, total)` after each batch. `stop()` is asked
/// before each batch: `false` (not all scored) when it said so.
fn predict_rows<S: SampleSource + ?Sized>(
    backend: &mut dyn Backend,
    s: &S,
    first: usize,
    eval_batch: usize,
    out: &mut [f32],
    progress: &mut dyn FnMut(usize, usize),
    stop: &mut dyn FnMut() -> bool,
) -> Result<bool, BackendError> {
    let (total, eval_batch) = (out.len(), eval_batch.max(1));
    let mut batch = Batch::default();
    let mut idx = Vec::with_capacity(eval_batch);
    for (k, out) in out.chunks_mut(eval_batch).enumerate() {
        if stop() {
            return Ok(false);
        }
        let start = first + k * eval_batch;
        idx.clear();
        idx.extend(start..start + out.len());
        batch.gather(s, &idx);
        backend.predict(&batch, out)?;
        progress(k * eval_batch + out.len(), total);
    }
    Ok(true)
}

/// AUC, GAUC and logloss of the backend's predictions on `s`, batch by batch: only the
/// score, label and user of each sample are kept (12 bytes), never its rows.
pub fn evaluate<S: SampleSource + ?Sized>(
    backend: &mut dyn Backend,
    s: &S,
    eval_batch: usize,
) -> Result<Metrics, BackendError> {
    let probs = predict_all(backend, s, eval_batch)?;
    Ok(metrics_of(s, &probs))
}

/// [`predict_all`] on one rank of `group`: the batches of `eval_batch` samples are split
/// into contiguous parts, one per rank, and the probabilities gathered, so every rank gets
/// exactly those of a single process (the same batches). `progress(done, total)` counts
/// this rank's samples. `stop()` is asked before each batch, and on every rank as many
/// times (as often as the rank with the most batches scores), so a `stop` that the ranks
/// agree on ([`Collective::any`]) stops them all at the same call: then `None`.
pub fn predict_all_in<S: SampleSource + ?Sized>(
    backend: &mut dyn Backend,
    s: &S,
    eval_batch: usize,
    group: Option<&dyn Collective>,
    progress: &mut dyn FnMut(usize, usize),
    stop: &mut dyn FnMut() -> bool,
) -> Result<Option<Vec<f32>>, BackendError> {
    let Some(g) = group.filter(|g| g.size() > 1) else {
        let mut probs = vec![0.0; s.len()];
        let all = predict_rows(backend, s, 0, eval_batch, &mut probs, progress, stop)?;
        return Ok(all.then_some(probs));
    };
    let eval_batch = eval_batch.max(1);
    let batches = s.len().div_ceil(eval_batch);
    let rows = |r: usize| {
        let b = shard_range(batches, r, g.size());
        (b.start * eval_batch).min(s.len())..(b.end * eval_batch).min(s.len())
    };
    let mine = rows(g.rank());
    let mut local = vec![0.0; mine.len()];
    let all = predict_rows(
        backend, s, mine.start, eval_batch, &mut local, progress, stop,
    )?;
    if !all {
        return Ok(None);
    }
    // A rank with fewer batches asks on, once for each batch the busiest rank has more.
    let batches_of = |r: usize| shard_range(batches, r, g.size()).len();
    let most = (0..g.size()).map(batches_of).max().unwrap_or(0);
    for _ in batches_of(g.rank())..most {
        if stop() {
            return Ok(None);
        }
    }
    let counts: Vec<usize> = (0..g.size()).map(|r| rows(r).len()).collect();
    let mut probs = Vec::with_capacity(s.len());
    g.gather_f32(&local, &counts, &mut probs);
    Ok(Some(probs))
}

/// AUC, GAUC and logloss of the probabilities `probs` of the samples of `s`.
pub fn metrics_of<S: SampleSource + ?Sized>(s: &S, probs: &[f32]) -> Metrics {
    let (labels, users): (Vec<f32>, Vec<u32>) = (0..s.len()).map(|i| s.label_user(i)).unzip();
    Metrics::compute(probs, &labels, &users)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_orders_replay_the_cumulative_shuffles() {
        let mut order: Vec<u32> = (0..50).collect();
        for e in 1..=3 {
            Rng::new(9).fork(e as u64).shuffle(&mut order);
            assert_eq!(epoch_order(50, 9, e), order, "epoch {e}");
        }
        assert_eq!(epoch_order(5, 9, 0), vec![0, 1, 2, 3, 4]);
    }
}
