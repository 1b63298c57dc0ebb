//! Sigmoid + binary cross-entropy from the logit, in the stable form
//! `max(z, 0) - z*y + log(1 + exp(-|z|))`, averaged over the batch.

/// probs (B) = sigmoid(logits (B)); returns the mean loss over the batch.
pub fn bce_forward(probs: &mut [f32], logits: &[f32], labels: &[f32]) -> f32 {
    let mut sum = 0.0f64;
    for ((p, &z), &y) in probs.iter_mut().zip(logits).zip(labels) {
        *p = sigmoid(z);
        sum += (z.max(0.0) - z * y + (-z.abs()).exp().ln_1p()) as f64;
    }
    (sum / logits.len().max(1) as f64) as f32
}

/// dlogits (B) = (sigmoid(z) - y) / B          (overwrites)
pub fn bce_backward(dlogits: &mut [f32], logits: &[f32], labels: &[f32]) {
    let n = logits.len() as f32;
    for ((g, &z), &y) in dlogits.iter_mut().zip(logits).zip(labels) {
        *g = (sigmoid(z) - y) / n;
    }
}

/// The logistic function, computed without overflow for any `z`.
#[inline]
pub fn sigmoid(z: f32) -> f32 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::gradcheck::check_grad;

    #[test]
    fn loss_is_stable_at_large_logits_and_matches_the_textbook_form() {
        let mut p = vec![0.0; 4];
        let loss = bce_forward(&mut p, &[100.0, -100.0, 0.0, 2.0], &[1.0, 0.0, 1.0, 0.0]);
        let want = (0.0 + 0.0 + 2f64.ln() + (1.0 + 2f64.exp()).ln()) / 4.0;
        assert!((loss as f64 - want).abs() < 1e-6, "{loss} vs {want}");
        assert!(loss.is_finite() && p[0] == 1.0 && p[1] < 1e-40);
    }

    #[test]
    fn backward_matches_finite_differences() {
        let z = [0.3, -1.2, 2.5, 0.0, -0.1];
        let y = [1.0, 0.0, 0.0, 1.0, 1.0];
        let mut g = vec![0.0; 5];
        bce_backward(&mut g, &z, &y);
        check_grad("bce dlogits", &g, &z, |z| {
            let mut p = vec![0.0; 5];
            bce_forward(&mut p, z, &y) as f64
        });
    }
}
