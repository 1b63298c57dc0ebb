//! GPU linear layer (`shaders/matmul.wgsl`) against the plain CPU reference (`cpu::reference`,
//! `cpu::activation`), on shapes that are not multiples of the 64 x 64 tile, span several
//! workgroups, or have a dimension of 1, with every tensor at a nonzero offset inside a
//! bigger buffer (inputs and outputs sharing one arena), and parameter gradients
//! accumulating onto nonzero values.
//!
//! The weight and bias gradients of batches of 512 rows or more are split reductions
//! (partial sums, then added in order): checked at 1000 rows, and after `set_rows` to
//! fewer splits and to one.
//!
//! The backward's fused activation gradient (`dinp_act`) is checked as training uses it:
//! dinp written over the layer's input `LeakyReLU(pre)`, which also gives leaky's signs,
//! against the CPU's matmul backward then LeakyReLU backward of `pre`.
//!
//! Tolerance: |gpu - cpu| <= 1e-5 + 1e-4 |cpu| (sums of up to 130 products of values in
//! [-1, 1], added in a different order than the CPU reference). Everything outside the
//! written tensors must be bit-for-bit unchanged.

mod common;

use bst_kernels::gpu::Site;
use std::ops::Range;

use bst_kernels::cpu::{activation, reference};
use bst_kernels::gpu::matmul::{
    Activation, LeakyInput, MatmulBuffers, MatmulDims, MatmulGradBuffers, MatmulKernels, row_splits,
};
use bst_kernels::gpu::{GpuContext, TensorRef, wgpu};
use common::{Arena, assert_close, assert_untouched, at, gpu, random_vec, run};

const ATOL: f32 = 1e-5;
const RTOL: f32 = 1e-4;

struct Case {
    rows: usize,
    n_in: usize,
    n_out: usize,
    bias: bool,
    act: Activation,
    store_pre: bool,
    dinp: bool,
    /// Bind for this many rows, then `set_rows(rows)` (a partial last batch).
    bind_rows: Option<usize>,
}

impl Case {
    fn new(rows: usize, n_in: usize, n_out: usize) -> Self {
        Self {
            rows,
            n_in,
            n_out,
            bias: true,
            act: Activation::None,
            store_pre: false,
            dinp: true,
            bind_rows: None,
        }
    }
}

