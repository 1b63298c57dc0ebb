//! GPU embedding gathers and segment sums (`shaders/embedding.wgsl`) against the CPU
//! reference (`cpu::embedding`), on shapes that are not multiples of the 64-invocation
//! workgroup, span several workgroups (or a two-dimensional grid), have one sample with
//! one history slot, an all-padding history, or every token of a table on one id; with
//! every tensor at a nonzero offset inside a bigger buffer between sentinels, gradient
//! tables accumulating onto nonzero values, and several steps whose segments differ.
//!
//! Tolerance: none against the order the kernels document. The forward copies table rows
//! (bit for bit the CPU's). The backward adds a segment of at most P tokens as the CPU
//! does (onto the table value, token by token in (b, t) order), and a longer one in
//! pieces of P tokens, each summed from 0, then added in order: `pieced_sums` below
//! models exactly that, and the gradients must equal it bit for bit. They must also equal
//! the CPU reference within rounding (1e-6 per token of a step, at least 1e-5, + 1e-5 |cpu|). Cases with segments longer than
//! P: every token on one id, and a batch whose longest segment sets P above 64.
//! Everything outside the written tensors must be unchanged.

mod common;

use bst_kernels::gpu::Site;
use std::ops::Range;

use bst_kernels::cpu::embedding::{self as cpu, TokenIds};
use bst_kernels::gpu::embedding::{
    EmbeddingBuffers, EmbeddingDims, EmbeddingGradBuffers, EmbeddingKernels, EmbeddingSegments,
    build_segments,
};
use bst_kernels::gpu::{GpuContext, TensorRef, wgpu};
use common::{assert_close, at, gpu, random_vec, run};

/// Marks the u32 words around tensors; as an id it is past every table.
const SENTINEL: u32 = 0xDEAD_BEEF;

/// Host image of a buffer holding several tensors between padding.
struct Arena<T> {
    data: Vec<T>,
    seed: u64,
}

impl<T: Copy> Arena<T> {
    fn new(seed: u64) -> Self {
        Self {
            data: Vec::new(),
            seed,
        }
    }

    /// Appends `pad` elements of `fill`, then `values`; returns the range of `values`.
    fn push(&mut self, pad: usize, fill: impl Fn(&[f32]) -> Vec<T>, values: &[T]) -> Range<usize> {
        self.seed += 1;
        self.data.extend(fill(&random_vec(pad, self.seed)));
        let start = self.data.len();
        self.data.extend_from_slice(values);
        start..self.data.len()
    }
}

fn f32_pad(r: &[f32]) -> Vec<f32> {
    r.iter().map(|v| 100.0 + v).collect()
}

fn u32_pad(r: &[f32]) -> Vec<u32> {
    vec![SENTINEL; r.len()]
}

/// `n` ids below `vocab`, from a fixed seed.
fn random_ids(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    random_vec(n, seed)
        .iter()
        .map(|v| (((v + 1.0) / 2.0 * vocab as f32) as usize).min(vocab - 1) as u32)
        .collect()
}

/// Asserts `got == want` bit for bit; prints the max |gpu - cpu|, and on failure the first
/// mismatching pairs.
fn assert_exact(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut max_err = 0.0f32;
    let mut bad = Vec::new();
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        max_err = max_err.max((g - w).abs());
        if g.to_bits() != w.to_bits() {
            bad.push((i, g, w));
        }
    }
    println!(
        "{what}: {} values, max |gpu - cpu| = {max_err:.3e}",
        got.len()
    );
    if !bad.is_empty() {
        for (i, g, w) in bad.iter().take(8) {
            println!("  [{i}] gpu {g} cpu {w}");
        }
        panic!(
            "{what}: {} of {} values differ (max error {max_err:.3e})",
            bad.len(),
            got.len()
        );
    }
}

