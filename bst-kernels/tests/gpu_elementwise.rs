//! GPU element-wise ops (`shaders/elementwise.wgsl`) against the CPU references
//! (`cpu::activation`, `cpu::elementwise`). LeakyReLU:
//! sizes not multiples of the 256-wide workgroup, several workgroups, a single element,
//! a partial last batch, in-place use, tensors at nonzero offsets of bigger buffers.
//!
//! Tolerance: none. Each output is the input, or one correctly rounded product with
//! alpha, so GPU and CPU agree bit for bit (zeros of both signs included). Everything
//! outside the written tensors must be unchanged.

mod common;

use bst_kernels::cpu::{activation, elementwise};
use bst_kernels::gpu::Site;
use bst_kernels::gpu::elementwise::{
    ActivationBuffers, ActivationDims, ActivationGradBuffers, ElementwiseKernels,
};
use bst_kernels::gpu::{GpuContext, TensorRef};
use common::{Arena, assert_bits_eq, assert_untouched, at, gpu, random_vec, run};

/// Inputs in [-1, 1) with some exact zeros of both signs (the kink of the derivative).
fn inputs(n: usize, seed: u64) -> Vec<f32> {
    let mut x = random_vec(n, seed);
    for (i, v) in x.iter_mut().enumerate() {
        match i % 7 {
            3 => *v = 0.0,
            5 => *v = -0.0,
            _ => {}
        }
    }
    x
}

struct Case {
    rows: usize,
    width: usize,
    alpha: f32,
    /// Bind for this many rows, then `set_rows(rows)` (a partial last batch).
    bind_rows: Option<usize>,
    /// out = inp and dinp = dout (same buffer and offset).
    in_place: bool,
    /// Caps the workgroups: each invocation loops over several elements.
    max_groups: Option<u32>,
}

impl Case {
    fn new(rows: usize, width: usize) -> Self {
        Self {
            rows,
            width,
            alpha: 0.01,
            bind_rows: None,
            in_place: false,
            max_groups: None,
        }
    }
}

fn check(ctx: &GpuContext, case: &Case) {
    let Case {
        rows, width, alpha, ..
    } = *case;
    let cap = case.bind_rows.unwrap_or(rows);
    let (n, n_cap) = (rows * width, cap * width);
    let name = format!("leaky_relu {rows}x{width}");

    let inp = inputs(n_cap, 1);
    let dout = random_vec(n_cap, 2);
    let stale = random_vec(n_cap, 3);
    let mut acts = Arena::new(20);
    let inp_r = acts.push(7, &inp);
    let out_r = acts.push(3, &stale);
    acts.push(5, &[]);
    let mut dacts = Arena::new(40);
    let dout_r = dacts.push(2, &dout);
    let dinp_r = dacts.push(9, &stale);
    dacts.push(4, &[]);
    let (out_r, dinp_r) = if case.in_place {
        (inp_r.clone(), dout_r.clone())
    } else {
        (out_r, dinp_r)
    };

    // The backward reads `inp`: in place, keep a copy of the input for it.
    let mut saved = Arena::new(50);
    let saved_r = saved.push(1, &inp);
    let acts_buf = ctx.storage_buffer("acts", &acts.data);
    let dacts_buf = ctx.storage_buffer("dacts", &dacts.data);
    let saved_buf = ctx.storage_buffer("saved inp", &saved.data);

    let mut kernels = ElementwiseKernels::new(ctx).expect("activation kernels");
    if let Some(max) = case.max_groups {
        kernels = kernels.with_max_workgroups_per_dim(max);
    }
    let dims = ActivationDims {
        rows: cap as u32,
        width: width as u32,
        alpha,
    };
    let fwd = ActivationBuffers {
        out: at(&acts_buf, &out_r),
        inp: at(&acts_buf, &inp_r),
    };
    let bwd_inp = ActivationBuffers {
        out: at(&acts_buf, &out_r),
        inp: at(&saved_buf, &saved_r),
    };
    let grads = ActivationGradBuffers {
        dinp: at(&dacts_buf, &dinp_r),
        dout: at(&dacts_buf, &dout_r),
    };
    let mut forward = kernels.bind(ctx, Site::forward(fwd, dims)).expect("bind");
    let mut backward = kernels
        .bind(ctx, Site::with_grads(bwd_inp, grads, dims))
        .expect("bind");
    if case.bind_rows.is_some() {
        forward.set_rows(ctx, rows as u32);
        backward.set_rows(ctx, rows as u32);
    }
    run(ctx, |pass| {
        kernels.forward(pass, &forward);
        kernels.backward(pass, &backward);
    });

    let mut out = vec![0.0; n];
    activation::leaky_relu_forward(&mut out, &inp[..n], alpha);
    let mut dinp = vec![0.0; n];
    activation::leaky_relu_backward(&mut dinp, &dout[..n], &inp[..n], alpha);

    let acts_gpu = ctx
        .read_f32(&acts_buf, 0, acts.data.len())
        .expect("readback");
    let dacts_gpu = ctx
        .read_f32(&dacts_buf, 0, dacts.data.len())
        .expect("readback");
    let out_w = out_r.start..out_r.start + n;
    let dinp_w = dinp_r.start..dinp_r.start + n;
    assert_bits_eq(&format!("{name} out"), &acts_gpu[out_w.clone()], &out);
    assert_bits_eq(&format!("{name} dinp"), &dacts_gpu[dinp_w.clone()], &dinp);
    // Outside the written rows every value is as uploaded.
    assert_untouched(&format!("{name} acts"), &acts_gpu, &acts.data, &[&out_w]);
    assert_untouched(
        &format!("{name} dacts"),
        &dacts_gpu,
        &dacts.data,
        &[&dinp_w],
    );
}

