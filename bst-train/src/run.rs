//! `bst-train train`: one model, with progress bars, a run folder, checkpoints after every
//! epoch, Ctrl-C handling, `--resume`, and a summary.

use crate::cli::RunArgs;
use crate::cluster;
use crate::device::{Start, make_backend};
use crate::plot;
use crate::progress::{self, StepProgress, Throttle};
use anyhow::Context;
use bst_core::backend::Backend;
use bst_core::checkpoint::{self, Checkpoint, RunCheckpointer, RunInfo};
use bst_core::collective::Collective;
use bst_core::config::Config;
use bst_core::data::{self, DataSource, Dataset};
use bst_core::train::{
    self, Checkpointer, EpochReport, Event, Resume, SavedAt, TrainError, TrainOptions, TrainReport,
};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// Exit status of a run stopped by Ctrl-C after saving its checkpoint (128 + SIGINT).
pub const EXIT_INTERRUPTED: i32 = 130;

/// Set by the first Ctrl-C; the training loop stops before its next step.
static STOP: AtomicBool = AtomicBool::new(false);

/// Installs the Ctrl-C handler once: the first Ctrl-C asks the loop to stop and save,
/// a second one quits at once (the last checkpoint on disk stays whole).
fn catch_ctrl_c() -> &'static AtomicBool {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        // Under mpirun (which turns Ctrl-C into SIGTERM to every rank) each rank says so;
        // the ranks agree to stop at the same step, and rank 0 saves.
        let who = cluster::member().map_or(String::new(), |m| {
            format!("rank {} of {}: ", m.group.rank(), m.group.size())
        });
        let r = ctrlc::set_handler(move || {
            if STOP.swap(true, Ordering::SeqCst) {
                cluster::say(&format!("\n{who}second Ctrl-C: quitting without saving"));
                std::process::exit(EXIT_INTERRUPTED);
            }
            cluster::say(&format!(
                "\n{who}Ctrl-C: stopping after this step (or this batch of scoring) and saving a checkpoint (Ctrl-C again quits at once)"
            ));
        });
        if let Err(e) = r {
            eprintln!("warning: cannot catch Ctrl-C ({e}); an interrupted run will not save");
        }
    });
    &STOP
}

/// A run to start: its config, data source, folder, and the checkpoint to resume from.
struct Plan {
    cfg: Config,
    src: DataSource,
    dir: PathBuf,
    /// The checkpoint to resume from. It is read twice: here for its config and data
    /// source, then again after the data (a 100M-row run's arenas are 2.3 GB: they are
    /// not held while the data loads).
    resume: Option<PathBuf>,
}

fn plan(args: &RunArgs) -> anyhow::Result<Plan> {
    let Some(dir) = &args.resume else {
        let cfg = args.config()?;
        let src = args.source()?;
        let dir = run_dir(args.out.as_deref(), &src.to_string())?;
        if cluster::is_root() && dir.join(checkpoint::LATEST).exists() {
            eprintln!(
                "warning: {} holds a checkpoint; this new run overwrites it (--resume {} continues it instead)",
                dir.display(),
                dir.display()
            );
        }
        return Ok(Plan {
            cfg,
            src,
            dir,
            resume: None,
        });
    };
    let path = dir.join(checkpoint::LATEST);
    let ckpt = Checkpoint::load(&path).context("loading the checkpoint to resume")?;
    let requested = args.config_over(ckpt.config.clone())?;
    ckpt.check_config(&requested).with_context(|| {
        format!(
            "resuming {}: only --epochs may change (leave the other flags out)",
            dir.display()
        )
    })?;
    let mut cfg = ckpt.config.clone();
    cfg.train.epochs = requested.train.epochs;
    cfg.train.eval_batch = requested.train.eval_batch;
    let src = match (&args.data, &ckpt.data_source) {
        (Some(d), _) => d.parse()?,
        (None, Some(d)) => d.parse()?,
        (None, None) => anyhow::bail!(
            "{}: the checkpoint does not say which data it was trained on; pass --data",
            path.display()
        ),
    };
    let dir = run_dir(Some(args.out.as_deref().unwrap_or(dir)), "")?;
    Ok(Plan {
        cfg,
        src,
        dir,
        resume: Some(path),
    })
}

