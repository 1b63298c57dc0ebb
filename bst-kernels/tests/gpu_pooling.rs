//! GPU pooling (`shaders/pooling.wgsl`) against the CPU reference (`cpu::pooling`), for
//! every mode, on awkward shapes: batch of 1, T = 1, an all-padding history, sizes that
//! are not multiples of the 256-wide workgroup and span several workgroups, a partial
//! last batch (`set_rows`), with every tensor at a nonzero offset inside a bigger buffer
//! and the pooled columns in the middle of wider rows.
//!
//! Tolerance: Target and Flatten copy or zero, so they must match bit for bit; Mean sums
//! in the CPU's order and divides (WGSL allows 2.5 ulp), so |gpu - cpu| <= 1e-7 + 1e-6
//! |cpu|. Everything outside the written elements must be bit-for-bit unchanged: the
//! other columns of each row, the rows past a partial batch, the padding between tensors.

mod common;

use bst_kernels::cpu::pooling::{pooling_backward, pooling_forward};
use bst_kernels::gpu::Site;
use bst_kernels::gpu::pooling::{
    PoolMode, PoolingBinding, PoolingBuffers, PoolingDims, PoolingGradBuffers, PoolingKernels,
};
use bst_kernels::gpu::{GpuContext, TensorRef};
use common::{Arena, assert_bits_eq, assert_close, at, gpu, random_vec, run};

const MODES: [PoolMode; 3] = [PoolMode::Target, PoolMode::Mean, PoolMode::Flatten];

