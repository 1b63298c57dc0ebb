//! `bst-train train`: one model, with progress bars, a run folder and a summary.

use crate::cli::RunArgs;
use anyhow::Context;
use bst_core::backend::{Backend, CpuBackend};
use bst_core::config::Config;
use bst_core::data::{self, Dataset};
use bst_core::params::VocabSizes;
use bst_core::train::{self, Event, TrainReport};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub fn train(args: &RunArgs) -> anyhow::Result<()> {
    let cfg = args.config()?;
    let src = args.source()?;
    let ds = load_data(&src, &cfg, args.quiet)?;
    let mut backend = make_backend(&cfg, &ds);
    eprintln!(
        "model: {} blocks, {} heads, d = {}, pooling {:?}, {} parameters; device {}",
        cfg.model.blocks,
        cfg.model.heads,
        cfg.model.d(),
        cfg.model.pooling,
        backend.model().layout.total,
        backend.describe()
    );
    let report = run_training(backend.as_mut(), &ds, &cfg, args.quiet)?;
    let dir = run_dir(args, &src.to_string())?;
    write_run(&dir, &cfg, &report)?;
    println!("best epoch {} by validation AUC", report.best_epoch);
    println!("test  {}", report.test);
    if let Some(oracle) = report.oracle_test_auc {
        println!("oracle test AUC {oracle:.4} (the generator's true click probabilities)");
    }
    println!(
        "training {:.0} samples/s on {}",
        report.train_samples_per_sec, report.device
    );
    println!("run folder {}", dir.display());
    Ok(())
}

pub fn load_data(src: &data::DataSource, cfg: &Config, quiet: bool) -> anyhow::Result<Dataset> {
    let start = Instant::now();
    let ds = data::load(src, cfg).with_context(|| format!("loading {src}"))?;
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

/// The backend for the requested device. Only the CPU exists so far.
pub fn make_backend(cfg: &Config, ds: &Dataset) -> Box<dyn Backend> {
    let v = &ds.vocab;
    let sizes = VocabSizes {
        items: v.n_items(),
        cats: v.n_cats(),
        other: v.n_other(),
        fields: v.fields.len(),
    };
    Box::new(CpuBackend::new(cfg, sizes))
}

/// Trains with a progress bar per epoch and a line of validation metrics after each.
pub fn run_training(
    backend: &mut dyn Backend,
    ds: &Dataset,
    cfg: &Config,
    quiet: bool,
) -> anyhow::Result<TrainReport> {
    let style = ProgressStyle::with_template(
        "epoch {prefix} {bar:30} {pos}/{len} steps  {msg}  [{elapsed} < {eta}]",
    )
    .expect("valid template");
    let mut bar: Option<ProgressBar> = None;
    let mut ema = None::<f32>;
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
        Event::Epoch(r) => {
            if let Some(b) = bar.take() {
                b.finish_and_clear();
            }
            eprintln!(
                "epoch {}: train loss {:.4}, valid {}, {:.0} samples/s, {:.1}s",
                r.epoch, r.train_loss, r.valid, r.samples_per_sec, r.seconds
            );
        }
    };
    Ok(train::train(backend, ds, &cfg.train, &mut on_event)?)
}

fn run_dir(args: &RunArgs, data: &str) -> anyhow::Result<PathBuf> {
    let dir = match &args.out {
        Some(d) => d.clone(),
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
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating run folder {}", dir.display()))?;
    Ok(dir)
}

fn write_run(dir: &Path, cfg: &Config, report: &TrainReport) -> anyhow::Result<()> {
    std::fs::write(dir.join("config.toml"), cfg.to_toml_string())?;
    std::fs::write(
        dir.join("metrics.json"),
        serde_json::to_string_pretty(report)?,
    )?;
    Ok(())
}
