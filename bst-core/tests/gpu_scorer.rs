//! The library API for GPU programs against the CPU reference: `Scorer` (ids in the
//! application's buffers, scoring recorded into its encoder) gives `CpuBackend::predict`'s
//! probabilities within 1e-5 + 1e-4 relative, for several records in one submission, a
//! partial batch, tensors at offsets inside bigger buffers, and every pooling; bad
//! buffers are refused with the tensor named. `GpuBackend::predict_top_k` selects on the
//! device exactly what the host selects from the same probabilities.
//!
//! f16 embedding tables (`ScorerOptions::f16_embeddings`): the scores equal those of the
//! CPU model whose tables are rounded to f16 within the same 1e-5 + 1e-4 relative (the
//! gather is exact; the rest is the f32 model), also after `write_params`; against the
//! f32 model the test prints the max difference (about 1e-5 here, from the rounding of
//! the tables by up to 2^-11 relative). A device without `SHADER_F16` is refused.

mod common;

use std::ops::Range;
use std::time::Instant;

use bst_core::backend::{Backend, CpuBackend};
use bst_core::batch::Batch;
use bst_core::config::Pooling;
use bst_core::data::Samples;
use bst_core::gpu_backend::GpuBackend;
use bst_core::model::Model;
use bst_core::rank::top_k;
use bst_core::scorer::{
    CandidateBuffers, GpuContext, GpuError, Scorer, ScorerError, ScorerOptions, TensorRef, wgpu,
};
use bst_core::train::predict_all;
use bst_kernels::cpu::embedding::f16_rounded;
use common::{SIZES, assert_close, gpu, gpu_f16, random_samples, small_config};

/// Words of garbage before each tensor in the application's buffers.
const PAD: u32 = 3;

const APP_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// An application buffer: `PAD` garbage words, then `data` (zeros without `COPY_DST`).
fn app_buffer(
    ctx: &GpuContext,
    label: &str,
    data: &[u32],
    usage: wgpu::BufferUsages,
) -> wgpu::Buffer {
    let mut words = vec![0xffff_fff0u32; PAD as usize];
    words.extend_from_slice(data);
    let buffer = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: 4 * words.len() as u64,
        usage,
        mapped_at_creation: false,
    });
    if usage.contains(wgpu::BufferUsages::COPY_DST) {
        ctx.write(&buffer, 0, &words);
    }
    buffer
}

/// The six id buffers of samples `rows` of `s`, each starting at element `PAD`.
struct AppIds {
    rows: usize,
    bufs: Vec<wgpu::Buffer>,
}

impl AppIds {
    fn new(ctx: &GpuContext, s: &Samples, rows: Range<usize>) -> AppIds {
        let (l, f) = (s.seq_len, s.fields);
        let part = |v: &[u32], w: usize| v[rows.start * w..rows.end * w].to_vec();
        let bufs = [
            ("hist_item", part(&s.hist_item, l)),
            ("hist_cat", part(&s.hist_cat, l)),
            ("hist_pos", part(&s.hist_pos, l)),
            ("target_item", part(&s.target_item, 1)),
            ("target_cat", part(&s.target_cat, 1)),
            ("other", part(&s.other, f)),
        ]
        .iter()
        .map(|(name, data)| app_buffer(ctx, name, data, APP_USAGE))
        .collect();
        AppIds {
            rows: rows.len(),
            bufs,
        }
    }

    /// The candidates, scored into `scores` from element `at`.
    fn candidates<'a>(&'a self, scores: &'a wgpu::Buffer, at: u32) -> CandidateBuffers<'a> {
        let t = |i: usize| TensorRef::new(&self.bufs[i], PAD);
        CandidateBuffers {
            rows: self.rows,
            hist_item: t(0),
            hist_cat: t(1),
            hist_pos: t(2),
            target_item: t(3),
            target_cat: t(4),
            other: t(5),
            scores: TensorRef::new(scores, at),
        }
    }
}

/// A CPU backend after two training steps (so the parameters are not the initial ones).
fn trained_cpu(cfg: &bst_core::config::Config, samples: &Samples) -> CpuBackend {
    let mut cpu = CpuBackend::new(cfg, SIZES);
    for rows in [0..7, 7..14] {
        cpu.train_step(&Batch::from_range(samples, rows)).unwrap();
    }
    cpu
}

