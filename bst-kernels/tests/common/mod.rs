//! Shared by the GPU tests: one device per test binary, seeded data, tolerant comparison.
//!
//! The device is lavapipe (or any Vulkan adapter, software allowed). When none is found
//! the tests fail with the reason, unless `BST_SKIP_GPU_TESTS=1`, which turns every GPU
//! test into a printed note.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::sync::OnceLock;

use std::ops::Range;

use bst_kernels::gpu::{GpuContext, GpuOptions, TensorRef, wgpu};

static GPU: OnceLock<Result<GpuContext, String>> = OnceLock::new();
static GPU_F16: OnceLock<Result<GpuContext, String>> = OnceLock::new();

/// The shared device, or `None` (after printing a note) when GPU tests are skipped.
pub fn gpu() -> Option<&'static GpuContext> {
    shared_device(&GPU, wgpu::Features::empty())
}

/// As [`gpu`], a device created with `SHADER_F16` (for the f16 embedding gather); a
/// test failure when the adapter lacks it (lavapipe has it), unless `BST_SKIP_GPU_TESTS=1`.
pub fn gpu_f16() -> Option<&'static GpuContext> {
    shared_device(&GPU_F16, wgpu::Features::SHADER_F16)
}

/// The device in `cell`, created on first use on the Vulkan backend with the `required`
/// features; `None` (after a note) when it fails and `BST_SKIP_GPU_TESTS=1`, else a panic.
fn shared_device(
    cell: &'static OnceLock<Result<GpuContext, String>>,
    required: wgpu::Features,
) -> Option<&'static GpuContext> {
    let ctx = cell.get_or_init(|| {
        let opts = GpuOptions {
            // Pinned: with all backends, a GL adapter without the needed limits may win.
            backends: wgpu::Backends::VULKAN,
            adapter_name: None,
            allow_software: true,
        };
        let ctx = GpuContext::with_optional_features(&opts, required).map_err(|e| e.to_string())?;
        if !ctx.features.contains(required) {
            return Err(format!("the adapter {} lacks {required:?}", ctx.describe()));
        }
        eprintln!("{}", ctx.limits_report());
        Ok(ctx)
    });
    match ctx {
        Ok(ctx) => Some(ctx),
        Err(e) if std::env::var("BST_SKIP_GPU_TESTS").is_ok_and(|v| v == "1") => {
            eprintln!("note: BST_SKIP_GPU_TESTS=1, skipping a GPU test: {e}");
            None
        }
        Err(e) => panic!("{e}\n(set BST_SKIP_GPU_TESTS=1 to skip the GPU tests)"),
    }
}

/// Records a compute pass with `record`, submits it, and waits for the GPU; fails on any
/// wgpu validation error raised meanwhile.
pub fn run(ctx: &GpuContext, record: impl FnOnce(&mut wgpu::ComputePass)) {
    let mut encoder = ctx
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("test"),
        });
    {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("test"),
            timestamp_writes: None,
        });
        record(&mut pass);
    }
    ctx.queue.submit([encoder.finish()]);
    ctx.device
        .poll(wgpu::PollType::wait_indefinitely())
        .expect("poll");
    ctx.check().expect("wgpu error during the test");
}

/// `n` values uniform in [-1, 1), from a fixed seed (64-bit LCG, top 24 bits).
pub fn random_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

/// Asserts `|got - want| <= atol + rtol * |want|` everywhere; prints the max error and
/// the largest fraction of the tolerance used (what a tolerance is tightened by), and
/// on failure the first mismatching pairs.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let (mut max_err, mut max_used) = (0.0f32, 0.0f32);
    let mut bad = Vec::new();
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        let tol = atol + rtol * w.abs();
        max_err = max_err.max(err);
        max_used = max_used.max(err / tol);
        if err.is_nan() || err > tol {
            bad.push((i, g, w));
        }
    }
    println!(
        "{what}: {} values, max |gpu - cpu| = {max_err:.3e}, {:.1}% of the tolerance",
        got.len(),
        100.0 * max_used
    );
    if !bad.is_empty() {
        for (i, g, w) in bad.iter().take(8) {
            println!("  [{i}] gpu {g} cpu {w}");
        }
        panic!(
            "{what}: {} of {} values differ by more than {atol:e} + {rtol:e} * |cpu| \
             (max error {max_err:.3e})",
            bad.len(),
            got.len()
        );
    }
}

/// Asserts `got` and `want` are bit for bit the same (zeros of both signs and NaNs told
/// apart); prints the count on success, the first difference on failure.
pub fn assert_bits_eq(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let bad = got
        .iter()
        .zip(want)
        .position(|(g, w)| g.to_bits() != w.to_bits());
    if let Some(i) = bad {
        panic!("{what}[{i}]: gpu {} cpu {}", got[i], want[i]);
    }
    println!("{what}: {} values, bit-identical", got.len());
}

/// Host image of a buffer holding several tensors between padding of sentinel values.
pub struct Arena {
    pub data: Vec<f32>,
    seed: u64,
}

impl Arena {
    pub fn new(seed: u64) -> Self {
        Self {
            data: Vec::new(),
            seed,
        }
    }

    /// Appends `pad` sentinels, then `values`; returns the range of `values`.
    pub fn push(&mut self, pad: usize, values: &[f32]) -> Range<usize> {
        self.seed += 1;
        self.data
            .extend(random_vec(pad, self.seed).iter().map(|v| 100.0 + v));
        let start = self.data.len();
        self.data.extend_from_slice(values);
        start..self.data.len()
    }
}

/// The tensor that starts at `r` in `buffer`.
pub fn at<'a>(buffer: &'a wgpu::Buffer, r: &Range<usize>) -> TensorRef<'a> {
    TensorRef::new(buffer, r.start as u32)
}

/// Asserts that `got` equals `init` outside the `written` ranges.
pub fn assert_untouched(what: &str, got: &[f32], init: &[f32], written: &[&Range<usize>]) {
    assert_eq!(got.len(), init.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(init).enumerate() {
        if !written.iter().any(|r| r.contains(&i)) {
            assert_eq!(g.to_bits(), w.to_bits(), "{what}[{i}] was overwritten");
        }
    }
}
