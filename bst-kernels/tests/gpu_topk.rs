//! GPU top-k (`shaders/topk.wgsl`) against the CPU reference (`cpu::topk`): the answers
//! must be equal bit for bit (indices and score bits), since the order is total.
//!
//! Shapes: n = 1, k = 1, k = n, k > n, k = 0, n not a multiple of the 256-wide workgroup
//! nor of the 2048-pair chunk, one to ten chained passes, k = MAX_K, a grid spilling into
//! its second row, heavy ties (a few distinct scores), and the special values (NaN, +-inf,
//! +-0.0). Scores and output sit at nonzero offsets inside bigger buffers; the words
//! around the output must stay untouched.

mod common;

use bst_kernels::cpu::topk::top_k_reference as top_k;
use bst_kernels::gpu::topk::{MAX_K, TopKBinding, TopKBuffers, TopKDims, TopKKernels, read_pairs};
use bst_kernels::gpu::{GpuContext, Readback, TensorRef, wgpu};
use common::{gpu, random_vec, run};

/// Words before and after the output, and before the scores.
const PAD: usize = 5;
const SENTINEL: u32 = 0xdead_beef;

/// `n` scores with only `levels` distinct values (0 = all distinct), from a seed.
fn scores(n: usize, levels: usize, seed: u64) -> Vec<f32> {
    random_vec(n, seed)
        .into_iter()
        .map(|x| match levels {
            0 => x,
            l => ((x + 1.0) * l as f32 / 2.0).floor() / l as f32,
        })
        .collect()
}

struct Site {
    scores: wgpu::Buffer,
    out: wgpu::Buffer,
    binding: TopKBinding,
    /// One staging buffer for every read of the site, whatever the number of pairs.
    readback: Readback,
}

/// Scores at offset `PAD` of their buffer, the output at offset `PAD` of one with `PAD`
/// sentinel words on each side; bound for `k` of `scores.len()`.
fn site(ctx: &GpuContext, kernels: &TopKKernels, s: &[f32], k: u32) -> Site {
    let mut data = vec![-7.0f32; PAD];
    data.extend_from_slice(s);
    let scores = ctx.storage_buffer("scores", &data);
    let out_len = 2 * k.min(s.len() as u32) as usize + 2 * PAD;
    let out = ctx.storage_buffer("out", &vec![SENTINEL; out_len]);
    let binding = kernels
        .bind(
            ctx,
            &TopKBuffers {
                out: TensorRef::new(&out, PAD as u32),
                scores: TensorRef::new(&scores, PAD as u32),
            },
            TopKDims {
                n: s.len() as u32,
                k,
            },
        )
        .expect("bind top-k");
    Site {
        scores,
        out,
        binding,
        readback: Readback::new("top-k test"),
    }
}

/// Runs the selection and compares it with the CPU's on the first `binding.len()` scores.
fn check(ctx: &GpuContext, kernels: &TopKKernels, site: &mut Site, s: &[f32], what: &str) {
    let b = &site.binding;
    let out_words = site.out.size() as usize / 4;
    ctx.write(&site.out, 0, &vec![SENTINEL; out_words]);
    run(ctx, |pass| kernels.record(pass, b));
    let n = b.len() as usize;
    let out = TensorRef::new(&site.out, PAD as u32);
    let got = read_pairs(ctx, &mut site.readback, out, b.pairs()).expect("read");
    let want = top_k(&s[..n], b.k() as usize);
    let bits = |v: &[(usize, f32)]| -> Vec<(usize, u32)> {
        v.iter().map(|&(i, x)| (i, x.to_bits())).collect()
    };
    let got: Vec<(usize, f32)> = got.into_iter().map(|(i, x)| (i as usize, x)).collect();
    if bits(&got) != bits(&want) {
        let first = (0..want.len()).find(|&i| bits(&got[i..=i]) != bits(&want[i..=i]));
        panic!(
            "{what}: the GPU's top {} differs from the CPU's, first at rank {first:?}:\n  gpu \
             {:?}\n  cpu {:?}",
            want.len(),
            &got[..got.len().min(8)],
            &want[..want.len().min(8)]
        );
    }
    let words = ctx.read_u32(&site.out, 0, out_words).expect("read out");
    let written = PAD..PAD + 2 * b.pairs();
    for (i, w) in words.iter().enumerate() {
        if !written.contains(&i) {
            assert_eq!(*w, SENTINEL, "{what}: out word {i} was overwritten");
        }
    }
    println!("{what}: top {} of {n} equal to the CPU's", want.len());
}

