//! Central finite differences for the backward tests.
//!
//! The ops run in f32, so the step is large (1e-2) and losses are summed in f64; the
//! tolerance is |analytic - numeric| <= ATOL + RTOL * max(|analytic|, |numeric|).

use crate::cpu::dropout::hash_u32;

pub const EPS: f32 = 1e-2;
pub const RTOL: f64 = 2e-2;
pub const ATOL: f64 = 2e-3;

/// Deterministic values in [-1, 1).
pub fn random_vec(n: usize, seed: u32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| {
            (hash_u32(i ^ hash_u32(seed.wrapping_add(0x5bd1_e995))) >> 8) as f32
                / (1u32 << 23) as f32
                - 1.0
        })
        .collect()
}

/// Compares `analytic[i]` with the central difference of `loss` in `x[i]`, for every `i`.
/// Prints the first mismatches and the max error before failing.
pub fn check_grad(name: &str, analytic: &[f32], x: &[f32], mut loss: impl FnMut(&[f32]) -> f64) {
    assert_eq!(
        analytic.len(),
        x.len(),
        "{name}: gradient and input differ in length"
    );
    let mut xs = x.to_vec();
    let mut bad = Vec::new();
    let mut max_err = 0.0f64;
    for i in 0..x.len() {
        let x0 = xs[i];
        xs[i] = x0 + EPS;
        let lp = loss(&xs);
        xs[i] = x0 - EPS;
        let lm = loss(&xs);
        xs[i] = x0;
        let numeric = (lp - lm) / (2.0 * EPS as f64);
        let a = analytic[i] as f64;
        let err = (a - numeric).abs();
        max_err = max_err.max(err);
        if err > ATOL + RTOL * a.abs().max(numeric.abs()) {
            bad.push((i, a, numeric));
        }
    }
    if !bad.is_empty() {
        for (i, a, n) in bad.iter().take(5) {
            eprintln!("{name}[{i}]: analytic {a:.6} numeric {n:.6}");
        }
        panic!(
            "{name}: {} of {} gradients off, max error {max_err:.3e}",
            bad.len(),
            x.len()
        );
    }
}