fn check(ctx: &GpuContext, case: &Case) {
    let Case {
        rows, n_in, n_out, ..
    } = *case;
    let cap = case.bind_rows.unwrap_or(rows);
    let name = format!("matmul {rows}x{n_in}->{n_out}");

    // Host data. Tensors sized for `cap` rows; the kernels must use only `rows`.
    let inp = random_vec(cap * n_in, 1);
    let weight = random_vec(n_out * n_in, 2);
    let bias = random_vec(n_out, 3);
    let dout = random_vec(cap * n_out, 4);
    let dweight0 = random_vec(n_out * n_in, 5);
    let dbias0 = random_vec(n_out, 6);
    let stale = random_vec(cap * n_out.max(n_in), 7);

    let mut params = Arena::new(10);
    let w_r = params.push(3, &weight);
    let b_r = params.push(5, &bias);
    params.push(2, &[]);
    let mut acts = Arena::new(20);
    let inp_r = acts.push(7, &inp);
    let out_r = acts.push(2, &stale[..cap * n_out]);
    let pre_r = acts.push(3, &stale[..cap * n_out]);
    acts.push(4, &[]);
    let mut grads = Arena::new(30);
    let dw_r = grads.push(1, &dweight0);
    let db_r = grads.push(6, &dbias0);
    grads.push(2, &[]);
    let mut dacts = Arena::new(40);
    let dout_r = dacts.push(5, &dout);
    let dinp_r = dacts.push(3, &stale[..cap * n_in]);
    dacts.push(2, &[]);

    let params_buf = ctx.storage_buffer("params", &params.data);
    let acts_buf = ctx.storage_buffer("acts", &acts.data);
    let grads_buf = ctx.storage_buffer("grads", &grads.data);
    let dacts_buf = ctx.storage_buffer("dacts", &dacts.data);

    let kernels = MatmulKernels::new(ctx).expect("matmul kernels");
    let bufs = MatmulBuffers {
        out: at(&acts_buf, &out_r),
        pre: case.store_pre.then(|| at(&acts_buf, &pre_r)),
        inp: at(&acts_buf, &inp_r),
        weight: at(&params_buf, &w_r),
        bias: case.bias.then(|| at(&params_buf, &b_r)),
    };
    let grad_bufs = MatmulGradBuffers {
        dinp: case.dinp.then(|| at(&dacts_buf, &dinp_r)),
        dweight: at(&grads_buf, &dw_r),
        dbias: case.bias.then(|| at(&grads_buf, &db_r)),
        dout: at(&dacts_buf, &dout_r),
        dinp_act: None,
    };
    let dims = MatmulDims {
        rows: cap as u32,
        n_in: n_in as u32,
        n_out: n_out as u32,
        act: case.act,
    };
    let mut binding = kernels
        .bind(ctx, Site::with_grads(bufs, grad_bufs, dims))
        .expect("bind");
    if case.bind_rows.is_some() {
        // A full-size step first, so that a split binding's scratch holds the partial
        // sums of all `cap` rows (a later sum over splits not written again would pick
        // them up); then the tensors as they were, and the partial batch.
        run(ctx, |pass| {
            kernels.forward(pass, &binding);
            kernels.backward(pass, &binding);
        });
        for (buf, arena) in [
            (&acts_buf, &acts),
            (&grads_buf, &grads),
            (&dacts_buf, &dacts),
        ] {
            ctx.queue
                .write_buffer(buf, 0, bytemuck::cast_slice(&arena.data));
        }
        binding.set_rows(ctx, rows as u32);
    }
    run(ctx, |pass| {
        kernels.forward(pass, &binding);
        kernels.backward(pass, &binding);
    });

    // CPU reference on the first `rows` rows.
    let mut pre = vec![0.0; rows * n_out];
    let b = case.bias.then_some(&bias[..]);
    reference::matmul_forward(&mut pre, &inp, &weight, b, rows, n_in, n_out);
    let mut out = pre.clone();
    if let Activation::LeakyRelu { alpha } = case.act {
        activation::leaky_relu_forward(&mut out, &pre, alpha);
    }
    let mut dinp = vec![0.0; rows * n_in];
    let mut dweight = dweight0.clone();
    let mut dbias = dbias0.clone();
    reference::matmul_backward(
        case.dinp.then_some(&mut dinp[..]),
        &mut dweight,
        case.bias.then_some(&mut dbias[..]),
        &dout,
        &inp,
        &weight,
        rows,
        n_in,
        n_out,
    );

    let read = |buf: &wgpu::Buffer, len: usize| ctx.read_f32(buf, 0, len).expect("readback");
    let acts_gpu = read(&acts_buf, acts.data.len());
    let dacts_gpu = read(&dacts_buf, dacts.data.len());
    let grads_gpu = read(&grads_buf, grads.data.len());
    let params_gpu = read(&params_buf, params.data.len());
    let rows_of = |r: &Range<usize>, width: usize| r.start..r.start + rows * width;

    let (out_w, pre_w, dinp_w) = (
        rows_of(&out_r, n_out),
        rows_of(&pre_r, n_out),
        rows_of(&dinp_r, n_in),
    );
    assert_close(
        &format!("{name} out"),
        &acts_gpu[out_w.clone()],
        &out,
        ATOL,
        RTOL,
    );
    let mut acts_written = vec![&out_w];
    if case.store_pre {
        assert_close(
            &format!("{name} pre"),
            &acts_gpu[pre_w.clone()],
            &pre,
            ATOL,
            RTOL,
        );
        acts_written.push(&pre_w);
    }
    assert_untouched(
        &format!("{name} acts"),
        &acts_gpu,
        &acts.data,
        &acts_written,
    );

    let mut dacts_written = vec![];
    if case.dinp {
        assert_close(
            &format!("{name} dinp"),
            &dacts_gpu[dinp_w.clone()],
            &dinp,
            ATOL,
            RTOL,
        );
        dacts_written.push(&dinp_w);
    }
    assert_untouched(
        &format!("{name} dacts"),
        &dacts_gpu,
        &dacts.data,
        &dacts_written,
    );

    assert_close(
        &format!("{name} dweight"),
        &grads_gpu[dw_r.clone()],
        &dweight,
        ATOL,
        RTOL,
    );
    assert_close(
        &format!("{name} dbias"),
        &grads_gpu[db_r.clone()],
        &dbias,
        ATOL,
        RTOL,
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
fn spans_several_workgroups_in_both_dims_with_partial_tiles() {
    let Some(ctx) = gpu() else { return };
    // forward 3 x 2 tiles of (130, 70); dinp (130, 33); dweight (70, 33) over K = 130
    check(ctx, &Case::new(130, 33, 70));
}

#[test]
fn leaky_relu_epilogue_writes_pre_and_out_with_n_in_1() {
    let Some(ctx) = gpu() else { return };
    let case = Case {
        act: Activation::LeakyRelu { alpha: 0.01 },
        store_pre: true,
        ..Case::new(67, 1, 65)
    };
    check(ctx, &case);
}

#[test]
fn single_row_without_bias_with_leaky_relu() {
    let Some(ctx) = gpu() else { return };
    let case = Case {
        bias: false,
        act: Activation::LeakyRelu { alpha: 0.2 },
        ..Case::new(1, 5, 3)
    };
    check(ctx, &case);
}

#[test]
fn single_output_column() {
    let Some(ctx) = gpu() else { return };
    check(ctx, &Case::new(17, 40, 1));
}

#[test]
fn first_layer_without_dinp_or_bias() {
    let Some(ctx) = gpu() else { return };
    let case = Case {
        bias: false,
        dinp: false,
        ..Case::new(100, 80, 66)
    };
    check(ctx, &case);
}

#[test]
fn set_rows_runs_a_partial_last_batch_and_leaves_later_rows_alone() {
    let Some(ctx) = gpu() else { return };
    let case = Case {
        bind_rows: Some(100),
        act: Activation::LeakyRelu { alpha: 0.01 },
        store_pre: true,
        ..Case::new(37, 20, 9)
    };
    check(ctx, &case);
}

#[test]
fn split_weight_and_bias_gradients_of_a_long_batch_match_the_cpu() {
    let Some(ctx) = gpu() else { return };
    // dweight (70, 33) is 2 tiles and dbias 2 column groups: 1000 rows split 3 ways,
    // 336 rows a split and 328 in the last (`row_splits`).
    assert_eq!(row_splits(1000, 2), (3, 336));
    check(ctx, &Case::new(1000, 33, 70));
}

#[test]
fn set_rows_changes_the_number_of_splits() {
    let Some(ctx) = gpu() else { return };
    // Bound split 3 ways for 1000 rows; 600 rows split 2 ways, 100 rows are one split.
    assert_eq!(row_splits(600, 2).0, 2);
    assert_eq!(row_splits(100, 2).0, 1);
    for rows in [600, 100] {
        let case = Case {
            bind_rows: Some(1000),
            ..Case::new(rows, 33, 70)
        };
        check(ctx, &case);
    }
}

#[test]
fn bind_rejects_a_tensor_past_the_end_of_its_buffer() {
    let Some(ctx) = gpu() else { return };
    let kernels = MatmulKernels::new(ctx).expect("matmul kernels");
    let small = ctx.storage_buffer_zeroed("small", 10);
    let big = ctx.storage_buffer_zeroed("big", 1000);
    let bufs = MatmulBuffers {
        out: TensorRef::new(&big, 0),
        pre: None,
        inp: TensorRef::new(&big, 500),
        weight: TensorRef::new(&small, 4), // needs 4 + 3 * 2 = 10 elements: fits
        bias: Some(TensorRef::new(&small, 8)), // needs 8 + 3 = 11: does not
    };
    let dims = MatmulDims {
        rows: 4,
        n_in: 2,
        n_out: 3,
        act: Activation::None,
    };
    let err = kernels
        .bind(ctx, Site::forward(bufs, dims))
        .unwrap_err()
        .to_string();
    assert!(err.contains("matmul bias (n_out)"), "{err}");
    assert!(err.contains("8..11"), "{err}");
}

#[test]
fn checked_returns_a_broken_shader_as_an_error_value() {
    let Some(ctx) = gpu() else { return };
    let result = ctx.checked("broken shader", || {
        let module =
            ctx.shader_module("broken", "@compute @workgroup_size(1) fn main() { x = 1; }");
        ctx.compute_pipeline(&module, "main", None)
    });
    let err = result.unwrap_err().to_string();
    assert!(err.contains("broken shader"), "{err}");
    ctx.check()
        .expect("the scope caught the error, not the uncaptured handler");
}

/// The backward of a layer whose input is `LeakyReLU(pre)`, as training runs it: the
/// input itself gives leaky's signs and receives dpre in place, after the weight
/// gradient has read it. `pre` has exact zeros and negative zeros, where the slope is
/// `alpha` on the CPU too. At 1000 rows the weight and bias gradients are split, so their
/// partial sums also run before the input is overwritten.
#[test]
fn fused_leaky_gradient_overwrites_the_layer_input_in_place() {
    let Some(ctx) = gpu() else { return };
    for (cap, rows) in [(80, 70), (1000, 1000)] {
        let (n_in, n_out, alpha) = (65, 33, 0.05);
        let mut pre = random_vec(cap * n_in, 14); // both signs
        for (i, v) in pre.iter_mut().enumerate().step_by(7) {
            *v = if i % 2 == 0 { 0.0 } else { -0.0 };
        }
        let mut inp = vec![0.0; cap * n_in];
        activation::leaky_relu_forward(&mut inp, &pre, alpha);
        let weight = random_vec(n_out * n_in, 12);
        let dout = random_vec(cap * n_out, 13);
        let dweight0 = random_vec(n_out * n_in, 18);
        let dbias0 = random_vec(n_out, 19);
        let mut params = Arena::new(15);
        let w_r = params.push(3, &weight);
        let b_r = params.push(1, &random_vec(n_out, 20));
        let mut acts = Arena::new(16);
        let out_r = acts.push(1, &vec![0.0; cap * n_out]);
        let inp_r = acts.push(5, &inp); // LeakyReLU(pre): read, then overwritten
        acts.push(3, &[]);
        let mut grads = Arena::new(17);
        let dw_r = grads.push(4, &dweight0);
        let db_r = grads.push(2, &dbias0);
        let dout_r = grads.push(2, &dout);
        let params_buf = ctx.storage_buffer("params", &params.data);
        let acts_buf = ctx.storage_buffer("acts", &acts.data);
        let grads_buf = ctx.storage_buffer("grads", &grads.data);
        let kernels = MatmulKernels::new(ctx).expect("matmul kernels");
        let input = at(&acts_buf, &inp_r);
        let bufs = MatmulBuffers {
            out: at(&acts_buf, &out_r),
            pre: None,
            inp: input,
            weight: at(&params_buf, &w_r),
            bias: Some(at(&params_buf, &b_r)),
        };
        let grad_bufs = MatmulGradBuffers {
            dinp: Some(input),
            dweight: at(&grads_buf, &dw_r),
            dbias: Some(at(&grads_buf, &db_r)),
            dout: at(&grads_buf, &dout_r),
            dinp_act: Some(LeakyInput { sign: input, alpha }),
        };
        let dims = MatmulDims {
            rows: cap as u32,
            n_in: n_in as u32,
            n_out: n_out as u32,
            act: Activation::None,
        };
        let mut binding = kernels
            .bind(ctx, Site::with_grads(bufs, grad_bufs, dims))
            .expect("bind");
        binding.set_rows(ctx, rows as u32);
        run(ctx, |pass| kernels.backward(pass, &binding));

        let (mut dinp, mut dweight, mut dbias) = (vec![0.0; rows * n_in], dweight0, dbias0);
        reference::matmul_backward(
            Some(&mut dinp),
            &mut dweight,
            Some(&mut dbias),
            &dout[..rows * n_out],
            &inp[..rows * n_in],
            &weight,
            rows,
            n_in,
            n_out,
        );
        let mut dpre = vec![0.0; rows * n_in];
        activation::leaky_relu_backward(&mut dpre, &dinp, &pre[..rows * n_in], alpha);
        let what = format!("{rows} of {cap} rows");
        let got = ctx
            .read_f32(&acts_buf, 0, acts.data.len())
            .expect("readback");
        let written = inp_r.start..inp_r.start + rows * n_in;
        assert_close(
            &format!("fused dpre, {what}"),
            &got[written.clone()],
            &dpre,
            ATOL,
            RTOL,
        );
        // Rows past the batch keep their input; nothing else moves.
        assert_untouched(
            &format!("fused acts, {what}"),
            &got,
            &acts.data,
            &[&written],
        );
        let got = ctx
            .read_f32(&grads_buf, 0, grads.data.len())
            .expect("readback");
        let dw = &got[dw_r.clone()];
        assert_close(
            &format!("dweight from the input, {what}"),
            dw,
            &dweight,
            ATOL,
            RTOL,
        );
        assert_close(
            &format!("dbias, {what}"),
            &got[db_r.clone()],
            &dbias,
            ATOL,
            RTOL,
        );
    }
}
