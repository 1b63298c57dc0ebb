//! Shared by the scorer and example tests: one device per test binary, a small model,
//! seeded samples and a tolerant comparison.
//!
//! The device is lavapipe (or any Vulkan adapter, software allowed). When none is found
//! the tests fail with the reason, unless `BST_SKIP_GPU_TESTS=1`, which turns each test
//! into a printed note.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::sync::{Arc, OnceLock};

use bst_core::batch::Batch;
use bst_core::config::{Config, ModelConfig, Pooling};
use bst_core::data::Samples;
use bst_core::model::Model;
use bst_core::params::VocabSizes;
use bst_core::requests::Requests;
use bst_core::rng::Rng;
use bst_core::scorer::{GpuContext, GpuOptions, wgpu};

static GPU: OnceLock<Result<Arc<GpuContext>, String>> = OnceLock::new();
static GPU_F16: OnceLock<Result<Arc<GpuContext>, String>> = OnceLock::new();

/// The shared device, or `None` (after printing a note) when GPU tests are skipped.
pub fn gpu() -> Option<Arc<GpuContext>> {
    shared_device(&GPU, wgpu::Features::empty())
}

/// As [`gpu`], a device created with `SHADER_F16` (f16 embedding tables); a test failure
/// when the adapter lacks it (lavapipe has it), unless `BST_SKIP_GPU_TESTS=1`.
pub fn gpu_f16() -> Option<Arc<GpuContext>> {
    shared_device(&GPU_F16, wgpu::Features::SHADER_F16)
}

/// A device of this test's own, not the shared one (for a test that destroys it); `None`
/// (after a note) when none is found and `BST_SKIP_GPU_TESTS=1`, else a panic.
pub fn own_gpu() -> Option<Arc<GpuContext>> {
    available(&new_device(wgpu::Features::empty()))
}

/// The device in `cell`, created on first use ([`new_device`]); `None` (after a note)
/// when that fails and `BST_SKIP_GPU_TESTS=1`, else a panic.
fn shared_device(
    cell: &'static OnceLock<Result<Arc<GpuContext>, String>>,
    required: wgpu::Features,
) -> Option<Arc<GpuContext>> {
    available(cell.get_or_init(|| new_device(required)))
}

/// A device on the Vulkan backend with the `required` features, software allowed.
fn new_device(required: wgpu::Features) -> Result<Arc<GpuContext>, String> {
    let opts = GpuOptions {
        // Pinned: with all backends, a GL adapter without the needed limits may win.
        backends: wgpu::Backends::VULKAN,
        adapter_name: None,
        allow_software: true,
    };
    let ctx = GpuContext::with_optional_features(&opts, required).map_err(|e| e.to_string())?;
    if !ctx.features.contains(required) {
        return Err(format!("the adapter {} lacks {required:?}", ctx.describe()));
    }
    eprintln!("{}", ctx.limits_report());
    Ok(Arc::new(ctx))
}

/// The device, or `None` (after a note) when there is none and `BST_SKIP_GPU_TESTS=1`,
/// else a panic with the reason.
fn available(ctx: &Result<Arc<GpuContext>, String>) -> Option<Arc<GpuContext>> {
    match ctx {
        Ok(ctx) => Some(ctx.clone()),
        Err(e) if skip_gpu_tests() => {
            eprintln!("note: BST_SKIP_GPU_TESTS=1, skipping a GPU test: {e}");
            None
        }
        Err(e) => panic!("{e}\n(set BST_SKIP_GPU_TESTS=1 to skip the GPU tests)"),
    }
}

/// `BST_SKIP_GPU_TESTS=1`.
pub fn skip_gpu_tests() -> bool {
    std::env::var("BST_SKIP_GPU_TESTS").is_ok_and(|v| v == "1")
}

pub const ATOL: f32 = 1e-5;
pub const RTOL: f32 = 1e-4;

/// Asserts `|gpu - cpu| <= ATOL + RTOL * |cpu|` everywhere; prints the max error, and on
/// failure the first mismatching values.
pub fn assert_close(what: &str, gpu: &[f32], cpu: &[f32]) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: length");
    let bad: Vec<usize> = (0..cpu.len())
        .filter(|&i| {
            let err = (gpu[i] - cpu[i]).abs();
            err.is_nan() || err > ATOL + RTOL * cpu[i].abs()
        })
        .collect();
    let max_err = (0..cpu.len())
        .map(|i| (gpu[i] - cpu[i]).abs())
        .fold(0.0f32, f32::max);
    println!(
        "{what}: {} values, max |gpu - cpu| = {max_err:.3e}",
        cpu.len()
    );
    for &i in bad.iter().take(8) {
        println!("  [{i}] gpu {} cpu {}", gpu[i], cpu[i]);
    }
    assert!(
        bad.is_empty(),
        "{what}: {} of {} values differ by more than {ATOL:e} + {RTOL:e} * |cpu| (max error \
         {max_err:.3e})",
        bad.len(),
        cpu.len()
    );
}

