//! LeakyReLU, `y = x` for `x > 0`, else `alpha * x`.

use rayon::prelude::*;

/// out (n) = leaky_relu(inp (n))
pub fn leaky_relu_forward(out: &mut [f32], inp: &[f32], alpha: f32) {
    out.par_iter_mut()
        .zip(inp)
        .with_min_len(4096)
        .for_each(|(o, &x)| {
            *o = if x > 0.0 { x } else { alpha * x };
        });
}

/// dinp (n) = dout (n) * leaky_relu'(inp (n))          (overwrites)
pub fn leaky_relu_backward(dinp: &mut [f32], dout: &[f32], inp: &[f32], alpha: f32) {
    dinp.par_iter_mut()
        .zip(dout.par_iter().zip(inp))
        .with_min_len(4096)
        .for_each(|(d, (&g, &x))| {
            *d = if x > 0.0 { g } else { alpha * g };
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::gradcheck::{check_grad, random_vec};

    #[test]
    fn backward_matches_finite_differences() {
        // Keep inputs away from the kink at 0, where the derivative jumps.
        let x: Vec<f32> = random_vec(200, 1)
            .iter()
            .map(|&v| if v.abs() < 0.05 { v + 0.1 } else { v })
            .collect();
        let r = random_vec(200, 2);
        let mut dx = vec![0.0; 200];
        leaky_relu_backward(&mut dx, &r, &x, 0.01);
        check_grad("leaky_relu", &dx, &x, |x| {
            let mut y = vec![0.0; 200];
            leaky_relu_forward(&mut y, x, 0.01);
            y.iter().zip(&r).map(|(&a, &b)| a as f64 * b as f64).sum()
        });
    }
}