pub fn train(args: &RunArgs) -> anyhow::Result<()> {
    let Plan {
        cfg,
        src,
        dir,
        resume,
    } = plan(args)?;
    // Under mpirun only rank 0 writes the run folder and prints progress.
    let root = cluster::is_root();
    let group = cluster::group();
    let quiet = args.quiet || !root;
    let stop = catch_ctrl_c();
    let ds = load_data(&src, &cfg, quiet)?;
    let resume = match resume {
        Some(path) => {
            let ckpt = Checkpoint::load(&path).context("loading the checkpoint to resume")?;
            ckpt.check_config(&cfg)
                .with_context(|| format!("{} changed while the data loaded", path.display()))?;
            ckpt.check_vocab(&ds.vocab)
                .with_context(|| format!("resuming from {}", path.display()))?;
            let r = ckpt.into_resume(&path)?;
            let p = &r.progress;
            let at = SavedAt {
                epoch: p.epoch,
                step: p.step,
            };
            if root {
                eprintln!(
                    "resuming {} {at} ({} updates)",
                    dir.display(),
                    r.optim.steps
                );
            }
            if root && p.epoch == cfg.train.epochs && p.step == 0 {
                eprintln!(
                    "the run has finished its {} epoch(s): scoring its best model again (--epochs N trains more)",
                    p.epoch
                );
            }
            Some(r)
        }
        None => None,
    };
    let start = if resume.is_some() {
        Start::Restore
    } else {
        Start::Init
    };
    let mut backend = make_backend(args.device, &cfg, &ds, start)?;
    if let Some(m) = cluster::member() {
        cluster::say(&format!(
            "rank {} of {} on {} (local rank {} of {}): device {}",
            m.group.rank(),
            m.group.size(),
            m.host,
            m.local_rank,
            m.local_size,
            backend.describe()
        ));
    }
    if root {
        eprintln!(
            "model: {} blocks, {} heads, d = {}, pooling {:?}, {} parameters; device {}",
            cfg.model.blocks,
            cfg.model.heads,
            cfg.model.d(),
            cfg.model.pooling,
            backend.model().layout.total,
            backend.describe()
        );
        std::fs::write(dir.join("config.toml"), cfg.to_toml_string())?;
    }
    let info = RunInfo {
        config: &cfg,
        vocab: &ds.vocab,
        data_source: &src.to_string(),
    };
    let mut ckpt = root.then(|| RunCheckpointer::new(&dir, info));
    let opts = TrainOptions {
        resume,
        checkpointer: ckpt.as_mut().map(|c| c as &mut dyn Checkpointer),
        stop: Some(stop),
        loss_every: backend.loss_read_interval(),
    };
    let dir_out = root.then_some(dir.as_path());
    let result = run_training_with(backend.as_mut(), &ds, &cfg, quiet, opts, dir_out, group);
    let report = match result {
        Ok(r) => r,
        Err(TrainError::Interrupted { .. }) if !root => std::process::exit(EXIT_INTERRUPTED),
        Err(TrainError::Interrupted { at, saved }) => {
            if saved {
                eprintln!(
                    "interrupted {at}; checkpoint saved to {}\ncontinue with: bst-train train --resume {}",
                    dir.join(checkpoint::LATEST).display(),
                    dir.display()
                );
            } else {
                eprintln!("interrupted {at}; no checkpoint was saved");
            }
            std::process::exit(EXIT_INTERRUPTED);
        }
        // The run folder keeps the last good checkpoint: say where it is.
        Err(e @ (TrainError::NonFinite { .. } | TrainError::Failed { .. })) => {
            return Err(e)
                .with_context(|| format!("training stopped (run folder {})", dir.display()));
        }
        Err(e) => return Err(e.into()),
    };
    if !root {
        return Ok(());
    }
    write_metrics(&dir, &report)?;
    if report.stopped_early {
        println!(
            "stopped early after epoch {}: validation AUC did not improve for {} epoch(s) (train.patience)",
            report.epochs.len(),
            cfg.train.patience
        );
    }
    println!("best epoch {} by validation AUC", report.best_epoch);
    println!("test  {}", report.test);
    if let Some(oracle) = report.oracle_test_auc {
        println!("oracle test AUC {oracle:.4} (the generator's true click probabilities)");
    }
    println!(
        "training {:.0} samples/s on {}",
        report.train_samples_per_sec, report.device
    );
    if let Some(x) = backend.take_exchange_stats().filter(|x| x.steps > 0) {
        let (steps, mb) = (x.steps as f64, |b: u64| b as f64 / 1e6);
        println!(
            "gradient exchange per step and rank: {:.2} MB (allreduce {:.2} MB, allgather {:.3} MB), {:.2} ms; embedding tables by their rows {:.1} of 4 per step, whole {:.1}",
            mb(x.bytes) / steps,
            mb(x.allreduce_bytes) / steps,
            mb(x.allgather_bytes) / steps,
            1e3 * x.seconds / steps,
            x.sparse_tables as f64 / steps,
            x.dense_tables as f64 / steps
        );
    }
    println!("run folder {}", dir.display());
    Ok(())
}

