//! GPU residual dropout (`shaders/dropout.wgsl`) against the CPU reference
//! (`cpu::dropout`): one binding reused over several keys (seeds above 2^32, steps,
//! sites, p from 0 to 0.9) with `set_key`, sizes not multiples of the 256-wide
//! workgroup, several workgroups, a partial last batch, tensors at nonzero offsets.
//!
//! Tolerance: none. The mask comes from the same integer hash, and `x + a * scale` is one
//! multiply and one add, each correctly rounded, so GPU and CPU agree bit for bit.
//! Everything outside the written tensors must be unchanged.

mod common;

use bst_kernels::cpu::dropout::{self, DropoutKey};
use bst_kernels::gpu::Site;
use bst_kernels::gpu::dropout::{DropoutBuffers, DropoutDims, DropoutGradBuffers, DropoutKernels};
use bst_kernels::gpu::{GpuContext, TensorRef};
use common::{Arena, assert_bits_eq, assert_untouched, at, gpu, random_vec, run};

fn keys() -> Vec<DropoutKey> {
    let base = DropoutKey {
        p: 0.1,
        seed: 0x1234_5678_9abc_def0,
        step: 0,
        site: 0,
    };
    vec![
        base,
        DropoutKey { p: 0.0, ..base }, // eval: every element kept, scale 1
        DropoutKey {
            p: 0.5,
            step: 7,
            ..base
        },
        DropoutKey {
            p: 0.9,
            site: 3,
            ..base
        },
        DropoutKey {
            p: 0.3,
            seed: 42,
            step: 123_456,
            site: 1,
        },
    ]
}

/// Runs every key through one binding made for `cap` rows and set to `rows`, from
/// kernels dispatching at most `max_groups` workgroups (`None`: the device's limit).
fn check(ctx: &GpuContext, rows: usize, cap: usize, width: usize, max_groups: Option<u32>) {
    let (n, n_cap) = (rows * width, cap * width);
    let x = random_vec(n_cap, 1);
    let a = random_vec(n_cap, 2);
    let dout = random_vec(n_cap, 3);
    let stale = random_vec(n_cap, 4);
    let mut acts = Arena::new(20);
    let x_r = acts.push(3, &x);
    let a_r = acts.push(5, &a);
    let out_r = acts.push(2, &stale);
    acts.push(7, &[]);
    let mut dacts = Arena::new(40);
    let dout_r = dacts.push(1, &dout);
    let da_r = dacts.push(6, &stale);
    dacts.push(3, &[]);
    let acts_buf = ctx.storage_buffer("acts", &acts.data);
    let dacts_buf = ctx.storage_buffer("dacts", &dacts.data);

    let mut kernels = DropoutKernels::new(ctx).expect("dropout kernels");
    if let Some(max) = max_groups {
        kernels = kernels.with_max_workgroups_per_dim(max);
    }
    let bufs = DropoutBuffers {
        out: at(&acts_buf, &out_r),
        x: at(&acts_buf, &x_r),
        a: at(&acts_buf, &a_r),
    };
    let grads = DropoutGradBuffers {
        da: at(&dacts_buf, &da_r),
        dout: at(&dacts_buf, &dout_r),
    };
    let dims = DropoutDims {
        rows: cap as u32,
        width: width as u32,
    };
    let keys = keys();
    let mut binding = kernels
        .bind(ctx, Site::with_grads(bufs, grads, dims), keys[0])
        .expect("bind");
    binding.set_rows(ctx, rows as u32);

    for key in keys {
        let name = format!("dropout {rows}x{width} p {} step {}", key.p, key.step);
        binding.set_key(ctx, key);
        run(ctx, |pass| {
            kernels.forward(pass, &binding);
            kernels.backward(pass, &binding);
        });
        let mut out = vec![0.0; n];
        dropout::residual_dropout_forward(&mut out, &x[..n], &a[..n], key);
        let mut da = vec![0.0; n];
        dropout::residual_dropout_backward(&mut da, &dout[..n], key);

        let acts_gpu = ctx
            .read_f32(&acts_buf, 0, acts.data.len())
            .expect("readback");
        let dacts_gpu = ctx
            .read_f32(&dacts_buf, 0, dacts.data.len())
            .expect("readback");
        let out_w = out_r.start..out_r.start + n;
        let da_w = da_r.start..da_r.start + n;
        assert_bits_eq(&format!("{name} out"), &acts_gpu[out_w.clone()], &out);
        assert_bits_eq(&format!("{name} da"), &dacts_gpu[da_w.clone()], &da);
        assert_untouched(&format!("{name} acts"), &acts_gpu, &acts.data, &[&out_w]);
        assert_untouched(&format!("{name} dacts"), &dacts_gpu, &dacts.data, &[&da_w]);
        // The comparison means something only if the mask drops what p says.
        let dropped = da
            .iter()
            .zip(&dout)
            .filter(|(d, g)| **d == 0.0 && **g != 0.0);
        let rate = dropped.count() as f64 / n as f64;
        println!("{name}: {n} values bit-identical, dropped {rate:.3}");
        if key.p == 0.0 {
            assert_eq!(rate, 0.0, "{name}: p = 0 dropped elements");
        } else if n >= 1000 {
            assert!(
                (rate - f64::from(key.p)).abs() < 0.06,
                "{name}: dropped {rate}"
            );
        }
    }
}

