//! GPU sigmoid + BCE (`shaders/loss.wgsl`) against the CPU reference (`cpu::loss`): a
//! batch of 1, batches that are not multiples of the 256-wide workgroup, the largest
//! batch the one-workgroup mean is meant for (65536), a partial last batch (`set_rows`),
//! an accumulated mean, and logits up to +-1000, with every tensor at a nonzero offset
//! inside a bigger buffer.
//!
//! Tolerances. probs, losses: WGSL specifies `exp` only to 3 + 2|z| ulp, so for logits in
//! [-4, 4] |gpu - cpu| <= 2e-6 |cpu|, and for the extreme logits (|z| <= 1000, where
//! exp(-|z|) is tiny or flushed to zero) 3e-5 |cpu| + 1e-37. Mean loss: 1e-6 relative (the
//! CPU sums in f64; the GPU adds each invocation's stride with Kahan compensation, then a
//! fixed tree). dlogits = (sigmoid - y) / B: 2e-6 relative + 1.2e-7 / B (one ulp of 1 in
//! sigmoid, where it cancels against the label). Everything outside the written elements
//! must be bit-for-bit unchanged.

mod common;

use std::ops::Range;

use bst_kernels::cpu::loss::{bce_backward, bce_forward};
use bst_kernels::gpu::loss::{LossBuffers, LossDims, LossKernels};
use bst_kernels::gpu::{GpuContext, TensorRef};
use common::{Arena, assert_close, assert_untouched, at, gpu, random_vec, run};

/// Labels 0.0 / 1.0 from a seed.
fn labels(n: usize, seed: u64) -> Vec<f32> {
    random_vec(n, seed)
        .iter()
        .map(|&x| if x > 0.0 { 1.0 } else { 0.0 })
        .collect()
}

struct Case {
    logits: Vec<f32>,
    labels: Vec<f32>,
    /// Rows of the current batch (a prefix of `logits`); the binding is for all of them.
    rows: usize,
    /// Tolerance of probs and losses relative to the CPU's, and the absolute floor.
    rtol: f32,
    atol: f32,
    /// Forward passes in one submit with `accumulate_mean` (0: one, overwriting).
    accumulate: usize,
    /// Workgroups per grid row (lowered to reach a 2D grid).
    max_groups: u32,
    /// `set_divisor` (0: the rows divide).
    divisor: usize,
}

impl Case {
    /// `b` logits uniform in [-4, 4), random labels.
    fn new(b: usize) -> Self {
        let logits = random_vec(b, 1).iter().map(|z| 4.0 * z).collect();
        Self {
            logits,
            labels: labels(b, 2),
            rows: b,
            rtol: 2e-6,
            atol: 0.0,
            accumulate: 0,
            max_groups: u32::MAX,
            divisor: 0,
        }
    }
}

fn check(ctx: &GpuContext, case: &Case) {
    let (cap, b) = (case.logits.len(), case.rows);
    let name = format!("bce B={b} of {cap}");
    let stale = random_vec(cap, 3);
    let mean0 = 0.25f32;

    let mut acts = Arena::new(10);
    let logits_r = acts.push(3, &case.logits);
    let probs_r = acts.push(5, &stale);
    let losses_r = acts.push(2, &stale);
    let mean_r = acts.push(7, &[mean0]);
    acts.push(3, &[]);
    let mut batch = Arena::new(20);
    let labels_r = batch.push(6, &case.labels);
    batch.push(1, &[]);
    let mut dacts = Arena::new(30);
    let dlogits_r = dacts.push(4, &stale);
    dacts.push(2, &[]);

    let acts_buf = ctx.storage_buffer("acts", &acts.data);
    let batch_buf = ctx.storage_buffer("batch", &batch.data);
    let dacts_buf = ctx.storage_buffer("dacts", &dacts.data);
    let kernels = LossKernels::new(ctx)
        .expect("loss kernels")
        .with_max_workgroups_per_dim(case.max_groups);
    let bufs = LossBuffers {
        probs: at(&acts_buf, &probs_r),
        losses: at(&acts_buf, &losses_r),
        mean: at(&acts_buf, &mean_r),
        logits: at(&acts_buf, &logits_r),
        labels: at(&batch_buf, &labels_r),
    };
    let dims = LossDims {
        rows: cap as u32,
        accumulate_mean: case.accumulate > 0,
    };
    let mut binding = kernels
        .bind(ctx, &bufs, Some(at(&dacts_buf, &dlogits_r)), dims)
        .expect("bind");
    if b != cap {
        binding.set_rows(ctx, b as u32);
    }
    binding.set_divisor(ctx, case.divisor as u32);
    run(ctx, |pass| {
        for _ in 0..case.accumulate.max(1) {
            kernels.forward(pass, &binding);
        }
        kernels.backward(pass, &binding);
    });

    // CPU reference on the first `b` rows.
    let (z, y) = (&case.logits[..b], &case.labels[..b]);
    let mut probs = vec![0.0; b];
    let mut mean = bce_forward(&mut probs, z, y);
    // A shard of a global batch of `divisor` rows: its share of the global mean.
    let div = if case.divisor > 0 { case.divisor } else { b };
    mean = mean * b as f32 / div as f32;
    if case.accumulate > 0 {
        let batch_mean = mean;
        mean = mean0;
        for _ in 0..case.accumulate {
            mean += batch_mean;
        }
    }
    let losses: Vec<f32> = z
        .iter()
        .zip(y)
        .map(|(&z, &y)| {
            let mut p = [0.0];
            bce_forward(&mut p, &[z], &[y]) // the mean of one sample is its loss
        })
        .collect();
    let mut dlogits = vec![0.0; b];
    bce_backward(&mut dlogits, z, y);
    for d in &mut dlogits {
        *d = *d * b as f32 / div as f32;
    }

    let acts_gpu = ctx.read_f32(&acts_buf, 0, acts.data.len()).expect("read");
    let dacts_gpu = ctx.read_f32(&dacts_buf, 0, dacts.data.len()).expect("read");
    let batch_gpu = ctx.read_f32(&batch_buf, 0, batch.data.len()).expect("read");
    let prefix = |r: &Range<usize>| r.start..r.start + b;
    let (probs_w, losses_w, dlogits_w) = (prefix(&probs_r), prefix(&losses_r), prefix(&dlogits_r));
    for (what, w) in [("probs", &probs_w), ("losses", &losses_w)] {
        let got = &acts_gpu[w.clone()];
        assert!(
            got.iter().all(|v| v.is_finite()),
            "{name} {what}: not finite"
        );
    }
    assert!(
        dacts_gpu[dlogits_w.clone()].iter().all(|v| v.is_finite()),
        "{name} dlogits: not finite"
    );
    let (rtol, atol) = (case.rtol, case.atol);
    assert_close(
        &format!("{name} probs"),
        &acts_gpu[probs_w.clone()],
        &probs,
        atol,
        rtol,
    );
    assert_close(
        &format!("{name} losses"),
        &acts_gpu[losses_w.clone()],
        &losses,
        atol,
        rtol,
    );
    assert_close(
        &format!("{name} mean"),
        &acts_gpu[mean_r.clone()],
        &[mean],
        0.0,
        1e-6,
    );
    let d_atol = 1.2e-7 / div.max(1) as f32;
    assert_close(
        &format!("{name} dlogits"),
        &dacts_gpu[dlogits_w.clone()],
        &dlogits,
        d_atol,
        2e-6,
    );

    let acts_written = [&probs_w, &losses_w, &mean_r];
    assert_untouched(
        &format!("{name} acts"),
        &acts_gpu,
        &acts.data,
        &acts_written,
    );
    assert_untouched(
        &format!("{name} dacts"),
        &dacts_gpu,
        &dacts.data,
        &[&dlogits_w],
    );
    assert_untouched(&format!("{name} batch"), &batch_gpu, &batch.data, &[]);
}

