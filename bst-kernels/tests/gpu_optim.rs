//! GPU optimiser updates and fill (`shaders/optim.wgsl`) against the CPU reference
//! (`cpu::optim`): Adam and Adagrad over three steps with new gradients each step, on
//! ranges that are not multiples of the 256-wide workgroup, a single element, and a 2D
//! grid of workgroups (a fill past the device's 65535 per dimension; the updates with a
//! lowered cap, to keep the data small), each at a nonzero offset inside a bigger buffer
//! whose other contents must stay bit-for-bit unchanged.
//!
//! The row-wise updates (`adam_rows`, `adagrad_rows`) against `cpu::optim::Step::update_rows`: three
//! steps over different row sets of a table inside a bigger buffer, row ids at an offset
//! in a `u32` buffer, several workgroups and a 2D grid; listed rows' gradients must be
//! zeroed, everything else left bit for bit.
//!
//! Tolerance: |gpu - cpu| <= 1e-7 + 1e-6 |cpu| for parameters and optimiser state after
//! every step (same operations in the same order; WGSL allows sqrt and division a few ulp
//! and may fuse a multiply-add). The fill must be exact.

mod common;

use bst_kernels::cpu::optim::{RowGrads, Step, adagrad_update, adam_update};
use bst_kernels::gpu::optim::{AdagradHyper, AdamHyper, OptimKernels, TableRows, UpdateRule};
use bst_kernels::gpu::{GpuContext, TensorRef, wgpu};
use common::{Arena, assert_close, assert_untouched, at, gpu, random_vec, run};
use std::ops::Range;

const ATOL: f32 = 1e-7;
const RTOL: f32 = 1e-6;
const STEPS: u64 = 3;
/// Gradients of step `t`: in [-1, 1), with every 7th element zero.
fn grads_of_step(n: usize, t: u64) -> Vec<f32> {
    let mut g = random_vec(n, 100 + t);
    g.iter_mut().step_by(7).for_each(|g| *g = 0.0);
    g
}

#[derive(Clone, Copy, Debug)]
enum Rule {
    Adam,
    Adagrad,
}

/// Adagrad's hyper-parameters in these tests (with weight decay, so the GPU's L2 term
/// is checked against the CPU's on every update).
const ADAGRAD: AdagradHyper = AdagradHyper {
    lr: 0.05,
    eps: 1e-10,
    weight_decay: 0.03,
};

/// Adam's hyper-parameters in these tests (with weight decay, as Adagrad's).
fn adam_hyper() -> AdamHyper {
    AdamHyper {
        lr: 0.01,
        weight_decay: 0.02,
        ..AdamHyper::default()
    }
}

/// The GPU update rule with its state at `m_r` (Adam's m, Adagrad's sum) and `v_r` of
/// `state`.
fn gpu_rule<'a>(
    rule: Rule,
    state: &'a wgpu::Buffer,
    m_r: &Range<usize>,
    v_r: &Range<usize>,
) -> UpdateRule<'a> {
    match rule {
        Rule::Adam => UpdateRule::Adam {
            hp: adam_hyper(),
            m: at(state, m_r),
            v: at(state, v_r),
        },
        Rule::Adagrad => UpdateRule::Adagrad {
            hp: ADAGRAD,
            sum: at(state, m_r),
        },
    }
}

