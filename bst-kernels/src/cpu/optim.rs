//! Optimiser updates over the whole parameter arena, as PyTorch's Adam and Adagrad
//! (no weight decay, no learning-rate decay).

use rayon::prelude::*;

/// Adam's hyper-parameters (PyTorch's names and defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamHyper {
    /// Learning rate.
    pub lr: f32,
    /// Decay of the first moment.
    pub beta1: f32,
    /// Decay of the second moment.
    pub beta2: f32,
    /// Added to the root of the second moment.
    pub eps: f32,
}

impl Default for AdamHyper {
    fn default() -> Self {
        AdamHyper {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// One Adam step `t` (1-based) on params (N) with grads (N); moments m, v (N) updated.
pub fn adam_update(
    params: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    grads: &[f32],
    hp: AdamHyper,
    t: u64,
) {
    let bc1 = 1.0 - (hp.beta1 as f64).powi(t as i32);
    let bc2 = 1.0 - (hp.beta2 as f64).powi(t as i32);
    let step = (hp.lr as f64 / bc1) as f32;
    let bc2_sqrt = bc2.sqrt() as f32;
    params
        .par_iter_mut()
        .zip(m.par_iter_mut().zip(v.par_iter_mut()))
        .zip(grads)
        .with_min_len(8192)
        .for_each(|((p, (m, v)), &g)| {
            *m = hp.beta1 * *m + (1.0 - hp.beta1) * g;
            *v = hp.beta2 * *v + (1.0 - hp.beta2) * g * g;
            // PyTorch: p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)
            *p -= step * *m / ((*v).sqrt() / bc2_sqrt + hp.eps);
        });
}

/// One Adagrad step on params (N) with grads (N); the running sum of squares (N) updated.
pub fn adagrad_update(params: &mut [f32], sum: &mut [f32], grads: &[f32], lr: f32, eps: f32) {
    params
        .par_iter_mut()
        .zip(sum.par_iter_mut())
        .zip(grads)
        .with_min_len(8192)
        .for_each(|((p, s), &g)| {
            *s += g * g;
            *p -= lr * g / (s.sqrt() + eps);
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adam_first_step_moves_each_parameter_by_lr_against_its_gradient() {
        let mut p = vec![1.0, 1.0, 1.0];
        let (mut m, mut v) = (vec![0.0; 3], vec![0.0; 3]);
        adam_update(
            &mut p,
            &mut m,
            &mut v,
            &[0.5, -2.0, 0.0],
            AdamHyper::default(),
            1,
        );
        assert!(
            (p[0] - 0.999).abs() < 1e-6 && (p[1] - 1.001).abs() < 1e-6 && p[2] == 1.0,
            "{p:?}"
        );
    }

    #[test]
    fn adam_matches_a_plain_f64_transcription_over_several_steps() {
        let hp = AdamHyper {
            lr: 0.01,
            ..Default::default()
        };
        let (mut p, mut m, mut v) = (vec![0.3f32], vec![0.0f32], vec![0.0f32]);
        let (mut pr, mut mr, mut vr) = (0.3f64, 0.0f64, 0.0f64);
        for t in 1..=5u64 {
            let g = (t as f32 * 0.7).sin();
            adam_update(&mut p, &mut m, &mut v, &[g], hp, t);
            mr = 0.9 * mr + 0.1 * g as f64;
            vr = 0.999 * vr + 0.001 * (g as f64).powi(2);
            let (mh, vh) = (
                mr / (1.0 - 0.9f64.powi(t as i32)),
                vr / (1.0 - 0.999f64.powi(t as i32)),
            );
            pr -= 0.01 * mh / (vh.sqrt() + 1e-8);
        }
        assert!((p[0] as f64 - pr).abs() < 1e-6, "{} vs {pr}", p[0]);
    }

    #[test]
    fn adagrad_matches_its_formula() {
        let (mut p, mut s) = (vec![1.0f32], vec![0.0f32]);
        adagrad_update(&mut p, &mut s, &[2.0], 0.01, 1e-10);
        adagrad_update(&mut p, &mut s, &[1.0], 0.01, 1e-10);
        let want = 1.0 - 0.01 * 2.0 / 2.0 - 0.01 * 1.0 / 5f32.sqrt();
        assert!((p[0] - want).abs() < 1e-7 && s[0] == 5.0);
    }
}
