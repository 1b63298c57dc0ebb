//! Every kernel family on the GPU against its CPU reference, at the default model's shapes
//! (L = 20, d = 64, h = 8, d_ff = 256, MLP 1024-512-256, the synthetic data's vocabularies):
//! the cases of `bst_benches::workload`, one criterion group each (`kernels_b256/<case>`,
//! functions `cpu` and `gpu`).
//!
//! `cargo bench -p bst-benches --bench kernels [-- FILTER]`; batch 256, or
//! `BST_BENCH_BATCH=4096`. GPU time: criterion's iterations are recorded into one compute
//! pass (at most [`CALLS_PER_SUBMIT`] per submit), submitted, and waited for; only the
//! submit and the wait are timed, so launch overhead is amortised and the time per
//! iteration is the time per call in a long stream of work. Throughput: criterion's
//! "elem/s" are floating-point operations per second, its bytes/s the minimum traffic
//! (the cost model of `bst_benches::workload`). On a software adapter (lavapipe) the
//! samples are fewer and shorter.
//!
//! `embedding_gather_1m_items_b<B>`: the embedding forward (token and other-feature
//! gathers) with an item vocabulary of 1,000,000, from f32 tables (`gpu_f32`) and from f16
//! tables (`gpu_f16`, `EmbeddingKernels::bind_f16`; needs a device with `SHADER_F16`),
//! timed as above; bytes/s count the table rows read and the activations written.

use bst_kernels::gpu::Site;
use std::sync::Arc;
use std::time::Duration;

use bst_benches::workload::{CpuWorkloads, GpuWorkloads};
use bst_benches::{bench_batch, kernel_shapes};
use bst_core::config::Config;
use bst_core::data::{self, DataSource};
use bst_core::model::Model;
use bst_kernels::cpu::embedding::f16_table;
use bst_kernels::gpu::embedding::{
    EmbeddingBinding, EmbeddingBuffers, EmbeddingDims, EmbeddingKernels,
};
use bst_kernels::gpu::{GpuContext, GpuOptions, TensorRef, wgpu};
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};

/// Most calls recorded into one pass and submit.
const CALLS_PER_SUBMIT: u64 = 64;

/// The default model on the synthetic data's vocabularies.
fn default_model() -> Model {
    let cfg = Config::synthetic(300);
    let ds = data::load(&DataSource::Synthetic, &cfg).expect("synthetic data");
    Model::new(&cfg.model, ds.vocab.sizes())
}

