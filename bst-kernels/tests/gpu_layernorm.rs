//! GPU LayerNorm (`shaders/layernorm.wgsl`) against the CPU reference (`cpu::layernorm`):
//! C not a multiple of the 64-wide workgroup, C = 1, a single row, several chunks of the
//! parameter-gradient reduction with a partial last one, several column workgroups, a
//! partial last batch, every tensor at a nonzero offset of a bigger buffer, parameter
//! gradients accumulating onto nonzero values, and row workgroups capped at 1 or 3 so
//! that each loops over many rows.
//!
//! Tolerance, measured on lavapipe over every case here, with about 10x of margin:
//! - per row (out, mean, rstd, dinp): |gpu - cpu| <= 3e-6 + 1e-5 |cpu|. Tree reductions
//!   over C in another order than the CPU's loops; the error is absolute, a few ulp of
//!   the O(1) inputs (x - mean cancels): at most 9.5e-7 (out), and at most 11.4% of
//!   the bound (dinp of 600x64).
//! - parameter gradients (dweight, dbias: chunked sums over up to 600 rows, values up to
//!   41): |gpu - cpu| <= 1e-5 + 1e-4 |cpu|; at most 3.4e-5 (dweight of 600x64), 9.0% of
//!   the bound (dweight of 46x100). The error grows with the rows summed.
//!
//! Everything outside the written tensors must be bit-for-bit unchanged.

mod common;

use bst_kernels::gpu::Site;
use std::ops::Range;

use bst_kernels::cpu::layernorm;
use bst_kernels::gpu::layernorm::{
    LayerNormBuffers, LayerNormDims, LayerNormGradBuffers, LayerNormKernels,
};
use bst_kernels::gpu::{GpuContext, TensorRef, wgpu};
use common::{Arena, assert_close, assert_untouched, at, gpu, random_vec, run};

/// Per-row outputs and input gradient (see the module doc for the measurements).
const ROW_TOL: (f32, f32) = (3e-6, 1e-5);
/// Parameter gradients, sums over the rows.
const SUM_TOL: (f32, f32) = (1e-5, 1e-4);

/// Runs forward and backward on `rows` rows of a binding made for `cap` rows, from
/// kernels dispatching at most `max_groups` row workgroups (`None`: the device's limit),
/// and compares everything with the CPU.
fn check(ctx: &GpuContext, rows: usize, c: usize, cap: usize, max_groups: Option<u32>) {
    let name = format!("layernorm {rows}x{c}");
    let inp = random_vec(cap * c, 1);
    let weight: Vec<f32> = random_vec(c, 2).iter().map(|v| 1.0 + 0.5 * v).collect();
    let bias = random_vec(c, 3);
    let dout = random_vec(cap * c, 4);
    let dweight0 = random_vec(c, 5);
    let dbias0 = random_vec(c, 6);
    let stale = random_vec(cap * c, 7);

    let mut params = Arena::new(10);
    let w_r = params.push(3, &weight);
    let b_r = params.push(2, &bias);
    params.push(1, &[]);
    let mut acts = Arena::new(20);
    let inp_r = acts.push(5, &inp);
    let out_r = acts.push(2, &stale);
    let mean_r = acts.push(3, &stale[..cap]);
    let rstd_r = acts.push(1, &stale[..cap]);
    acts.push(4, &[]);
    let mut grads = Arena::new(30);
    let dw_r = grads.push(7, &dweight0);
    let db_r = grads.push(1, &dbias0);
    grads.push(2, &[]);
    let mut dacts = Arena::new(40);
    let dout_r = dacts.push(6, &dout);
    let dinp_r = dacts.push(3, &stale);
    dacts.push(5, &[]);

    let params_buf = ctx.storage_buffer("params", &params.data);
    let acts_buf = ctx.storage_buffer("acts", &acts.data);
    let grads_buf = ctx.storage_buffer("grads", &grads.data);
    let dacts_buf = ctx.storage_buffer("dacts", &dacts.data);

    let mut kernels = LayerNormKernels::new(ctx).expect("layernorm kernels");
    if let Some(max) = max_groups {
        kernels = kernels.with_max_workgroups_per_dim(max);
    }
    let bufs = LayerNormBuffers {
        out: at(&acts_buf, &out_r),
        mean: at(&acts_buf, &mean_r),
        rstd: at(&acts_buf, &rstd_r),
        inp: at(&acts_buf, &inp_r),
        weight: at(&params_buf, &w_r),
        bias: at(&params_buf, &b_r),
    };
    let grad_bufs = LayerNormGradBuffers {
        dinp: at(&dacts_buf, &dinp_r),
        dweight: at(&grads_buf, &dw_r),
        dbias: at(&grads_buf, &db_r),
        dout: at(&dacts_buf, &dout_r),
    };
    let dims = LayerNormDims {
        rows: cap as u32,
        c: c as u32,
    };
    let mut binding = kernels
        .bind(ctx, Site::with_grads(bufs, grad_bufs, dims))
        .expect("bind");
    if rows != cap {
        binding.set_rows(ctx, rows as u32);
    }
    run(ctx, |pass| {
        kernels.forward(pass, &binding);
        kernels.backward(pass, &binding);
    });

    // CPU reference on the first `rows` rows.
    let (mut out, mut mean, mut rstd) = (vec![0.0; rows * c], vec![0.0; rows], vec![0.0; rows]);
    let inp = &inp[..rows * c];
    layernorm::layernorm_forward(&mut out, &mut mean, &mut rstd, inp, &weight, &bias, rows, c);
    let mut dinp = vec![0.0; rows * c];
    let (mut dweight, mut dbias) = (dweight0.clone(), dbias0.clone());
    layernorm::layernorm_backward(
        &mut dinp,
        &mut dweight,
        &mut dbias,
        &dout[..rows * c],
        inp,
        &weight,
        &mean,
        &rstd,
        rows,
        c,
    );

    let read = |buf: &wgpu::Buffer, len: usize| ctx.read_f32(buf, 0, len).expect("readback");
    let acts_gpu = read(&acts_buf, acts.data.len());
    let dacts_gpu = read(&dacts_buf, dacts.data.len());
    let grads_gpu = read(&grads_buf, grads.data.len());
    let params_gpu = read(&params_buf, params.data.len());
    let first = |r: &Range<usize>, len: usize| r.start..r.start + len;
    let (out_w, mean_w, rstd_w) = (
        first(&out_r, rows * c),
        first(&mean_r, rows),
        first(&rstd_r, rows),
    );
    let dinp_w = first(&dinp_r, rows * c);
    for (what, got, want, (atol, rtol)) in [
        ("out", &acts_gpu[out_w.clone()], &out, ROW_TOL),
        ("mean", &acts_gpu[mean_w.clone()], &mean, ROW_TOL),
        ("rstd", &acts_gpu[rstd_w.clone()], &rstd, ROW_TOL),
        ("dinp", &dacts_gpu[dinp_w.clone()], &dinp, ROW_TOL),
        ("dweight", &grads_gpu[dw_r.clone()], &dweight, SUM_TOL),
        ("dbias", &grads_gpu[db_r.clone()], &dbias, SUM_TOL),
    ] {
        assert_close(&format!("{name} {what}"), got, want, atol, rtol);
    }
    assert_untouched(
        &format!("{name} acts"),
        &acts_gpu,
        &acts.data,
        &[&out_w, &mean_w, &rstd_w],
    );
    assert_untouched(
        &format!("{name} dacts"),
        &dacts_gpu,
        &dacts.data,
        &[&dinp_w],
    );
    assert_untouched(
        &format!("{name} grads"),
        &grads_gpu,
        &grads.data,
        &[&dw_r, &db_r],
    );
    assert_untouched(&format!("{name} params"), &params_gpu, &params.data, &[]);
}