/// Asserts that `got` equals `init` outside the `written` ranges.
fn assert_untouched<T: Copy + PartialEq + std::fmt::Debug>(
    what: &str,
    got: &[T],
    init: &[T],
    written: &[&Range<usize>],
) {
    assert_eq!(got.len(), init.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(init).enumerate() {
        if !written.iter().any(|r| r.contains(&i)) {
            assert_eq!(g, w, "{what}[{i}] was overwritten");
        }
    }
}

/// `de` += the gradient rows `tokens` (id, row) in the kernels' order: per id, its rows in
/// the given (token) order; a segment of more than `piece` rows is summed in pieces of
/// `piece` rows from 0, and the pieces are added onto the table value in order.
fn pieced_sums(de: &mut [f32], w: usize, tokens: &[(usize, &[f32])], piece: usize) {
    let mut by_id: std::collections::BTreeMap<usize, Vec<&[f32]>> = Default::default();
    for &(id, g) in tokens {
        by_id.entry(id).or_default().push(g);
    }
    for (id, rows) in by_id {
        let acc = &mut de[id * w..][..w];
        if rows.len() <= piece {
            for g in rows {
                acc.iter_mut().zip(g).for_each(|(a, v)| *a += v);
            }
            continue;
        }
        for chunk in rows.chunks(piece) {
            let mut partial = vec![0.0f32; w];
            for g in chunk {
                partial.iter_mut().zip(*g).for_each(|(a, v)| *a += v);
            }
            acc.iter_mut().zip(&partial).for_each(|(a, v)| *a += v);
        }
    }
}

/// How a step's history ids are drawn.
#[derive(Clone, Copy, PartialEq)]
enum History {
    Random,
    /// Every history slot is padding: item, category and position 0.
    AllPadding,
}

struct Case {
    seq_len: usize,
    widths: (usize, usize, usize),
    fields: usize,
    d_other: usize,
    z_width: usize,
    z_off: usize,
    /// Rows of E_item, E_cat, E_pos, E_other.
    vocab: [usize; 4],
    history: History,
    /// Rows bound; each step then runs `set_rows(steps[s])`.
    bind_rows: usize,
    steps: Vec<usize>,
    /// Workgroups along x before the grid spills into y.
    grid_limit: Option<u32>,
}

impl Case {
    fn new(rows: usize, seq_len: usize) -> Self {
        Self {
            seq_len,
            widths: (7, 3, 2),
            fields: 3,
            d_other: 5,
            z_width: 23,
            z_off: 4,
            vocab: [40, 6, 14, 17],
            history: History::Random,
            bind_rows: rows,
            steps: vec![rows],
            grid_limit: None,
        }
    }

    fn dims(&self) -> EmbeddingDims {
        let (di, dc, dp) = self.widths;
        let u = |v: usize| v as u32;
        EmbeddingDims {
            rows: u(self.bind_rows),
            seq_len: u(self.seq_len),
            d_item: u(di),
            d_cat: u(dc),
            d_pos: u(dp),
            fields: u(self.fields),
            d_other: u(self.d_other),
            z_width: u(self.z_width),
            z_off: u(self.z_off),
            n_item: u(self.vocab[0]),
            n_cat: u(self.vocab[1]),
            n_pos: u(self.vocab[2]),
            n_other: u(self.vocab[3]),
        }
    }
}

/// The ids of one step, sized for the bound rows (rows past the step's are noise).
struct Ids {
    hist_item: Vec<u32>,
    hist_cat: Vec<u32>,
    hist_pos: Vec<u32>,
    target_item: Vec<u32>,
    target_cat: Vec<u32>,
    other: Vec<u32>,
}

impl Ids {
    fn new(case: &Case, seed: u64) -> Self {
        let (cap, l, v) = (case.bind_rows, case.seq_len, case.vocab);
        let hist = |vocab, seed| match case.history {
            History::Random => random_ids(cap * l, vocab, seed),
            History::AllPadding => vec![0; cap * l],
        };
        Self {
            hist_item: hist(v[0], seed),
            hist_cat: hist(v[1], seed + 1),
            hist_pos: hist(v[2], seed + 2),
            target_item: random_ids(cap, v[0], seed + 3),
            target_cat: random_ids(cap, v[1], seed + 4),
            other: random_ids(cap * case.fields, v[3], seed + 5),
        }
    }

    fn tokens(&self) -> TokenIds<'_> {
        TokenIds {
            hist_item: &self.hist_item,
            hist_cat: &self.hist_cat,
            hist_pos: &self.hist_pos,
            target_item: &self.target_item,
            target_cat: &self.target_cat,
        }
    }
}

