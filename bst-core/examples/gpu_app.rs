//! An application that owns its GPU and uses bst as a library.
//!
//! ```sh
//! cargo run --release -p bst-core --example gpu_app                      # trains a tiny model first
//! cargo run --release -p bst-core --example gpu_app -- RUN/best.safetensors
//! ```
//!
//! 1. The application creates its own wgpu instance, adapter, device and queue (Vulkan
//!    unless `WGPU_BACKEND` names others; a software adapter such as lavapipe is fine).
//! 2. It gets a model: trained here on the CPU on a small synthetic world (a callback
//!    prints each epoch), or loaded from a checkpoint given as the argument.
//! 3. It shares its device with bst: `GpuContext::from_device`, then a `Scorer`.
//! 4. It writes the candidates' ids into its own buffers: one user who just browsed a few
//!    items, with every item of the vocabulary as the candidate.
//! 5. It records the scoring and a top-k selection into its own command encoder, submits
//!    once, and reads back only the k best (item, probability) pairs.
//!
//! `bst-core/tests/gpu_app_example.rs` runs these same functions and checks the scores
//! against the CPU backend.

use std::error::Error;
use std::sync::Arc;

use bst_core::backend::CpuBackend;
use bst_core::checkpoint::Checkpoint;
use bst_core::config::{Config, ModelConfig};
use bst_core::data::{self, DataSource, Samples, Vocab};
use bst_core::encode::{Encoder, Unknown};
use bst_core::scorer::{
    CandidateBuffers, GpuContext, Scorer, TensorRef, TopKBuffers, TopKDims, TopKKernels, wgpu,
};
use bst_core::train::{Event, train};
use wgpu::util::DeviceExt;

/// The application's GPU: its own device and queue (wgpu handles are cheap clones).
pub struct AppGpu {
    /// The device, shared with bst.
    pub device: wgpu::Device,
    /// Its queue.
    pub queue: wgpu::Queue,
    /// What the adapter is, for bst's messages.
    pub info: wgpu::AdapterInfo,
}

/// Creates the application's device with `limits` (`wgpu::Limits::default()` is all bst's
/// kernels need; more only for larger buffers) and `SHADER_F16` where the adapter has it.
/// Backends: `WGPU_BACKEND`, else Vulkan.
pub fn app_gpu(limits: wgpu::Limits) -> Result<AppGpu, Box<dyn Error>> {
    let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::VULKAN);
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        ..Default::default()
    }))?;
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("app"),
        required_limits: limits,
        // Where the adapter offers it, so that a Scorer may keep its embedding tables in
        // f16 (`ScorerOptions::f16_embeddings`); bst needs no feature otherwise.
        required_features: adapter.features() & wgpu::Features::SHADER_F16,
        ..Default::default()
    }))?;
    Ok(AppGpu {
        device,
        queue,
        info: adapter.get_info(),
    })
}

/// A model: its config, vocabularies and parameter arena.
pub struct AppModel {
    /// The model's config.
    pub config: Config,
    /// Raw ids and their rows.
    pub vocab: Vocab,
    /// The parameter arena (`bst_core::params::ParamLayout`).
    pub params: Vec<f32>,
}

/// Trains a tiny BST on the CPU on a small synthetic world (a few seconds), printing each
/// epoch from the training loop's callback.
pub fn tiny_model() -> Result<AppModel, Box<dyn Error>> {
    let mut config = Config::default();
    config.data.synthetic_users = 300;
    config.model = ModelConfig {
        seq_len: 10,
        d_item: 16,
        d_cat: 8,
        d_pos: 8,
        heads: 4,
        d_ff: 64,
        mlp: vec![64, 32],
        ..ModelConfig::default()
    };
    config.train.epochs = 2;
    config.train.lr = Some(3e-3);
    config.validate()?;
    let ds = data::load(&DataSource::Synthetic, &config)?;
    let mut cpu = CpuBackend::new(&config, ds.vocab.sizes());
    let report = train(&mut cpu, &ds, &config.train, &mut |event| {
        if let Event::Epoch(r) = event {
            println!(
                "epoch {}: train loss {:.4}, validation AUC {:.4}",
                r.epoch, r.train_loss, r.valid.auc
            );
        }
    })?;
    println!("test {} (best epoch {})", report.test, report.best_epoch);
    // `train` leaves the best epoch's parameters in the backend.
    Ok(AppModel {
        config,
        vocab: ds.vocab,
        params: cpu.params,
    })
}

/// The model of a checkpoint file.
pub fn load_model(path: &std::path::Path) -> Result<AppModel, Box<dyn Error>> {
    let ckpt = Checkpoint::load(path)?;
    Ok(AppModel {
        config: ckpt.config,
        vocab: ckpt.vocab,
        params: ckpt.params,
    })
}

/// The candidates in the application's buffers, and the same samples on the host.
pub struct AppCandidates {
    /// Rows of the id tensors, in `CandidateBuffers` order.
    pub ids: [wgpu::Buffer; 6],
    /// (rows) f32: the scorer writes here; the top-k reads here.
    pub scores: wgpu::Buffer,
    /// The samples written (for checks).
    pub samples: Samples,
    /// The candidate item row of each sample.
    pub items: Vec<u32>,
}

impl AppCandidates {
    /// Number of candidates.
    pub fn rows(&self) -> usize {
        self.items.len()
    }

