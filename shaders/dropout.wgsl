// Residual + inverted dropout, element-wise over n elements, forward and backward.
// CPU reference: bst-kernels/src/cpu/dropout.rs; launcher: bst-kernels/src/gpu/dropout.rs.
//
//   residual_dropout_forward   out (n) = x (n) + a (n) * mask
//   residual_dropout_backward  da (n)  = dout (n) * mask           (overwrites; dx = dout)
//
// mask(i) = hash_u32(stream ^ (first + i)) >= threshold ? scale : 0, with `stream`, `threshold` and
// `scale` = 1 / (1 - p) computed on the host by cpu::dropout::DropoutKey, so the GPU's
// mask is the CPU's bit for bit. One invocation per element, grid-stride.

struct Params {
    n: u32,
    x_off: u32,
    a_off: u32,
    out_off: u32,
    dout_off: u32,
    da_off: u32,
    stream: u32,
    threshold: u32,
    scale: f32,
    // Always 0. XORed into the bits of a * mask, which stops the compiler from fusing
    // x + a * mask into one fma (rounded once, unlike the CPU's multiply then add).
    opaque_zero: u32,
    // The mask index of element 0: a data-parallel rank's shard of a batch takes the
    // masks of its rows in the global batch (cpu::dropout's `_at` variants' `first`).
    first: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// Storage is read_write even for inputs: see the design rules in gpu/mod.rs.
@group(0) @binding(1) var<storage, read_write> x: array<f32>;    // (n)
@group(0) @binding(2) var<storage, read_write> a: array<f32>;    // (n)
@group(0) @binding(3) var<storage, read_write> out: array<f32>;  // (n)
@group(0) @binding(4) var<storage, read_write> dout: array<f32>; // (n)
@group(0) @binding(5) var<storage, read_write> da: array<f32>;   // (n)

const WG: u32 = 256u;

// "lowbias32" (C. Wellons), as cpu::dropout::hash_u32; u32 products wrap in WGSL.
fn hash_u32(v: u32) -> u32 {
    var h = v;
    h ^= h >> 16u;
    h *= 0x7feb352du;
    h ^= h >> 15u;
    h *= 0x846ca68bu;
    h ^= h >> 16u;
    return h;
}

// The multiplier of element i: 0 (dropped) or scale (kept).
fn mask(i: u32) -> f32 {
    return select(0.0, p.scale, hash_u32(p.stream ^ (p.first + i)) >= p.threshold);
}

@compute @workgroup_size(256)
fn residual_dropout_forward(inv: Invocation) {
    for (var i = inv.gid.x; i < p.n; i += inv.nwg.x * WG) {
        let dropped = bitcast<f32>(bitcast<u32>(a[p.a_off + i] * mask(i)) ^ p.opaque_zero);
        out[p.out_off + i] = x[p.x_off + i] + dropped;
    }
}

@compute @workgroup_size(256)
fn residual_dropout_backward(inv: Invocation) {
    for (var i = inv.gid.x; i < p.n; i += inv.nwg.x * WG) {
        da[p.da_off + i] = dout[p.dout_off + i] * mask(i);
    }
}
