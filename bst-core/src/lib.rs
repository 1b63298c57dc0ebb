//! The Behavior Sequence Transformer (Chen et al., 2019): the model, its data and metrics.
//! The contract is `spec/bst.md` of the shared folder; every section cited here is its.
//!
//! # Architecture
//!
//! Read in this order; each module is one room:
//!
//! | module | what |
//! |---|---|
//! | [`config`] | the model, training and data settings (TOML), validated |
//! | [`params`] | the one table of named parameter tensors: arena layout, init, checkpoint names |
//! | [`model`] | BST forward and backward on the CPU, composed from `bst_kernels::cpu` |
//! | [`backend`] | the [`Backend`](backend::Backend) trait a device implements, and the CPU reference backend |
//! | [`gpu_backend`] | the same model on wgpu with the kernels of `bst_kernels::gpu` |
//! | [`train`] | the training loop: epochs, validation, model selection, callbacks, stop and resume |
//! | [`checkpoint`] | safetensors checkpoints: atomic writes, checked loads, run folders |
//! | [`scorer`] | scoring inside an application's own GPU program, recorded into its encoder |
//! | [`requests`], [`shared_history`] | scoring several users' candidates in one call, each history computed once |
//! | [`data`] | loaders, the synthetic world, samples and the per-user time split |
//! | [`metrics`] | AUC, GAUC, logloss |
//!
//! Beside them: [`batch`] (samples gathered for a step), [`encode`] (raw ids to model
//! rows), [`rank`] (top-k), [`optim`] (Adam, Adagrad on the CPU), [`rng`] (seeded
//! SplitMix64).
//!
//! # Training from a program
//!
//! [`train::train`] runs the whole loop on any backend and calls back on every loss read
//! ([`train::Event::Step`]) and after every epoch ([`train::Event::Epoch`]);
//! [`train::train_with`] adds checkpoints, a stop flag and resuming.
//!
//! ```
//! use bst_core::backend::CpuBackend;
//! use bst_core::config::Config;
//! use bst_core::data::{self, DataSource};
//! use bst_core::train::{Event, train};
//!
//! let mut cfg = Config::default();
//! cfg.data.synthetic_users = 200;
//! cfg.model.mlp = vec![32];
//! cfg.train.epochs = 1;
//! let ds = data::load(&DataSource::Synthetic, &cfg).unwrap();
//! let mut backend = CpuBackend::new(&cfg, ds.vocab.sizes());
//! let report = train(&mut backend, &ds, &cfg.train, &mut |event| match event {
//!     Event::Step { epoch, step, steps, loss } => {
//!         if step == steps {
//!             println!("epoch {epoch}: last loss {loss:.4}");
//!         }
//!     }
//!     Event::Epoch(r) => println!("epoch {}: validation AUC {:.4}", r.epoch, r.valid.auc),
//!     _ => {} // e.g. Event::Evaluating: progress while a split is scored
//! })
//! .unwrap();
//! assert!(report.test.auc.is_finite());
//! // The backend now holds the best epoch's parameters.
//! let params: &[f32] = &backend.params;
//! # assert_eq!(params.len(), backend.model.layout.total);
//! ```
//!
//! # Embedding in a GPU program
//!
//! An application that owns a `wgpu::Device` shares it with bst: wrap it with
//! [`GpuContext::from_device`](scorer::GpuContext::from_device), build a
//! [`scorer::Scorer`] from a checkpoint or parameters, write candidate ids into buffers of
//! its own, and record the scoring into its own command encoder; no readback. The
//! top-k kernel ([`scorer::TopKKernels`]) then selects the best candidates on the device.
//! `examples/gpu_app.rs` is a whole program (`cargo run --release -p bst-core --example
//! gpu_app`).
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use bst_core::checkpoint::Checkpoint;
//! # use bst_core::scorer::{CandidateBuffers, GpuContext, Scorer, wgpu};
//! # fn app(device: wgpu::Device, queue: wgpu::Queue, info: wgpu::AdapterInfo,
//! #        candidates: CandidateBuffers) -> Result<(), Box<dyn std::error::Error>> {
//! let ctx = Arc::new(GpuContext::from_device(device.clone(), queue.clone(), info));
//! let ckpt = Checkpoint::load("runs/ml-100k/best.safetensors".as_ref())?;
//! let scorer = Scorer::from_checkpoint(ctx, &ckpt, 1024)?;
//! let mut encoder = device.create_command_encoder(&Default::default());
//! scorer.record(&mut encoder, &candidates)?; // ids in, probabilities out, on the device
//! queue.submit([encoder.finish()]);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod backend;
pub mod batch;
pub mod checkpoint;
pub mod collective;
pub mod config;
pub mod data;
pub mod encode;
pub mod gpu_backend;
pub mod grad_store;
pub mod hash;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod params;
pub mod prefetch;
pub mod rank;
pub mod requests;
pub mod rng;
pub mod run_state;
pub mod scorer;
pub mod shared_history;
pub mod train;