fn kernels(c: &mut Criterion) {
    let batch = bench_batch();
    let model = default_model();
    let shapes = kernel_shapes(&model, batch);
    let opts = GpuOptions {
        allow_software: true,
        ..Default::default()
    };
    let gpu = match GpuContext::new(&opts) {
        Ok(ctx) => {
            eprintln!("adapter: {}", ctx.describe());
            let ctx = Arc::new(ctx);
            let w = GpuWorkloads::new(&ctx, &model, batch).expect("binding the kernel workloads");
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

/// Times `calls` embedding forwards recorded into one pass, submitted and waited for.
fn time_gathers(
    ctx: &GpuContext,
    k: &EmbeddingKernels,
    b: &EmbeddingBinding,
    calls: u64,
) -> Duration {
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        for _ in 0..calls {
            k.token_embedding_forward(&mut pass, b);
            k.other_embedding_forward(&mut pass, b);
        }
    }
    let start = std::time::Instant::now();
    ctx.queue.submit([encoder.finish()]);
    ctx.device
        .poll(wgpu::PollType::wait_indefinitely())
        .expect("GPU run");
    start.elapsed()
}

fn embedding_f16(c: &mut Criterion) {
    let opts = GpuOptions {
        allow_software: true,
        ..Default::default()
    };
    let ctx = match GpuContext::with_optional_features(&opts, wgpu::Features::SHADER_F16) {
        Ok(ctx) if ctx.features.contains(wgpu::Features::SHADER_F16) => ctx,
        Ok(ctx) => return eprintln!("{} lacks SHADER_F16: no f16 gather to time", ctx.describe()),
        Err(e) => return eprintln!("no GPU ({e}): no f16 gather to time"),
    };
    let (b, l, f) = (bench_batch(), 20usize, 4usize);
    let (t, d) = (l + 1, 64usize);
    let dims = EmbeddingDims {
        rows: b as u32,
        seq_len: l as u32,
        d_item: 32,
        d_cat: 16,
        d_pos: 16,
        fields: f as u32,
        d_other: 16,
        z_width: (d + 16 * f) as u32,
        z_off: d as u32,
        n_item: 1_000_000,
        n_cat: 1_000,
        n_pos: 64,
        n_other: 100,
    };
    // Tables in one arena, item, cat, pos, other; ids spread over each vocabulary.
    let lens = [
        dims.n_item * dims.d_item,
        dims.n_cat * dims.d_cat,
        dims.n_pos * dims.d_pos,
        dims.n_other * dims.d_other,
    ]
    .map(|n| n as usize);
    let table: Vec<f32> = (0..lens.iter().sum::<usize>())
        .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 500.0)
        .collect();
    let offs = [0, lens[0], lens[0] + lens[1], lens[0] + lens[1] + lens[2]].map(|o| o as u32);
    let ids = |n: usize, vocab: u32, seed: usize| -> Vec<u32> {
        (0..n)
            .map(|i| ((i * 2_654_435_761 + seed) % vocab as usize) as u32)
            .collect()
    };
    let mut id_data = Vec::new();
    let mut id_at = Vec::new();
    for (n, vocab) in [
        (b * l, dims.n_item),
        (b, dims.n_item),
        (b * l, dims.n_cat),
        (b, dims.n_cat),
        (b * l, dims.n_pos),
        (b * f, dims.n_other),
    ] {
        id_at.push(id_data.len() as u32);
        id_data.extend(ids(n, vocab, id_at.len()));
    }
    let f32_tables = ctx.storage_buffer("f32 tables", &table);
    let f16_tables = ctx.storage_buffer("f16 tables", &f16_table(&table));
    let id_buf = ctx.storage_buffer("ids", &id_data);
    let x = ctx.storage_buffer_zeroed("x (B, T, d)", b * t * d);
    let z = ctx.storage_buffer_zeroed("z (B, zw)", b * dims.z_width as usize);
    let k = EmbeddingKernels::new(&ctx).expect("embedding kernels");
    let bufs = |tables| EmbeddingBuffers {
        x: TensorRef::whole(&x),
        z: TensorRef::whole(&z),
        e_item: TensorRef::new(tables, offs[0]),
        e_cat: TensorRef::new(tables, offs[1]),
        e_pos: TensorRef::new(tables, offs[2]),
        e_other: TensorRef::new(tables, offs[3]),
        hist_item: TensorRef::new(&id_buf, id_at[0]),
        target_item: TensorRef::new(&id_buf, id_at[1]),
        hist_cat: TensorRef::new(&id_buf, id_at[2]),
        target_cat: TensorRef::new(&id_buf, id_at[3]),
        hist_pos: TensorRef::new(&id_buf, id_at[4]),
        other: TensorRef::new(&id_buf, id_at[5]),
    };
    let f32_binding = k
        .bind(&ctx, Site::forward(bufs(&f32_tables), dims))
        .expect("bind");
    let f16_binding = k
        .bind_f16(&ctx, &bufs(&f16_tables), dims)
        .expect("bind_f16");
    // Values gathered (= written) per call.
    let values = (b * t * d + b * f * 16) as u64;
    let mut g = c.benchmark_group(format!("embedding_gather_1m_items_b{b}"));
    g.sample_size(10);
    if ctx.is_software() {
        g.sampling_mode(SamplingMode::Flat);
        g.warm_up_time(Duration::from_millis(300));
        g.measurement_time(Duration::from_secs(1));
    }
    for (name, binding, table_bytes) in [("gpu_f32", &f32_binding, 4), ("gpu_f16", &f16_binding, 2)]
    {
        g.throughput(Throughput::Bytes(values * (4 + table_bytes)));
        g.bench_function(name, |bench| {
            bench.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let calls = left.min(CALLS_PER_SUBMIT);
                    total += time_gathers(&ctx, &k, binding, calls);
                    left -= calls;
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(benches, kernels, embedding_f16);
criterion_main!(benches);