/// `STEPS` updates of `n` parameters with at most `max_groups` workgroups per grid row;
/// compares parameters and state after every step.
fn check(ctx: &GpuContext, rule: Rule, n: usize, max_groups: u32) {
    let name = format!("{rule:?} n={n}");
    let (hp, ag) = (adam_hyper(), ADAGRAD);
    // Nonzero starting state (v and Adagrad's sum nonnegative), some of it zero.
    let p0 = random_vec(n, 1);
    let mut m0 = random_vec(n, 2);
    if let Rule::Adagrad = rule {
        m0.iter_mut().for_each(|s| *s = s.abs());
    }
    let mut v0: Vec<f32> = random_vec(n, 3).iter().map(|x| x.abs()).collect();
    m0.iter_mut().step_by(5).for_each(|m| *m = 0.0);
    v0.iter_mut().step_by(5).for_each(|v| *v = 0.0);

    let mut params = Arena::new(10);
    let p_r = params.push(3, &p0);
    params.push(2, &[]);
    let mut state = Arena::new(20); // m and v (or sum) in one buffer
    let m_r = state.push(5, &m0);
    let v_r = state.push(1, &v0);
    state.push(4, &[]);
    let mut grads = Arena::new(30);
    let g_r = grads.push(6, &grads_of_step(n, 1));
    grads.push(2, &[]);

    let params_buf = ctx.storage_buffer("params", &params.data);
    let state_buf = ctx.storage_buffer("state", &state.data);
    let grads_buf = ctx.storage_buffer("grads", &grads.data);
    let kernels = OptimKernels::new(ctx)
        .expect("optim kernels")
        .with_max_workgroups_per_dim(max_groups);
    let gpu_rule = gpu_rule(rule, &state_buf, &m_r, &v_r);
    let mut binding = kernels
        .bind(
            ctx,
            at(&params_buf, &p_r),
            at(&grads_buf, &g_r),
            gpu_rule,
            n as u32,
        )
        .expect("bind");

    let (mut p, mut m, mut v) = (p0, m0, v0);
    for t in 1..=STEPS {
        let g = grads_of_step(n, t);
        ctx.write(&grads_buf, g_r.start as u32, &g);
        binding.set_step(ctx, t);
        run(ctx, |pass| kernels.update(pass, &binding));
        match rule {
            Rule::Adam => adam_update(&mut p, &mut m, &mut v, &g, hp, t),
            Rule::Adagrad => adagrad_update(&mut p, &mut m, &g, ag),
        }

        let params_gpu = ctx
            .read_f32(&params_buf, 0, params.data.len())
            .expect("read");
        let state_gpu = ctx.read_f32(&state_buf, 0, state.data.len()).expect("read");
        let step = format!("{name} step {t}");
        assert_close(
            &format!("{step} params"),
            &params_gpu[p_r.clone()],
            &p,
            ATOL,
            RTOL,
        );
        assert_close(
            &format!("{step} m/sum"),
            &state_gpu[m_r.clone()],
            &m,
            ATOL,
            RTOL,
        );
        assert_untouched(
            &format!("{step} params"),
            &params_gpu,
            &params.data,
            &[&p_r],
        );
        let mut state_written = vec![&m_r];
        if let Rule::Adam = rule {
            assert_close(
                &format!("{step} v"),
                &state_gpu[v_r.clone()],
                &v,
                ATOL,
                RTOL,
            );
            state_written.push(&v_r);
        }
        assert_untouched(
            &format!("{step} state"),
            &state_gpu,
            &state.data,
            &state_written,
        );
    }
    let mut grads_now = grads.data.clone();
    grads_now[g_r.clone()].copy_from_slice(&grads_of_step(n, STEPS));
    let grads_gpu = ctx.read_f32(&grads_buf, 0, grads.data.len()).expect("read");
    assert_untouched(&format!("{name} grads"), &grads_gpu, &grads_now, &[]);
}

#[test]
fn adam_three_steps_over_several_workgroups_with_a_partial_last_one() {
    let Some(ctx) = gpu() else { return };
    check(ctx, Rule::Adam, 1000, u32::MAX);
}

#[test]
fn adam_three_steps_on_one_element() {
    let Some(ctx) = gpu() else { return };
    check(ctx, Rule::Adam, 1, u32::MAX);
}

#[test]
fn adagrad_three_steps_over_several_workgroups_with_a_partial_last_one() {
    let Some(ctx) = gpu() else { return };
    check(ctx, Rule::Adagrad, 1000, u32::MAX);
}

#[test]
fn adagrad_three_steps_on_one_element() {
    let Some(ctx) = gpu() else { return };
    check(ctx, Rule::Adagrad, 1, u32::MAX);
}

#[test]
fn updates_on_a_2d_grid_with_an_overhanging_last_row() {
    let Some(ctx) = gpu() else { return };
    // 1000 elements: 4 workgroups as 3 x 2, the last two past the end.
    check(ctx, Rule::Adam, 1000, 3);
    check(ctx, Rule::Adagrad, 1000, 3);
}

