//! The whole training step and evaluation scoring on the GPU against the CPU backend, at
//! the default model (L = 20, d = 64, MLP 1024-512-256), and the scoring of 1,000
//! candidate items for one user (`score_1000_candidates`: `Backend::predict`, the GPU's
//! including the readback of the probabilities).
//!
//! The GPU training step is timed as training runs it: the batch's host preparation (its
//! embedding segments, `Backend::batch_preparer`), which training does ahead on the
//! prefetch thread, is done once before the timed loop; each timed step is
//! `train_step_prepared` (the fingerprint check of the prepared segments, the upload of
//! the batch and segments, one submit). The `host` bench times the preparation alone.
//!
//! `cargo bench -p bst-benches --bench gpu_step`. Batch 256 by default; set
//! `BST_BENCH_BATCH=4096` on a real GPU (lavapipe, the software driver, is far slower
//! than the CPU, so small sample counts are used there).

use bst_benches::{SCORING_CANDIDATES, bench_batch, bench_context, scoring_batch};
use bst_core::backend::{Backend, CpuBackend};
use bst_core::batch::Batch;
use bst_core::config::Config;
use bst_core::data::{self, DataSource};
use bst_core::gpu_backend::GpuBackend;
use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use std::time::Duration;

fn step(c: &mut Criterion) {
    let batch_size = bench_batch();
    let mut cfg = Config::synthetic(600);
    cfg.train.batch = batch_size;
    cfg.train.eval_batch = batch_size.max(SCORING_CANDIDATES);
    let ds = data::load(&DataSource::Synthetic, &cfg).expect("synthetic data");
    let sizes = ds.vocab.sizes();
    let batch = Batch::from_range(&ds.train, 0..batch_size);
    let ctx = bench_context();
    let software = ctx.is_software();
    let mut gpu = GpuBackend::init(ctx, &cfg, sizes).expect("GPU backend");
    let mut cpu = CpuBackend::new(&cfg, sizes);

    let mut g = group(c, format!("train_step_b{batch_size}"), software);
    g.throughput(Throughput::Elements(batch_size as u64));
    g.bench_function("cpu", |b| {
        b.iter(|| cpu.train_step(&batch).expect("CPU train step"))
    });
    g.finish();
    // Ten steps per iteration and one loss read, as the training loop does (one step on
    // a software adapter, where a step takes seconds and the read costs nothing beside).
    // The segments are prepared outside the timed loop, as training prepares them on its
    // producer thread; the batch never changes, so one preparation serves every step.
    let steps = if software { 1 } else { 10 };
    let preparer = gpu
        .batch_preparer()
        .expect("the GPU backend prepares batches");
    let mut prepared = preparer.prepare(&batch);
    let mut g = group(c, format!("train_{steps}_steps_b{batch_size}"), software);
    g.throughput(Throughput::Elements((steps * batch_size) as u64));
    g.bench_function("gpu", |b| {
        b.iter(|| {
            for _ in 0..steps {
                gpu.train_step_prepared(&batch, Some(&mut prepared))
                    .expect("GPU train step");
            }
            gpu.take_loss().expect("GPU loss read")
        })
    });
    g.finish();

    let predict = format!("predict_b{batch_size}");
    bench_predict(group(c, predict, software), &mut cpu, &mut gpu, &batch);
    let one_user = scoring_batch(&ds.train.samples(), &ds.vocab, SCORING_CANDIDATES);
    let score = format!("score_{SCORING_CANDIDATES}_candidates");
    bench_predict(group(c, score, software), &mut cpu, &mut gpu, &one_user);
}

/// `Backend::predict` of `batch` on the CPU and on the GPU (with the readback of the
/// probabilities), in group `g`.
fn bench_predict(
    mut g: BenchmarkGroup<'_, WallTime>,
    cpu: &mut CpuBackend,
    gpu: &mut GpuBackend,
    batch: &Batch,
) {
    let mut probs = vec![0.0; batch.size];
    g.throughput(Throughput::Elements(batch.size as u64));
    g.bench_function("cpu", |b| {
        b.iter(|| cpu.predict(batch, &mut probs).expect("CPU predict"))
    });
    g.bench_function("gpu_with_readback", |b| {
        b.iter(|| gpu.predict(batch, &mut probs).expect("GPU predict"))
    });
    g.finish();
}

/// Ten samples; on a software adapter, flat sampling (as few as one iteration per sample)
/// and short warm-up and measurement times, so the slowest group takes about 10 runs.
fn group(c: &mut Criterion, name: String, software: bool) -> BenchmarkGroup<'_, WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10);
    if software {
        g.sampling_mode(SamplingMode::Flat);
        g.warm_up_time(Duration::from_millis(500));
        g.measurement_time(Duration::from_secs(5));
    }
    g
}

criterion_group!(benches, step);
criterion_main!(benches);