#[test]
fn several_workgroups_with_a_partial_last_one() {
    let Some(ctx) = gpu() else { return };
    check(ctx, &Case::new(37, 29)); // 1073 elements: 5 workgroups of 256, the last partial
}

#[test]
fn two_workgroups_loop_three_times_over_a_partial_last_pass() {
    // 1073 elements on 2 x 256 invocations: passes of 512, 512 and 49.
    let Some(ctx) = gpu() else { return };
    let case = Case {
        max_groups: Some(2),
        ..Case::new(37, 29)
    };
    check(ctx, &case);
}

#[test]
fn one_workgroup_loops_over_a_partial_batch_in_place() {
    let Some(ctx) = gpu() else { return };
    let case = Case {
        max_groups: Some(1),
        bind_rows: Some(40),
        in_place: true,
        ..Case::new(23, 30)
    };
    check(ctx, &case);
}

#[test]
fn single_element() {
    let Some(ctx) = gpu() else { return };
    check(ctx, &Case::new(1, 1));
}

#[test]
fn set_rows_runs_a_partial_last_batch_and_leaves_later_rows_alone() {
    let Some(ctx) = gpu() else { return };
    let case = Case {
        bind_rows: Some(50),
        alpha: 0.2,
        ..Case::new(13, 21)
    };
    check(ctx, &case);
}

#[test]
fn in_place_output_and_gradient() {
    let Some(ctx) = gpu() else { return };
    let case = Case {
        in_place: true,
        ..Case::new(9, 65)
    };
    check(ctx, &case);
}

#[test]
fn bind_rejects_a_tensor_past_the_end_of_its_buffer() {
    let Some(ctx) = gpu() else { return };
    let kernels = ElementwiseKernels::new(ctx).expect("activation kernels");
    let buf = ctx.storage_buffer_zeroed("buf", 100);
    let bufs = ActivationBuffers {
        out: TensorRef::new(&buf, 0),
        inp: TensorRef::new(&buf, 60), // needs 60 + 4 * 10 = 100: fits
    };
    let grads = ActivationGradBuffers {
        dinp: TensorRef::new(&buf, 0),
        dout: TensorRef::new(&buf, 61), // needs 101: does not
    };
    let dims = ActivationDims {
        rows: 4,
        width: 10,
        alpha: 0.01,
    };
    kernels
        .bind(ctx, Site::forward(bufs, dims))
        .expect("forward fits");
    let err = kernels
        .bind(ctx, Site::with_grads(bufs, grads, dims))
        .unwrap_err()
        .to_string();
    assert!(err.contains("activation dout"), "{err}");
    assert!(err.contains("61..101"), "{err}");
}

/// Elements of the smallest range that needs a second row of workgroups (65535 x 256).
const PAST_ONE_ROW_OF_GROUPS: usize = 65535 * 256 + 300;