#[test]
fn bind_rejects_a_state_tensor_past_the_end_of_its_buffer() {
    let Some(ctx) = gpu() else { return };
    let kernels = OptimKernels::new(ctx).expect("optim kernels");
    let big = ctx.storage_buffer_zeroed("big", 100);
    let small = ctx.storage_buffer_zeroed("small", 30);
    let rule = UpdateRule::Adam {
        hp: AdamHyper::default(),
        m: TensorRef::whole(&small),
        v: TensorRef::new(&small, 15), // needs 15 + 20 = 35 of 30
    };
    let err = kernels
        .bind(
            ctx,
            TensorRef::whole(&big),
            TensorRef::new(&big, 50),
            rule,
            20,
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("adam v (n)") && err.contains("15..35"),
        "{err}"
    );
}

/// Rows of step `t` of the row-wise tests: distinct, unsorted, `count` of them, all below
/// `r` (step 2 is a subset of step 1's, so some rows skip a step).
fn rows_of_step(r: u32, count: usize, t: u64) -> Vec<u32> {
    let mut rows: Vec<u32> = (0..r)
        .rev()
        .filter(|x| !(x + t as u32).is_multiple_of(3))
        .collect();
    rows.truncate(count);
    rows
}

/// `STEPS` row-wise updates of a table (r, w) against the CPU; ids at offset 4 of their
/// buffer, room for `max_rows`.
fn check_rows(ctx: &GpuContext, rule: Rule, (r, w): (u32, usize), max_rows: u32, max_groups: u32) {
    let name = format!("{rule:?} rows ({r}, {w})");
    let n = r as usize * w;
    let (hp, ag) = (adam_hyper(), ADAGRAD);
    let p0 = random_vec(n, 11);
    let m0: Vec<f32> = random_vec(n, 12).iter().map(|x| x.abs()).collect();
    let v0: Vec<f32> = random_vec(n, 13).iter().map(|x| x.abs()).collect();
    let mut params = Arena::new(14);
    let p_r = params.push(3, &p0);
    params.push(2, &[]);
    let mut state = Arena::new(15);
    let m_r = state.push(5, &m0);
    let v_r = state.push(1, &v0);
    let mut grads = Arena::new(16);
    let g_r = grads.push(6, &grads_of_step(n, 1));
    grads.push(2, &[]);
    let params_buf = ctx.storage_buffer("params", &params.data);
    let state_buf = ctx.storage_buffer("state", &state.data);
    let grads_buf = ctx.storage_buffer("grads", &grads.data);
    let ids_buf = ctx.storage_buffer_zeroed("row ids", 4 + max_rows as usize);
    let kernels = OptimKernels::new(ctx)
        .expect("optim kernels")
        .with_max_workgroups_per_dim(max_groups);
    let gpu_rule = gpu_rule(rule, &state_buf, &m_r, &v_r);
    let table = TableRows {
        ids: TensorRef::new(&ids_buf, 4),
        max_rows,
        table_rows: r,
        width: w as u32,
    };
    let mut binding = kernels
        .bind_rows(
            ctx,
            at(&params_buf, &p_r),
            at(&grads_buf, &g_r),
            gpu_rule,
            table,
        )
        .expect("bind_rows");

    let (mut p, mut m, mut v) = (p0, m0, v0);
    for t in 1..=STEPS {
        let rows = rows_of_step(r, max_rows as usize - t as usize + 1, t);
        let g = grads_of_step(n, t);
        ctx.write(&grads_buf, g_r.start as u32, &g);
        ctx.write(&ids_buf, 4, &rows);
        binding.set_step(ctx, t);
        binding.set_rows(ctx, rows.len() as u32);
        run(ctx, |pass| kernels.update(pass, &binding));
        match rule {
            Rule::Adam => {
                Step::adam(&mut m, &mut v, hp, t).update_rows(&mut p, RowGrads::Full(&g), w, &rows)
            }
            Rule::Adagrad => {
                Step::adagrad(&mut m, ag).update_rows(&mut p, RowGrads::Full(&g), w, &rows)
            }
        }
        let step = format!("{name} step {t}");
        let params_gpu = ctx
            .read_f32(&params_buf, 0, params.data.len())
            .expect("read");
        let state_gpu = ctx.read_f32(&state_buf, 0, state.data.len()).expect("read");
        assert_close(
            &format!("{step} params"),
            &params_gpu[p_r.clone()],
            &p,
            ATOL,
            RTOL,
        );
        assert_close(
            &format!("{step} m/sum"),
            &state_gpu[m_r.clone()],
            &m,
            ATOL,
            RTOL,
        );
        if let Rule::Adam = rule {
            assert_close(
                &format!("{step} v"),
                &state_gpu[v_r.clone()],
                &v,
                ATOL,
                RTOL,
            );
        }
        // Rows never listed so far are bit for bit their initial values (checked through
        // the CPU, which leaves them alone): assert_close above covers them exactly only
        // up to the tolerance, so compare bits here.
        let listed: Vec<bool> = {
            let mut l = vec![false; r as usize];
            for s in 1..=t {
                for &x in &rows_of_step(r, max_rows as usize - s as usize + 1, s) {
                    l[x as usize] = true;
                }
            }
            l
        };
        for (row, _) in listed.iter().enumerate().filter(|(_, l)| !**l) {
            let e = p_r.start + row * w..p_r.start + (row + 1) * w;
            assert_eq!(
                &params_gpu[e.clone()],
                &params.data[e],
                "{step}: row {row} moved"
            );
        }
        // The listed rows' gradients are consumed (zero), the others untouched.
        let grads_gpu = ctx.read_f32(&grads_buf, 0, grads.data.len()).expect("read");
        let mut want = grads.data.clone();
        want[g_r.clone()].copy_from_slice(&g);
        for &row in &rows {
            want[g_r.start + row as usize * w..][..w].fill(0.0);
        }
        assert_untouched(&format!("{step} grads"), &grads_gpu, &want, &[]);
    }
}

