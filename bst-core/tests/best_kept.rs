//! The best epoch's parameters kept on disk only (issue 12): a run folder's latest
//! checkpoint copies them out of `best.safetensors` rather than from a copy in memory,
//! and gets the same file, byte for byte; a best file of another epoch or with damaged
//! data is refused, naming it. And `train.epoch_steps`: an epoch of the first `k` batches
//! of its shuffled order.

use bst_core::backend::{Backend, CpuBackend};
use bst_core::batch::Batch;
use bst_core::checkpoint::{self, Checkpoint, RunCheckpointer};
use bst_core::config::Config;
use bst_core::data::Dataset;
use bst_core::optim::{OptimSnapshot, OptimState};
use bst_core::params::ParamLayout;
use bst_core::train::{
    Best, BestParams, Checkpointer, Progress, Save, Snapshot, TrainOptions, epoch_order, train,
    train_with,
};
use std::path::Path;

#[path = "common/run.rs"]
mod run;
use run::{dataset, info, tiny_config};

/// Progress after `epoch` epochs, the best being `best`.
fn progress(epoch: usize, best: usize) -> Progress {
    Progress {
        epoch,
        best: Some(Best {
            epoch: best,
            valid_auc: 0.5,
        }),
        ..Progress::default()
    }
}

/// Distinct values per arena, so a mix-up of arenas shows.
fn arena(layout: &ParamLayout, seed: f32) -> Vec<f32> {
    (0..layout.total).map(|i| seed + i as f32 * 1e-3).collect()
}

#[test]
fn a_latest_checkpoint_copies_the_kept_best_parameters_byte_for_byte() {
    let cfg = tiny_config();
    let ds = dataset(&cfg);
    let layout = ParamLayout::new(&cfg.model, ds.vocab.sizes());
    let (params, best, m, v) = (
        arena(&layout, 1.0),
        arena(&layout, 2.0),
        arena(&layout, 3.0),
        arena(&layout, 4.0),
    );
    let optim = OptimSnapshot {
        steps: 7,
        state: OptimState::Adam { m, v },
    };
    let dir = tempfile::tempdir().unwrap();
    let mut ckpt = RunCheckpointer::new(dir.path(), info(&cfg, &ds));
    assert!(ckpt.keeps_best());
    // Epoch 1 was the best; the run is now in epoch 3.
    let at_best = progress(1, 1);
    ckpt.save(
        Save::Best,
        &Snapshot {
            progress: &at_best,
            params: &best,
            optim: None,
            best_params: BestParams::None,
        },
    )
    .unwrap();
    let now = progress(2, 1);
    let latest = |best_params| Snapshot {
        progress: &now,
        params: &params,
        optim: Some((&optim).into()),
        best_params,
    };
    ckpt.save(Save::Latest, &latest(BestParams::Kept)).unwrap();
    let kept = std::fs::read(dir.path().join(checkpoint::LATEST)).unwrap();
    ckpt.save(Save::Latest, &latest(BestParams::Here(&best)))
        .unwrap();
    let here = std::fs::read(dir.path().join(checkpoint::LATEST)).unwrap();
    assert!(kept == here, "the same file, byte for byte");
    let c = Checkpoint::load(&dir.path().join(checkpoint::LATEST)).unwrap();
    assert_eq!(c.best_params.as_deref(), Some(&best[..]));
    assert_eq!(c.params, params);
    assert_eq!(
        ckpt.read_best(1).unwrap(),
        best,
        "read back tensor by tensor"
    );

    // A best file of another epoch is refused, and the latest checkpoint stays.
    let later = progress(2, 2);
    let e = ckpt
        .save(
            Save::Latest,
            &Snapshot {
                progress: &later,
                ..latest(BestParams::Kept)
            },
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("best.safetensors") && e.contains("epoch Some(1)") && e.contains("Some(2)"),
        "{e}"
    );
    let e = ckpt.read_best(2).unwrap_err().to_string();
    assert!(e.contains("best epoch"), "{e}");
    assert!(std::fs::read(dir.path().join(checkpoint::LATEST)).unwrap() == here);

    // Damaged data in the best file is caught by its checksum, not copied.
    let best_path = dir.path().join(checkpoint::BEST);
    let mut bytes = std::fs::read(&best_path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&best_path, &bytes).unwrap();
    let e = ckpt
        .save(Save::Latest, &latest(BestParams::Kept))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("checksum") && e.contains("best.safetensors"),
        "{e}"
    );
    let e = ckpt.read_best(1).unwrap_err().to_string();
    assert!(e.contains("checksum"), "{e}");
    // A missing one names the file.
    std::fs::remove_file(&best_path).unwrap();
    let e = ckpt.read_best(1).unwrap_err().to_string();
    assert!(e.contains("best.safetensors"), "{e}");
}

