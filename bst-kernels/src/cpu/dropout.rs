//! Inverted dropout with a counter-based mask: whether element `index` of dropout site
//! `site` is kept at training step `step` is a pure function of (seed, step, site, index),
//! so the backward regenerates the mask instead of storing it, and the GPU reproduces it
//! bit for bit with the same 32-bit integer hash.
//!
//! Fused with the residual that follows it in the block: `out = x + dropout(a)`.

use rayon::prelude::*;

/// A 32-bit integer hash with good avalanche ("lowbias32", C. Wellons). Bijective.
#[inline]
pub fn hash_u32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// Everything that selects one dropout mask, except the element index.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropoutKey {
    /// Drop probability `p` in [0, 1). With `p = 0` every element is kept (eval mode).
    pub p: f32,
    /// The run's seed.
    pub seed: u64,
    /// The update count: each step draws new masks.
    pub step: u32,
    /// Which dropout site: `2 * block + {0: attention output, 1: FFN output}`.
    pub site: u32,
}

impl DropoutKey {
    /// The per-(seed, step, site) hash that the element index is mixed into.
    pub fn stream(&self) -> u32 {
        let s = hash_u32(self.seed as u32) ^ hash_u32((self.seed >> 32) as u32 ^ 0x68e3_1da4);
        hash_u32(hash_u32(s ^ self.step) ^ self.site)
    }
    /// Elements whose hash is below this are dropped: `floor(p * 2^32)`.
    pub fn threshold(&self) -> u32 {
        (self.p as f64 * 4_294_967_296.0).min(u32::MAX as f64) as u32
    }
    /// Multiplier of kept elements, `1 / (1 - p)`.
    pub fn scale(&self) -> f32 {
        1.0 / (1.0 - self.p)
    }
}

/// The mask multiplier (0 or `1/(1-p)`) of element `index`, given `stream`, `threshold`, `scale`.
#[inline]
fn keep_scale(stream: u32, threshold: u32, scale: f32, index: usize) -> f32 {
    if hash_u32(stream ^ index as u32) >= threshold {
        scale
    } else {
        0.0
    }
}

/// Elements per parallel task: chunks of plain loops over slices, which vectorise.
const CHUNK: usize = 4096;

/// out (n) = x (n) + dropout(a (n))
pub fn residual_dropout_forward(out: &mut [f32], x: &[f32], a: &[f32], key: DropoutKey) {
    residual_dropout_forward_at(out, x, a, key, 0);
}

/// [`residual_dropout_forward`] on elements `first..first + n` of a larger array: element
/// `i` takes the mask of index `first + i`. A data-parallel rank runs its shard of a
/// batch with `first` = its first row times the row's elements, so its masks are those
/// a single process draws for the same samples.
pub fn residual_dropout_forward_at(
    out: &mut [f32],
    x: &[f32],
    a: &[f32],
    key: DropoutKey,
    first: usize,
) {
    let (stream, threshold, scale) = (key.stream(), key.threshold(), key.scale());
    let n = out.len();
    let (x, a) = (&x[..n], &a[..n]);
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(a.par_chunks(CHUNK)))
        .enumerate()
        .for_each(|(c, (out, (x, a)))| {
            let i0 = first + c * CHUNK;
            for (j, ((o, &x), &a)) in out.iter_mut().zip(x).zip(a).enumerate() {
                *o = x + a * keep_scale(stream, threshold, scale, i0 + j);
            }
        });
}

/// da (n) = dropout mask * dout (n)        (overwrites; `dx` is `dout` itself)
pub fn residual_dropout_backward(da: &mut [f32], dout: &[f32], key: DropoutKey) {
    residual_dropout_backward_at(da, dout, key, 0);
}

/// [`residual_dropout_backward`] on elements `first..first + n` of a larger array (see
/// [`residual_dropout_forward_at`]).
pub fn residual_dropout_backward_at(da: &mut [f32], dout: &[f32], key: DropoutKey, first: usize) {
    let (stream, threshold, scale) = (key.stream(), key.threshold(), key.scale());
    let dout = &dout[..da.len()];
    da.par_chunks_mut(CHUNK)
        .zip(dout.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(c, (da, dout))| {
            let i0 = first + c * CHUNK;
            for (j, (d, &g)) in da.iter_mut().zip(dout).enumerate() {
                *d = g * keep_scale(stream, threshold, scale, i0 + j);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::gradcheck::{check_grad, random_vec};

    fn key(p: f32) -> DropoutKey {
        DropoutKey {
            p,
            seed: 42,
            step: 3,
            site: 1,
        }
    }

    #[test]
    fn drop_rate_is_p_and_kept_values_are_scaled() {
        let n = 200_000;
        let x = vec![0.0; n];
        let a = vec![1.0; n];
        let mut out = vec![0.0; n];
        residual_dropout_forward(&mut out, &x, &a, key(0.2));
        let dropped = out.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
        assert!((dropped - 0.2).abs() < 0.005, "dropped {dropped}");
        assert!(out.iter().all(|&v| v == 0.0 || v == 1.25));
    }

    #[test]
    fn a_slice_at_first_draws_the_masks_of_the_whole_array() {
        let n = 3 * CHUNK + 17;
        let x = random_vec(n, 5);
        let a = random_vec(n, 6);
        let mut whole = vec![0.0; n];
        residual_dropout_forward(&mut whole, &x, &a, key(0.3));
        let first = CHUNK + 5;
        let mut part = vec![0.0; n - first];
        residual_dropout_forward_at(&mut part, &x[first..], &a[first..], key(0.3), first);
        assert_eq!(part, whole[first..]);
        let mut da_whole = vec![0.0; n];
        residual_dropout_backward(&mut da_whole, &a, key(0.3));
        let mut da_part = vec![0.0; n - first];
        residual_dropout_backward_at(&mut da_part, &a[first..], key(0.3), first);
        assert_eq!(da_part, da_whole[first..]);
    }

    #[test]
    fn masks_differ_by_step_site_and_seed_and_p_zero_keeps_all() {
        let n = 1000;
        let mask = |k: DropoutKey| -> Vec<f32> {
            let mut out = vec![0.0; n];
            residual_dropout_forward(&mut out, &vec![0.0; n], &vec![1.0; n], k);
            out
        };
        let base = mask(key(0.5));
        assert_eq!(base, mask(key(0.5)));
        assert_ne!(
            base,
            mask(DropoutKey {
                step: 4,
                ..key(0.5)
            })
        );
        assert_ne!(
            base,
            mask(DropoutKey {
                site: 2,
                ..key(0.5)
            })
        );
        assert_ne!(
            base,
            mask(DropoutKey {
                seed: 43,
                ..key(0.5)
            })
        );
        assert!(mask(key(0.0)).iter().all(|&v| v == 1.0));
    }

    #[test]
    fn backward_matches_finite_differences() {
        let n = 300;
        let x = random_vec(n, 1);
        let a = random_vec(n, 2);
        let r = random_vec(n, 3);
        let loss = |x: &[f32], a: &[f32]| {
            let mut out = vec![0.0; n];
            residual_dropout_forward(&mut out, x, a, key(0.3));
            out.iter()
                .zip(&r)
                .map(|(&o, &r)| o as f64 * r as f64)
                .sum::<f64>()
        };
        let mut da = vec![0.0; n];
        residual_dropout_backward(&mut da, &r, key(0.3));
        check_grad("dropout da", &da, &a, |v| loss(&x, v));
        check_grad("dropout dx", &r, &x, |v| loss(v, &a));
    }
}