/// Asserts that `got` equals `init` wherever `written(i)` is false.
fn assert_untouched(what: &str, got: &[f32], init: &[f32], written: impl Fn(usize) -> bool) {
    assert_eq!(got.len(), init.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(init).enumerate() {
        if !written(i) {
            assert_eq!(g.to_bits(), w.to_bits(), "{what}[{i}] was overwritten");
        }
    }
}

struct Case {
    b: usize,
    t: usize,
    d: usize,
    /// Columns before and after the pooled ones in each row.
    left: usize,
    right: usize,
    /// Bind for this many rows, then `set_rows(b)` (a partial last batch).
    bind_rows: Option<usize>,
    /// Sample 0's history (tokens 0..T-1) is all padding.
    empty_first_history: bool,
}

impl Case {
    fn new(b: usize, t: usize, d: usize) -> Self {
        Self {
            b,
            t,
            d,
            left: 3,
            right: 2,
            bind_rows: None,
            empty_first_history: true,
        }
    }
}

/// valid (rows, T): mostly valid, nonzero values other than 1 included, and sample 0's
/// history all padding if asked (its target token stays valid).
fn valid_mask(case: &Case, rows: usize) -> Vec<u32> {
    let r = random_vec(rows * case.t, 77);
    let mut valid: Vec<u32> = r
        .iter()
        .map(|&x| match x {
            x if x < -0.4 => 0,
            x if x < 0.8 => 1,
            _ => 3,
        })
        .collect();
    if case.empty_first_history {
        valid[..case.t - 1].fill(0);
        valid[case.t - 1] = 1;
    }
    valid
}

fn check(ctx: &GpuContext, kernels: &PoolingKernels, case: &Case, mode: PoolMode) {
    let Case { b, t, d, .. } = *case;
    let cap = case.bind_rows.unwrap_or(b);
    let width = mode.width(t, d);
    let (off, row) = (case.left, case.left + width + case.right);
    let name = format!("pooling {mode:?} B={b} T={t} d={d}");
    // Mean adds in another order than the CPU; target and flatten only copy, so they
    // must match bit for bit (-0.0 included).
    let exact = !matches!(mode, PoolMode::Mean);
    let compare = |what: &str, got: &[f32], want: &[f32]| match exact {
        true => assert_bits_eq(what, got, want),
        false => assert_close(what, got, want, 1e-7, 1e-6),
    };

    // Host data, sized for `cap` rows; the kernels must use only `b`.
    let x = random_vec(cap * t * d, 1);
    let valid = valid_mask(case, cap);
    let dout = random_vec(cap * row, 2);
    let stale = random_vec(cap * row.max(t * d), 3);

    let mut acts = Arena::new(10);
    let x_r = acts.push(5, &x);
    let out_r = acts.push(3, &stale[..cap * row]);
    acts.push(4, &[]);
    let mut dacts = Arena::new(20);
    let dout_r = dacts.push(2, &dout);
    let dx_r = dacts.push(7, &stale[..cap * t * d]);
    dacts.push(3, &[]);
    let mut valid_data = vec![9u32; 6];
    let valid_r = valid_data.len()..valid_data.len() + valid.len();
    valid_data.extend(&valid);
    valid_data.extend([9u32; 2]);

    let acts_buf = ctx.storage_buffer("acts", &acts.data);
    let dacts_buf = ctx.storage_buffer("dacts", &dacts.data);
    let valid_buf = ctx.storage_buffer("valid", &valid_data);
    let bufs = PoolingBuffers {
        out: at(&acts_buf, &out_r),
        x: at(&acts_buf, &x_r),
        valid: at(&valid_buf, &valid_r),
    };
    let grads = PoolingGradBuffers {
        dx: at(&dacts_buf, &dx_r),
        dout: at(&dacts_buf, &dout_r),
    };
    let dims = PoolingDims {
        rows: cap as u32,
        t: t as u32,
        d: d as u32,
        row: row as u32,
        off: off as u32,
        mode,
    };
    let mut binding: PoolingBinding = kernels
        .bind(ctx, Site::with_grads(bufs, grads, dims))
        .expect("bind");
    if case.bind_rows.is_some() {
        binding.set_rows(ctx, b as u32);
    }
    run(ctx, |pass| {
        kernels.forward(pass, &binding);
        kernels.backward(pass, &binding);
    });

    // CPU reference on the first `b` rows, onto the same stale contents.
    let mut out = stale[..cap * row].to_vec();
    pooling_forward(&mut out, &x, &valid, mode, b, t, d, row, off);
    let mut dx = vec![0.0; b * t * d];
    pooling_backward(&mut dx, &dout, &valid, mode, b, t, d, row, off);

    let acts_gpu = ctx.read_f32(&acts_buf, 0, acts.data.len()).expect("read");
    let dacts_gpu = ctx.read_f32(&dacts_buf, 0, dacts.data.len()).expect("read");
    let pooled = |i: usize| (i % row) >= off && (i % row) < off + width;
    let (got, want): (Vec<f32>, Vec<f32>) = (0..b * row)
        .filter(|&i| pooled(i))
        .map(|i| (acts_gpu[out_r.start + i], out[i]))
        .unzip();
    compare(&format!("{name} out"), &got, &want);
    let out_written =
        |i: usize| out_r.contains(&i) && i - out_r.start < b * row && pooled(i - out_r.start);
    assert_untouched(&format!("{name} acts"), &acts_gpu, &acts.data, out_written);

    let dx_w = dx_r.start..dx_r.start + b * t * d;
    compare(&format!("{name} dx"), &dacts_gpu[dx_w.clone()], &dx);
    assert_untouched(&format!("{name} dacts"), &dacts_gpu, &dacts.data, |i| {
        dx_w.contains(&i)
    });
    let valid_gpu = ctx.read_u32(&valid_buf, 0, valid_data.len()).expect("read");
    assert_eq!(valid_gpu, valid_data, "{name}: valid was overwritten");
}

fn check_every_mode(case: &Case) {
    check_every_mode_on_grid(case, u32::MAX);
}

/// With at most `max_groups` workgroups per grid row.
fn check_every_mode_on_grid(case: &Case, max_groups: u32) {
    let Some(ctx) = gpu() else { return };
    let kernels = PoolingKernels::new(ctx)
        .expect("pooling kernels")
        .with_max_workgroups_per_dim(max_groups);
    for mode in MODES {
        check(ctx, &kernels, case, mode);
    }
}

#[test]
fn small_batch_with_an_all_padding_history_every_mode() {
    check_every_mode(&Case::new(3, 4, 5));
}

#[test]
fn batch_of_one_with_t_1_every_mode() {
    // T = 1: no history; Mean's second half is zeros.
    check_every_mode(&Case {
        empty_first_history: false,
        ..Case::new(1, 1, 7)
    });
}

#[test]
fn spans_several_workgroups_with_partial_last_one_every_mode() {
    // Flatten: 37 * 7 * 33 = 8547 outputs (34 workgroups of 256, the last partial).
    check_every_mode(&Case::new(37, 7, 33));
}

#[test]
fn a_2d_grid_with_an_overhanging_last_row_covers_every_element() {
    // Flatten: 34 workgroups as 4 x 9, the last two past the end; Target 5 as 4 x 2;
    // the backward (37 * 33 = 1221 (sample, channel) invocations) 5 as 4 x 2.
    check_every_mode_on_grid(&Case::new(37, 7, 33), 4);
}

#[test]
fn set_rows_runs_a_partial_last_batch_and_leaves_later_rows_alone() {
    check_every_mode(&Case {
        bind_rows: Some(20),
        ..Case::new(9, 3, 10)
    });
}

#[test]
fn pooled_columns_may_fill_the_whole_row() {
    check_every_mode(&Case {
        left: 0,
        right: 0,
        ..Case::new(5, 2, 3)
    });
}

#[test]
fn bind_rejects_pooled_columns_past_the_row() {
    let Some(ctx) = gpu() else { return };
    let kernels = PoolingKernels::new(ctx).expect("pooling kernels");
    let buf = ctx.storage_buffer_zeroed("buf", 1000);
    let bufs = PoolingBuffers {
        out: TensorRef::whole(&buf),
        x: TensorRef::whole(&buf),
        valid: TensorRef::whole(&buf),
    };
    let dims = PoolingDims {
        rows: 2,
        t: 3,
        d: 4,
        row: 10,
        off: 3,
        mode: PoolMode::Mean, // columns 3..11 of 10
    };
    let err = kernels
        .bind(ctx, Site::forward(bufs, dims))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("3..11") && err.contains("row width 10"),
        "{err}"
    );
}

#[test]
fn bind_rejects_a_tensor_past_the_end_of_its_buffer() {
    let Some(ctx) = gpu() else { return };
    let kernels = PoolingKernels::new(ctx).expect("pooling kernels");
    let big = ctx.storage_buffer_zeroed("big", 1000);
    let small = ctx.storage_buffer_zeroed("small", 10);
    let bufs = PoolingBuffers {
        out: TensorRef::whole(&big),
        x: TensorRef::whole(&big),
        valid: TensorRef::new(&small, 5), // needs 5 + 2 * 3 = 11 of 10
    };
    let dims = PoolingDims {
        rows: 2,
        t: 3,
        d: 4,
        row: 8,
        off: 0,
        mode: PoolMode::Target,
    };
    let err = kernels
        .bind(ctx, Site::forward(bufs, dims))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pooling valid (rows, T)") && err.contains("5..11"),
        "{err}"
    );
}
