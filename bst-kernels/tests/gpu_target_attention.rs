//! GPU target attention (`shaders/target_attention.wgsl`) against the CPU reference
//! (`cpu::target_attention`): one candidate, a thousand, several users with different
//! candidate counts, histories all padding, full and partly padded, a one-slot history,
//! odd head widths, a partial batch (`set_rows`), a capped grid (the grid-stride loop),
//! history tensors with more rows per user than L (as a batch of samples lays them out),
//! tensors at nonzero offsets of bigger buffers, and too long a history refused.
//!
//! Tolerance: 1e-6 + 1e-5 |cpu|. The sums run in the CPU's order; only `exp` may differ
//! (the GPU's is not correctly rounded).

mod common;

use bst_kernels::cpu::target_attention::target_attention_forward;
use bst_kernels::gpu::target_attention::{
    MAX_KEYS, TargetAttentionBuffers, TargetAttentionDims, TargetAttentionKernels,
};
use bst_kernels::gpu::{GpuContext, TensorRef};
use common::{Arena, assert_close, assert_untouched, at, gpu, random_vec, run};

struct Case {
    /// Candidates of each user.
    per_user: Vec<usize>,
    l: usize,
    d: usize,
    h: usize,
    /// Valid history slots of user u (right-aligned).
    valid: fn(usize, usize) -> usize,
    /// Bind for this many more rows, then `set_rows` to the real count.
    extra_rows: usize,
    /// Rows per user in the GPU's history tensors beyond L (stale rows, never read).
    extra_user_rows: usize,
    max_groups: Option<u32>,
}

fn check(ctx: &GpuContext, c: &Case) {
    let (l, d, h) = (c.l, c.d, c.h);
    let users = c.per_user.len();
    let n: usize = c.per_user.iter().sum();
    let cap = n + c.extra_rows;
    let name = format!("target attention N {n} U {users} L {l} d {d} h {h}");
    // Users interleaved: candidate k of the whole batch belongs to user k % users, as
    // long as that user has candidates left.
    let mut left = c.per_user.clone();
    let mut user = Vec::with_capacity(cap);
    while user.len() < n {
        for (u, left) in left.iter_mut().enumerate() {
            if *left > 0 {
                *left -= 1;
                user.push(u as u32);
            }
        }
    }
    user.resize(cap, 0);
    let hist_valid: Vec<u32> = (0..users)
        .flat_map(|u| {
            let v = (c.valid)(u, l).min(l);
            (0..l).map(move |t| (t >= l - v) as u32)
        })
        .collect();
    let qkv = random_vec(cap * 3 * d, 1);
    let hist_kv = random_vec(users * l * 2 * d, 2);
    let stale = random_vec(cap * d, 3);
    // The GPU's (U, R, ..) copies: each user's L rows, then R - L rows of junk.
    let r = l + c.extra_user_rows;
    let junk = random_vec(users * (r - l) * 2 * d, 4);
    let (mut kv_r, mut valid_r) = (Vec::new(), Vec::new());
    for u in 0..users {
        kv_r.extend_from_slice(&hist_kv[u * l * 2 * d..][..l * 2 * d]);
        kv_r.extend_from_slice(&junk[u * (r - l) * 2 * d..][..(r - l) * 2 * d]);
        valid_r.extend_from_slice(&hist_valid[u * l..][..l]);
        valid_r.extend(std::iter::repeat_n(1u32, r - l));
    }

    let mut acts = Arena::new(10);
    let qkv_r = acts.push(5, &qkv);
    let kv_at = acts.push(3, &kv_r);
    let out_r = acts.push(7, &stale);
    acts.push(2, &[]);
    let acts_buf = ctx.storage_buffer("acts", &acts.data);
    let mut ids = vec![9u32; 3];
    let valid_at = ids.len();
    ids.extend_from_slice(&valid_r);
    ids.extend_from_slice(&[9, 9]);
    let user_r = ids.len()..ids.len() + user.len();
    ids.extend_from_slice(&user);
    let ids_buf = ctx.storage_buffer("ids", &ids);

    let mut kernels = TargetAttentionKernels::new(ctx).expect("kernels");
    if let Some(max) = c.max_groups {
        kernels = kernels.with_max_workgroups_per_dim(max);
    }
    let bufs = TargetAttentionBuffers {
        out: at(&acts_buf, &out_r),
        qkv: at(&acts_buf, &qkv_r),
        hist_kv: at(&acts_buf, &kv_at),
        hist_valid: TensorRef::new(&ids_buf, valid_at as u32),
        user: TensorRef::new(&ids_buf, user_r.start as u32),
    };
    let dims = TargetAttentionDims {
        rows: cap as u32,
        users: users as u32,
        l: l as u32,
        user_rows: r as u32,
        d: d as u32,
        heads: h as u32,
    };
    let mut binding = kernels.bind(ctx, &bufs, dims).expect("bind");
    if c.extra_rows > 0 {
        binding.set_rows(ctx, n as u32);
    }
    run(ctx, |pass| kernels.forward(pass, &binding));

    let mut want = vec![0.0; n * d];
    target_attention_forward(&mut want, &qkv, &hist_kv, &hist_valid, &user, n, l, d, h);
    let got = ctx
        .read_f32(&acts_buf, 0, acts.data.len())
        .expect("readback");
    let out_w = out_r.start..out_r.start + n * d;
    assert_close(&name, &got[out_w.clone()], &want, 1e-6, 1e-5);
    assert_untouched(&name, &got, &acts.data, &[&out_w]);
}