fn check(ctx: &GpuContext, case: &Case) {
    let (cap, l, (di, dc, dp)) = (case.bind_rows, case.seq_len, case.widths);
    let (t, d, f, d_o, zw) = (l + 1, di + dc + dp, case.fields, case.d_other, case.z_width);
    let name = format!("embedding B={cap} L={l} F={f}");
    let dims = case.dims();
    let v = case.vocab;

    // Host data, sized for `cap` rows.
    let tables = [
        random_vec(v[0] * di, 1),
        random_vec(v[1] * dc, 2),
        random_vec(v[2] * dp, 3),
        random_vec(v[3] * d_o, 4),
    ];
    let dtables0 = [
        random_vec(v[0] * di, 5),
        random_vec(v[1] * dc, 6),
        random_vec(v[2] * dp, 7),
        random_vec(v[3] * d_o, 8),
    ];
    let x_stale = random_vec(cap * t * d, 9);
    let z0 = random_vec(cap * zw, 10);
    let dx = random_vec(cap * t * d, 11);
    let dz = random_vec(cap * zw, 12);
    let mut ids = Ids::new(case, 100);

    let mut params = Arena::new(20);
    let e_r: Vec<_> = tables.iter().map(|e| params.push(3, f32_pad, e)).collect();
    params.push(2, f32_pad, &[]);
    let mut grads = Arena::new(30);
    let de_r: Vec<_> = dtables0.iter().map(|e| grads.push(5, f32_pad, e)).collect();
    grads.push(2, f32_pad, &[]);
    let mut acts = Arena::new(40);
    let x_r = acts.push(7, f32_pad, &x_stale);
    let z_r = acts.push(2, f32_pad, &z0);
    let dx_r = acts.push(3, f32_pad, &dx);
    let dz_r = acts.push(1, f32_pad, &dz);
    acts.push(4, f32_pad, &[]);
    let mut batch = Arena::new(50);
    let hist_item_r = batch.push(3, u32_pad, &ids.hist_item);
    let target_item_r = batch.push(1, u32_pad, &ids.target_item);
    let hist_cat_r = batch.push(2, u32_pad, &ids.hist_cat);
    let target_cat_r = batch.push(0, u32_pad, &ids.target_cat);
    let hist_pos_r = batch.push(5, u32_pad, &ids.hist_pos);
    let other_r = batch.push(1, u32_pad, &ids.other);
    batch.push(3, u32_pad, &[]);
    let seg_len = EmbeddingSegments::buffer_len(&dims).expect("segments length");
    let mut segs_arena = Arena::new(60);
    let seg_r = segs_arena.push(6, u32_pad, &vec![SENTINEL; seg_len]);
    segs_arena.push(2, u32_pad, &[]);

    let params_buf = ctx.storage_buffer("params", &params.data);
    let grads_buf = ctx.storage_buffer("grads", &grads.data);
    let acts_buf = ctx.storage_buffer("acts", &acts.data);
    let batch_buf = ctx.storage_buffer("batch", &batch.data);
    let segs_buf = ctx.storage_buffer("segments", &segs_arena.data);

    let kernels = match case.grid_limit {
        Some(limit) => EmbeddingKernels::with_grid_limit(ctx, limit),
        None => EmbeddingKernels::new(ctx),
    }
    .expect("embedding kernels");
    let bufs = EmbeddingBuffers {
        x: at(&acts_buf, &x_r),
        z: at(&acts_buf, &z_r),
        e_item: at(&params_buf, &e_r[0]),
        e_cat: at(&params_buf, &e_r[1]),
        e_pos: at(&params_buf, &e_r[2]),
        e_other: at(&params_buf, &e_r[3]),
        hist_item: at(&batch_buf, &hist_item_r),
        hist_cat: at(&batch_buf, &hist_cat_r),
        hist_pos: at(&batch_buf, &hist_pos_r),
        target_item: at(&batch_buf, &target_item_r),
        target_cat: at(&batch_buf, &target_cat_r),
        other: at(&batch_buf, &other_r),
    };
    let grad_bufs = EmbeddingGradBuffers {
        de_item: at(&grads_buf, &de_r[0]),
        de_cat: at(&grads_buf, &de_r[1]),
        de_pos: at(&grads_buf, &de_r[2]),
        de_other: at(&grads_buf, &de_r[3]),
        dx: at(&acts_buf, &dx_r),
        dz: at(&acts_buf, &dz_r),
        segments: at(&segs_buf, &seg_r),
    };
    let mut binding = kernels
        .bind(ctx, Site::with_grads(bufs, grad_bufs, dims))
        .expect("bind");

    // CPU images of x and z (every bound row) and of the gradient tables.
    let mut x = x_stale.clone();
    let mut z = z0.clone();
    let mut de_cpu = dtables0.clone();
    let mut de_model = dtables0.clone();
    let mut segs = None;
    // The most tokens any step puts on one table (a bound of its longest segment).
    let longest = case.steps.iter().max().unwrap_or(&0) * (l + 1).max(f);
    for (step, &rows) in case.steps.iter().enumerate() {
        if step > 0 {
            // A new batch in the same arena.
            ids = Ids::new(case, 100 + 10 * step as u64);
            for (r, v) in [
                (&hist_item_r, &ids.hist_item),
                (&target_item_r, &ids.target_item),
                (&hist_cat_r, &ids.hist_cat),
                (&target_cat_r, &ids.target_cat),
                (&hist_pos_r, &ids.hist_pos),
                (&other_r, &ids.other),
            ] {
                ctx.write(&batch_buf, r.start as u32, v);
                batch.data[r.clone()].copy_from_slice(v);
            }
        }
        binding.set_rows(ctx, rows as u32);
        let s = EmbeddingSegments::build(&dims, rows as u32, ids.tokens(), &ids.other)
            .expect("segments");
        println!(
            "{name} step {step}: {rows} rows, unique ids {:?}",
            s.unique_ids()
        );
        binding.set_segments(ctx, &s);
        run(ctx, |pass| {
            kernels.token_embedding_forward(pass, &binding);
            kernels.other_embedding_forward(pass, &binding);
            kernels.other_embedding_backward(pass, &binding);
            kernels.token_embedding_backward(pass, &binding);
        });
        let [e_item, e_cat, e_pos, e_other] = &tables;
        cpu::token_embedding_forward(
            &mut x,
            ids.tokens(),
            e_item,
            e_cat,
            e_pos,
            rows,
            l,
            case.widths,
        );
        cpu::other_embedding_forward(&mut z, &ids.other, e_other, rows, f, d_o, zw, case.z_off);
        let [de_item, de_cat, de_pos, de_other] = &mut de_cpu;
        cpu::token_embedding_backward(
            de_item,
            de_cat,
            de_pos,
            &dx,
            ids.tokens(),
            rows,
            l,
            case.widths,
        );
        cpu::other_embedding_backward(de_other, &dz, &ids.other, rows, f, d_o, zw, case.z_off);
        // The kernels' order, per table: (id, gradient row) of each token in (b, t) or
        // (b, field) order.
        let widths = [di, dc, dp, d_o];
        let cols = [0, di, di + dc];
        for (i, de) in de_model.iter_mut().enumerate() {
            let tokens: Vec<(usize, &[f32])> = match i {
                3 => (0..rows * f)
                    .map(|k| {
                        let (bi, fi) = (k / f, k % f);
                        let g = &dz[bi * zw + case.z_off + fi * d_o..][..d_o];
                        (ids.other[k] as usize, g)
                    })
                    .collect(),
                _ => (0..rows * t)
                    .map(|k| {
                        let (bi, ti) = (k / t, k % t);
                        let id = ids.tokens().token(bi, ti, l);
                        let id = [id.0, id.1, id.2][i];
                        (id, &dx[k * d + cols[i]..][..widths[i]])
                    })
                    .collect(),
            };
            pieced_sums(de, widths[i], &tokens, s.piece_lens()[i] as usize);
        }
        println!(
            "{name} step {step}: piece lengths {:?}, (long segments, pieces) {:?}",
            s.piece_lens(),
            s.long_segments()
        );
        segs = Some(s);
    }
    let segs = segs.expect("at least one step");

    let read = |buf: &wgpu::Buffer, len: usize| ctx.read_f32(buf, 0, len).expect("readback");
    let acts_gpu = read(&acts_buf, acts.data.len());
    let grads_gpu = read(&grads_buf, grads.data.len());
    let params_gpu = read(&params_buf, params.data.len());
    let batch_gpu = ctx
        .read_u32(&batch_buf, 0, batch.data.len())
        .expect("readback");
    let segs_gpu = ctx
        .read_u32(&segs_buf, 0, segs_arena.data.len())
        .expect("readback");

    // Every bound row: rows past the last step's hold an earlier step's gather (or the
    // stale values), and z's columns outside the other features stay as they were.
    assert_exact(&format!("{name} x"), &acts_gpu[x_r.clone()], &x);
    assert_exact(&format!("{name} z"), &acts_gpu[z_r.clone()], &z);
    assert_untouched(
        &format!("{name} acts"),
        &acts_gpu,
        &acts.data,
        &[&x_r, &z_r],
    );
    for (i, table) in ["dE_item", "dE_cat", "dE_pos", "dE_other"]
        .iter()
        .enumerate()
    {
        let got = &grads_gpu[de_r[i].clone()];
        assert_exact(&format!("{name} {table} (kernel order)"), got, &de_model[i]);
        // Sums of up to `longest` values in [-1, 1], grouped differently from the CPU's.
        let atol = 1e-6 * longest.max(10) as f32;
        assert_close(
            &format!("{name} {table} (cpu)"),
            got,
            &de_cpu[i],
            atol,
            1e-5,
        );
    }
    let de_w: Vec<_> = de_r.iter().collect();
    assert_untouched(&format!("{name} grads"), &grads_gpu, &grads.data, &de_w);
    assert_untouched(&format!("{name} params"), &params_gpu, &params.data, &[]);
    assert_untouched(&format!("{name} batch ids"), &batch_gpu, &batch.data, &[]);
    // The live ranges of the last step's image; the rest holds what earlier steps put.
    // Outside them the image is zeros: nothing the kernels need is left out.
    let live: Vec<_> = segs.live().collect();
    assert!(
        live.windows(2).all(|w| w[0].end <= w[1].start),
        "{name}: {live:?}"
    );
    for (i, &word) in segs.data().iter().enumerate() {
        let inside = live.iter().any(|r| r.contains(&i));
        assert!(
            inside || word == 0,
            "{name}: word {i} = {word} is not uploaded"
        );
    }
    for r in live {
        let gpu = &segs_gpu[seg_r.start + r.start..seg_r.start + r.end];
        assert_eq!(gpu, &segs.data()[r.clone()], "{name} segments image {r:?}");
    }
    assert_untouched(
        &format!("{name} segments"),
        &segs_gpu,
        &segs_arena.data,
        &[&seg_r],
    );
}

