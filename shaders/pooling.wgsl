// Pooling of the last block's tokens into one row per sample, forward and backward.
// CPU reference: bst-kernels/src/cpu/pooling.rs; launcher: bst-kernels/src/gpu/pooling.rs.
//
//   pooling_forward   out[b, off .. off + width] = pool(x[b])   x (B, T, d), out (B, row)
//   pooling_backward  dx (B, T, d) = gradient of dout[b, off .. off + width]   (overwrites)
//
// Modes (cpu::pooling::PoolMode): 0 Target: token T-1 (width d); 1 Mean: token T-1, then
// the mean of the valid history tokens 0..T-1, zeros when none is valid (width 2d);
// 2 Flatten: all T tokens, invalid ones zeroed (width T*d). A token is valid where
// valid (B, T) is nonzero. Columns of `out` outside off .. off + width are not touched.
//
// The forward runs one invocation per output element; the backward one per (sample,
// channel), which counts the sample's valid history once and then walks its T tokens.
// Both on a flat index over a 2D grid of workgroups (the launcher spreads more than 65535
// workgroups over y).

// The interface is written from PoolParams (bst-kernels/src/gpu/pooling.rs): the uniform
// p: Params, then the storage x (B, T, d), valid (B, T) u32, out (B, row), dout (B, row),
// dx (B, T, d).

const WG: u32 = 256u;
const TARGET: u32 = 0u;
const MEAN: u32 = 1u;

fn is_valid(bi: u32, t: u32) -> bool {
    return valid[p.valid_off + bi * p.t + t] != 0u;
}

// Valid tokens among the history 0 .. T-1 of sample bi.
fn history_count(bi: u32) -> u32 {
    var count = 0u;
    for (var t = 0u; t + 1u < p.t; t++) {
        if (is_valid(bi, t)) {
            count++;
        }
    }
    return count;
}

// out (B, row), columns off .. off + width, from x (B, T, d)
@compute @workgroup_size(256)
fn pooling_forward(inv: Invocation) {
    let i = flat_index(inv);
    if (i >= p.b * p.width) {
        return;
    }
    let bi = i / p.width;
    let j = i % p.width;
    let xb = p.x_off + bi * p.t * p.d;
    var v = 0.0;
    if (p.mode == TARGET || (p.mode == MEAN && j < p.d)) {
        v = x[xb + (p.t - 1u) * p.d + j];
    } else if (p.mode == MEAN) {
        // Summed in token order, then divided, as on the CPU.
        let c = j - p.d;
        var count = 0u;
        for (var t = 0u; t + 1u < p.t; t++) {
            if (is_valid(bi, t)) {
                v += x[xb + t * p.d + c];
                count++;
            }
        }
        if (count > 0u) {
            v = v / f32(count);
        }
    } else if (is_valid(bi, j / p.d)) {
        v = x[xb + j]; // Flatten: column j is token j / d, feature j % d
    }
    out[p.out_off + bi * p.row + p.off + j] = v;
}

// dx (B, T, d) from dout (B, row), columns off .. off + width            (overwrites)
// One invocation per (sample bi, channel c) writes dx[bi, 0 .. T, c]: the mean's count
// of valid history tokens is computed once per invocation, not once per element.
@compute @workgroup_size(256)
fn pooling_backward(inv: Invocation) {
    let i = flat_index(inv);
    if (i >= p.b * p.d) {
        return;
    }
    let bi = i / p.d;
    let c = i % p.d;
    let g = p.dout_off + bi * p.row + p.off;
    let dxb = p.dx_off + bi * p.t * p.d + c;
    var count = 0u;
    if (p.mode == MEAN) {
        count = history_count(bi);
    }
    for (var t = 0u; t < p.t; t++) {
        var v = 0.0;
        if (p.mode == TARGET || p.mode == MEAN) {
            if (t + 1u == p.t) {
                v = dout[g + c];
            } else if (p.mode == MEAN && is_valid(bi, t)) {
                v = dout[g + p.d + c] / f32(count);
            }
        } else if (is_valid(bi, t)) {
            v = dout[g + t * p.d + c];
        }
        dx[dxb + t * p.d] = v;
    }
}