/// The cache folder of Taobao files' parsed stores (`--cache`), set once by `main`.
static CACHE_DIR: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();

/// Sets the cache folder [`load_data`] uses (`None`: no cache).
pub fn set_cache_dir(dir: Option<std::path::PathBuf>) {
    let _ = CACHE_DIR.set(dir);
}

pub fn load_data(src: &DataSource, cfg: &Config, quiet: bool) -> anyhow::Result<Dataset> {
    let start = Instant::now();
    let cache = CACHE_DIR.get().and_then(|d| d.as_deref());
    let ds = data::load_cached(src, cfg, cache, &mut |note| eprintln!("{note}"))
        .with_context(|| format!("loading {src}"))?;
    if !quiet {
        eprintln!(
            "data {}: {} train, {} validation, {} test samples ({:.1}% positive in test), {} items, {} categories ({:.1}s)",
            src,
            ds.train.len(),
            ds.valid.len(),
            ds.test.len(),
            100.0 * ds.test.positive_rate(),
            ds.vocab.n_items() - 1,
            ds.vocab.n_cats() - 1,
            start.elapsed().as_secs_f64()
        );
    }
    Ok(ds)
}

/// Trains without checkpoints, with a progress bar per epoch and a line of validation
/// metrics after each.
pub fn run_training(
    backend: &mut dyn Backend,
    ds: &Dataset,
    cfg: &Config,
    quiet: bool,
) -> anyhow::Result<TrainReport> {
    let opts = TrainOptions::default();
    Ok(run_training_with(
        backend, ds, cfg, quiet, opts, None, None,
    )?)
}

