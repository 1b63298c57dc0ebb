//! The f16 embedding gather (`shaders/embedding_f16.wgsl`, `EmbeddingKernels::bind_f16`)
//! against the CPU reference's gathers on `f16_rounded` tables, on shapes that are not
//! multiples of the 64-invocation workgroup, span several workgroups or a
//! two-dimensional grid, have T = 1 or an all-padding history, with tables at odd f16
//! offsets between sentinels, and values that round to subnormals, to infinity and on
//! ties. Also: the error on a device without `SHADER_F16`.
//!
//! Tolerance: none. The host rounds each value to f16 once (`f16_table`), the shader
//! converts it back to f32 exactly, and the reference gathers the same f32 values, so GPU
//! and CPU agree bit for bit.

mod common;

use bst_kernels::cpu::embedding::{self as cpu, TokenIds, f16_rounded, f16_table};
use bst_kernels::gpu::embedding::{EmbeddingBuffers, EmbeddingDims, EmbeddingKernels};
use bst_kernels::gpu::{GpuContext, GpuError, TensorRef, wgpu};
use common::{Arena, assert_bits_eq, assert_untouched, gpu, gpu_f16, random_vec, run};
use half::f16;

/// As an id, past every table.
const SENTINEL: u32 = 0xDEAD_BEEF;

struct Case {
    rows: usize,
    seq_len: usize,
    widths: (usize, usize, usize),
    fields: usize,
    d_other: usize,
    z_width: usize,
    z_off: usize,
    /// Rows of E_item, E_cat, E_pos, E_other.
    vocab: [usize; 4],
    all_padding: bool,
    /// Rows of each step (`set_rows`), at most `rows`.
    steps: Vec<usize>,
    grid_limit: Option<u32>,
}

impl Case {
    fn new(rows: usize, seq_len: usize) -> Case {
        Case {
            rows,
            seq_len,
            widths: (7, 3, 2),
            fields: 3,
            d_other: 5,
            z_width: 23,
            z_off: 4,
            vocab: [41, 6, 14, 17],
            all_padding: false,
            steps: vec![rows],
            grid_limit: None,
        }
    }