/// Trains `cfg` with a run folder (the best parameters kept on disk) or without one
/// (kept in memory), and returns the backend's final parameters (the best epoch's).
fn trained(cfg: &Config, ds: &Dataset, folder: Option<&Path>) -> Vec<f32> {
    let mut backend = CpuBackend::new(cfg, ds.vocab.sizes());
    let mut on_event = |_: bst_core::train::Event| {};
    match folder {
        Some(dir) => {
            let mut ckpt = RunCheckpointer::new(dir, info(cfg, ds));
            let opts = TrainOptions {
                checkpointer: Some(&mut ckpt),
                ..TrainOptions::default()
            };
            train_with(&mut backend, ds, &cfg.train, opts, &mut on_event).unwrap();
        }
        None => {
            train(&mut backend, ds, &cfg.train, &mut on_event).unwrap();
        }
    }
    backend.read_params().unwrap()
}

#[test]
fn a_run_keeping_the_best_on_disk_ends_on_the_same_parameters_as_one_keeping_it_in_memory() {
    let mut cfg = tiny_config();
    // Short epochs at a rate far too high, so that the best is not the last: the latest
    // checkpoints after it copy the best parameters out of the best file.
    cfg.train.epochs = 6;
    cfg.train.epoch_steps = 1;
    cfg.train.lr = Some(5.0);
    let ds = dataset(&cfg);
    let dir = tempfile::tempdir().unwrap();
    let on_disk = trained(&cfg, &ds, Some(dir.path()));
    let in_memory = trained(&cfg, &ds, None);
    assert!(on_disk == in_memory, "bit for bit");
    let latest = Checkpoint::load(&dir.path().join(checkpoint::LATEST)).unwrap();
    let best = latest.progress.best.unwrap().epoch;
    assert!(best < 6, "the best epoch ({best}) is an earlier one");
    assert_eq!(latest.best_params.as_deref(), Some(&on_disk[..]));
}

#[test]
fn epoch_steps_trains_each_epoch_on_the_first_batches_of_its_order() {
    let mut cfg = tiny_config();
    cfg.train.epochs = 1;
    cfg.train.epoch_steps = 3;
    let ds = dataset(&cfg);
    let b = cfg.train.batch;
    assert!(ds.train.len() > 5 * b, "an epoch of more than 3 steps");
    let got = trained(&cfg, &ds, None);
    // The reference: three steps over the first three batches of epoch 1's order.
    let mut backend = CpuBackend::new(&cfg, ds.vocab.sizes());
    let order = epoch_order(ds.train.len(), cfg.train.seed, 1);
    let mut batch = Batch::default();
    for idx in order[..3 * b].chunks(b) {
        batch.gather(&ds.train, idx);
        backend.train_step(&batch).unwrap();
    }
    assert!(got == backend.read_params().unwrap(), "bit for bit");
    // More steps than the split has: the whole split, as with 0.
    cfg.train.epoch_steps = ds.train.len();
    let whole = trained(&cfg, &ds, None);
    cfg.train.epoch_steps = 0;
    assert!(whole == trained(&cfg, &ds, None));
}

#[test]
fn a_run_of_short_epochs_stopped_mid_epoch_resumes_bit_for_bit() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut cfg = tiny_config();
    (cfg.train.epochs, cfg.train.epoch_steps) = (3, 4);
    let ds = dataset(&cfg);
    let (whole_dir, halves) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let whole = trained(&cfg, &ds, Some(whole_dir.path()));
    // Stopped after step 2 of epoch 2, then resumed from the latest checkpoint.
    let stop = AtomicBool::new(false);
    let mut backend = CpuBackend::new(&cfg, ds.vocab.sizes());
    let mut ckpt = RunCheckpointer::new(halves.path(), info(&cfg, &ds));
    let opts = TrainOptions {
        checkpointer: Some(&mut ckpt),
        stop: Some(&stop),
        loss_every: 1,
        ..TrainOptions::default()
    };
    let mut on_event = |e: bst_core::train::Event| {
        if let bst_core::train::Event::Step {
            epoch: 2, step: 2, ..
        } = e
        {
            stop.store(true, Ordering::SeqCst);
        }
    };
    let e = train_with(&mut backend, &ds, &cfg.train, opts, &mut on_event).unwrap_err();
    assert!(e.to_string().contains("epoch 2"), "{e}");
    let path = halves.path().join(checkpoint::LATEST);
    let resume = Checkpoint::load(&path).unwrap().into_resume(&path).unwrap();
    assert_eq!((resume.progress.epoch, resume.progress.step), (1, 2));
    let mut backend = CpuBackend::new(&cfg, ds.vocab.sizes());
    let mut ckpt = RunCheckpointer::new(halves.path(), info(&cfg, &ds));
    let opts = TrainOptions {
        resume: Some(resume),
        checkpointer: Some(&mut ckpt),
        ..TrainOptions::default()
    };
    train_with(&mut backend, &ds, &cfg.train, opts, &mut |_| {}).unwrap();
    assert!(backend.read_params().unwrap() == whole, "bit for bit");
    // Another epoch length does not resume it.
    cfg.train.epoch_steps = 5;
    let e = Checkpoint::load(&path)
        .unwrap()
        .check_config(&cfg)
        .unwrap_err()
        .to_string();
    assert!(e.contains("epoch_steps"), "{e}");
}