#[test]
fn scorer_records_into_the_apps_encoder_and_matches_cpu_predict() {
    let Some(ctx) = gpu() else { return };
    for (blocks, pooling) in [
        (1, Pooling::Target),
        (2, Pooling::Mean),
        (1, Pooling::Flatten),
        (0, Pooling::Mean),
    ] {
        let start = Instant::now();
        let what = format!("blocks {blocks}, {pooling:?}");
        let cfg = small_config(blocks, pooling);
        let samples = random_samples(23, &cfg.model, 5);
        let mut cpu = trained_cpu(&cfg, &samples);
        let want = predict_all(&mut cpu, &samples, 23).unwrap();
        let scorer =
            Scorer::new(ctx.clone(), &cfg.model, SIZES, cpu.params.clone(), 9).expect("scorer");
        assert_eq!((scorer.rows(), scorer.max_rows()), (9, 9));
        // Three records in one encoder, one submission: rows 9, 9, 5, each from its own
        // buffers, into one scores buffer at 2, 11, 20.
        let scores = app_buffer(&ctx, "scores", &[0; 30], APP_USAGE);
        let ids: Vec<AppIds> = [0..9, 9..18, 18..23]
            .into_iter()
            .map(|r| AppIds::new(&ctx, &samples, r))
            .collect();
        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("app") });
        for (i, chunk) in ids.iter().enumerate() {
            let at = 2 + 9 * i as u32;
            scorer
                .record(&mut encoder, &chunk.candidates(&scores, at))
                .expect("record");
        }
        ctx.queue.submit([encoder.finish()]);
        let got = ctx.read_f32(&scores, 2, 23).expect("read scores");
        assert_close(&format!("{what}: scores"), &got, &want);
        println!("{what}: {:.2} s", start.elapsed().as_secs_f64());
    }
}

#[test]
fn set_rows_computes_fewer_and_bad_candidates_are_refused() {
    let Some(ctx) = gpu() else { return };
    let cfg = small_config(1, Pooling::Mean);
    let samples = random_samples(9, &cfg.model, 6);
    let mut cpu = trained_cpu(&cfg, &random_samples(14, &cfg.model, 8));
    let want = predict_all(&mut cpu, &samples, 9).unwrap();
    let mut scorer =
        Scorer::new(ctx.clone(), &cfg.model, SIZES, cpu.params.clone(), 9).expect("scorer");
    let scores = app_buffer(&ctx, "scores", &[0; 9], APP_USAGE);
    let record = |scorer: &Scorer, ids: &AppIds| {
        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("app") });
        let r = scorer.record(&mut encoder, &ids.candidates(&scores, PAD));
        ctx.queue.submit([encoder.finish()]);
        r
    };

    // A partial batch: 5 rows computed, 4 scored.
    scorer.set_rows(5).expect("5 <= 9");
    assert_eq!(scorer.rows(), 5);
    record(&scorer, &AppIds::new(&ctx, &samples, 0..4)).expect("4 <= 5 rows");
    let got = ctx.read_f32(&scores, PAD, 4).expect("read");
    assert_close("4 of 5 rows", &got, &want[..4]);
    let e = record(&scorer, &AppIds::new(&ctx, &samples, 0..6)).unwrap_err();
    assert!(
        matches!(
            e,
            ScorerError::Rows {
                rows: 6,
                computed: 5,
                max: 9
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("Scorer::set_rows"), "{e}");
    let e = scorer.set_rows(10).unwrap_err().to_string();
    assert!(e.contains("10 candidate rows"), "{e}");
    scorer.set_rows(9).expect("back to 9");
    record(&scorer, &AppIds::new(&ctx, &samples, 0..9)).expect("9 rows");
    let got = ctx.read_f32(&scores, PAD, 9).expect("read");
    assert_close("9 rows", &got, &want);

    // Too small, and without the usage a copy needs.
    let ids = AppIds::new(&ctx, &samples, 0..9);
    let short = app_buffer(&ctx, "short", &[1; 8], APP_USAGE);
    let mut c = ids.candidates(&scores, PAD);
    c.target_item = TensorRef::new(&short, PAD);
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    let e = scorer.record(&mut encoder, &c).unwrap_err().to_string();
    println!("{e}");
    assert!(
        e.contains("candidate buffer `target_item (rows)`: elements 3..12 (9 for these rows)"),
        "{e}"
    );
    let no_copy = app_buffer(
        &ctx,
        "no copy",
        &[0; 45],
        wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::STORAGE,
    );
    let mut c = ids.candidates(&scores, PAD);
    c.hist_pos = TensorRef::new(&no_copy, PAD);
    let e = scorer.record(&mut encoder, &c).unwrap_err().to_string();
    println!("{e}");
    assert!(
        e.contains("`hist_pos (rows, L)`: the buffer lacks COPY_SRC usage"),
        "{e}"
    );
    let read_only = app_buffer(
        &ctx,
        "scores",
        &[0; 9],
        wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::STORAGE,
    );
    let e = scorer
        .record(&mut encoder, &ids.candidates(&read_only, PAD))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`scores (rows)`: the buffer lacks COPY_DST usage"),
        "{e}"
    );
    ctx.queue.submit([encoder.finish()]);
    ctx.check().expect("no wgpu error: nothing was recorded");
    let e = scorer.write_params(&[0.0; 3]).unwrap_err().to_string();
    assert!(e.contains("3 values given"), "{e}");
}