#[test]
fn spans_several_workgroups_with_a_partial_last_one() {
    let Some(ctx) = gpu() else { return };
    // Item gather: 9 * 14 tokens * 7 columns = 882 invocations, 14 workgroups.
    check(ctx, &Case::new(9, 13));
}

#[test]
fn single_sample_with_a_single_history_slot() {
    let Some(ctx) = gpu() else { return };
    let case = Case {
        widths: (3, 2, 1),
        fields: 1,
        d_other: 2,
        z_width: 4,
        z_off: 1,
        vocab: [5, 3, 2, 4],
        ..Case::new(1, 1)
    };
    check(ctx, &case);
}

#[test]
fn target_only_tokens_without_other_fields() {
    let Some(ctx) = gpu() else { return };
    // L = 0 (T = 1: every token is a target, position 0) and F = 0 (nothing to gather
    // into z, no other segments to sum).
    let case = Case {
        fields: 0,
        ..Case::new(5, 0)
    };
    check(ctx, &case);
}

#[test]
fn all_padding_history_puts_every_history_token_on_id_zero() {
    let Some(ctx) = gpu() else { return };
    let case = Case {
        history: History::AllPadding,
        ..Case::new(6, 10)
    };
    check(ctx, &case);
}

#[test]
fn every_token_on_one_id_is_one_long_segment() {
    let Some(ctx) = gpu() else { return };
    // Every category, position and other id is 0; items are 0 or 1.
    let case = Case {
        vocab: [2, 1, 1, 1],
        ..Case::new(8, 9)
    };
    check(ctx, &case);
}

