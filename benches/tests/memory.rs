//! `GpuBackend::device_memory` (the backend's own count of the buffers it created)
//! against what wgpu's allocator reports the backend allocated, for several models and
//! batch sizes, and the same for scorers. The allocator adds alignment padding, which the
//! count leaves out: it must stay under 256 KiB + 0.1%.

use bst_benches::allocator_bytes as allocated;
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
        let ours = backend.device_memory();
        let what = format!(
            "blocks {} pooling {:?} batch {}",
            cfg.model.blocks, cfg.model.pooling, cfg.train.batch
        );
        println!("{what}: {ours:?}");
        assert_within_padding(&what, ours.total, after - before);
        assert!(
            [ours.arenas, ours.inputs, ours.activations, ours.gradients]
                .into_iter()
                .chain([ours.bindings, ours.readback])
                .all(|b| b > 0),
            "{what}: every group holds buffers"
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
        let what = format!("scorer, f16_embeddings {f16_embeddings}");
        assert_within_padding(&what, scorer.device_memory().total, seen);
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

/// The allocator's growth `seen` is the buffers counted (`ours`) plus alignment padding.
fn assert_within_padding(what: &str, ours: u64, seen: u64) {
    println!(
        "{what}: counted {ours} bytes, allocator {seen} (+{})",
        seen as i64 - ours as i64
    );
    assert!(seen >= ours, "{what}: the count exceeds what was allocated");
    assert!(
        seen - ours <= (256 << 10) + ours / 1000,
        "{what}: the allocator holds {} bytes more than the count",
        seen - ours
    );
}