#[test]
fn top_k_matches_the_cpu_on_awkward_sizes_and_ties() {
    let Some(ctx) = gpu() else { return };
    let kernels = TopKKernels::new(ctx).expect("top-k kernels");
    let cases: &[(usize, u32, usize)] = &[
        // (n, k, distinct levels; 0 = all distinct)
        (1, 1, 0),
        (1, 5, 0),       // k > n
        (7, 7, 0),       // k = n
        (300, 1, 0),     // one workgroup, a max
        (300, 300, 3),   // k = n with ties
        (2047, 10, 0),   // one chunk, not full
        (2048, 1024, 0), // k = MAX_K, one pass
        (2049, 1024, 7), // two passes, the second chunk holds one score
        (5000, 3, 2),    // mostly ties: the lowest indices win
        (10_000, 1000, 50),
        (70_001, 37, 0),         // three passes
        (1_000_000, 1000, 5000), // ten passes
    ];
    for (c, &(n, k, levels)) in cases.iter().enumerate() {
        let s = scores(n, levels, 100 + c as u64);
        let mut site = site(ctx, &kernels, &s, k);
        check(
            ctx,
            &kernels,
            &mut site,
            &s,
            &format!("n {n}, k {k}, {levels} levels"),
        );
    }
}

#[test]
fn top_k_orders_nan_infinities_and_signed_zeros_as_the_cpu() {
    let Some(ctx) = gpu() else { return };
    let kernels = TopKKernels::new(ctx).expect("top-k kernels");
    let mut s = scores(3000, 0, 9);
    let neg_nan = f32::from_bits(0xffc0_0001);
    for (i, v) in [
        (0, f32::NAN),
        (5, f32::INFINITY),
        (6, f32::NEG_INFINITY),
        (7, 0.0),
        (8, -0.0),
        (2100, f32::INFINITY),
        (2101, neg_nan),
        (2999, f32::MIN),
    ] {
        s[i] = v;
    }
    let mut site = site(ctx, &kernels, &s, 3000u32.min(MAX_K));
    check(ctx, &kernels, &mut site, &s, "special values, k = 1024");
    // The whole order, NaNs last, in one chunk.
    let small: Vec<f32> = s[..10].iter().chain(&s[2095..2105]).copied().collect();
    let mut site = self::site(ctx, &kernels, &small, small.len() as u32);
    check(ctx, &kernels, &mut site, &small, "special values, k = n");
}

#[test]
fn set_len_selects_from_a_prefix_and_the_grid_spills_into_y() {
    let Some(ctx) = gpu() else { return };
    // Two workgroups per grid row: the first pass's 5 workgroups take 3 rows.
    let kernels = TopKKernels::new(ctx)
        .expect("top-k kernels")
        .with_max_workgroups_per_dim(2);
    let s = scores(9000, 20, 3);
    let mut site = site(ctx, &kernels, &s, 64);
    check(ctx, &kernels, &mut site, &s, "grid of 2 x 3, n 9000, k 64");
    for n in [4097, 100, 1, 0] {
        site.binding.set_len(ctx, n);
        check(ctx, &kernels, &mut site, &s, &format!("set_len({n})"));
    }
    // Scores written later (between submits) are selected from.
    let fresh = scores(9000, 0, 4);
    site.binding.set_len(ctx, 9000);
    ctx.write(&site.scores, PAD as u32, &fresh);
    check(ctx, &kernels, &mut site, &fresh, "new scores");
}

#[test]
fn set_k_changes_k_back_and_forth_on_one_binding() {
    let Some(ctx) = gpu() else { return };
    let kernels = TopKKernels::new(ctx).expect("top-k kernels");
    // Three passes at k = MAX_K, two at small k: the bound k's scratch and bind groups
    // serve every smaller k.
    let s = scores(70_001, 40, 5);
    let mut site = site(ctx, &kernels, &s, MAX_K);
    for k in [MAX_K, 1, 37, MAX_K, 0, 600, 2, 1000, 37] {
        site.binding.set_k(ctx, k);
        check(ctx, &kernels, &mut site, &s, &format!("set_k({k})"));
    }
    // With set_len between: k above, then below the new n.
    site.binding.set_len(ctx, 300);
    for k in [513, 5, 300, 1] {
        site.binding.set_k(ctx, k);
        check(ctx, &kernels, &mut site, &s, &format!("n 300, set_k({k})"));
    }
    let too_many = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        site.binding.set_k(ctx, MAX_K + 1)
    }));
    assert!(too_many.is_err(), "set_k above the bound k must panic");
}

#[test]
fn k_zero_writes_nothing_and_bad_sizes_are_refused() {
    let Some(ctx) = gpu() else { return };
    let kernels = TopKKernels::new(ctx).expect("top-k kernels");
    let s = scores(10, 0, 1);
    let mut site = site(ctx, &kernels, &s, 0);
    check(ctx, &kernels, &mut site, &s, "k = 0");

    let scores_buf = ctx.storage_buffer("scores", &s);
    let small = ctx.storage_buffer_zeroed("out", 5);
    let bind = |k, n| {
        kernels
            .bind(
                ctx,
                &TopKBuffers {
                    out: TensorRef::whole(&small),
                    scores: TensorRef::whole(&scores_buf),
                },
                TopKDims { n, k },
            )
            .expect_err("refused")
            .to_string()
    };
    let e = bind(MAX_K + 1, 10);
    assert!(e.contains("k = 1025 is more than the kernel's 1024"), "{e}");
    let e = bind(3, 10);
    assert!(e.contains("top-k out (min(k, n), 2)"), "{e}");
    let e = bind(1, 11);
    assert!(e.contains("top-k scores (n)"), "{e}");
}
