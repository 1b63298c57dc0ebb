//! The benchmark workloads (`bst_benches::workload`): every case binds and runs on the
//! GPU without a validation error, on awkward shapes (not multiples of the workgroup
//! sizes, mean pooling), and runs on the CPU; the timers return positive times, with
//! device timestamps where the adapter has them.

// The GPU tests' shared device (one per binary, failing without an adapter).
#[path = "../../bst-kernels/tests/common/mod.rs"]
mod common;

use bst_benches::workload::{CpuWorkloads, GpuWorkloads, Shapes};
use bst_kernels::cpu::pooling::PoolMode;
use bst_kernels::gpu::{GpuContext, GpuOptions, wgpu};
use common::gpu;

fn shapes() -> Shapes {
    Shapes {
        batch: 7,
        seq_len: 5,
        widths: (6, 4, 2),
        heads: 3,
        d_ff: 20,
        fields: 3,
        d_other: 4,
        pool: PoolMode::Mean,
        mlp: vec![33, 17, 1],
        vocab: [50, 9, 16, 40],
        params: 3001,
        alpha: 0.01,
        dropout: 0.2,
    }
}

#[test]
fn every_case_runs_on_the_gpu_and_the_cpu() {
    let Some(ctx) = gpu() else { return };
    let s = shapes();
    let w = GpuWorkloads::new(ctx, &s).expect("workloads bind");
    assert!(w.allocated_bytes() > 0);
    let mut cpu = CpuWorkloads::new(&s);
    assert_eq!(w.cases(), cpu.cases());
    for i in 0..w.cases().len() {
        let t = w.time_batched(ctx, i, 3).expect("runs");
        assert!(t.as_nanos() > 0, "{}", w.cases()[i].name);
        let timing = w.time(ctx, i, 2).expect("times");
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
    let w = GpuWorkloads::new(&ctx, &shapes()).expect("workloads bind");
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
