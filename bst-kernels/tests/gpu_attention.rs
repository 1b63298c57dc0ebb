//! GPU attention (`shaders/attention.wgsl`) against the plain CPU reference (`cpu::reference`):
//! several samples and heads, a sample whose history is all padding (only the target
//! valid), T = 1 with one sample and one head, T = 64 (the backward's limit, K and V
//! read from global memory), T = 70 forward-only (nothing staged), a partial last batch,
//! every tensor at a nonzero offset of a bigger buffer, a sample with no valid key at all
//! (zeros, as on the CPU), and workgroups capped at 1 or 2 so that each loops over
//! several samples.
//!
//! Tolerance: |gpu - cpu| <= 1e-6 + 1e-5 |cpu| (the same sums in the same order as the
//! CPU, but the GPU's exp and division are not correctly rounded, and its compiler may
//! fuse multiply-adds). Measured on lavapipe over every case here: at most 10.8% of it
//! (out of B 3, T 21, d 32, h 4: |err| 2.4e-7 at values up to 2; att at most 2.1%, dqkv
//! 9.5%), so about 9x of margin for drivers with less exact exp (WGSL allows 3 + 2|x|
//! ulp) or other fusing. Probabilities of masked keys must be exactly 0, and everything
//! outside the written tensors bit-for-bit unchanged.

mod common;

use bst_kernels::gpu::Site;
use std::ops::Range;

use bst_kernels::cpu::reference;
use bst_kernels::gpu::attention::{
    AttentionBuffers, AttentionDims, AttentionGradBuffers, AttentionKernels,
};
use bst_kernels::gpu::{GpuContext, TensorRef};
use common::{Arena, assert_close, assert_untouched, at, gpu, random_vec, run};

const ATOL: f32 = 1e-6;
const RTOL: f32 = 1e-5;

/// valid (B, T): the target (last token) always valid, the history about 3/4 valid,
/// and the history of sample 1 (when there is one) all padding; every token of sample
/// `none_valid`, target included, masked.
fn validity(b: usize, t: usize, none_valid: Option<usize>) -> Vec<u32> {
    let noise = random_vec(b * t, 9);
    (0..b * t)
        .map(|i| {
            let (bi, ti) = (i / t, i % t);
            let kept = ti == t - 1 || (bi != 1 && noise[i] > -0.5);
            u32::from(kept && Some(bi) != none_valid)
        })
        .collect()
}

struct Case {
    b: usize,
    t: usize,
    d: usize,
    h: usize,
    /// Bind for this many samples, then `set_rows(b)` (a partial last batch).
    bind_b: Option<usize>,
    backward: bool,
    /// Caps the workgroups along the samples: each loops over several samples.
    max_groups: Option<u32>,
    /// A sample with no valid key at all.
    none_valid: Option<usize>,
}

impl Case {
    fn new(b: usize, t: usize, d: usize, h: usize) -> Self {
        Self {
            b,
            t,
            d,
            h,
            bind_b: None,
            backward: true,
            max_groups: None,
            none_valid: None,
        }
    }
}