#[test]
fn a_segment_past_4096_tokens_sets_a_longer_piece() {
    let Some(ctx) = gpu() else { return };
    // 300 samples of 16 tokens: every category is 0 (4800 tokens, P = 70, 69 pieces);
    // 2 items (about 2400 tokens each, P = 64 with a partial last piece); 14 positions
    // (about 340 each); other ids around 53 per id, some segments long and some not.
    let case = Case {
        vocab: [2, 1, 14, 17],
        steps: vec![300, 129],
        ..Case::new(300, 15)
    };
    check(ctx, &case);
}

#[test]
fn segments_of_64_and_65_tokens_are_summed_whole_and_in_two_pieces() {
    let Some(ctx) = gpu() else { return };
    // One category: 8 samples of 8 tokens put exactly P = 64 on it (summed whole), 13
    // samples of 5 tokens put 65 (pieces of 64 and 1).
    for (rows, seq_len) in [(8, 7), (13, 4)] {
        let case = Case {
            vocab: [40, 1, 14, 17],
            ..Case::new(rows, seq_len)
        };
        check(ctx, &case);
    }
}

#[test]
fn steps_with_partial_batches_and_new_segments_accumulate() {
    let Some(ctx) = gpu() else { return };
    let case = Case {
        bind_rows: 12,
        steps: vec![12, 7, 5],
        ..Case::new(12, 4)
    };
    check(ctx, &case);
}

