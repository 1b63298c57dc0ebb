// Sigmoid + binary cross-entropy from the logit, forward and backward.
// CPU reference: bst-kernels/src/cpu/loss.rs; launcher: bst-kernels/src/gpu/loss.rs.
//
//   bce_forward   probs (B) = sigmoid(logits (B));
//                 losses (B) = max(z, 0) - z*y + log(1 + exp(-|z|))   (the stable form)
//   bce_mean      mean (1) = sum of losses / B  (or += with accumulate_mean): one
//                 workgroup, each invocation sums a fixed stride of samples (Kahan), then
//                 a fixed tree; deterministic, no atomics, no host readback per step
//   bce_backward  dlogits (B) = (sigmoid(z) - y) / B                  (overwrites)
//   (both divide by `divisor` instead of B when it is set: a data-parallel shard)
//
// Labels are f32 (0 or 1). Per-sample kernels use a flat index over a 2D grid of
// workgroups (the launcher spreads more than 65535 workgroups over y).

// The interface is written from LossParams (bst-kernels/src/gpu/loss.rs): the uniform
// p: Params, then the storage logits, labels, probs, losses (B each), mean (1), dlogits (B).

// The divisor of the mean and of dlogits.
fn divisor() -> f32 {
    return f32(max(select(p.b, p.divisor, p.divisor > 0u), 1u));
}

const WG: u32 = 256u;

var<workgroup> partial: array<f32, 256>; // WG

// As cpu::loss::sigmoid: exp of a non-positive argument only, so never inf.
fn sigmoid(z: f32) -> f32 {
    if (z >= 0.0) {
        return 1.0 / (1.0 + exp(-z));
    }
    let e = exp(z);
    return e / (1.0 + e);
}

// log(1 + e) for e in [0, 1], as 2 atanh(s) with s = e / (2 + e) <= 1/3: the series
// 2 (s + s^3/3 + ... + s^19/19) is exact to f32 rounding (the next term is below 1e-11
// relative), and stays accurate for tiny e where log(1.0 + e) would round to 0. WGSL has
// no log1p, and its log is only specified to 2^-21 absolute near 1.
fn log1p_unit(e: f32) -> f32 {
    let s = e / (2.0 + e);
    let s2 = s * s;
    var r = 1.0 / 19.0;
    r = 1.0 / 17.0 + s2 * r;
    r = 1.0 / 15.0 + s2 * r;
    r = 1.0 / 13.0 + s2 * r;
    r = 1.0 / 11.0 + s2 * r;
    r = 1.0 / 9.0 + s2 * r;
    r = 1.0 / 7.0 + s2 * r;
    r = 1.0 / 5.0 + s2 * r;
    r = 1.0 / 3.0 + s2 * r;
    r = 1.0 + s2 * r;
    return 2.0 * s * r;
}

// probs (B), losses (B) from logits (B), labels (B)
@compute @workgroup_size(256)
fn bce_forward(inv: Invocation) {
    let i = flat_index(inv);
    if (i >= p.b) {
        return;
    }
    let z = logits[p.logits_off + i];
    let y = labels[p.labels_off + i];
    probs[p.probs_off + i] = sigmoid(z);
    losses[p.losses_off + i] = max(z, 0.0) - z * y + log1p_unit(exp(-abs(z)));
}

// mean (1) = sum of losses (B) / B, in one workgroup of WG invocations.
@compute @workgroup_size(256)
fn bce_mean(inv: Invocation) {
    // Invocation inv.lid adds samples inv.lid, inv.lid + WG, ... with Kahan compensation.
    var sum = 0.0;
    var comp = 0.0;
    for (var i = inv.lid; i < p.b; i += WG) {
        let y = losses[p.losses_off + i] - comp;
        let t = sum + y;
        comp = (t - sum) - y;
        sum = t;
    }
    partial[inv.lid] = sum;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (inv.lid < s) {
            partial[inv.lid] += partial[inv.lid + s];
        }
        workgroupBarrier();
    }
    if (inv.lid == 0u) {
        var m = partial[0] / divisor();
        if (p.accumulate_mean == 1u) {
            m += mean[p.mean_off];
        }
        mean[p.mean_off] = m;
    }
}

// dlogits (B) = (sigmoid(logits) - labels) / B                            (overwrites)
@compute @workgroup_size(256)
fn bce_backward(inv: Invocation) {
    let i = flat_index(inv);
    if (i >= p.b) {
        return;
    }
    let z = logits[p.logits_off + i];
    let y = labels[p.labels_off + i];
    dlogits[p.dlogits_off + i] = (sigmoid(z) - y) / divisor();
}