fn check(ctx: &GpuContext, case: &Case) {
    let Case { b, t, d, h, .. } = *case;
    let cap = case.bind_b.unwrap_or(b);
    let name = format!("attention B {b} T {t} d {d} h {h}");

    // Q, K, V in [-2, 2) so that the softmax is far from uniform.
    let qkv: Vec<f32> = random_vec(cap * t * 3 * d, 1)
        .iter()
        .map(|v| 2.0 * v)
        .collect();
    let valid = validity(cap, t, case.none_valid);
    let dout = random_vec(cap * t * d, 2);
    let stale = random_vec(cap * h * t * t.max(3 * d), 3);

    let mut acts = Arena::new(20);
    let qkv_r = acts.push(5, &qkv);
    let out_r = acts.push(3, &stale[..cap * t * d]);
    let att_r = acts.push(2, &stale[..cap * h * t * t]);
    acts.push(4, &[]);
    let mut dacts = Arena::new(40);
    let dout_r = dacts.push(7, &dout);
    let dqkv_r = dacts.push(1, &stale[..cap * t * 3 * d]);
    dacts.push(3, &[]);
    let mut valid_host = vec![7u32; 6]; // sentinels before the tensor
    valid_host.extend(&valid);
    let valid_r = 6..valid_host.len();

    let acts_buf = ctx.storage_buffer("acts", &acts.data);
    let dacts_buf = ctx.storage_buffer("dacts", &dacts.data);
    let valid_buf = ctx.storage_buffer("valid", &valid_host);

    let mut kernels = AttentionKernels::new(ctx).expect("attention kernels");
    if let Some(max) = case.max_groups {
        kernels = kernels.with_max_workgroups_per_dim(max);
    }
    let bufs = AttentionBuffers {
        out: at(&acts_buf, &out_r),
        att: at(&acts_buf, &att_r),
        qkv: at(&acts_buf, &qkv_r),
        valid: at(&valid_buf, &valid_r),
    };
    let grads = AttentionGradBuffers {
        dqkv: at(&dacts_buf, &dqkv_r),
        dout: at(&dacts_buf, &dout_r),
    };
    let dims = AttentionDims {
        batch: cap as u32,
        t: t as u32,
        d: d as u32,
        heads: h as u32,
    };
    let grads = case.backward.then_some(grads);
    let mut binding = kernels.bind(ctx, Site { bufs, grads, dims }).expect("bind");
    if case.bind_b.is_some() {
        binding.set_rows(ctx, b as u32);
    }
    run(ctx, |pass| {
        kernels.forward(pass, &binding);
        if case.backward {
            kernels.backward(pass, &binding);
        }
    });

    // CPU reference on the first `b` samples.
    let mut out = vec![0.0; b * t * d];
    let mut att = vec![0.0; b * h * t * t];
    let qkv = &qkv[..b * t * 3 * d];
    reference::attention_forward(&mut out, &mut att, qkv, &valid, b, t, d, h);
    let mut dqkv = vec![0.0; b * t * 3 * d];
    reference::attention_backward(&mut dqkv, &dout[..b * t * d], &att, qkv, b, t, d, h);

    let acts_gpu = ctx
        .read_f32(&acts_buf, 0, acts.data.len())
        .expect("readback");
    let dacts_gpu = ctx
        .read_f32(&dacts_buf, 0, dacts.data.len())
        .expect("readback");
    let first = |r: &Range<usize>, len: usize| r.start..r.start + len;
    let (out_w, att_w) = (first(&out_r, out.len()), first(&att_r, att.len()));
    let att_gpu = &acts_gpu[att_w.clone()];
    assert_close(
        &format!("{name} out"),
        &acts_gpu[out_w.clone()],
        &out,
        ATOL,
        RTOL,
    );
    assert_close(&format!("{name} att"), att_gpu, &att, ATOL, RTOL);
    for (i, a) in att_gpu.iter().enumerate() {
        let (bi, t2) = (i / (h * t * t), i % t);
        if valid[bi * t + t2] == 0 {
            assert_eq!(a.to_bits(), 0, "{name} att[{i}]: a masked key got {a}");
        }
    }
    assert_untouched(
        &format!("{name} acts"),
        &acts_gpu,
        &acts.data,
        &[&out_w, &att_w],
    );

    let dqkv_w = first(&dqkv_r, dqkv.len());
    let mut dacts_written = vec![];
    if case.backward {
        assert_close(
            &format!("{name} dqkv"),
            &dacts_gpu[dqkv_w.clone()],
            &dqkv,
            ATOL,
            RTOL,
        );
        dacts_written.push(&dqkv_w);
    }
    assert_untouched(
        &format!("{name} dacts"),
        &dacts_gpu,
        &dacts.data,
        &dacts_written,
    );
    let valid_gpu = ctx
        .read_u32(&valid_buf, 0, valid_host.len())
        .expect("readback");
    assert_eq!(valid_gpu, valid_host, "{name}: valid was overwritten");

    // A sample without a valid key: zeros on both sides (not NaN, not a uniform softmax).
    if let Some(bi) = case.none_valid {
        let sample = |r: &Range<usize>, len: usize| r.start + bi * len..r.start + (bi + 1) * len;
        let mut parts = vec![
            (
                "out",
                &acts_gpu[sample(&out_r, t * d)],
                &out[bi * t * d..][..t * d],
            ),
            (
                "att",
                &acts_gpu[sample(&att_r, h * t * t)],
                &att[bi * h * t * t..][..h * t * t],
            ),
        ];
        if case.backward {
            let n = t * 3 * d;
            parts.push(("dqkv", &dacts_gpu[sample(&dqkv_r, n)], &dqkv[bi * n..][..n]));
        }
        for (what, gpu, cpu) in parts {
            assert!(
                gpu.iter().chain(cpu).all(|&x| x == 0.0),
                "{name} {what} of sample {bi}, which has no valid key: gpu {gpu:?} cpu {cpu:?}"
            );
        }
    }
}