fn case(per_user: Vec<usize>, l: usize, d: usize, h: usize) -> Case {
    Case {
        per_user,
        l,
        d,
        h,
        valid: |u, l| [l, 0, l / 2, 1][u % 4],
        extra_rows: 0,
        extra_user_rows: 0,
        max_groups: None,
    }
}

#[test]
fn one_candidate_and_a_thousand_on_the_default_shape() {
    let Some(ctx) = gpu() else { return };
    check(ctx, &case(vec![1], 20, 64, 8));
    check(ctx, &case(vec![1000], 20, 64, 8));
}

#[test]
fn several_users_with_empty_full_and_partial_histories() {
    let Some(ctx) = gpu() else { return };
    check(ctx, &case(vec![3, 70, 1, 130, 2], 20, 64, 8));
    // Odd head widths, one head, a one-slot history.
    check(ctx, &case(vec![5, 9, 2], 7, 15, 3));
    check(ctx, &case(vec![4, 4], 1, 12, 1));
}

#[test]
fn a_partial_batch_and_a_capped_grid() {
    let Some(ctx) = gpu() else { return };
    let mut c = case(vec![33, 17], 6, 16, 4);
    c.extra_rows = 40;
    c.extra_user_rows = 1; // (U, T, ..) tensors of a batch of samples
    check(ctx, &c);
    let mut c = case(vec![2, 5, 1], 3, 8, 2);
    c.extra_user_rows = 4;
    check(ctx, &c);
    let mut c = case(vec![100, 3], 5, 16, 2);
    c.max_groups = Some(2);
    check(ctx, &c);
}

#[test]
fn too_long_a_history_is_refused() {
    let Some(ctx) = gpu() else { return };
    let kernels = TargetAttentionKernels::new(ctx).expect("kernels");
    let buf = ctx.storage_buffer_zeroed("big", 1 << 20);
    let t = TensorRef::whole(&buf);
    let bufs = TargetAttentionBuffers {
        out: t,
        qkv: t,
        hist_kv: t,
        hist_valid: t,
        user: t,
    };
    let dims = |l: u32, heads: u32| TargetAttentionDims {
        rows: 2,
        users: 1,
        l,
        user_rows: l,
        d: 8,
        heads,
    };
    let e = kernels.bind(ctx, &bufs, dims(MAX_KEYS, 2)).unwrap_err();
    assert!(e.to_string().contains("shorten the history"), "{e}");
    assert!(kernels.bind(ctx, &bufs, dims(MAX_KEYS - 1, 2)).is_ok());
    let e = kernels.bind(ctx, &bufs, dims(4, 3)).unwrap_err();
    assert!(e.to_string().contains("heads must divide d"), "{e}");
    let e = kernels
        .bind(
            ctx,
            &bufs,
            TargetAttentionDims {
                user_rows: 3,
                ..dims(4, 2)
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("fewer than the history's 4"), "{e}");
    let small = ctx.storage_buffer_zeroed("small", 8);
    let bufs = TargetAttentionBuffers {
        out: TensorRef::whole(&small),
        ..bufs
    };
    assert!(kernels.bind(ctx, &bufs, dims(4, 2)).is_err());
}