    /// The buffers as the scorer takes them.
    pub fn buffers(&self) -> CandidateBuffers<'_> {
        let t = |b| TensorRef::whole(b);
        let [
            hist_item,
            hist_cat,
            hist_pos,
            target_item,
            target_cat,
            other,
        ] = &self.ids;
        CandidateBuffers {
            rows: self.rows(),
            hist_item: t(hist_item),
            hist_cat: t(hist_cat),
            hist_pos: t(hist_pos),
            target_item: t(target_item),
            target_cat: t(target_cat),
            other: t(other),
            scores: t(&self.scores),
        }
    }
}

/// One user who browsed the vocabulary's first few items an hour apart, with every item
/// as a candidate, encoded from raw ids with the checkpoint's vocabularies and written
/// into buffers of the application's device.
pub fn write_candidates(gpu: &AppGpu, model: &AppModel) -> Result<AppCandidates, Box<dyn Error>> {
    let enc = Encoder::new(&model.vocab, &model.config.model)?;
    let now = 1_700_000_000;
    let browsed = &model.vocab.item_ids[1..model.vocab.item_ids.len().min(5)];
    let history: Vec<(String, i64)> = (browsed.iter().rev().enumerate())
        .map(|(ago, raw)| (raw.clone(), now - 3600 * (ago as i64 + 1)))
        .rev()
        .collect();
    let mut unknown = Unknown::default();
    let user = enc.context(&[], &history, now, &mut unknown)?;
    let items: Vec<u32> = (1..model.vocab.n_items() as u32).collect();
    let mut samples = enc.samples();
    for &item in &items {
        enc.push(&mut samples, &user, item);
    }
    let usage = wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let buffer = |label, ids: &[u32]| {
        gpu.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytemuck::cast_slice(ids),
                usage,
            })
    };
    let s = &samples;
    let ids = [
        buffer("hist_item", &s.hist_item),
        buffer("hist_cat", &s.hist_cat),
        buffer("hist_pos", &s.hist_pos),
        buffer("target_item", &s.target_item),
        buffer("target_cat", &s.target_cat),
        buffer("other", &s.other),
    ];
    let scores = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("scores"),
        size: 4 * items.len() as u64,
        usage: wgpu::BufferUsages::STORAGE | usage,
        mapped_at_creation: false,
    });
    Ok(AppCandidates {
        ids,
        scores,
        samples,
        items,
    })
}

/// Records the scoring of every candidate and the top-`k` selection into one command
/// encoder of the application's, submits it, and reads back the `k` pairs
/// `(candidate item row, probability)`, best first.
pub fn score_top_k(
    gpu: &AppGpu,
    scorer: &Scorer,
    c: &AppCandidates,
    k: u32,
) -> Result<Vec<(u32, f32)>, Box<dyn Error>> {
    // Bound once per buffer set (an application keeps these beside its buffers).
    let ctx = scorer.context();
    let topk = TopKKernels::new(ctx)?;
    let pairs = k.min(c.rows() as u32) as u64;
    let out = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("top-k (k, 2)"),
        size: 8 * pairs.max(1),
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let staging = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("top-k readback"),
        size: 8 * pairs.max(1),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let selection = topk.bind(
        ctx,
        &TopKBuffers {
            out: TensorRef::whole(&out),
            scores: TensorRef::whole(&c.scores),
        },
        TopKDims {
            n: c.rows() as u32,
            k,
        },
    )?;

    // The application's frame: its own encoder, bst's work recorded into it.
    let mut encoder = gpu
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("frame"),
        });
    scorer.record(&mut encoder, &c.buffers())?;
    {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("top-k"),
            timestamp_writes: None,
        });
        topk.record(&mut pass, &selection);
    }
    encoder.copy_buffer_to_buffer(&out, 0, &staging, 0, 8 * pairs);
    gpu.queue.submit([encoder.finish()]);

    // Read the k pairs: (candidate index u32, probability f32 bits).
    let (tx, rx) = std::sync::mpsc::channel();
    staging.map_async(wgpu::MapMode::Read, .., move |r| {
        let _ = tx.send(r);
    });
    gpu.device.poll(wgpu::PollType::wait_indefinitely())?;
    rx.recv()??;
    let words: Vec<u32> = bytemuck::pod_collect_to_vec(&staging.get_mapped_range(..)?);
    staging.unmap();
    Ok(words[..2 * pairs as usize]
        .chunks_exact(2)
        .map(|w| (c.items[w[0] as usize], f32::from_bits(w[1])))
        .collect())
}

fn main() -> Result<(), Box<dyn Error>> {
    let gpu = app_gpu(wgpu::Limits::default())?;
    let model = match std::env::args_os().nth(1) {
        Some(path) => load_model(path.as_ref())?,
        None => tiny_model()?,
    };
    let c = write_candidates(&gpu, &model)?;
    let ctx = Arc::new(GpuContext::from_device(
        gpu.device.clone(),
        gpu.queue.clone(),
        gpu.info.clone(),
    ));
    println!("bst shares the application's device: {}", ctx.describe());
    let sizes = model.vocab.sizes();
    let scorer = Scorer::new(
        ctx,
        &model.config.model,
        sizes,
        model.params.clone(),
        c.rows(),
    )?;
    let k = 10;
    let top = score_top_k(&gpu, &scorer, &c, k)?;
    println!("top {k} of {} candidates:", c.rows());
    for (rank, (item, p)) in top.iter().enumerate() {
        let v = &model.vocab;
        let cat = &v.cat_names[v.item_cat[*item as usize] as usize];
        println!(
            "{:>3}  item {:<8} category {:<8} p = {p:.4}",
            rank + 1,
            v.item_ids[*item as usize],
            cat
        );
    }
    Ok(())
}
