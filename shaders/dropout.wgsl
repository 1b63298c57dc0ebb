// Residual + inverted dropout, element-wise over n elements, forward and backward.
// CPU reference: bst-kernels/src/cpu/dropout.rs; launcher: bst-kernels/src/gpu/dropout.rs.
//
//   residual_dropout_forward   out (n) = x (n) + a (n) * mask
//   residual_dropout_backward  da (n)  = dout (n) * mask           (overwrites; dx = dout)
//
// mask(i) = hash_u32(stream ^ (first + i)) >= threshold ? scale : 0, with `stream`, `threshold` and
// `scale` = 1 / (1 - p) computed on the host by cpu::dropout::DropoutKey, so the GPU's
// mask is the CPU's bit for bit. One invocation per element, grid-stride.

// The interface is written from DropoutParams (bst-kernels/src/gpu/dropout.rs): the
// uniform p: Params, then the storage x, a, out, dout, da, each (n).

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