#[test]
fn predict_top_k_selects_on_the_device_as_the_host_does() {
    let Some(ctx) = gpu() else { return };
    let mut cfg = small_config(1, Pooling::Target);
    cfg.train.eval_batch = 2100; // two top-k passes
    let samples = random_samples(2100, &cfg.model, 9);
    let mut cpu = trained_cpu(&cfg, &samples);
    let model = Model::new(&cfg.model, SIZES);
    let mut gpu = GpuBackend::new(ctx.clone(), &cfg, model, cpu.params.clone()).expect("GPU");
    let start = Instant::now();
    for (n, k) in [
        (2100, 10),
        (2100, 1024),
        (2100, 1500),
        (1, 1),
        (7, 7),
        (300, 500),
        (50, 0),
        (2100, 3), // k back down on the full batch: one binding serves every k
    ] {
        let batch = Batch::from_range(&samples, 0..n);
        let mut probs = vec![0.0; n];
        gpu.predict(&batch, &mut probs).unwrap();
        let got = gpu.predict_top_k(&batch, k).unwrap();
        let want = top_k(&probs, k);
        assert_eq!(
            got, want,
            "n {n}, k {k}: the device's top k of its probabilities"
        );
        // Against the CPU: the same scores at every rank, within the tolerance.
        let mut cpu_probs = vec![0.0; n];
        cpu.predict(&batch, &mut cpu_probs).unwrap();
        let at_rank = |v: &[(usize, f32)]| v.iter().map(|p| p.1).collect::<Vec<_>>();
        assert_close(
            &format!("n {n}, k {k}: scores by rank"),
            &at_rank(&got),
            &at_rank(&top_k(&cpu_probs, k)),
        );
    }
    println!("predict_top_k: {:.2} s", start.elapsed().as_secs_f64());
}

/// Scores all of `samples` with `scorer` (rows at most its max_rows), in one submission.
fn score_all(ctx: &GpuContext, scorer: &Scorer, samples: &Samples) -> Vec<f32> {
    let n = samples.len();
    let max = scorer.max_rows();
    let scores = app_buffer(ctx, "scores", &vec![0; n], APP_USAGE);
    let chunks: Vec<AppIds> = (0..n)
        .step_by(max)
        .map(|s| AppIds::new(ctx, samples, s..(s + max).min(n)))
        .collect();
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    for (i, chunk) in chunks.iter().enumerate() {
        let at = PAD + (i * max) as u32;
        scorer
            .record(&mut encoder, &chunk.candidates(&scores, at))
            .expect("record");
    }
    ctx.queue.submit([encoder.finish()]);
    ctx.read_f32(&scores, PAD, n).expect("read scores")
}

