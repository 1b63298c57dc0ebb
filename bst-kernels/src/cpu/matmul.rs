//! Linear layer `y = x W^T + b` (PyTorch's convention: `W` is `[out, in]`).

use rayon::prelude::*;

/// Rows of `x` per parallel task in the forward and input-gradient passes.
const ROW_CHUNK: usize = 64;
/// Rows of `W` per parallel task in the weight-gradient pass.
const OUT_CHUNK: usize = 32;

/// `c (m, n) = alpha * a (m, k) b (k, n) + beta * c`, with arbitrary strides on `a` and `b`.
/// Bounds are checked here so the unsafe call below cannot read or write out of range.
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
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(c.len() >= m * n, "sgemm: c too small");
    if k > 0 {
        assert!(
            a.len() > (m - 1) * rsa + (k - 1) * csa,
            "sgemm: a too small"
        );
        assert!(
            b.len() > (k - 1) * rsb + (n - 1) * csb,
            "sgemm: b too small"
        );
    }
    // SAFETY: the asserts above keep every index the routine touches inside the slices.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            rsa as isize,
            csa as isize,
            b.as_ptr(),
            rsb as isize,
            csb as isize,
            beta,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

/// out (rows, n_out) = inp (rows, n_in) weight^T (n_in, n_out) + bias (n_out)
pub fn matmul_forward(
    out: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    rows: usize,
    n_in: usize,
    n_out: usize,
) {
    matmul_forward_chunked(out, inp, weight, bias, rows, n_in, n_out, ROW_CHUNK);
}

/// [`matmul_forward`] in parallel tasks of `row_chunk` rows. The result does not depend
/// on the chunk (each output is the same dot product, summed in the same order), but each
/// task packs the whole weight: a large layer over many rows runs faster in fewer, larger
/// tasks.
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
            let beta = match bias {
                Some(b) => {
                    out_c
                        .chunks_mut(n_out)
                        .for_each(|row| row.copy_from_slice(&b[..n_out]));
                    1.0
                }
                None => 0.0,
            };
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
        let dinp = &mut dinp[..rows * n_in];
        dinp.par_chunks_mut(ROW_CHUNK * n_in)
            .enumerate()
            .for_each(|(ci, dinp_c)| {
                let r0 = ci * ROW_CHUNK;
                let m = dinp_c.len() / n_in;
                sgemm(
                    dinp_c,
                    &dout[r0 * n_out..],
                    (n_out, 1),
                    weight,
                    (n_in, 1),
                    m,
                    n_out,
                    n_in,
                    0.0,
                );
            });
    }
    let dweight = &mut dweight[..n_out * n_in];
    dweight
        .par_chunks_mut(OUT_CHUNK * n_in)
        .enumerate()
        .for_each(|(ci, dw_c)| {
            let o0 = ci * OUT_CHUNK;
            let m = dw_c.len() / n_in;
            // a[i][r] = dout[r][o0 + i]: row stride 1, column stride n_out.
            sgemm(
                dw_c,
                &dout[o0..],
                (1, n_out),
                inp,
                (n_in, 1),
                m,
                rows,
                n_in,
                1.0,
            );
        });
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
    use crate::cpu::gradcheck::{check_grad, random_vec};

    /// Plain triple loop: the reference for the gemm-based version.
    fn naive_forward(
        inp: &[f32],
        w: &[f32],
        b: &[f32],
        rows: usize,
        n_in: usize,
        n_out: usize,
    ) -> Vec<f32> {
        let mut out = vec![0.0; rows * n_out];
        for r in 0..rows {
            for o in 0..n_out {
                let mut s = b[o] as f64;
                for i in 0..n_in {
                    s += inp[r * n_in + i] as f64 * w[o * n_in + i] as f64;
                }
                out[r * n_out + o] = s as f32;
            }
        }
        out
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
        matmul_accumulate(&mut out, &part, &w, (w0, w_cols), rows, n_in, n_out, 16);
        // Other row chunks give the same result, bit for bit.
        let mut again = vec![0.0; rows * n_out];
        matmul_forward_chunked(&mut again, &rest, &w, Some(&b), rows, w_cols, n_out, 1000);
        matmul_accumulate(&mut again, &part, &w, (w0, w_cols), rows, n_in, n_out, 7);
        assert_eq!(out, again);
        for (g, w) in out.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-5 + 1e-5 * w.abs(), "{g} vs {w}");
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let (rows, n_in, n_out) = (70, 5, 35);
        let inp = random_vec(rows * n_in, 4);
        let w = random_vec(n_out * n_in, 5);
        let b = random_vec(n_out, 6);
        let r = random_vec(rows * n_out, 7); // loss = sum(out * r)
        let loss = |inp: &[f32], w: &[f32], b: &[f32]| {
            let mut out = vec![0.0; rows * n_out];
            matmul_forward(&mut out, inp, w, Some(b), rows, n_in, n_out);
            out.iter()
                .zip(&r)
                .map(|(&o, &r)| o as f64 * r as f64)
                .sum::<f64>()
        };
        let mut dinp = vec![0.0; rows * n_in];
        let mut dw = vec![0.0; n_out * n_in];
        let mut db = vec![0.0; n_out];
        matmul_backward(
            Some(&mut dinp),
            &mut dw,
            Some(&mut db),
            &r,
            &inp,
            &w,
            rows,
            n_in,
            n_out,
        );
        check_grad("matmul dinp", &dinp, &inp, |x| loss(x, &w, &b));
        check_grad("matmul dweight", &dw, &w, |x| loss(&inp, x, &b));
        check_grad("matmul dbias", &db, &b, |x| loss(&inp, &w, x));
    }
}