#[test]
fn add_matches_the_cpu_bit_for_bit_in_place_and_at_offsets() {
    let Some(ctx) = gpu() else { return };
    let kernels = ElementwiseKernels::new(ctx)
        .expect("elementwise kernels")
        .with_max_workgroups_per_dim(2);
    // Bound for 9 rows, run on 7 (a partial last batch).
    let (rows, width) = (7, 301);
    let n = rows * width;
    let (x, y) = (random_vec(9 * width, 3), random_vec(9 * width, 4));
    let mut arena = Arena::new(60);
    let x_r = arena.push(3, &x);
    let y_r = arena.push(5, &y);
    let out_r = arena.push(2, &vec![0.0; 9 * width]);
    arena.push(7, &[]);
    let buf = ctx.storage_buffer("acts", &arena.data);
    let mut add = kernels
        .bind_add(
            ctx,
            at(&buf, &out_r),
            at(&buf, &x_r),
            at(&buf, &y_r),
            9,
            width as u32,
        )
        .expect("bind");
    add.set_rows(ctx, rows as u32);
    // In place: y = out + y, after out = x + y.
    let again = kernels
        .bind_add(
            ctx,
            at(&buf, &y_r),
            at(&buf, &out_r),
            at(&buf, &y_r),
            rows as u32,
            width as u32,
        )
        .expect("bind");
    run(ctx, |pass| {
        kernels.forward(pass, &add);
        kernels.forward(pass, &again);
    });
    let mut want = vec![0.0; n];
    elementwise::add(&mut want, &x[..n], &y[..n]);
    let mut want_y = vec![0.0; n];
    elementwise::add(&mut want_y, &want, &y[..n]);
    let got = ctx.read_f32(&buf, 0, arena.data.len()).expect("read");
    let (out_w, y_w) = (out_r.start..out_r.start + n, y_r.start..y_r.start + n);
    assert_bits_eq("add", &got[out_w.clone()], &want);
    assert_bits_eq("add in place", &got[y_w.clone()], &want_y);
    assert_untouched("add", &got, &arena.data, &[&out_w, &y_w]);
}

#[test]
fn backward_on_a_fill_binding_panics() {
    let Some(ctx) = gpu() else { return };
    let kernels = ElementwiseKernels::new(ctx).expect("elementwise kernels");
    let buf = ctx.storage_buffer_zeroed("buf", 16);
    let fill = kernels
        .bind_fill(ctx, TensorRef::new(&buf, 0), 16, 1.0)
        .expect("bind");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run(ctx, |pass| kernels.backward(pass, &fill));
    }));
    assert!(result.is_err(), "a fill has no backward");
}

#[test]
fn fill_zeroes_a_range_and_set_len_shortens_it() {
    let Some(ctx) = gpu() else { return };
    let kernels = ElementwiseKernels::new(ctx).expect("elementwise kernels");
    let mut arena = Arena::new(40);
    let r = arena.push(7, &random_vec(600, 41));
    arena.push(5, &[]);
    let buf = ctx.storage_buffer("grads", &arena.data);
    let mut fill = kernels
        .bind_fill(ctx, at(&buf, &r), 600, 0.0)
        .expect("bind");
    fill.set_len(ctx, 513);
    run(ctx, |pass| kernels.forward(pass, &fill));
    let got = ctx.read_f32(&buf, 0, arena.data.len()).expect("read");
    let w = r.start..r.start + 513;
    assert!(
        got[w.clone()].iter().all(|&x| x.to_bits() == 0),
        "not zeroed"
    );
    assert_untouched("fill", &got, &arena.data, &[&w]);
}

#[test]
fn fill_over_more_than_65535_workgroups_reaches_every_element() {
    let Some(ctx) = gpu() else { return };
    let kernels = ElementwiseKernels::new(ctx).expect("elementwise kernels");
    let n = PAST_ONE_ROW_OF_GROUPS;
    let mut arena = Arena::new(50);
    let r = arena.push(3, &vec![1.0; n]);
    arena.push(300, &[]);
    let buf = ctx.storage_buffer("big", &arena.data);
    let fill = kernels
        .bind_fill(ctx, at(&buf, &r), n as u32, -2.5)
        .expect("bind");
    run(ctx, |pass| kernels.forward(pass, &fill));
    let got = ctx.read_f32(&buf, 0, arena.data.len()).expect("read");
    let missed = got[r.clone()].iter().filter(|&&x| x != -2.5).count();
    assert_eq!(missed, 0, "{missed} of {n} elements not filled");
    assert_untouched("fill", &got, &arena.data, &[&r]);
}
