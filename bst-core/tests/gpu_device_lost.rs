//! A GPU that goes away (`wgpu::Device::destroy`, as a lost device would) is an error
//! from every call that runs on it, never a panic or a hang: the training step, the loss
//! read, `predict`, the top k, the parameters' read and write, scoring requests, a new
//! backend, the `Scorer`; and `train_with` returns it, naming the step, with the last
//! checkpoint left as it was.
//!
//! Each test destroys a device of its own (`common::own_gpu`). The device is lavapipe
//! (or any Vulkan adapter, software allowed). When none is found the tests fail with the
//! reason, unless `BST_SKIP_GPU_TESTS=1`, which turns each test into a printed note.

mod common;

use bst_core::backend::{Backend, BackendError};
use bst_core::batch::Batch;
use bst_core::checkpoint::{self, Checkpoint, RunCheckpointer, RunInfo};
use bst_core::config::{Config, Pooling};
use bst_core::data::{self, DataSource};
use bst_core::gpu_backend::GpuBackend;
use bst_core::model::Model;
use bst_core::params::ParamLayout;
use bst_core::scorer::{Scorer, ScorerError};
use bst_core::train::{Event, SavedAt, TrainError, TrainOptions, train_with};
use common::{SIZES, own_gpu, random_samples, requests, small_config};

/// Asserts that `e` is the GPU failing while `doing`, because the device was destroyed.
fn assert_destroyed(e: &BackendError, doing: &str) {
    let msg = e.to_string();
    assert!(
        matches!(e, BackendError::Gpu { doing: d, .. } if d == doing),
        "expected the GPU failing while {doing}, got: {msg}"
    );
    assert!(msg.contains("the device was destroyed"), "{msg}");
}

/// The small model with one block and target pooling (requests take the shared-history
/// path), and its initial parameters.
fn one_block() -> (Config, Vec<f32>) {
    let cfg = small_config(1, Pooling::Target);
    let params = ParamLayout::new(&cfg.model, SIZES).init(cfg.train.seed);
    (cfg, params)
}

#[test]
fn every_call_on_a_destroyed_device_is_an_error() {
    let Some(ctx) = own_gpu() else { return };
    let (cfg, params) = one_block();
    let model = Model::new(&cfg.model, SIZES);
    let mut gpu = GpuBackend::new(ctx.clone(), &cfg, model, params.clone()).expect("a backend");
    let samples = random_samples(20, &cfg.model, 1);
    let batch = Batch::from_range(&samples, 0..cfg.train.batch);
    // One step whose loss is still on the device.
    gpu.train_step(&batch)
        .expect("a step before the device goes");

    ctx.device.destroy();

    let e = gpu.train_step(&batch).unwrap_err();
    assert_destroyed(&e, "running a training step");
    assert_eq!(gpu.steps(), 1, "the failed step is not counted");
    assert_destroyed(&gpu.take_loss().unwrap_err(), "reading the loss back");
    let mut probs = vec![0.0; batch.size];
    let e = gpu.predict(&batch, &mut probs).unwrap_err();
    assert_destroyed(&e, "scoring a batch");
    let e = gpu.predict_top_k(&batch, 3).unwrap_err();
    assert_destroyed(&e, "selecting the top 3 of a batch");
    assert_destroyed(
        &gpu.read_params().unwrap_err(),
        "reading the parameters back",
    );
    assert_destroyed(&gpu.read_grads().unwrap_err(), "reading the gradients back");
    let e = gpu.read_optim_state().unwrap_err();
    assert_destroyed(&e, "reading adam's m back");
    let e = gpu.write_params(&params).unwrap_err();
    assert_destroyed(&e, "writing the parameters");
    // The shared-history path, made at the first request: its buffers are not made.
    let req = requests(&samples, &[0, 1], &[3, 2], SIZES.items);
    let mut probs = vec![0.0; req.candidates()];
    let e = gpu.predict_requests(&req, &mut probs).unwrap_err();
    assert_destroyed(&e, "binding the shared-history path");
    // The loss is permanent: a check does not clear it.
    assert!(ctx.check().is_err() && ctx.check().is_err());
    let model = Model::new(&cfg.model, SIZES);
    match GpuBackend::new(ctx.clone(), &cfg, model, params) {
        Err(e) => assert!(e.to_string().contains("the device was destroyed"), "{e}"),
        Ok(_) => panic!("a backend made on a destroyed device"),
    }
}

