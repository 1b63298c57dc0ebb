//! GPU valid mask (`shaders/mask.wgsl`) against the CPU reference (`cpu::mask`): L = 1,
//! all-padding and full histories, a batch that is not a multiple of the 256-wide
//! workgroup, a grid spilling into its second row, a partial batch (`set_rows`), and both
//! tensors at nonzero offsets; the words around `valid` must stay untouched.

mod common;

use bst_kernels::cpu::mask::valid_mask;
use bst_kernels::gpu::TensorRef;
use bst_kernels::gpu::mask::{MaskBuffers, MaskDims, MaskKernels};
use common::{gpu, random_vec, run};

const PAD: usize = 3;
const SENTINEL: u32 = 7;

/// (B, L) history ids: row 0 all padding, row 1 full, the rest about half padding.
fn history(b: usize, l: usize, seed: u64) -> Vec<u32> {
    let r = random_vec(b * l, seed);
    (0..b * l)
        .map(|i| match i / l {
            0 => 0,
            1 => 1 + i as u32,
            _ if r[i] < 0.0 => 0,
            _ => 1 + (i % 17) as u32,
        })
        .collect()
}

#[test]
fn valid_mask_matches_the_cpu() {
    let Some(ctx) = gpu() else { return };
    for (b, l, per_dim, rows) in [
        (1, 1, u32::MAX, 1),
        (3, 1, u32::MAX, 3),
        (37, 20, u32::MAX, 37),
        (300, 5, 2, 300), // 1800 tokens: 8 workgroups on a grid of 2 x 4
        (300, 5, 2, 129), // a partial batch
    ] {
        let what = format!("B {b}, L {l}, rows {rows}, {per_dim} workgroups per row");
        let kernels = MaskKernels::new(ctx)
            .expect("mask kernel")
            .with_max_workgroups_per_dim(per_dim);
        let hist = history(b, l, b as u64);
        let mut padded = vec![5u32; PAD];
        padded.extend_from_slice(&hist);
        let hist_buf = ctx.storage_buffer("hist_item", &padded);
        let t = l + 1;
        let valid_buf = ctx.storage_buffer("valid", &vec![SENTINEL; b * t + 2 * PAD]);
        let mut binding = kernels
            .bind(
                ctx,
                &MaskBuffers {
                    valid: TensorRef::new(&valid_buf, PAD as u32),
                    hist_item: TensorRef::new(&hist_buf, PAD as u32),
                },
                MaskDims {
                    rows: b as u32,
                    seq_len: l as u32,
                },
            )
            .expect("bind mask");
        binding.set_rows(ctx, rows as u32);
        run(ctx, |pass| kernels.valid_mask(pass, &binding));
        let got = ctx
            .read_u32(&valid_buf, 0, b * t + 2 * PAD)
            .expect("read valid");
        let mut want = vec![SENTINEL; b * t + 2 * PAD];
        valid_mask(&mut want[PAD..], &hist, rows, l);
        assert_eq!(got, want, "{what}");
        println!("{what}: equal to the CPU's");
    }
}

#[test]
fn a_history_past_its_buffer_is_refused() {
    let Some(ctx) = gpu() else { return };
    let kernels = MaskKernels::new(ctx).expect("mask kernel");
    let (hist, valid) = (
        ctx.storage_buffer_zeroed("hist", 10),
        ctx.storage_buffer_zeroed("valid", 12),
    );
    let e = kernels
        .bind(
            ctx,
            &MaskBuffers {
                valid: TensorRef::whole(&valid),
                hist_item: TensorRef::new(&hist, 1),
            },
            MaskDims {
                rows: 2,
                seq_len: 5,
            },
        )
        .expect_err("refused")
        .to_string();
    assert!(
        e.contains("mask hist_item (rows, L): elements 1..11"),
        "{e}"
    );
}