/// Trains with `opts`, a progress bar per epoch (or, when stderr is not a terminal, a
/// plain line every few seconds) and a line of validation metrics after each; with a run
/// folder, redraws its learning curve after every epoch.
fn run_training_with(
    backend: &mut dyn Backend,
    ds: &Dataset,
    cfg: &Config,
    quiet: bool,
    opts: TrainOptions,
    dir: Option<&Path>,
    group: Option<Arc<dyn Collective>>,
) -> Result<TrainReport, TrainError> {
    let style = ProgressStyle::with_template(
        "epoch {prefix} {bar:30} {pos}/{len} steps  {msg}  [{elapsed} < {eta}]",
    )
    .expect("valid template");
    let mut curve: Vec<EpochReport> = opts
        .resume
        .as_ref()
        .map(|r: &Resume| r.progress.epochs.clone())
        .unwrap_or_default();
    let mut bar: Option<ProgressBar> = None;
    let mut ema = None::<f32>;
    // Plain lines for logs: indicatif draws nothing when stderr is not a terminal.
    let plain = !quiet && !std::io::stderr().is_terminal();
    let mut throttle = Throttle::new(progress::EVERY);
    let first_step = opts.resume.as_ref().map_or(0, |r| r.progress.step);
    let mut clock = (Instant::now(), first_step); // the epoch's start, and its first step
    let (batch, n_train) = (
        cfg.train.batch,
        cfg.train.epoch_samples(ds.train.len()) as u64,
    );
    // Evaluations: their start, and their own throttle (the first line comes at once).
    let (eval_batch, mut eval_clock) = (cfg.train.eval_batch, Instant::now());
    let mut eval_throttle = Throttle::new(progress::EVERY);
    let mut on_event = |e: Event| match e {
        Event::Step {
            epoch,
            step,
            steps,
            loss,
        } => {
            ema = Some(ema.map_or(loss, |m| 0.8 * m + 0.2 * loss));
            if quiet {
                return;
            }
            if plain {
                if throttle.ready(Instant::now()) {
                    let p = StepProgress {
                        epoch,
                        step,
                        steps,
                        samples: ((step * batch) as u64).min(n_train),
                        batch,
                        seconds: clock.0.elapsed().as_secs_f64(),
                        first_step: clock.1,
                        loss: ema.unwrap_or(loss),
                    };
                    eprintln!("{}", progress::step_line(&p));
                }
                return;
            }
            let b = bar.get_or_insert_with(|| {
                let b = ProgressBar::new(steps as u64)
                    .with_style(style.clone())
                    .with_prefix(epoch.to_string());
                b.set_position(0);
                b
            });
            b.set_position(step as u64);
            b.set_message(format!("loss {:.4}", ema.unwrap_or(loss)));
        }
        Event::Evaluating { split, done, total } => {
            if quiet || !cluster::is_root() {
                return;
            }
            let now = Instant::now();
            if done <= eval_batch {
                eval_clock = now;
            }
            let seconds = now.duration_since(eval_clock).as_secs_f64();
            match &bar {
                // The training bar stays up while the validation split is scored.
                Some(b) if !plain => {
                    let pct = 100.0 * done as f64 / total.max(1) as f64;
                    let loss = ema.unwrap_or(f32::NAN);
                    b.set_message(format!("loss {loss:.4}, scoring {split} {pct:.0}%"));
                }
                // Lines, only for evaluations that take a while.
                _ => {
                    if seconds >= progress::EVERY.as_secs_f64() && eval_throttle.ready(now) {
                        eprintln!("{}", progress::eval_line(split, done, total, seconds));
                    }
                }
            }
        }
        Event::Epoch(r) => {
            if let Some(b) = bar.take() {
                b.finish_and_clear();
            }
            clock = (Instant::now(), 0);
            if !cluster::is_root() {
                return;
            }
            eprintln!(
                "epoch {}: train loss {:.4}, valid {}, {:.0} samples/s, {:.1}s",
                r.epoch, r.train_loss, r.valid, r.samples_per_sec, r.seconds
            );
            curve.push(r.clone());
            if let Some(dir) = dir {
                let path = dir.join(plot::LEARNING_CURVE);
                if let Err(e) = plot::learning_curve(&path, &curve) {
                    eprintln!("warning: cannot draw {}: {e}", path.display());
                }
            }
        }
        _ => {}
    };
    let result = train::train_in_group(backend, ds, &cfg.train, opts, group, &mut on_event);
    if let Some(b) = bar.take() {
        b.abandon();
    }
    result
}

fn run_dir(out: Option<&Path>, data: &str) -> anyhow::Result<PathBuf> {
    let dir = match out {
        Some(d) => d.to_path_buf(),
        None => {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs();
            let tag: String = data
                .chars()
                .map(|c| if c.is_alphanumeric() { c } else { '-' })
                .collect();
            PathBuf::from("runs").join(format!("{tag}-{secs}"))
        }
    };
    if cluster::is_root() {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating run folder {}", dir.display()))?;
    }
    Ok(dir)
}

fn write_metrics(dir: &Path, report: &TrainReport) -> anyhow::Result<()> {
    std::fs::write(
        dir.join("metrics.json"),
        serde_json::to_string_pretty(report)?,
    )?;
    Ok(())
}
