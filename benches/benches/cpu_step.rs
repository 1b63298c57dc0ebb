//! CPU baseline: the reference ops at the default shapes (batch 256, L = 20, d = 64) and
//! one whole training step of the default model.
//!
//! `cargo bench -p bst-benches --bench cpu_step`

use bst_core::backend::{Backend, CpuBackend};
use bst_core::batch::Batch;
use bst_core::config::Config;
use bst_core::data::{self, DataSource};
use bst_kernels::cpu::attention::{attention_backward, attention_forward};
use bst_kernels::cpu::layernorm::{layernorm_backward, layernorm_forward};
use bst_kernels::cpu::matmul::{matmul_backward, matmul_forward};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

const B: usize = 256;
const T: usize = 21;
const D: usize = 64;
const H: usize = 8;

fn filled(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}

fn ops(c: &mut Criterion) {
    let n = B * T;
    let mut g = c.benchmark_group("cpu_ops");
    g.sample_size(20);
    let (x, w, bias) = (filled(n * D), filled(3 * D * D), filled(3 * D));
    let mut qkv = vec![0.0; n * 3 * D];
    g.throughput(Throughput::Elements(B as u64));
    g.bench_function("qkv_forward", |b| {
        b.iter(|| matmul_forward(&mut qkv, &x, &w, Some(&bias), n, D, 3 * D))
    });
    let (mut dx, mut dw, mut db) = (vec![0.0; n * D], vec![0.0; 3 * D * D], vec![0.0; 3 * D]);
    g.bench_function("qkv_backward", |b| {
        b.iter(|| {
            matmul_backward(
                Some(&mut dx),
                &mut dw,
                Some(&mut db),
                &qkv,
                &x,
                &w,
                n,
                D,
                3 * D,
            )
        })
    });
    let valid = vec![1u32; n];
    let (mut out, mut att) = (vec![0.0; n * D], vec![0.0; B * H * T * T]);
    g.bench_function("attention_forward", |b| {
        b.iter(|| attention_forward(&mut out, &mut att, &qkv, &valid, B, T, D, H))
    });
    let mut dqkv = vec![0.0; n * 3 * D];
    g.bench_function("attention_backward", |b| {
        b.iter(|| attention_backward(&mut dqkv, &out, &att, &qkv, B, T, D, H))
    });
    let (lw, lb) = (vec![1.0; D], vec![0.0; D]);
    let (mut mean, mut rstd) = (vec![0.0; n], vec![0.0; n]);
    g.bench_function("layernorm_forward", |b| {
        b.iter(|| layernorm_forward(&mut out, &mut mean, &mut rstd, &x, &lw, &lb, n, D))
    });
    let (mut dlw, mut dlb) = (vec![0.0; D], vec![0.0; D]);
    g.bench_function("layernorm_backward", |b| {
        b.iter(|| {
            layernorm_backward(
                &mut dx, &mut dlw, &mut dlb, &out, &x, &lw, &mean, &rstd, n, D,
            )
        })
    });
    g.finish();
}

fn step(c: &mut Criterion) {
    let cfg = Config::synthetic(300);
    let ds = data::load(&DataSource::Synthetic, &cfg).expect("synthetic data");
    let sizes = ds.vocab.sizes();
    let mut backend = CpuBackend::new(&cfg, sizes);
    let batch = Batch::from_range(&ds.train, 0..cfg.train.batch);
    let mut g = c.benchmark_group("cpu_step");
    g.sample_size(10);
    g.throughput(Throughput::Elements(cfg.train.batch as u64));
    g.bench_function("train_step_b256", |b| {
        b.iter(|| {
            backend
                .train_step(black_box(&batch))
                .expect("CPU train step")
        })
    });
    let mut probs = vec![0.0; cfg.train.batch];
    g.bench_function("predict_b256", |b| {
        b.iter(|| backend.predict(&batch, &mut probs).expect("CPU predict"))
    });
    g.finish();
}

criterion_group!(benches, ops, step);
criterion_main!(benches);