#[test]
fn batch_of_one() {
    let Some(ctx) = gpu() else { return };
    check(ctx, &Case::new(1));
}

#[test]
fn spans_several_workgroups_with_a_partial_last_one() {
    let Some(ctx) = gpu() else { return };
    check(ctx, &Case::new(1000));
}

#[test]
fn a_2d_grid_with_an_overhanging_last_row_covers_every_sample() {
    let Some(ctx) = gpu() else { return };
    // 1000 samples: 4 workgroups as 3 x 2, the last two past the end.
    check(
        ctx,
        &Case {
            max_groups: 3,
            ..Case::new(1000)
        },
    );
}

#[test]
fn mean_of_the_largest_batch_in_one_workgroup() {
    let Some(ctx) = gpu() else { return };
    check(ctx, &Case::new(65536));
}

#[test]
fn set_rows_runs_a_partial_last_batch_and_divides_by_its_rows() {
    let Some(ctx) = gpu() else { return };
    check(
        ctx,
        &Case {
            rows: 333,
            ..Case::new(700)
        },
    );
}

#[test]
fn a_shard_divides_the_mean_and_the_gradient_by_the_global_rows() {
    let Some(ctx) = gpu() else { return };
    for accumulate in [0, 2] {
        let case = Case {
            rows: 300,
            divisor: 613,
            accumulate,
            ..Case::new(700)
        };
        check(ctx, &case);
    }
}

#[test]
fn accumulated_mean_adds_each_forward_to_the_value_there() {
    let Some(ctx) = gpu() else { return };
    check(
        ctx,
        &Case {
            accumulate: 3,
            ..Case::new(300)
        },
    );
}

#[test]
fn large_logits_stay_finite_and_match() {
    let Some(ctx) = gpu() else { return };
    let extremes = [
        100.0, -100.0, 1000.0, -1000.0, 88.0, -88.0, 17.0, -17.0, 0.0, 1e-3, -1e-3,
    ];
    let mut logits = Vec::new();
    let mut y = Vec::new();
    for &z in &extremes {
        for label in [0.0, 1.0] {
            logits.push(z);
            y.push(label);
        }
    }
    let case = Case {
        rows: logits.len(),
        logits,
        labels: y,
        rtol: 3e-5,
        atol: 1e-37,
        accumulate: 0,
        max_groups: u32::MAX,
        divisor: 0,
    };
    check(ctx, &case);
}

#[test]
fn bind_rejects_a_tensor_past_the_end_of_its_buffer() {
    let Some(ctx) = gpu() else { return };
    let kernels = LossKernels::new(ctx).expect("loss kernels");
    let big = ctx.storage_buffer_zeroed("big", 100);
    let small = ctx.storage_buffer_zeroed("small", 10);
    let bufs = LossBuffers {
        probs: TensorRef::whole(&big),
        losses: TensorRef::new(&big, 20),
        mean: TensorRef::new(&big, 40),
        logits: TensorRef::new(&big, 50),
        labels: TensorRef::new(&small, 3), // needs 3 + 8 = 11 of 10
    };
    let dims = LossDims {
        rows: 8,
        accumulate_mean: false,
    };
    let err = kernels
        .bind(ctx, &bufs, None, dims)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("loss labels (rows)") && err.contains("3..11"),
        "{err}"
    );
}
