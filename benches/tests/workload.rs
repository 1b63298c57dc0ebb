//! The benchmark workloads (`bst_benches::workload`): every case binds and runs on the
//! GPU without a validation error, on awkward shapes (not multiples of the workgroup
//! sizes, mean pooling), and runs on the CPU; the timers return positive times, with
//! device timestamps where the adapter has them.

// The GPU tests' shared device (one per binary, failing without an adapter).
#[path = "../../bst-core/tests/common/mod.rs"]
mod common;

use std::sync::Arc;

use bst_benches::kernel_shapes;
use bst_benches::workload::{CpuWorkloads, GpuWorkloads, Shapes};
use bst_core::config::{ModelConfig, Pooling};
use bst_core::model::Model;
use bst_core::params::VocabSizes;
use bst_kernels::gpu::{GpuContext, GpuOptions, wgpu};
use common::gpu;

/// Batch 7 of a model with awkward shapes: d = 6 + 4 + 2, 3 heads, d_ff = 20 (< 3d: dqkv
/// in its own scratch), mean pooling, MLP 33-17-1.
fn model() -> (Model, usize) {
    let cfg = ModelConfig {
        seq_len: 5,
        d_item: 6,
        d_cat: 4,
        d_pos: 2,
        heads: 3,
        d_ff: 20,
        blocks: 1,
        d_other: 4,
        mlp: vec![33, 17],
        pooling: Pooling::Mean,
        dropout: 0.2,
        ..ModelConfig::default()
    };
    let sizes = VocabSizes {
        items: 50,
        cats: 9,
        other: 40,
        fields: 3,
    };
    (Model::new(&cfg, sizes), 7)
}

fn shapes() -> Shapes {
    let (m, batch) = model();
    kernel_shapes(&m, batch)
}

#[test]
fn every_case_runs_on_the_gpu_and_the_cpu() {
    let Some(ctx) = gpu() else { return };
    let (s, (m, batch)) = (shapes(), model());
    let w = GpuWorkloads::new(&ctx, &m, batch).expect("workloads bind");
    assert!(w.allocated_bytes() > 0);
    let mut cpu = CpuWorkloads::new(&s);
    assert_eq!(w.cases(), cpu.cases());
    for i in 0..w.cases().len() {
        let t = w.time_batched(&ctx, i, 3).expect("runs");
        assert!(t.as_nanos() > 0, "{}", w.cases()[i].name);
        let timing = w.time(&ctx, i, 2).expect("times");
        assert!(timing.seconds > 0.0 && !timing.timestamps);
        cpu.run(i);
        cpu.run(i);
    }
}

#[test]
fn timestamps_time_each_call_where_the_adapter_has_them() {
    if gpu().is_none() {
        return;
    }
    let opts = GpuOptions {
        backends: wgpu::Backends::VULKAN,
        allow_software: true,
        ..Default::default()
    };
    let ctx = GpuContext::with_optional_features(&opts, wgpu::Features::TIMESTAMP_QUERY)
        .expect("a device");
    let ctx = Arc::new(ctx);
    let (m, batch) = model();
    let w = GpuWorkloads::new(&ctx, &m, batch).expect("workloads bind");
    let qkv = w
        .cases()
        .iter()
        .position(|c| c.name == "qkv_forward")
        .unwrap();
    if !ctx.has_timestamps() {
        println!("{} has no TIMESTAMP_QUERY", ctx.describe());
        assert!(w.time_with_timestamps(&ctx, qkv, 2).is_err());
        return;
    }
    let secs = w.time_with_timestamps(&ctx, qkv, 4).expect("timestamps");
    println!("{}: qkv_forward {secs:?} s", ctx.describe());
    assert_eq!(secs.len(), 4);
    assert!(secs.iter().all(|&s| s.is_finite() && s >= 0.0));
    assert!(w.time(&ctx, qkv, 3).unwrap().timestamps);
}
