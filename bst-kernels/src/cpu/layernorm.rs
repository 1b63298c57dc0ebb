//! LayerNorm over the last dimension, eps 1e-5, learned weight and bias.

use rayon::prelude::*;

/// LayerNorm's epsilon (PyTorch's default).
pub const LN_EPS: f32 = 1e-5;

/// out (N, C) = (inp - mean) * rstd * weight + bias;  mean (N), rstd (N) saved
pub fn layernorm_forward(
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: &[f32],
    n: usize,
    c: usize,
) {
    out[..n * c]
        .par_chunks_mut(c)
        .zip(mean[..n].par_iter_mut().zip(&mut rstd[..n]))
        .enumerate()
        .with_min_len(64)
        .for_each(|(i, (o, (m, s)))| {
            let x = &inp[i * c..][..c];
            let mu = x.iter().sum::<f32>() / c as f32;
            let var = x.iter().map(|&v| (v - mu) * (v - mu)).sum::<f32>() / c as f32;
            let r = 1.0 / (var + LN_EPS).sqrt();
            for k in 0..c {
                o[k] = (x[k] - mu) * r * weight[k] + bias[k];
            }
            *m = mu;
            *s = r;
        });
}

/// dinp (N, C) = gradient through the normalisation            (overwrites)
/// dweight (C) += sum_i dout * xhat;  dbias (C) += sum_i dout
pub fn layernorm_backward(
    dinp: &mut [f32],
    dweight: &mut [f32],
    dbias: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    mean: &[f32],
    rstd: &[f32],
    n: usize,
    c: usize,
) {
    dinp[..n * c]
        .par_chunks_mut(c)
        .enumerate()
        .with_min_len(64)
        .for_each(|(i, dx)| {
            let (x, g) = (&inp[i * c..][..c], &dout[i * c..][..c]);
            let (mu, r) = (mean[i], rstd[i]);
            let mut sum_g = 0.0;
            let mut sum_g_xhat = 0.0;
            for k in 0..c {
                let gw = g[k] * weight[k];
                sum_g += gw;
                sum_g_xhat += gw * (x[k] - mu) * r;
            }
            let (mean_g, mean_g_xhat) = (sum_g / c as f32, sum_g_xhat / c as f32);
            for k in 0..c {
                let xhat = (x[k] - mu) * r;
                dx[k] = r * (g[k] * weight[k] - mean_g - xhat * mean_g_xhat);
            }
        });
    // Parameter gradients: one sequential pass over rows keeps the sums deterministic.
    for i in 0..n {
        let (x, g) = (&inp[i * c..][..c], &dout[i * c..][..c]);
        for k in 0..c {
            dweight[k] += g[k] * (x[k] - mean[i]) * rstd[i];
            dbias[k] += g[k];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::gradcheck::{check_grad, random_vec};

    #[test]
    fn output_is_normalised_and_backward_matches_finite_differences() {
        let (n, c) = (7, 13);
        let x = random_vec(n * c, 1);
        let w: Vec<f32> = random_vec(c, 2).iter().map(|v| 1.0 + v).collect();
        let bias = random_vec(c, 3);
        let r = random_vec(n * c, 4);
        let run = |x: &[f32], w: &[f32], b: &[f32]| {
            let (mut o, mut m, mut s) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
            layernorm_forward(&mut o, &mut m, &mut s, x, w, b, n, c);
            (o, m, s)
        };
        let (o, m, s) = run(&x, &vec![1.0; c], &vec![0.0; c]);
        for row in o.chunks(c) {
            let mu = row.iter().sum::<f32>() / c as f32;
            let var = row.iter().map(|v| (v - mu).powi(2)).sum::<f32>() / c as f32;
            assert!(
                mu.abs() < 1e-5 && (var - 1.0).abs() < 1e-3,
                "mean {mu} var {var}"
            );
        }
        let _ = (m, s);
        let loss = |x: &[f32], w: &[f32], b: &[f32]| {
            let (o, _, _) = run(x, w, b);
            o.iter()
                .zip(&r)
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum::<f64>()
        };
        let (_, m, s) = run(&x, &w, &bias);
        let (mut dx, mut dw, mut db) = (vec![0.0; n * c], vec![0.0; c], vec![0.0; c]);
        layernorm_backward(&mut dx, &mut dw, &mut db, &r, &x, &w, &m, &s, n, c);
        check_grad("layernorm dinp", &dx, &x, |v| loss(v, &w, &bias));
        check_grad("layernorm dweight", &dw, &w, |v| loss(&x, v, &bias));
        check_grad("layernorm dbias", &db, &bias, |v| loss(&x, &w, v));
    }
}