#[test]
fn two_dimensional_grid() {
    let Some(ctx) = gpu() else { return };
    // At most 2 workgroups along x: the item gather's 14 workgroups run as 2 x 7.
    let case = Case {
        grid_limit: Some(2),
        steps: vec![9, 5],
        ..Case::new(9, 13)
    };
    check(ctx, &case);
}

#[test]
fn build_segments_sorts_by_id_stably() {
    let ids = [3, 1, 3, 0, 1, 3, 7];
    let s = build_segments(ids.iter().copied(), 8).expect("segments");
    assert_eq!(s.ids, [0, 1, 3, 7]);
    assert_eq!(s.start, [0, 1, 3, 6, 7]);
    // Tokens of one id in ascending order: 1 at 1 and 4; 3 at 0, 2 and 5.
    assert_eq!(s.order, [3, 1, 4, 0, 2, 5, 6]);
}

#[test]
fn build_segments_of_no_tokens_is_one_empty_start() {
    let s = build_segments(std::iter::empty(), 5).expect("segments");
    assert!(s.ids.is_empty() && s.order.is_empty());
    assert_eq!(s.start, [0]);
}

#[test]
fn build_segments_of_one_id_is_the_identity_order() {
    let s = build_segments(std::iter::repeat_n(4, 100), 5).expect("segments");
    assert_eq!(s.ids, [4]);
    assert_eq!(s.start, [0, 100]);
    assert_eq!(s.order, (0..100).collect::<Vec<u32>>());
}

#[test]
fn build_segments_rejects_an_id_past_the_table() {
    let err = build_segments([0, 2, 5].into_iter(), 5)
        .unwrap_err()
        .to_string();
    assert!(err.contains("token 2 has id 5"), "{err}");
    assert!(err.contains("5 rows"), "{err}");
}

