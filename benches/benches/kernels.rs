//! Every kernel family on the GPU against its CPU reference, at the default model's shapes
//! (L = 20, d = 64, h = 8, d_ff = 256, MLP 1024-512-256, the synthetic data's vocabularies):
//! the cases of `bst_kernels::workload`, one criterion group each (`kernels_b256/<case>`,
//! functions `cpu` and `gpu`).
//!
//! `cargo bench -p bst-benches --bench kernels [-- FILTER]`; batch 256, or
//! `BST_BENCH_BATCH=4096`. GPU time: criterion's iterations are recorded into one compute
//! pass (at most [`CALLS_PER_SUBMIT`] per submit), submitted, and waited for; only the
//! submit and the wait are timed, so launch overhead is amortised and the time per
//! iteration is the time per call in a long stream of work. Throughput: criterion's
//! "elem/s" are floating-point operations per second, its bytes/s the minimum traffic
//! (the cost model of `bst_kernels::workload`). On a software adapter (lavapipe) the
//! samples are fewer and shorter.

use std::time::Duration;

use bst_benches::{bench_batch, kernel_shapes};
use bst_core::config::{Config, DataConfig};
use bst_core::data::{self, DataSource};
use bst_core::model::Model;
use bst_kernels::gpu::{GpuContext, GpuOptions};
use bst_kernels::workload::{CpuWorkloads, GpuWorkloads};
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};

/// Most calls recorded into one pass and submit.
const CALLS_PER_SUBMIT: u64 = 64;

/// The default model on the synthetic data's vocabularies.
fn default_model() -> Model {
    let cfg = Config {
        data: DataConfig {
            synthetic_users: 300,
            ..Default::default()
        },
        ..Config::default()
    };
    let ds = data::load(&DataSource::Synthetic, &cfg).expect("synthetic data");
    Model::new(&cfg.model, ds.vocab.sizes())
}

fn kernels(c: &mut Criterion) {
    let batch = bench_batch();
    let shapes = kernel_shapes(&default_model(), batch);
    let opts = GpuOptions {
        allow_software: true,
        ..Default::default()
    };
    let gpu = match GpuContext::new(&opts) {
        Ok(ctx) => {
            eprintln!("adapter: {}", ctx.describe());
            let w = GpuWorkloads::new(&ctx, &shapes).expect("binding the kernel workloads");
            Some((ctx, w))
        }
        Err(e) => {
            eprintln!("no GPU ({e}); timing the CPU reference only");
            None
        }
    };
    let software = gpu.as_ref().is_some_and(|(ctx, _)| ctx.is_software());
    let mut cpu = CpuWorkloads::new(&shapes);
    let cases = cpu.cases().to_vec();
    for (i, case) in cases.iter().enumerate() {
        let mut g = c.benchmark_group(format!("kernels_b{batch}/{}", case.name));
        g.sample_size(10);
        if software {
            // Flat: as few as one call per sample for the slowest kernels.
            g.sampling_mode(SamplingMode::Flat);
            g.warm_up_time(Duration::from_millis(300));
            g.measurement_time(Duration::from_secs(1));
        }
        g.throughput(if case.flop > 0.0 {
            Throughput::ElementsAndBytes {
                elements: case.flop as u64,
                bytes: case.bytes as u64,
            }
        } else {
            Throughput::Bytes(case.bytes as u64)
        });
        g.bench_function("cpu", |b| b.iter(|| cpu.run(i)));
        if let Some((ctx, w)) = &gpu {
            g.bench_function("gpu", |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    let mut left = iters;
                    while left > 0 {
                        let calls = left.min(CALLS_PER_SUBMIT);
                        total += w.time_batched(ctx, i, calls as usize).expect("GPU run");
                        left -= calls;
                    }
                    total
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, kernels);
criterion_main!(benches);
