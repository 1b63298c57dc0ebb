//! Linear layer `y = x W^T + b` (PyTorch's convention: `W` is `[out, in]`).

use gemm::Parallelism;
use rayon::prelude::*;

/// `c (m, n) = a (m, k) b (k, n) + beta * c`, `beta` 0 or 1, with arbitrary strides on
/// `a` and `b`. Each output is one dot product summed in order over `k` (in blocks of a
/// size that depends on `k` alone), so it does not depend on `m`, `n` or `par`: results are
/// the same bits however the rows are split. Bounds are checked here so the unsafe call
/// below cannot read or write out of range.
fn sgemm(
    c: &mut [f32],
    a: &[f32],
    (rsa, csa): (usize, usize),
    b: &[f32],
    (rsb, csb): (usize, usize),
    m: usize,
    k: usize,
    n: usize,
    beta: f32,
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(c.len() >= m * n, "sgemm: c too small");
    assert!(beta == 0.0 || beta == 1.0, "sgemm: beta is 0 or 1");
    if k == 0 {
        if beta == 0.0 {
            c[..m * n].fill(0.0);
        }
        return;
    }
    assert!(
        a.len() > (m - 1) * rsa + (k - 1) * csa,
        "sgemm: a too small"
    );
    assert!(
        b.len() > (k - 1) * rsb + (n - 1) * csb,
        "sgemm: b too small"
    );
    // SAFETY: the asserts above keep every index the routine touches inside the slices.
    // gemm's convention: dst = alpha * dst + beta * lhs rhs, dst read only if asked.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            beta != 0.0,
            a.as_ptr(),
            csa as isize,
            rsa as isize,
            b.as_ptr(),
            csb as isize,
            rsb as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// gemm's own threads over a whole matrix: rayon's pool, all of it.
fn threads() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// out (rows, n_out) = inp (rows, n_in) weight^T (n_in, n_out) + bias (n_out)
///
/// One gemm over all rows, on gemm's own threads (rayon's pool): the weight is packed once
/// per block of the product, not once per task of rows.
pub fn matmul_forward(
    out: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    rows: usize,
    n_in: usize,
    n_out: usize,
) {
    let out = &mut out[..rows * n_out];
    let beta = fill_bias(out, bias, n_out);
    // b[k][j] = weight[j][k]: row stride 1, column stride n_in.
    sgemm(
        out,
        inp,
        (n_in, 1),
        weight,
        (1, n_in),
        rows,
        n_in,
        n_out,
        beta,
        threads(),
    );
}

/// Each row of `out (rows, n_out)` set to `bias`: then 1.0, the `beta` that adds the product
/// to it; without a bias, 0.0 (the product overwrites `out`).
fn fill_bias(out: &mut [f32], bias: Option<&[f32]>, n_out: usize) -> f32 {
    match bias {
        Some(b) => {
            out.chunks_mut(n_out)
                .for_each(|row| row.copy_from_slice(&b[..n_out]));
            1.0
        }
        None => 0.0,
    }
}

/// [`matmul_forward`] in parallel tasks of `row_chunk` rows, each one serial gemm: for a
/// caller that is already one of several parallel tasks (pass `row_chunk = rows`). Each
/// task packs the whole weight: a large layer over many rows runs faster in fewer, larger
/// tasks. The result does not depend on the chunk, up to rounding where a chunk is tiny
/// (at most 256 outputs or a single row, where gemm sums in another order).
pub fn matmul_forward_chunked(
    out: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    rows: usize,
    n_in: usize,
    n_out: usize,
    row_chunk: usize,
) {
    let row_chunk = row_chunk.max(1);
    let out = &mut out[..rows * n_out];
    out.par_chunks_mut(row_chunk * n_out)
        .enumerate()
        .for_each(|(ci, out_c)| {
            let r0 = ci * row_chunk;
            let m = out_c.len() / n_out;
            let beta = fill_bias(out_c, bias, n_out);
            // b[k][j] = weight[j][k]: row stride 1, column stride n_in.
            sgemm(
                out_c,
                &inp[r0 * n_in..],
                (n_in, 1),
                weight,
                (1, n_in),
                m,
                n_in,
                n_out,
                beta,
                Parallelism::None,
            );
        });
}

/// out (rows, n_out) += inp (rows, n_in) weight[:, w0 .. w0 + n_in]^T, where weight is
/// (n_out, w_cols): a linear layer over some of the input columns of a wider layer (the
/// scoring path adds the candidate's part of the first MLP layer to the user's part).
/// Parallel tasks of `row_chunk` rows, as [`matmul_forward_chunked`].
pub fn matmul_accumulate(
    out: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    (w0, w_cols): (usize, usize),
    rows: usize,
    n_in: usize,
    n_out: usize,
    row_chunk: usize,
) {
    assert!(
        w0 + n_in <= w_cols,
        "matmul_accumulate: columns out of the weight"
    );
    let row_chunk = row_chunk.max(1);
    let out = &mut out[..rows * n_out];
    out.par_chunks_mut(row_chunk * n_out)
        .enumerate()
        .for_each(|(ci, out_c)| {
            let r0 = ci * row_chunk;
            let m = out_c.len() / n_out;
            // b[k][j] = weight[j][w0 + k]: row stride 1, column stride w_cols.
            sgemm(
                out_c,
                &inp[r0 * n_in..],
                (n_in, 1),
                &weight[w0..],
                (1, w_cols),
                m,
                n_in,
                n_out,
                1.0,
                Parallelism::None,
            );
        });
}

/// dinp (rows, n_in) = dout (rows, n_out) weight (n_out, n_in)          (overwrites)
/// dweight (n_out, n_in) += dout^T inp;  dbias (n_out) += column sums of dout
pub fn matmul_backward(
    dinp: Option<&mut [f32]>,
    dweight: &mut [f32],
    dbias: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    rows: usize,
    n_in: usize,
    n_out: usize,
) {
    if let Some(dinp) = dinp {
        sgemm(
            &mut dinp[..rows * n_in],
            dout,
            (n_out, 1),
            weight,
            (n_in, 1),
            rows,
            n_out,
            n_in,
            0.0,
            threads(),
        );
    }
    // a[i][r] = dout[r][i]: row stride 1, column stride n_out.
    sgemm(
        &mut dweight[..n_out * n_in],
        dout,
        (1, n_out),
        inp,
        (n_in, 1),
        n_out,
        rows,
        n_in,
        1.0,
        threads(),
    );
    if let Some(dbias) = dbias {
        for row in dout[..rows * n_out].chunks(n_out) {
            for (db, &g) in dbias.iter_mut().zip(row) {
                *db += g;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::gradcheck::random_vec;

    /// The plain triple loop ([`crate::cpu::reference`]): the reference for the gemm
    /// version.
    fn naive_forward(
        inp: &[f32],
        w: &[f32],
        b: &[f32],
        rows: usize,
        n_in: usize,
        n_out: usize,
    ) -> Vec<f32> {
        let mut out = vec![0.0; rows * n_out];
        crate::cpu::reference::matmul_forward(&mut out, inp, w, Some(b), rows, n_in, n_out);
        out
    }

    /// The signature of both backwards.
    type Backward = fn(
        Option<&mut [f32]>,
        &mut [f32],
        Option<&mut [f32]>,
        &[f32],
        &[f32],
        &[f32],
        usize,
        usize,
        usize,
    );

    /// `[dinp, dweight, dbias]` of `backward` from `dout`, `inp` and `w` over
    /// `(rows, n_in, n_out)`, the weight's and the bias's gradients starting at `dw`, `db`.
    fn run_backward(
        backward: Backward,
        [dout, inp, w]: [&[f32]; 3],
        (rows, n_in, n_out): (usize, usize, usize),
        mut dw: Vec<f32>,
        mut db: Vec<f32>,
    ) -> [Vec<f32>; 3] {
        let mut dinp = vec![0.0; rows * n_in];
        backward(
            Some(&mut dinp),
            &mut dw,
            Some(&mut db),
            dout,
            inp,
            w,
            rows,
            n_in,
            n_out,
        );
        [dinp, dw, db]
    }

    #[test]
    fn backward_matches_the_plain_loops() {
        let (rows, n_in, n_out) = (131, 37, 45);
        let (inp, w, dout) = (
            random_vec(rows * n_in, 8),
            random_vec(n_out * n_in, 9),
            random_vec(rows * n_out, 10),
        );
        let run = |backward: Backward| {
            let (dw, db) = (vec![0.5; n_out * n_in], vec![0.25; n_out]);
            run_backward(backward, [&dout, &inp, &w], (rows, n_in, n_out), dw, db)
        };
        let got = run(matmul_backward);
        let want = run(crate::cpu::reference::matmul_backward);
        for (name, got, want) in ["dinp", "dweight", "dbias"]
            .into_iter()
            .zip(&got)
            .zip(&want)
            .map(|((n, g), w)| (n, g, w))
        {
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() <= 1e-5 + 1e-5 * w.abs(), "{name}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn forward_matches_naive_loops_across_chunk_boundaries() {
        let (rows, n_in, n_out) = (131, 37, 45); // not multiples of the chunk sizes
        let inp = random_vec(rows * n_in, 1);
        let w = random_vec(n_out * n_in, 2);
        let b = random_vec(n_out, 3);
        let mut out = vec![0.0; rows * n_out];
        matmul_forward(&mut out, &inp, &w, Some(&b), rows, n_in, n_out);
        let want = naive_forward(&inp, &w, &b, rows, n_in, n_out);
        for (g, w) in out.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-5 + 1e-5 * w.abs(), "{g} vs {w}");
        }
    }

    #[test]
    fn accumulate_adds_a_column_slice_of_a_wider_layer() {
        // out = b + x[:, ..] W^T, split as (b + x_b W_b^T) + x_a W_a^T over columns.
        let (rows, n_out, w_cols, w0, n_in) = (70, 33, 29, 5, 11);
        let x = random_vec(rows * w_cols, 8);
        let w = random_vec(n_out * w_cols, 9);
        let b = random_vec(n_out, 10);
        let want = naive_forward(&x, &w, &b, rows, w_cols, n_out);
        // x with columns w0..w0+n_in zeroed gives the rest of the sum.
        let mut rest = x.clone();
        let mut part = vec![0.0; rows * n_in];
        for r in 0..rows {
            for k in 0..n_in {
                part[r * n_in + k] = x[r * w_cols + w0 + k];
                rest[r * w_cols + w0 + k] = 0.0;
            }
        }
        let mut out = vec![0.0; rows * n_out];
        matmul_forward(&mut out, &rest, &w, Some(&b), rows, w_cols, n_out);
        matmul_accumulate(&mut out, &part, &w, (w0, w_cols), rows, n_in, n_out, 35);
        // Other row chunks give the same result, bit for bit, while no chunk is tiny.
        let mut again = vec![0.0; rows * n_out];
        matmul_forward_chunked(&mut again, &rest, &w, Some(&b), rows, w_cols, n_out, 1000);
        matmul_accumulate(&mut again, &part, &w, (w0, w_cols), rows, n_in, n_out, 70);
        assert_eq!(out, again);
        // Tiny chunks (7 rows: 231 outputs) sum in another order: the same up to rounding.
        let mut tiny = vec![0.0; rows * n_out];
        matmul_forward_chunked(&mut tiny, &rest, &w, Some(&b), rows, w_cols, n_out, 7);
        matmul_accumulate(&mut tiny, &part, &w, (w0, w_cols), rows, n_in, n_out, 7);
        for (g, w) in tiny.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-5 + 1e-5 * w.abs(), "{g} vs {w}");
        }
        for (g, w) in out.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-5 + 1e-5 * w.abs(), "{g} vs {w}");
        }
    }

    /// forward and backward on a pool of `threads`: out, dinp, dweight, dbias.
    fn forward_backward_on(threads: usize) -> [Vec<f32>; 4] {
        // rows > 512 so the weight gradient's sum over rows is split in blocks.
        let (rows, n_in, n_out) = (1300, 96, 200);
        let inp = random_vec(rows * n_in, 11);
        let w = random_vec(n_out * n_in, 12);
        let b = random_vec(n_out, 13);
        let dout = random_vec(rows * n_out, 14);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut out = vec![0.0; rows * n_out];
            matmul_forward(&mut out, &inp, &w, Some(&b), rows, n_in, n_out);
            let (dw, db) = (random_vec(n_out * n_in, 15), vec![0.5; n_out]); // accumulate
            let dims = (rows, n_in, n_out);
            let [dinp, dw, db] = run_backward(matmul_backward, [&dout, &inp, &w], dims, dw, db);
            [out, dinp, dw, db]
        })
    }

    #[test]
    fn results_are_the_same_bits_on_any_number_of_threads() {
        let one = forward_backward_on(1);
        for threads in [2, 3] {
            assert!(one == forward_backward_on(threads), "{threads} threads");
        }
        // And they are right: the weight gradient against plain loops.
        let (rows, n_in, n_out) = (1300, 96, 200);
        let (inp, dout) = (random_vec(rows * n_in, 11), random_vec(rows * n_out, 14));
        let dw0 = random_vec(n_out * n_in, 15);
        for (idx, &g) in one[2].iter().enumerate().step_by(97) {
            let (o, i) = (idx / n_in, idx % n_in);
            let want: f64 = dw0[idx] as f64
                + (0..rows)
                    .map(|r| dout[r * n_out + o] as f64 * inp[r * n_in + i] as f64)
                    .sum::<f64>();
            assert!(
                (g as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()),
                "{g} vs {want}"
            );
        }
    }
}