#[test]
fn embedding_segments_names_the_table_and_checks_the_rows() {
    let case = Case {
        vocab: [5, 3, 2, 4],
        ..Case::new(2, 2)
    };
    let dims = case.dims();
    let mut ids = Ids::new(&case, 1);
    let s = EmbeddingSegments::build(&dims, 2, ids.tokens(), &ids.other).expect("segments");
    assert_eq!(
        s.data().len(),
        EmbeddingSegments::buffer_len(&dims).unwrap()
    );
    // The target's position is 0, and two samples' targets share it.
    assert!(s.unique_ids()[2] >= 1);

    let err = EmbeddingSegments::build(&dims, 3, ids.tokens(), &ids.other)
        .unwrap_err()
        .to_string();
    assert!(err.contains("at most 2"), "{err}");
    ids.hist_cat[3] = 3;
    let err = EmbeddingSegments::build(&dims, 2, ids.tokens(), &ids.other)
        .unwrap_err()
        .to_string();
    assert!(err.contains("E_cat: ") && err.contains("has id 3"), "{err}");
    let err = EmbeddingSegments::build(&dims, 2, ids.tokens(), &ids.other[..1])
        .unwrap_err()
        .to_string();
    assert!(err.contains("other (B, F)"), "{err}");
}

#[test]
fn build_into_equals_a_fresh_build_whatever_it_held_before() {
    let case = Case::new(12, 4);
    let dims = case.dims();
    let small = Case::new(5, 4);
    let first = Ids::new(&case, 40);
    let mut reused =
        EmbeddingSegments::build(&dims, 2, first.tokens(), &first.other).expect("segments");
    let same = |what: &str, got: &EmbeddingSegments, want: &EmbeddingSegments| {
        assert_eq!(got.rows(), want.rows(), "{what}: rows");
        assert_eq!(got.unique_ids(), want.unique_ids(), "{what}: unique ids");
        assert!(
            got.data() == want.data(),
            "{what}: the segments image differs"
        );
    };
    // Batches bigger, then smaller, then empty, of other ids each time; then the
    // dims of a smaller binding, and back.
    for (seed, rows, dims) in [
        (1, 12, dims),
        (2, 3, dims),
        (3, 12, dims),
        (4, 0, dims),
        (5, 5, small.dims()),
        (6, 7, dims),
    ] {
        let ids = Ids::new(&case, seed);
        let what = format!("seed {seed}, {rows} rows of {}", dims.rows);
        reused
            .build_into(&dims, rows, ids.tokens(), &ids.other)
            .expect("build_into");
        let fresh =
            EmbeddingSegments::build(&dims, rows, ids.tokens(), &ids.other).expect("segments");
        same(&what, &reused, &fresh);
        // The item table's unique ids are build_segments' (the image's first part).
        let (t, l) = (case.seq_len + 1, case.seq_len);
        let (hist, target) = (&ids.hist_item, &ids.target_item);
        let items = (0..rows as usize).flat_map(|b| {
            (0..t).map(move |i| match i < l {
                true => hist[b * l + i],
                false => target[b],
            })
        });
        let want = build_segments(items, case.vocab[0]).expect("segments");
        let u = reused.unique_ids()[0] as usize;
        assert_eq!(reused.data()[..u], want.ids[..], "{what}: item ids");
    }
    // An id past its table: the error names it and leaves no rows; the next build
    // recovers.
    let mut bad = Ids::new(&case, 7);
    bad.other[4] = case.vocab[3] as u32;
    let e = reused
        .build_into(&dims, 12, bad.tokens(), &bad.other)
        .unwrap_err()
        .to_string();
    assert!(e.contains("E_other: "), "{e}");
    assert_eq!((reused.rows(), reused.unique_ids()), (0, [0; 4]));
    assert!(reused.data().iter().all(|&w| w == 0));
    let ids = Ids::new(&case, 8);
    reused
        .build_into(&dims, 9, ids.tokens(), &ids.other)
        .expect("build_into");
    let fresh = EmbeddingSegments::build(&dims, 9, ids.tokens(), &ids.other).expect("segments");
    same("after an error", &reused, &fresh);
}