    fn dims(&self) -> EmbeddingDims {
        let (di, dc, dp) = self.widths;
        let u = |v: usize| v as u32;
        EmbeddingDims {
            rows: u(self.rows),
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

/// `n` ids below `vocab`.
fn random_ids(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    random_vec(n, seed)
        .iter()
        .map(|v| (((v + 1.0) / 2.0 * vocab as f32) as usize).min(vocab - 1) as u32)
        .collect()
}

/// A table of `n` values spread over f16's range: ordinary values, ones that round to
/// f16 subnormals or to zero, ties between two f16 values, and overflow to infinity.
fn table_values(n: usize, seed: u64) -> Vec<f32> {
    let special = [
        1.0 + 2f32.powi(-11),       // a tie: rounds to even (1.0)
        1.0 + 3.0 * 2f32.powi(-11), // a tie: rounds to even (1 + 2^-9)
        3.0e-6,                     // an f16 subnormal
        1.0e-9,                     // rounds to zero
        -70000.0,                   // past f16's 65504: -infinity
        65504.0,
        0.1,
    ];
    random_vec(n, seed)
        .iter()
        .enumerate()
        .map(|(i, &v)| match i % 11 {
            10 => special[(i / 11) % special.len()],
            3 => v * 1000.0,
            _ => v,
        })
        .collect()
}

/// Packs f16 values (a table at every odd or even f16 offset) into one buffer, padded
/// to whole 4-byte words, between sentinel f16 values.
struct F16Arena {
    data: Vec<f16>,
}

impl F16Arena {
    /// Appends `pad` sentinels (1234.0), then `values`; returns the f16 offset of `values`.
    fn push(&mut self, pad: usize, values: &[f16]) -> usize {
        self.data
            .extend(std::iter::repeat_n(f16::from_f32(1234.0), pad));
        let start = self.data.len();
        self.data.extend_from_slice(values);
        start
    }
}

fn check(ctx: &GpuContext, case: &Case) {
    let (cap, l, (di, dc, dp)) = (case.rows, case.seq_len, case.widths);
    let (t, d, f, d_o, zw) = (l + 1, di + dc + dp, case.fields, case.d_other, case.z_width);
    let name = format!("f16 embedding B={cap} L={l} F={f}");
    let dims = case.dims();
    let v = case.vocab;
    let tables = [
        table_values(v[0] * di, 1),
        table_values(v[1] * dc, 2),
        table_values(v[2] * dp, 3),
        table_values(v[3] * d_o, 4),
    ];

    // The tables at odd and even f16 offsets.
    let mut params = F16Arena { data: Vec::new() };
    let offs: Vec<usize> = tables
        .iter()
        .zip([3, 2, 1, 4])
        .map(|(e, pad)| params.push(pad, &f16_table(e)))
        .collect();
    params.push(1, &[]);
    let mut acts = Arena::new(40);
    let x_r = acts.push(7, &random_vec(cap * t * d, 9));
    let z_r = acts.push(2, &random_vec(cap * zw, 10));
    acts.push(4, &[]);

    let kernels = match case.grid_limit {
        Some(limit) => EmbeddingKernels::with_grid_limit(ctx, limit),
        None => EmbeddingKernels::new(ctx),
    }
    .expect("embedding kernels");
    let params_buf = ctx.storage_buffer("f16 tables", &params.data);
    let acts_buf = ctx.storage_buffer("acts", &acts.data);
    let mut x = acts.data[x_r.clone()].to_vec();
    let mut z = acts.data[z_r.clone()].to_vec();
    let rounded: Vec<Vec<f32>> = tables.iter().map(|e| f16_rounded(e)).collect();
    for (step, &rows) in case.steps.iter().enumerate() {
        let seed = 100 + 10 * step as u64;
        let hist = |vocab, seed| match case.all_padding {
            true => vec![0; cap * l],
            false => random_ids(cap * l, vocab, seed),
        };
        let (hist_item, hist_cat, hist_pos) =
            (hist(v[0], seed), hist(v[1], seed + 1), hist(v[2], seed + 2));
        let (target_item, target_cat) = (
            random_ids(cap, v[0], seed + 3),
            random_ids(cap, v[1], seed + 4),
        );
        let other = random_ids(cap * f, v[3], seed + 5);
        // hist_item, target_item, hist_cat, target_cat, hist_pos, other, after one sentinel.
        let mut ids = vec![SENTINEL];
        let mut put = |v: &[u32]| {
            let at = ids.len() as u32;
            ids.extend_from_slice(v);
            at
        };
        let at = [
            &hist_item,
            &target_item,
            &hist_cat,
            &target_cat,
            &hist_pos,
            &other,
        ]
        .map(|v| put(v));
        let ids_buf = ctx.storage_buffer("ids", &ids);
        let f16_at = |i: usize| TensorRef::new(&params_buf, offs[i] as u32);
        let bufs = EmbeddingBuffers {
            x: TensorRef::new(&acts_buf, x_r.start as u32),
            z: TensorRef::new(&acts_buf, z_r.start as u32),
            e_item: f16_at(0),
            e_cat: f16_at(1),
            e_pos: f16_at(2),
            e_other: f16_at(3),
            hist_item: TensorRef::new(&ids_buf, at[0]),
            target_item: TensorRef::new(&ids_buf, at[1]),
            hist_cat: TensorRef::new(&ids_buf, at[2]),
            target_cat: TensorRef::new(&ids_buf, at[3]),
            hist_pos: TensorRef::new(&ids_buf, at[4]),
            other: TensorRef::new(&ids_buf, at[5]),
        };
        let mut binding = kernels.bind_f16(ctx, &bufs, dims).expect("bind_f16");
        binding.set_rows(ctx, rows as u32);
        run(ctx, |pass| {
            kernels.token_embedding_forward(pass, &binding);
            kernels.other_embedding_forward(pass, &binding);
        });
        let tokens = TokenIds {
            hist_item: &hist_item,
            hist_cat: &hist_cat,
            hist_pos: &hist_pos,
            target_item: &target_item,
            target_cat: &target_cat,
        };
        let [e_item, e_cat, e_pos, e_other] = [&rounded[0], &rounded[1], &rounded[2], &rounded[3]];
        cpu::token_embedding_forward(&mut x, tokens, e_item, e_cat, e_pos, rows, l, case.widths);
        cpu::other_embedding_forward(&mut z, &other, e_other, rows, f, d_o, zw, case.z_off);
    }
    let got = ctx
        .read_f32(&acts_buf, 0, acts.data.len())
        .expect("readback");
    assert_bits_eq(&format!("{name} x"), &got[x_r.clone()], &x);
    assert_bits_eq(&format!("{name} z"), &got[z_r.clone()], &z);
    assert_untouched(&format!("{name} acts"), &got, &acts.data, &[&x_r, &z_r]);
    // The f16 tables are inputs only.
    let words = ctx
        .read_u32(&params_buf, 0, params.data.len().div_ceil(2))
        .expect("readback");
    let halves: &[f16] = bytemuck::cast_slice(&words);
    assert_eq!(
        &halves[..params.data.len()],
        &params.data[..],
        "{name} tables changed"
    );
}

#[test]
fn spans_several_workgroups_with_a_partial_last_one() {
    let Some(ctx) = gpu_f16() else { return };
    // Item gather: 9 * 14 tokens * 7 columns = 882 invocations, 14 workgroups.
    check(ctx, &Case::new(9, 13));
}

#[test]
fn target_only_tokens_t_equals_one() {
    let Some(ctx) = gpu_f16() else { return };
    check(ctx, &Case::new(5, 0));
}

#[test]
fn single_sample_with_odd_widths() {
    let Some(ctx) = gpu_f16() else { return };
    let case = Case {
        widths: (1, 1, 3),
        d_other: 1,
        fields: 1,
        z_width: 2,
        z_off: 1,
        ..Case::new(1, 1)
    };
    check(ctx, &case);
}

#[test]
fn all_padding_history_reads_row_zero() {
    let Some(ctx) = gpu_f16() else { return };
    check(
        ctx,
        &Case {
            all_padding: true,
            ..Case::new(6, 4)
        },
    );
}

#[test]
fn partial_batches_after_a_full_one() {
    let Some(ctx) = gpu_f16() else { return };
    check(
        ctx,
        &Case {
            steps: vec![11, 4, 1],
            ..Case::new(11, 5)
        },
    );
}

#[test]
fn two_dimensional_grid() {
    let Some(ctx) = gpu_f16() else { return };
    check(
        ctx,
        &Case {
            grid_limit: Some(3),
            ..Case::new(13, 7)
        },
    );
}

#[test]
fn a_device_without_shader_f16_is_refused_with_the_feature_named() {
    // `gpu()` is created without optional features.
    let Some(ctx) = gpu() else { return };
    assert!(!ctx.features.contains(wgpu::Features::SHADER_F16));
    let kernels = EmbeddingKernels::new(ctx).expect("embedding kernels");
    let case = Case::new(1, 1);
    let table = ctx.storage_buffer("tables", &[0u32; 64]);
    let ids = ctx.storage_buffer("ids", &[0u32; 8]);
    let acts = ctx.storage_buffer("acts", &[0f32; 64]);
    let t = |b| TensorRef::new(b, 0);
    let bufs = EmbeddingBuffers {
        x: t(&acts),
        z: t(&acts),
        e_item: t(&table),
        e_cat: t(&table),
        e_pos: t(&table),
        e_other: t(&table),
        hist_item: t(&ids),
        target_item: t(&ids),
        hist_cat: t(&ids),
        target_cat: t(&ids),
        hist_pos: t(&ids),
        other: t(&ids),
    };
    let e = kernels.bind_f16(ctx, &bufs, case.dims()).unwrap_err();
    assert!(matches!(e, GpuError::MissingFeature(_)), "{e:?}");
    let msg = e.to_string();
    println!("{msg}");
    assert!(
        msg.contains("SHADER_F16") && msg.contains("with_optional_features"),
        "{msg}"
    );
}

#[test]
fn bind_f16_checks_the_tables_in_f16_elements() {
    let Some(ctx) = gpu_f16() else { return };
    let kernels = EmbeddingKernels::new(ctx).expect("embedding kernels");
    let case = Case::new(2, 3);
    let dims = case.dims();
    // E_item is 41 x 7 = 287 f16 values: 144 words hold 288, so offset 1 fits, 2 does not.
    let items = ctx.storage_buffer_zeroed("e_item", 144);
    let small = ctx.storage_buffer_zeroed("small tables", 64);
    let ids = ctx.storage_buffer_zeroed("ids", 64);
    let acts = ctx.storage_buffer_zeroed("acts", 256);
    let bufs = |item_off| EmbeddingBuffers {
        x: TensorRef::new(&acts, 0),
        z: TensorRef::new(&acts, 200),
        e_item: TensorRef::new(&items, item_off),
        e_cat: TensorRef::new(&small, 0),
        e_pos: TensorRef::new(&small, 0),
        e_other: TensorRef::new(&small, 0),
        hist_item: TensorRef::new(&ids, 0),
        target_item: TensorRef::new(&ids, 6),
        hist_cat: TensorRef::new(&ids, 8),
        target_cat: TensorRef::new(&ids, 14),
        hist_pos: TensorRef::new(&ids, 16),
        other: TensorRef::new(&ids, 22),
    };
    kernels
        .bind_f16(ctx, &bufs(1), dims)
        .expect("offset 1 fits");
    let e = kernels
        .bind_f16(ctx, &bufs(2), dims)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("e_item (f16)") && e.contains("2..289") && e.contains("288"),
        "{e}"
    );
}