#[test]
fn several_samples_and_heads_with_an_all_padding_history() {
    // 441 scores and 504 gradients per head: several passes of the 64 invocations.
    let Some(ctx) = gpu() else { return };
    check(ctx, &Case::new(3, 21, 32, 4));
}

#[test]
fn single_token_single_sample_single_head() {
    let Some(ctx) = gpu() else { return };
    check(ctx, &Case::new(1, 1, 5, 1));
}

#[test]
fn t_64_backward_reads_k_and_v_from_global_memory() {
    // Forward: K and V fill the 16 KiB exactly (2 * 64 * 32). Backward: dS fills it.
    let Some(ctx) = gpu() else { return };
    check(ctx, &Case::new(2, 64, 32, 1));
}

#[test]
fn t_70_forward_reads_k_and_v_from_global_memory() {
    // 2 * 70 * 32 floats of K and V do not fit 16 KiB; the backward is refused.
    let Some(ctx) = gpu() else { return };
    let case = Case {
        backward: false,
        ..Case::new(2, 70, 64, 2)
    };
    check(ctx, &case);
}

#[test]
fn set_rows_runs_a_partial_last_batch_and_leaves_later_samples_alone() {
    let Some(ctx) = gpu() else { return };
    let case = Case {
        bind_b: Some(6),
        ..Case::new(2, 9, 12, 3)
    };
    check(ctx, &case);
}

#[test]
fn a_sample_with_every_key_masked_gets_zeros_forward_and_backward() {
    // Sample 2 of 4 has no valid token, target included; its neighbours are normal.
    let Some(ctx) = gpu() else { return };
    let case = Case {
        none_valid: Some(2),
        ..Case::new(4, 6, 8, 2)
    };
    check(ctx, &case);
}

#[test]
fn every_key_masked_at_t_1() {
    let Some(ctx) = gpu() else { return };
    let case = Case {
        none_valid: Some(0),
        ..Case::new(1, 1, 4, 1)
    };
    check(ctx, &case);
}

#[test]
fn two_workgroups_per_head_loop_over_seven_samples() {
    // Workgroups (heads, 2): each strides over 3 or 4 samples, restaging K and V in
    // workgroup memory between them; one sample has no valid key.
    let Some(ctx) = gpu() else { return };
    let case = Case {
        max_groups: Some(2),
        none_valid: Some(4),
        ..Case::new(7, 9, 12, 3)
    };
    check(ctx, &case);
}

#[test]
fn one_workgroup_per_head_loops_over_a_partial_batch_unstaged() {
    // T = 70: K and V read from global memory; one workgroup row walks all 3 samples.
    let Some(ctx) = gpu() else { return };
    let case = Case {
        max_groups: Some(1),
        bind_b: Some(5),
        backward: false,
        ..Case::new(3, 70, 16, 2)
    };
    check(ctx, &case);
}

#[test]
fn bind_rejects_t_over_64_for_the_backward_and_bad_shapes() {
    let Some(ctx) = gpu() else { return };
    let kernels = AttentionKernels::new(ctx).expect("attention kernels");
    let buf = ctx.storage_buffer_zeroed("buf", 100_000);
    let bufs = AttentionBuffers {
        out: TensorRef::new(&buf, 0),
        att: TensorRef::new(&buf, 0),
        qkv: TensorRef::new(&buf, 0),
        valid: TensorRef::new(&buf, 0),
    };
    let grads = AttentionGradBuffers {
        dqkv: TensorRef::new(&buf, 0),
        dout: TensorRef::new(&buf, 0),
    };
    let dims = AttentionDims {
        batch: 1,
        t: 65,
        d: 8,
        heads: 2,
    };
    kernels
        .bind(ctx, Site::forward(bufs, dims))
        .expect("the forward takes T = 65");
    let err = kernels
        .bind(ctx, Site::with_grads(bufs, grads, dims))
        .unwrap_err()
        .to_string();
    assert!(err.contains("T is at most 64"), "{err}");
    let err = kernels
        .bind(ctx, Site::forward(bufs, AttentionDims { heads: 3, ..dims }))
        .unwrap_err()
        .to_string();
    assert!(err.contains("heads must divide d"), "{err}");
    let err = kernels
        .bind(
            ctx,
            Site::forward(bufs, AttentionDims { batch: 20, ..dims }),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("att (B, h, T, T)"), "{err}"); // 20 * 2 * 65 * 65 > 100_000
}