#[test]
fn three_chunks_of_rows_with_c_64() {
    let Some(ctx) = gpu() else { return };
    check(ctx, 600, 64, 600, None); // chunks of 256, 256 and 88 rows
}

#[test]
fn c_not_a_multiple_of_the_workgroup_over_several_column_workgroups() {
    let Some(ctx) = gpu() else { return };
    check(ctx, 45, 150, 45, None); // 3 invocations per row for some lanes, 3 column groups
}

#[test]
fn single_row() {
    let Some(ctx) = gpu() else { return };
    check(ctx, 1, 33, 1, None);
}

#[test]
fn single_feature() {
    // C = 1: xhat = 0, out = bias, dinp = 0, dweight unchanged.
    let Some(ctx) = gpu() else { return };
    check(ctx, 20, 1, 20, None);
}

#[test]
fn set_rows_runs_a_partial_last_batch_and_leaves_later_rows_alone() {
    let Some(ctx) = gpu() else { return };
    check(ctx, 37, 70, 300, None); // bound for 2 chunks, runs 1
}

#[test]
fn three_workgroups_loop_over_many_rows() {
    // 46 rows on 3 workgroups: 16, 15 and 15 rows each, C over 2 column passes.
    let Some(ctx) = gpu() else { return };
    check(ctx, 46, 100, 46, Some(3));
}

#[test]
fn one_workgroup_loops_over_a_partial_batch_of_two_chunks() {
    // 300 rows (chunks of 256 and 44) all on one workgroup, bound for 320.
    let Some(ctx) = gpu() else { return };
    check(ctx, 300, 33, 320, Some(1));
}

#[test]
fn bind_rejects_a_tensor_past_the_end_of_its_buffer() {
    let Some(ctx) = gpu() else { return };
    let kernels = LayerNormKernels::new(ctx).expect("layernorm kernels");
    let big = ctx.storage_buffer_zeroed("big", 1000);
    let small = ctx.storage_buffer_zeroed("small", 20);
    let bufs = LayerNormBuffers {
        out: TensorRef::new(&big, 0),
        mean: TensorRef::new(&big, 500),
        rstd: TensorRef::new(&big, 600),
        inp: TensorRef::new(&big, 700),
        weight: TensorRef::new(&small, 0),
        bias: TensorRef::new(&small, 12), // needs 12 + 10 = 22 elements: does not fit
    };
    let dims = LayerNormDims { rows: 5, c: 10 };
    let err = kernels
        .bind(ctx, Site::forward(bufs, dims))
        .unwrap_err()
        .to_string();
    assert!(err.contains("layernorm bias (c)"), "{err}");
    assert!(err.contains("12..22"), "{err}");
}
