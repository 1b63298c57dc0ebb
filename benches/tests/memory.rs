//! `gpu_backend_memory` (our accounting of the GPU backend's buffers) against what wgpu's
//! allocator reports the backend allocated, for several models and batch sizes. The
//! allocator also holds the uniform buffers, the kernels' dummies and alignment padding,
//! which the accounting leaves out: they must stay under 256 KiB + 0.1% (measured: 8 to
//! 17 KiB on lavapipe).

use bst_benches::{allocator_bytes as allocated, gpu_backend_memory};
use bst_core::config::{Config, DataConfig, Optimizer, Pooling};
use bst_core::data::{self, DataSource};
use bst_core::gpu_backend::GpuBackend;
use bst_kernels::gpu::{GpuContext, GpuOptions, wgpu};
use std::sync::Arc;

#[test]
fn accounting_matches_the_allocator_within_uniforms_and_padding() {
    let opts = GpuOptions {
        backends: wgpu::Backends::VULKAN,
        allow_software: true,
        ..Default::default()
    };
    let ctx = match GpuContext::new(&opts) {
        Ok(ctx) => Arc::new(ctx),
        Err(e) if std::env::var("BST_SKIP_GPU_TESTS").is_ok_and(|v| v == "1") => {
            eprintln!("note: BST_SKIP_GPU_TESTS=1, skipping: {e}");
            return;
        }
        Err(e) => panic!("{e}\n(set BST_SKIP_GPU_TESTS=1 to skip the GPU tests)"),
    };
    let mut base = Config {
        data: DataConfig {
            synthetic_users: 50,
            ..Default::default()
        },
        ..Config::default()
    };
    let ds = data::load(&DataSource::Synthetic, &base).expect("synthetic data");
    let mut variants = Vec::new();
    base.train.batch = 64;
    base.train.eval_batch = 100;
    variants.push(base.clone());
    let mut c = base.clone();
    c.model.blocks = 2;
    c.model.pooling = Pooling::Mean;
    c.train.optimizer = Optimizer::Adagrad;
    c.train.batch = 300; // LayerNorm chunks of 256 rows: several, the last partial
    variants.push(c);
    let mut c = base.clone();
    c.model.blocks = 0;
    c.model.pooling = Pooling::Flatten;
    variants.push(c);
    for cfg in variants {
        let before = allocated(&ctx).expect("wgpu's allocator report (Vulkan has one)");
        let backend = GpuBackend::init(ctx.clone(), &cfg, ds.vocab.sizes()).expect("backend");
        let after = allocated(&ctx).unwrap();
        let ours = gpu_backend_memory(
            bst_core::backend::Backend::model(&backend),
            cfg.train.batch.max(cfg.train.eval_batch),
            cfg.train.optimizer == Optimizer::Adam,
        );
        let seen = after - before;
        println!(
            "blocks {} pooling {:?} batch {}: accounted {} bytes, allocator {} (+{})",
            cfg.model.blocks,
            cfg.model.pooling,
            cfg.train.batch,
            ours.total,
            seen,
            seen as i64 - ours.total as i64
        );
        assert!(
            seen >= ours.total,
            "the accounting counts more than was allocated"
        );
        assert!(
            seen - ours.total <= (256 << 10) + ours.total / 1000,
            "the allocator holds {} bytes more than the accounting",
            seen - ours.total
        );
        drop(backend);
    }
}

/// A scorer of the default model (d_item 32) at 1,000,000 items, with f32 and with f16
/// embedding tables, measured by wgpu's allocator. f16 tables drop the tables from the
/// three f32 arenas a scorer holds (parameters, gradients, Adagrad's sum: 12 bytes per
/// table value) and add them once as f16 (2 bytes): the saving must be those 10 bytes
/// per value, within the uniforms and padding (256 KiB).
#[test]
fn scorer_with_f16_tables_holds_ten_bytes_less_per_table_value() {
    use bst_core::model::Model;
    use bst_core::params::VocabSizes;
    use bst_core::scorer::{Scorer, ScorerOptions};
    let opts = GpuOptions {
        backends: wgpu::Backends::VULKAN,
        allow_software: true,
        ..Default::default()
    };
    let ctx = match GpuContext::with_optional_features(&opts, wgpu::Features::SHADER_F16) {
        Ok(ctx) if ctx.features.contains(wgpu::Features::SHADER_F16) => Arc::new(ctx),
        Ok(ctx) => panic!("the adapter {} lacks SHADER_F16", ctx.describe()),
        Err(e) if std::env::var("BST_SKIP_GPU_TESTS").is_ok_and(|v| v == "1") => {
            eprintln!("note: BST_SKIP_GPU_TESTS=1, skipping: {e}");
            return;
        }
        Err(e) => panic!("{e}\n(set BST_SKIP_GPU_TESTS=1 to skip the GPU tests)"),
    };
    let cfg = Config::default();
    let sizes = VocabSizes {
        items: 1_000_000,
        cats: 1_000,
        other: 100,
        fields: 4,
    };
    let model = Model::new(&cfg.model, sizes);
    let params = model.layout.init(0);
    let tables = model.layout.dense_range().start as u64;
    let max_rows = 1_000;
    let mut bytes = Vec::new();
    for f16_embeddings in [false, true] {
        let before = allocated(&ctx).expect("wgpu's allocator report (Vulkan has one)");
        let options = ScorerOptions { f16_embeddings };
        let scorer = Scorer::with_options(
            ctx.clone(),
            &cfg.model,
            sizes,
            params.clone(),
            max_rows,
            options,
        )
        .expect("scorer");
        let seen = allocated(&ctx).unwrap() - before;
        println!(
            "scorer, {} items, d_item {}, {max_rows} rows, f16_embeddings {f16_embeddings}: \
             {seen} bytes ({:.1} MiB)",
            sizes.items,
            cfg.model.d_item,
            seen as f64 / f64::from(1 << 20)
        );
        bytes.push(seen);
        drop(scorer);
    }
    let saved = bytes[0] as i64 - bytes[1] as i64;
    let want = (12 * tables - 2 * tables.next_multiple_of(2)) as i64;
    println!(
        "f16 tables save {saved} bytes ({:.1} MiB, {:.1}% of the scorer); {tables} table \
         values x 10 bytes = {want}",
        saved as f64 / f64::from(1 << 20),
        100.0 * saved as f64 / bytes[0] as f64
    );
    assert!(
        (saved - want).abs() <= 256 << 10,
        "saved {saved}, expected {want}"
    );
}