#[test]
fn adam_rows_three_steps_over_changing_row_sets() {
    let Some(ctx) = gpu() else { return };
    check_rows(ctx, Rule::Adam, (300, 7), 100, u32::MAX);
}

#[test]
fn adagrad_rows_three_steps_over_changing_row_sets() {
    let Some(ctx) = gpu() else { return };
    check_rows(ctx, Rule::Adagrad, (300, 7), 100, u32::MAX);
}

#[test]
fn row_updates_on_a_2d_grid_and_a_single_row_of_width_one() {
    let Some(ctx) = gpu() else { return };
    // 100 rows x 7 = 700 elements: 3 workgroups as 2 x 2, the last one past the end.
    check_rows(ctx, Rule::Adam, (300, 7), 100, 2);
    check_rows(ctx, Rule::Adagrad, (5, 1), 3, u32::MAX);
}

#[test]
fn a_row_id_past_the_table_is_skipped() {
    let Some(ctx) = gpu() else { return };
    let kernels = OptimKernels::new(ctx).expect("optim kernels");
    let params0 = random_vec(12, 21);
    let params = ctx.storage_buffer("params", &params0);
    let sum = ctx.storage_buffer_zeroed("sum", 12);
    let grads = ctx.storage_buffer("grads", &[1.0f32; 12]);
    let ids = ctx.storage_buffer("ids", &[1u32, 4]); // a table of 4 rows: 4 is past it
    let table = TableRows {
        ids: TensorRef::whole(&ids),
        max_rows: 2,
        table_rows: 4,
        width: 3,
    };
    let rule = UpdateRule::Adagrad {
        hp: AdagradHyper {
            lr: 0.1,
            eps: 1e-10,
            weight_decay: 0.0,
        },
        sum: TensorRef::whole(&sum),
    };
    let mut b = kernels
        .bind_rows(
            ctx,
            TensorRef::whole(&params),
            TensorRef::whole(&grads),
            rule,
            table,
        )
        .expect("bind_rows");
    b.set_rows(ctx, 2);
    run(ctx, |pass| kernels.update(pass, &b));
    let got = ctx.read_f32(&params, 0, 12).expect("read");
    let moved: Vec<usize> = (0..12).filter(|&i| got[i] != params0[i]).collect();
    assert_eq!(moved, vec![3, 4, 5], "only row 1 may move");
}
