// LayerNorm over the last dimension (C) of N rows, forward and backward.
// CPU reference: bst-kernels/src/cpu/layernorm.rs; launcher: bst-kernels/src/gpu/layernorm.rs.
//
//   layernorm_forward            out (N, C) = (inp - mean) * rstd * weight + bias;
//                                mean (N), rstd (N) saved for the backward
//   layernorm_backward_dinp      dinp (N, C), overwritten
//   layernorm_backward_partials  scratch (chunks, 2, C): per chunk of CHUNK rows, the
//                                sums of dout * xhat and of dout, rows added in order
//   layernorm_backward_dparams   dweight (C) += sum of the chunks' dout * xhat,
//                                dbias (C) += sum of the chunks' dout, chunks in order
//
// Every reduction runs in a fixed order, so results are deterministic.
//
// The kernels bind at most 8 storage buffers (the WebGPU minimum) from 11 tensors, so a
// binding slot carries a different tensor in different kernels: a gradient sits in the
// slot of its value (weight / dweight, bias / dbias, out / dinp). Each entry point uses
// only the names declared for it; the launcher binds the right buffer per kernel.

// The interface is written from LayerNormParams (bst-kernels/src/gpu/layernorm.rs): the
// uniform p: Params, then the storage inp (N, C), mean (N), rstd (N), weight (C), bias (C),
// out (N, C), dout (N, C), scratch (chunks, 2, C). The backward's names for slots 4 to 6:
@group(0) @binding(4) var<storage, read_write> dweight: array<f32>; // (C)  dparams
@group(0) @binding(5) var<storage, read_write> dbias: array<f32>;   // (C)  dparams
@group(0) @binding(6) var<storage, read_write> dinp: array<f32>;    // (N, C) dinp

// Forward and dinp: one workgroup per row (grid-stride over rows), WG invocations
// striding over the C columns, then a tree reduction in workgroup memory.
const WG: u32 = 64u;
// Parameter gradients: rows per chunk of the first pass.
const CHUNK: u32 = 256u;

var<workgroup> red: array<f32, 64>;   // WG partial sums
var<workgroup> red2: array<f32, 64>;  // a second sum, reduced alongside

// Sums `a` and `b` over the workgroup in a fixed order; the result is in red[0], red2[0].
// Call in uniform control flow; ends with a barrier, so red may be read, not yet rewritten.
fn reduce2(lid: u32, a: f32, b: f32) {
    red[lid] = a;
    red2[lid] = b;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red[lid] += red[lid + s];
            red2[lid] += red2[lid + s];
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(64)
fn layernorm_forward(inv: Invocation) {
    let cf = f32(p.c);
    for (var row = inv.wg.x; row < p.rows; row += inv.nwg.x) {
        let x0 = p.inp_off + row * p.c;
        var s = 0.0;
        for (var k = inv.lid; k < p.c; k += WG) {
            s += inp[x0 + k];
        }
        reduce2(inv.lid, s, 0.0);
        let mu = red[0] / cf;
        workgroupBarrier(); // everyone has read red[0] before it is rewritten

        var v = 0.0;
        for (var k = inv.lid; k < p.c; k += WG) {
            let dx = inp[x0 + k] - mu;
            v += dx * dx;
        }
        reduce2(inv.lid, v, 0.0);
        let r = 1.0 / sqrt(red[0] / cf + p.eps);
        workgroupBarrier();

        for (var k = inv.lid; k < p.c; k += WG) {
            let y = (inp[x0 + k] - mu) * r * weight[p.weight_off + k] + bias[p.bias_off + k];
            out[p.out_off + row * p.c + k] = y;
        }
        if (inv.lid == 0u) {
            mean[p.mean_off + row] = mu;
            rstd[p.rstd_off + row] = r;
        }
    }
}

// dinp = rstd * (dout * weight - mean(dout * weight) - xhat * mean(dout * weight * xhat))
@compute @workgroup_size(64)
fn layernorm_backward_dinp(inv: Invocation) {
    let cf = f32(p.c);
    for (var row = inv.wg.x; row < p.rows; row += inv.nwg.x) {
        let x0 = p.inp_off + row * p.c;
        let g0 = p.dout_off + row * p.c;
        let mu = mean[p.mean_off + row];
        let r = rstd[p.rstd_off + row];
        var sum_g = 0.0;
        var sum_g_xhat = 0.0;
        for (var k = inv.lid; k < p.c; k += WG) {
            let gw = dout[g0 + k] * weight[p.weight_off + k];
            sum_g += gw;
            sum_g_xhat += gw * (inp[x0 + k] - mu) * r;
        }
        reduce2(inv.lid, sum_g, sum_g_xhat);
        let mean_g = red[0] / cf;
        let mean_g_xhat = red2[0] / cf;
        workgroupBarrier();

        for (var k = inv.lid; k < p.c; k += WG) {
            let xhat = (inp[x0 + k] - mu) * r;
            let gw = dout[g0 + k] * weight[p.weight_off + k];
            dinp[p.dinp_off + row * p.c + k] = r * (gw - mean_g - xhat * mean_g_xhat);
        }
    }
}

// scratch[chunk][0][k] = sum over the chunk's rows of dout * xhat, [chunk][1][k] of dout.
// Workgroups (ceil(C / WG), chunks); one invocation per (chunk, column).
@compute @workgroup_size(64)
fn layernorm_backward_partials(inv: Invocation) {
    let k = inv.wg.x * WG + inv.lid;
    let chunk = inv.wg.y;
    if (k >= p.c) {
        return;
    }
    let end = min(p.rows, (chunk + 1u) * CHUNK);
    var dw = 0.0;
    var db = 0.0;
    for (var row = chunk * CHUNK; row < end; row++) {
        let g = dout[p.dout_off + row * p.c + k];
        let x = inp[p.inp_off + row * p.c + k];
        dw += g * (x - mean[p.mean_off + row]) * rstd[p.rstd_off + row];
        db += g;
    }
    scratch[(chunk * 2u) * p.c + k] = dw;
    scratch[(chunk * 2u + 1u) * p.c + k] = db;
}

// dweight[k] += sum over chunks of scratch[chunk][0][k]; dbias[k] likewise with [1].
@compute @workgroup_size(64)
fn layernorm_backward_dparams(inv: Invocation) {
    let k = inv.gid.x;
    if (k >= p.c) {
        return;
    }
    let chunks = (p.rows + CHUNK - 1u) / CHUNK;
    var dw = 0.0;
    var db = 0.0;
    for (var chunk = 0u; chunk < chunks; chunk++) {
        dw += scratch[(chunk * 2u) * p.c + k];
        db += scratch[(chunk * 2u + 1u) * p.c + k];
    }
    dweight[p.dweight_off + k] += dw;
    dbias[p.dbias_off + k] += db;
}