#[test]
fn bit_identical_to_cpu_for_several_keys_over_several_workgroups() {
    let Some(ctx) = gpu() else { return };
    check(ctx, 47, 47, 64, None); // 3008 elements: 12 workgroups of 256, the last partial
}

#[test]
fn single_element() {
    let Some(ctx) = gpu() else { return };
    check(ctx, 1, 1, 1, None);
}

#[test]
fn set_rows_runs_a_partial_last_batch_and_leaves_later_rows_alone() {
    let Some(ctx) = gpu() else { return };
    check(ctx, 23, 60, 37, None);
}

#[test]
fn three_workgroups_loop_four_times_with_the_mask_of_each_element() {
    // 3008 elements on 3 x 256 invocations: passes of 768, 768, 768 and 704.
    let Some(ctx) = gpu() else { return };
    check(ctx, 47, 47, 64, Some(3));
}

#[test]
fn one_workgroup_loops_over_a_partial_batch() {
    let Some(ctx) = gpu() else { return };
    check(ctx, 23, 60, 37, Some(1));
}

#[test]
fn set_first_draws_the_masks_of_a_shard_as_the_cpu_at_variants() {
    // A data-parallel shard: its elements take the masks of indices first.. of the
    // global batch (cpu::dropout::residual_dropout_*_at).
    let Some(ctx) = gpu() else { return };
    let (n, first) = (900, 4096 + 37);
    let (x, a, dout) = (random_vec(n, 7), random_vec(n, 8), random_vec(n, 9));
    let mut acts = Arena::new(0);
    let (x_r, a_r, out_r) = (acts.push(0, &x), acts.push(0, &a), acts.push(0, &x));
    let (dout_r, da_r) = (acts.push(0, &dout), acts.push(0, &dout));
    let buf = ctx.storage_buffer("acts", &acts.data);
    let kernels = DropoutKernels::new(ctx).expect("dropout kernels");
    let key = keys()[2];
    let bufs = DropoutBuffers {
        out: at(&buf, &out_r),
        x: at(&buf, &x_r),
        a: at(&buf, &a_r),
    };
    let grads = DropoutGradBuffers {
        da: at(&buf, &da_r),
        dout: at(&buf, &dout_r),
    };
    let dims = DropoutDims {
        rows: 9,
        width: 100,
    };
    let mut binding = kernels
        .bind(ctx, Site::with_grads(bufs, grads, dims), key)
        .expect("bind");
    binding.set_first(ctx, first as u32);
    run(ctx, |pass| {
        kernels.forward(pass, &binding);
        kernels.backward(pass, &binding);
    });
    let (mut out, mut da) = (vec![0.0; n], vec![0.0; n]);
    dropout::residual_dropout_forward_at(&mut out, &x, &a, key, first);
    dropout::residual_dropout_backward_at(&mut da, &dout, key, first);
    let got = |r: &std::ops::Range<usize>| ctx.read_f32(&buf, r.start as u32, n).expect("readback");
    assert_bits_eq("dropout at first: out", &got(&out_r), &out);
    assert_bits_eq("dropout at first: da", &got(&da_r), &da);
    let mut from0 = vec![0.0; n];
    dropout::residual_dropout_backward(&mut from0, &dout, key);
    assert_ne!(da, from0, "the masks at first differ from those at 0");
}

#[test]
fn in_place_residual() {
    // out = x (same buffer and offset), as a residual stream updated in place.
    let Some(ctx) = gpu() else { return };
    let n = 700;
    let x = random_vec(n, 5);
    let a = random_vec(n, 6);
    let mut acts = Arena::new(20);
    let x_r = acts.push(4, &x);
    let a_r = acts.push(2, &a);
    let buf = ctx.storage_buffer("acts", &acts.data);
    let kernels = DropoutKernels::new(ctx).expect("dropout kernels");
    let key = keys()[2];
    let bufs = DropoutBuffers {
        out: at(&buf, &x_r),
        x: at(&buf, &x_r),
        a: at(&buf, &a_r),
    };
    let dims = DropoutDims {
        rows: 7,
        width: 100,
    };
    let binding = kernels
        .bind(ctx, Site::forward(bufs, dims), key)
        .expect("bind");
    run(ctx, |pass| kernels.forward(pass, &binding));
    let mut out = vec![0.0; n];
    dropout::residual_dropout_forward(&mut out, &x, &a, key);
    let got = ctx.read_f32(&buf, x_r.start as u32, n).expect("readback");
    assert_bits_eq("dropout in place", &got, &out);
}

#[test]
fn bind_rejects_a_tensor_past_the_end_of_its_buffer() {
    let Some(ctx) = gpu() else { return };
    let kernels = DropoutKernels::new(ctx).expect("dropout kernels");
    let buf = ctx.storage_buffer_zeroed("buf", 100);
    let bufs = DropoutBuffers {
        out: TensorRef::new(&buf, 0),
        x: TensorRef::new(&buf, 30),
        a: TensorRef::new(&buf, 71), // needs 71 + 30 = 101 elements: does not fit
    };
    let dims = DropoutDims { rows: 3, width: 10 };
    let err = kernels
        .bind(ctx, Site::forward(bufs, dims), keys()[0])
        .unwrap_err()
        .to_string();
    assert!(err.contains("dropout a"), "{err}");
    assert!(err.contains("71..101"), "{err}");
}