pub const SIZES: VocabSizes = VocabSizes {
    items: 30,
    cats: 6,
    other: 20,
    fields: 3,
};

/// A small model: L = 5, d = 8 + 4 + 4, 2 heads, d_ff 16, MLP 32-16; batches of 7
/// (training) and 9 (evaluation).
pub fn small_config(blocks: usize, pooling: Pooling) -> Config {
    let mut cfg = Config {
        model: ModelConfig {
            seq_len: 5,
            d_item: 8,
            d_cat: 4,
            d_pos: 4,
            pos_buckets: 8,
            heads: 2,
            d_ff: 16,
            blocks,
            d_other: 4,
            mlp: vec![32, 16],
            pooling,
            // Embeddings N(0, 1) (the spec's earlier init), not today's N(0, 1e-4): at
            // 1e-4 the first layers' weight gradients are ~1e-8, at the level of the two
            // backends' rounding, and Adagrad's g / sqrt(sum g^2) turns such rounding
            // into whole steps. GPU-vs-CPU comparisons need gradients well above it.
            emb_init_std: 1.0,
            ..ModelConfig::default()
        },
        ..Config::default()
    };
    cfg.train.batch = 7;
    cfg.train.eval_batch = 9;
    cfg.validate().expect("a valid config");
    cfg
}

/// `n` random samples of `SIZES`: every fifth has an all-padding history, every fifth
/// (offset 1) a full one, the rest are partly padded (right-aligned, as the loaders
/// build them).
pub fn random_samples(n: usize, cfg: &ModelConfig, seed: u64) -> Samples {
    let (l, f) = (cfg.seq_len, SIZES.fields);
    let mut rng = Rng::new(seed);
    let mut s = Samples::new(l, f);
    let id = |rng: &mut Rng, below: usize| 1 + rng.below(below as u64 - 1) as u32;
    for i in 0..n {
        let hist = match i % 5 {
            0 => 0,
            1 => l,
            _ => 1 + rng.below(l as u64 - 1) as usize,
        };
        for slot in 0..l {
            let real = slot >= l - hist;
            s.hist_item
                .push(if real { id(&mut rng, SIZES.items) } else { 0 });
            s.hist_cat
                .push(if real { id(&mut rng, SIZES.cats) } else { 0 });
            s.hist_pos.push(if real {
                id(&mut rng, cfg.pos_buckets)
            } else {
                0
            });
        }
        s.target_item.push(id(&mut rng, SIZES.items));
        s.target_cat.push(id(&mut rng, SIZES.cats));
        for _ in 0..f {
            s.other.push(rng.below(SIZES.other as u64) as u32);
        }
        s.label.push((rng.uniform() < 0.4) as u32 as f32);
        s.user.push((i % 4) as u32);
    }
    s
}

/// Parameters of `cfg`'s model with every embedding table U(-1, 1) (the default init
/// makes them so small that the history would hardly matter).
pub fn random_params(cfg: &Config, model: &Model, seed: u64) -> Vec<f32> {
    let mut params = model.layout.init(cfg.train.seed);
    let mut rng = Rng::new(seed);
    for (r, _) in model.layout.embedding_tables() {
        for p in &mut params[r] {
            *p = 2.0 * rng.uniform() as f32 - 1.0;
        }
    }
    params
}

/// The users of `samples` rows `users`, each with `counts[i]` candidates (item rows
/// cycling through the vocabulary), and one more candidate of the first user at the end
/// (a user's candidates need not be consecutive).
pub fn requests(samples: &Samples, users: &[usize], counts: &[usize], items: usize) -> Requests {
    let mut req = Requests::new(samples.seq_len, samples.fields);
    let one = Batch::from_range(samples, 0..samples.len());
    for (&s, &count) in users.iter().zip(counts) {
        let u = req.users() as u32;
        let (l, f) = (req.seq_len, req.fields);
        req.hist_item
            .extend_from_slice(&one.hist_item[s * l..][..l]);
        req.hist_cat.extend_from_slice(&one.hist_cat[s * l..][..l]);
        req.hist_pos.extend_from_slice(&one.hist_pos[s * l..][..l]);
        req.other.extend_from_slice(&one.other[s * f..][..f]);
        for k in 0..count {
            let item = 1 + ((s + 7 * k) % (items - 1)) as u32;
            req.push_candidate(u, item, 1 + item % 5);
        }
    }
    req.push_candidate(0, 1, 1);
    req
}