#[test]
fn a_scorer_on_a_destroyed_device_returns_errors() {
    let Some(ctx) = own_gpu() else { return };
    let (cfg, params) = one_block();
    let mut scorer =
        Scorer::new(ctx.clone(), &cfg.model, SIZES, params.clone(), 16).expect("a scorer");
    let samples = random_samples(8, &cfg.model, 2);
    let req = requests(&samples, &[0, 3], &[4, 4], SIZES.items);
    let mut probs = vec![0.0; req.candidates()];
    scorer
        .predict_requests(&req, &mut probs)
        .expect("scoring before the device goes");

    ctx.device.destroy();

    let e = scorer.predict_requests(&req, &mut probs).unwrap_err();
    match &e {
        ScorerError::Backend(b) => {
            assert_destroyed(b, "scoring requests on the shared-history path")
        }
        other => panic!("expected a backend error, got: {other}"),
    }
    let e = scorer.write_params(&params).unwrap_err();
    assert!(e.to_string().contains("the device was destroyed"), "{e}");
    let e = Scorer::new(ctx, &cfg.model, SIZES, params, 16).unwrap_err();
    assert!(e.to_string().contains("the device was destroyed"), "{e}");
}

/// Trains 2 epochs with checkpoints and destroys the device after the first step of the
/// second: `train_with` fails at the next step, and the checkpoint of epoch 1 is left
/// byte for byte as it was.
#[test]
fn training_fails_at_the_step_after_the_device_goes_and_keeps_the_last_checkpoint() {
    let Some(ctx) = own_gpu() else { return };
    let mut cfg = small_config(1, Pooling::Target);
    cfg.data.synthetic_users = 60;
    (cfg.train.batch, cfg.train.eval_batch, cfg.train.epochs) = (64, 64, 2);
    let ds = data::load(&DataSource::Synthetic, &cfg).expect("synthetic data");
    let mut gpu = GpuBackend::init(ctx.clone(), &cfg, ds.vocab.sizes()).expect("a backend");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let info = RunInfo {
        config: &cfg,
        vocab: &ds.vocab,
        data_source: "synthetic",
    };
    let mut ckpt = RunCheckpointer::new(dir, info);
    let opts = TrainOptions {
        checkpointer: Some(&mut ckpt),
        loss_every: 1,
        ..TrainOptions::default()
    };
    let mut saved: Option<Vec<u8>> = None;
    let mut on_event = |e: Event| {
        if let Event::Step {
            epoch: 2, step: 1, ..
        } = e
        {
            saved = Some(std::fs::read(dir.join(checkpoint::LATEST)).expect("epoch 1's"));
            ctx.device.destroy();
        }
    };
    let e = train_with(&mut gpu, &ds, &cfg.train, opts, &mut on_event).unwrap_err();
    let msg = e.to_string();
    match &e {
        TrainError::Failed {
            during,
            source,
            saved,
        } => {
            assert_eq!(during, "epoch 2, step 2", "{msg}");
            assert_destroyed(source, "running a training step");
            assert_eq!(*saved, Some(SavedAt { epoch: 1, step: 0 }), "{msg}");
        }
        other => panic!("expected a failed step, got: {other}"),
    }
    assert!(
        msg.contains("the last good checkpoint (after epoch 1) is kept"),
        "{msg}"
    );
    let latest = dir.join(checkpoint::LATEST);
    let before = saved.expect("the device was destroyed in epoch 2");
    assert!(
        std::fs::read(&latest).unwrap() == before,
        "the checkpoint changed after the failure"
    );
    let c = Checkpoint::load(&latest).expect("the checkpoint loads");
    assert_eq!((c.progress.epoch, c.progress.step), (1, 0));
}