/// The parameters with the four embedding tables rounded to f16 (what the f16 scorer
/// holds).
fn with_f16_tables(model: &Model, params: &[f32]) -> Vec<f32> {
    let tables = model.layout.dense_range().start;
    let mut p = f16_rounded(&params[..tables]);
    p.extend_from_slice(&params[tables..]);
    p
}

#[test]
fn f16_tables_score_as_the_cpu_model_with_f16_rounded_tables() {
    let Some(ctx) = gpu_f16() else { return };
    let mut odd = small_config(2, Pooling::Mean);
    // Widths 7 + 4 + 5 and 7 position buckets: the tables hold an odd number of values.
    (odd.model.d_item, odd.model.d_pos, odd.model.pos_buckets) = (7, 5, 7);
    odd.validate().expect("a valid config");
    for cfg in [small_config(1, Pooling::Target), odd] {
        let what = format!("blocks {}, {:?}", cfg.model.blocks, cfg.model.pooling);
        let samples = random_samples(23, &cfg.model, 5);
        let mut cpu = trained_cpu(&cfg, &samples);
        let model = Model::new(&cfg.model, SIZES);
        let params = cpu.params.clone();
        let f32_scores = predict_all(&mut cpu, &samples, 23).unwrap();
        cpu.write_params(&with_f16_tables(&model, &params)).unwrap();
        let want = predict_all(&mut cpu, &samples, 23).unwrap();

        let opts = ScorerOptions {
            f16_embeddings: true,
        };
        let mut scorer =
            Scorer::with_options(ctx.clone(), &cfg.model, SIZES, params.clone(), 9, opts)
                .expect("f16 scorer");
        assert_eq!(scorer.options(), opts);
        let got = score_all(&ctx, &scorer, &samples);
        assert_close(
            &format!("{what}: f16 tables vs CPU on rounded tables"),
            &got,
            &want,
        );
        let f32_scorer =
            Scorer::new(ctx.clone(), &cfg.model, SIZES, params.clone(), 9).expect("scorer");
        let got_f32 = score_all(&ctx, &f32_scorer, &samples);
        let max_diff = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max)
        };
        println!(
            "{what}: f16 tables vs f32 scorer: max |difference| {:.3e} (f32 scorer vs CPU \
             f32: {:.3e})",
            max_diff(&got, &got_f32),
            max_diff(&got_f32, &f32_scores)
        );
        // The f16 scorer really reads rounded tables: it is much nearer the CPU on
        // rounded tables than the f32 scorer is (measured: about 6e-8 against 1e-5).
        let (d16, d32) = (max_diff(&got, &want), max_diff(&got_f32, &want));
        assert!(
            d32 > 0.0 && d16 < d32 / 4.0,
            "{what}: f16 scorer {d16:.3e} and f32 scorer {d32:.3e} from the rounded CPU"
        );
        assert!(max_diff(&got, &got_f32) < 1e-4, "f16 tables far from f32");

        // write_params rounds the new tables again.
        let mut cpu = trained_cpu(&cfg, &random_samples(14, &cfg.model, 8));
        let params = cpu.params.clone();
        scorer.write_params(&params).expect("write_params");
        cpu.write_params(&with_f16_tables(&model, &params)).unwrap();
        let want = predict_all(&mut cpu, &samples, 23).unwrap();
        let got = score_all(&ctx, &scorer, &samples);
        assert_close(&format!("{what}: after write_params"), &got, &want);
        ctx.check().expect("no wgpu error");
    }
}

#[test]
fn f16_tables_on_a_device_without_shader_f16_are_refused() {
    // `gpu()` is created without optional features.
    let Some(ctx) = gpu() else { return };
    let cfg = small_config(1, Pooling::Target);
    let params = Model::new(&cfg.model, SIZES).layout.init(0);
    let opts = ScorerOptions {
        f16_embeddings: true,
    };
    let e = Scorer::with_options(ctx.clone(), &cfg.model, SIZES, params, 9, opts).unwrap_err();
    assert!(
        matches!(e, ScorerError::Gpu(GpuError::MissingFeature(_))),
        "{e:?}"
    );
    let msg = e.to_string();
    println!("{msg}");
    assert!(
        msg.contains("SHADER_F16") && msg.contains("with_optional_features"),
        "{msg}"
    );
}
