//! The example `examples/gpu_app.rs`, run as a test: its own functions (the application's
//! device, a tiny model trained on the CPU, candidates in its buffers, scoring and top-k
//! recorded into its encoder) must give `CpuBackend::predict`'s probabilities within
//! 1e-5 + 1e-4 relative, and the top k of the device's probabilities. Also: a scorer made
//! from a checkpoint saved and loaded gives the same scores, one with f16 embedding tables
//! those of the CPU model on f16-rounded tables (where the adapter has `SHADER_F16`), and
//! a device created with limits below the kernels' is refused with the limit named.
//!
//! Needs a Vulkan adapter (lavapipe is fine); `BST_SKIP_GPU_TESTS=1` skips.

mod common;
#[allow(dead_code)]
#[path = "../examples/gpu_app.rs"]
mod gpu_app;

use std::sync::Arc;
use std::time::Instant;

use bst_core::backend::{Backend, CpuBackend};
use bst_core::batch::Batch;
use bst_core::checkpoint::Checkpoint;
use bst_core::model::Model;
use bst_core::rank::top_k;
use bst_core::scorer::{GpuContext, Scorer, ScorerOptions, wgpu};
use bst_core::train::Progress;
use bst_kernels::cpu::embedding::f16_rounded;
use common::{assert_close, skip_gpu_tests};
use gpu_app::{AppGpu, app_gpu, score_top_k, tiny_model, write_candidates};

/// The application's device, or `None` (after a note) when GPU tests are skipped.
fn device(limits: wgpu::Limits) -> Option<AppGpu> {
    match app_gpu(limits) {
        Ok(gpu) => Some(gpu),
        Err(e) if skip_gpu_tests() => {
            eprintln!("note: BST_SKIP_GPU_TESTS=1, skipping a GPU test: {e}");
            None
        }
        Err(e) => panic!("no Vulkan adapter: {e}\n(set BST_SKIP_GPU_TESTS=1 to skip)"),
    }
}

fn shared(gpu: &AppGpu) -> Arc<GpuContext> {
    Arc::new(GpuContext::from_device(
        gpu.device.clone(),
        gpu.queue.clone(),
        gpu.info.clone(),
    ))
}

/// The scores the scorer left in the application's buffer.
fn read_scores(ctx: &GpuContext, c: &gpu_app::AppCandidates) -> Vec<f32> {
    ctx.read_f32(&c.scores, 0, c.rows()).expect("read scores")
}

#[test]
fn the_gpu_app_example_scores_as_the_cpu_and_selects_the_top_k() {
    let Some(gpu) = device(wgpu::Limits::default()) else {
        return;
    };
    let start = Instant::now();
    let model = tiny_model().expect("a tiny model");
    println!("trained in {:.1} s", start.elapsed().as_secs_f64());
    let c = write_candidates(&gpu, &model).expect("candidates");
    let ctx = shared(&gpu);
    let sizes = model.vocab.sizes();
    let scorer = Scorer::new(
        ctx.clone(),
        &model.config.model,
        sizes,
        model.params.clone(),
        c.rows(),
    )
    .expect("scorer on the application's device");
    let start = Instant::now();
    let top = score_top_k(&gpu, &scorer, &c, 10).expect("score and select");
    println!(
        "scored {} candidates and selected 10 in {:.2} s",
        c.rows(),
        start.elapsed().as_secs_f64()
    );
    let got = read_scores(&ctx, &c);

    let mut cpu = CpuBackend::with_params(
        &model.config,
        Model::new(&model.config.model, sizes),
        model.params.clone(),
    );
    let mut want = vec![0.0; c.rows()];
    cpu.predict(&Batch::from_range(&c.samples, 0..c.rows()), &mut want)
        .unwrap();
    assert_close("the example's scores", &got, &want);

    let expected: Vec<(u32, f32)> = top_k(&got, 10)
        .into_iter()
        .map(|(i, p)| (c.items[i], p))
        .collect();
    assert_eq!(top, expected, "the device's top 10 of its scores");
    println!("top 10: {top:?}");
    let spread =
        want.iter().fold(0.0f32, |m, &p| m.max(p)) - want.iter().fold(1.0f32, |m, &p| m.min(p));
    assert!(
        spread > 0.01,
        "the trained model scores the items alike ({spread})"
    );

    // A scorer of the same model, from a checkpoint written and read back.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("best.safetensors");
    let ckpt = Checkpoint {
        config: model.config.clone(),
        vocab: model.vocab.clone(),
        data_source: Some("synthetic".into()),
        progress: Progress::default(),
        params: model.params.clone(),
        optim: None,
        best_params: None,
    };
    ckpt.save(&path).expect("save");
    let loaded = Checkpoint::load(&path).expect("load");
    let from_ckpt = Scorer::from_checkpoint(ctx.clone(), &loaded, c.rows()).expect("scorer");
    let again = score_top_k(&gpu, &from_ckpt, &c, 10).expect("score and select");
    assert_eq!(again, top, "a scorer from the checkpoint");
    assert_eq!(read_scores(&ctx, &c), got, "the same scores, bit for bit");

    // The example requests SHADER_F16 where the adapter has it (lavapipe does): a scorer
    // with f16 tables on the application's device scores as the CPU model whose tables
    // are rounded to f16.
    if ctx.features.contains(wgpu::Features::SHADER_F16) {
        let opts = ScorerOptions {
            f16_embeddings: true,
        };
        let f16 = Scorer::from_checkpoint_with_options(ctx.clone(), &loaded, c.rows(), opts)
            .expect("f16 scorer on the application's device");
        score_top_k(&gpu, &f16, &c, 10).expect("score and select");
        let tables = cpu.model().layout.dense_range().start;
        let mut rounded = f16_rounded(&model.params[..tables]);
        rounded.extend_from_slice(&model.params[tables..]);
        cpu.write_params(&rounded).unwrap();
        cpu.predict(&Batch::from_range(&c.samples, 0..c.rows()), &mut want)
            .unwrap();
        assert_close(
            "f16 tables on the app's device",
            &read_scores(&ctx, &c),
            &want,
        );
    } else if common::skip_gpu_tests() {
        println!("{}: no SHADER_F16, f16 tables not tried", ctx.describe());
    } else {
        panic!(
            "{}: no SHADER_F16 on the example's device (lavapipe has it; \
             BST_SKIP_GPU_TESTS=1 to skip)",
            ctx.describe()
        );
    }
    ctx.check().expect("no wgpu error");
}

#[test]
fn a_device_below_the_kernels_limits_is_refused() {
    // WebGL2-class limits: 4 storage buffers per stage, the kernels bind up to 8.
    let Some(gpu) = device(wgpu::Limits::downlevel_defaults()) else {
        return;
    };
    let cfg = common::small_config(1, bst_core::config::Pooling::Target);
    let params = Model::new(&cfg.model, common::SIZES).layout.init(0);
    let e = Scorer::new(shared(&gpu), &cfg.model, common::SIZES, params, 4)
        .unwrap_err()
        .to_string();
    println!("{e}");
    assert!(
        e.contains("max_storage_buffers_per_shader_stage is 4, the kernels need at least 8"),
        "{e}"
    );
}