#[test]
fn bind_rejects_bad_layouts() {
    let Some(ctx) = gpu() else { return };
    let kernels = EmbeddingKernels::new(ctx).expect("embedding kernels");
    let case = Case::new(2, 3);
    let dims = case.dims();
    let big = ctx.storage_buffer_zeroed("big", 4000);
    let ids_a = ctx.storage_buffer_zeroed("ids a", 100);
    let ids_b = ctx.storage_buffer_zeroed("ids b", 100);
    let small = ctx.storage_buffer_zeroed("small", 30);
    let bufs = EmbeddingBuffers {
        x: TensorRef::new(&big, 0),
        z: TensorRef::new(&big, 200),
        e_item: TensorRef::new(&big, 300),
        e_cat: TensorRef::new(&big, 700),
        e_pos: TensorRef::new(&big, 800),
        e_other: TensorRef::new(&big, 900),
        hist_item: TensorRef::new(&ids_a, 0),
        hist_cat: TensorRef::new(&ids_a, 10),
        hist_pos: TensorRef::new(&ids_a, 20),
        target_item: TensorRef::new(&ids_a, 30),
        target_cat: TensorRef::new(&ids_a, 40),
        other: TensorRef::new(&ids_a, 50),
    };
    kernels
        .bind(ctx, Site::forward(bufs, dims))
        .expect("a layout that fits");

    let err = |bufs: &EmbeddingBuffers, dims| {
        kernels
            .bind(ctx, Site::forward(*bufs, dims))
            .unwrap_err()
            .to_string()
    };
    let e = err(
        &EmbeddingBuffers {
            target_cat: TensorRef::new(&ids_b, 0),
            ..bufs
        },
        dims,
    );
    assert!(e.contains("hist_cat and target_cat"), "{e}");
    // E_pos (14, 2) needs 28 elements from 5: past the end of 30.
    let e = err(
        &EmbeddingBuffers {
            e_pos: TensorRef::new(&small, 5),
            ..bufs
        },
        dims,
    );
    assert!(e.contains("embedding e_pos") && e.contains("5..33"), "{e}");
    let e = err(&bufs, EmbeddingDims { z_off: 9, ..dims });
    assert!(e.contains("9..24") && e.contains("width 23"), "{e}");
}

#[test]
fn forward_only_binding_reads_an_id_past_the_table_as_zeros() {
    let Some(ctx) = gpu() else { return };
    let kernels = EmbeddingKernels::new(ctx).expect("embedding kernels");
    let case = Case {
        widths: (2, 1, 1),
        fields: 1,
        d_other: 1,
        z_width: 1,
        z_off: 0,
        vocab: [3, 2, 2, 2],
        ..Case::new(1, 1)
    };
    let dims = case.dims();
    // Tables: E_item rows 1..=6 (3 x 2), then E_cat, E_pos, E_other filled with 7.
    let mut table = (1..=6).map(|v| v as f32).collect::<Vec<_>>();
    table.extend([7.0; 6]);
    let params = ctx.storage_buffer("params", &table);
    let acts = ctx.storage_buffer("acts", &[-1.0f32; 9]);
    // hist_item, target_item, hist_cat, target_cat, hist_pos, other
    let ids = ctx.storage_buffer("ids", &[SENTINEL, 2, 0, 1, 1, 5]);
    let bufs = EmbeddingBuffers {
        x: TensorRef::new(&acts, 0), // (1, 2, 4)
        z: TensorRef::new(&acts, 8), // (1, 1)
        e_item: TensorRef::new(&params, 0),
        e_cat: TensorRef::new(&params, 6),
        e_pos: TensorRef::new(&params, 8),
        e_other: TensorRef::new(&params, 10),
        hist_item: TensorRef::new(&ids, 0),
        target_item: TensorRef::new(&ids, 1),
        hist_cat: TensorRef::new(&ids, 2),
        target_cat: TensorRef::new(&ids, 3),
        hist_pos: TensorRef::new(&ids, 4),
        other: TensorRef::new(&ids, 5),
    };
    let binding = kernels.bind(ctx, Site::forward(bufs, dims)).expect("bind");
    run(ctx, |pass| {
        kernels.token_embedding_forward(pass, &binding);
        kernels.other_embedding_forward(pass, &binding);
    });
    let got = ctx.read_f32(&acts, 0, 9).expect("readback");
    // Token 0: item past the table -> zeros; token 1 (target): item 2, position 0.
    // The other id 5 is past E_other's 2 rows -> zero.
    assert_exact(
        "out-of-range ids",
        &got,
        &[0.0, 0.0, 7.0, 7.0, 5.0, 6.0, 7.0, 7.0, 0.0],
    );
}
