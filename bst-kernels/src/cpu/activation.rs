//! LeakyReLU, `y = x` for `x > 0`, else `alpha * x`.
//!
//! Plain loops over fixed chunks, parallel over the chunks. The select below is
//! branch-free and the loop vectorises: with a branch per element, the random signs of
//! real activations cost a misprediction every other element.

use rayon::prelude::*;

/// Elements per parallel task (64 KiB of f32): tensors smaller than this run on one thread.
const CHUNK: usize = 16 * 1024;

/// out (n) = leaky_relu(inp (n))
pub fn leaky_relu_forward(out: &mut [f32], inp: &[f32], alpha: f32) {
    out.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK))
        .for_each(|(out, inp)| forward_chunk(out, inp, alpha));
}

/// dinp (n) = dout (n) * leaky_relu'(inp (n))          (overwrites)
pub fn leaky_relu_backward(dinp: &mut [f32], dout: &[f32], inp: &[f32], alpha: f32) {
    dinp.par_chunks_mut(CHUNK)
        .zip(dout.par_chunks(CHUNK).zip(inp.par_chunks(CHUNK)))
        .for_each(|(dinp, (dout, inp))| backward_chunk(dinp, dout, inp, alpha));
}

// The loops are functions of their own, with `alpha` a value: inside the closures it was
// read through the capture at every element, which kept LLVM from vectorising.

fn forward_chunk(out: &mut [f32], inp: &[f32], alpha: f32) {
    for (o, &x) in out.iter_mut().zip(inp) {
        *o = x * if x > 0.0 { 1.0 } else { alpha };
    }
}

fn backward_chunk(dinp: &mut [f32], dout: &[f32], inp: &[f32], alpha: f32) {
    for ((d, &g), &x) in dinp.iter_mut().zip(dout).zip(inp) {
        *d = g * if x > 0.0 { 1.0 } else { alpha };
    }
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
