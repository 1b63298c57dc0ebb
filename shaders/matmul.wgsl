// Linear layer `out = inp W^T + b` (PyTorch's convention: W is (n_out, n_in)), forward and
// backward. CPU reference: bst-kernels/src/cpu/matmul.rs; launcher: bst-kernels/src/gpu/matmul.rs.
//
// All three matrix products are one strided GEMM, `C (M, N) = A (M, K) B (K, N)`, with
// A(m, k) = a[a_off + m*a_sm + k*a_sk] and B(k, n) = b[b_off + k*b_sk + n*b_sn], the entry
// point matmul_gemm with the uniform slot of the product:
//   forward                 out (rows, n_out)   = inp (rows, n_in) W^T        (+ bias, act)
//   backward dinp           dinp (rows, n_in)   = dout (rows, n_out) W        (overwrite)
//                           (* leaky'(pre) with act_grad: the gradient of the previous
//                           layer's pre-activation, the activation backward fused in;
//                           `pre` may be that layer's output, which has its signs)
//   backward dweight        dweight (n_out, n_in) += dout^T inp               (accumulate)
// and the bias gradient is a column sum:
//   matmul_backward_dbias   dbias (n_out)      += sum over rows of dout       (accumulate)
// The launcher binds the right buffers to a, b, c for each of them.
//
// Split reductions. dweight and dbias reduce over the batch's rows (K = B*T, 86016 at
// B = 4096) into a few tiles, which alone would leave most of a GPU idle. The launcher
// can split the rows into chunks of k_chunk (a multiple of TILE_K): workgroup z of either
// kernel then reduces rows z*k_chunk .. (z+1)*k_chunk into its own partial C at
// c_off + z*c_split (overwriting; a scratch buffer), and
//   matmul_sum_splits       C (m, n) += sum over z = 0 .. k of partial z        (in order)
// adds the k partials (a[a_off + z*a_sk + row*n + col]) to C in a fixed order, so the
// result stays deterministic. Unsplit: one chunk (k_chunk >= K), c_split unused.

// The interface is written from GemmParams (bst-kernels/src/gpu/matmul.rs): the uniform
// p: Params, then the storage a, b, c, bias, pre.

// A 16 x 16 workgroup computes a 64 x 64 tile of C, each invocation a 4 x 4 block with
// rows lid.y + 16 i and columns lid.x + 16 j (so stores are coalesced along columns).
const WG: u32 = 16u;
const TILE_M: u32 = 64u;
const TILE_N: u32 = 64u;
const TILE_K: u32 = 16u;
const PER_THREAD: u32 = 4u; // TILE_M / WG
const LOADS: u32 = 4u; // TILE_K * TILE_M / (WG * WG) elements of A (and of B) per invocation
// Tiles are stored [k][m] and [k][n] with one padding column, so that loads that walk k
// fastest do not all hit the same memory bank.
const LDA: u32 = 65u; // TILE_M + 1
const LDB: u32 = 65u; // TILE_N + 1

var<workgroup> a_tile: array<f32, 1040>; // TILE_K * LDA
var<workgroup> b_tile: array<f32, 1040>; // TILE_K * LDB

fn gemm_tile(wg: vec3<u32>, lid: vec3<u32>, tid: u32) {
    let m0 = wg.y * TILE_M;
    let n0 = wg.x * TILE_N;
    // This workgroup's chunk of the reduction (all of it, unsplit).
    let k_begin = wg.z * p.k_chunk;
    let k_end = min(p.k, k_begin + p.k_chunk);
    var acc: array<f32, 16>; // [i * PER_THREAD + j], zero-initialised

    for (var k0 = k_begin; k0 < k_end; k0 += TILE_K) {
        // Stage A and B tiles; zeros outside the matrices. Consecutive invocations read
        // consecutive addresses: walk k fastest when it is contiguous in memory, else m (n).
        for (var l = 0u; l < LOADS; l++) {
            let e = tid + l * WG * WG;
            var mm = e % TILE_M;
            var kk = e / TILE_M;
            if (p.a_sk == 1u) {
                mm = e / TILE_K;
                kk = e % TILE_K;
            }
            var v = 0.0;
            if (m0 + mm < p.m && k0 + kk < k_end) {
                v = a[p.a_off + (m0 + mm) * p.a_sm + (k0 + kk) * p.a_sk];
            }
            a_tile[kk * LDA + mm] = v;

            var nn = e % TILE_N;
            var kb = e / TILE_N;
            if (p.b_sn != 1u) {
                nn = e / TILE_K;
                kb = e % TILE_K;
            }
            var w = 0.0;
            if (n0 + nn < p.n && k0 + kb < k_end) {
                w = b[p.b_off + (k0 + kb) * p.b_sk + (n0 + nn) * p.b_sn];
            }
            b_tile[kb * LDB + nn] = w;
        }
        workgroupBarrier();

        for (var kk = 0u; kk < TILE_K; kk++) {
            var ar: array<f32, 4>;
            var br: array<f32, 4>;
            for (var i = 0u; i < PER_THREAD; i++) {
                ar[i] = a_tile[kk * LDA + lid.y + i * WG];
                br[i] = b_tile[kk * LDB + lid.x + i * WG];
            }
            for (var i = 0u; i < PER_THREAD; i++) {
                for (var j = 0u; j < PER_THREAD; j++) {
                    acc[i * PER_THREAD + j] += ar[i] * br[j];
                }
            }
        }
        workgroupBarrier();
    }

    // Epilogue: guard the edges, then C += acc, or C = act(acc + bias), or
    // C = acc * leaky'(pre).
    for (var i = 0u; i < PER_THREAD; i++) {
        let row = m0 + lid.y + i * WG;
        for (var j = 0u; j < PER_THREAD; j++) {
            let col = n0 + lid.x + j * WG;
            if (row < p.m && col < p.n) {
                let idx = p.c_off + wg.z * p.c_split + row * p.c_sm + col;
                var v = acc[i * PER_THREAD + j];
                if (p.accumulate == 1u) {
                    v += c[idx];
                } else {
                    if (p.has_bias == 1u) {
                        v += bias[p.bias_off + col];
                    }
                    if (p.store_pre == 1u) {
                        pre[p.pre_off + row * p.c_sm + col] = v;
                    }
                    if (p.act == 1u && !(v > 0.0)) {
                        v = p.alpha * v;
                    }
                    if (p.act_grad == 1u && !(pre[p.pre_off + row * p.c_sm + col] > 0.0)) {
                        v = p.alpha * v;
                    }
                }
                c[idx] = v;
            }
        }
    }
}

// One of the three GEMMs above, by the uniform slot bound.
@compute @workgroup_size(16, 16)
fn matmul_gemm(inv: Invocation) {
    gemm_tile(inv.wg, inv.lid3, inv.lid);
}

// dbias (n) += column sums of dout (m, n), with dout(r, col) = a[a_off + r*a_sm + col*a_sk]
// and dbias at c[c_off + col]; split, workgroup row z sums rows z*k_chunk .. (z+1)*k_chunk
// into c[c_off + z*c_split + col]. One invocation per column adds its rows in order, so
// the result is deterministic.
@compute @workgroup_size(64)
fn matmul_backward_dbias(inv: Invocation) {
    let col = inv.gid.x;
    if (col >= p.n) {
        return;
    }
    let idx = p.c_off + inv.wg.z * p.c_split + col;
    var s = 0.0;
    if (p.accumulate == 1u) {
        s = c[idx];
    }
    let end = min(p.m, (inv.wg.z + 1u) * p.k_chunk);
    for (var r = inv.wg.z * p.k_chunk; r < end; r++) {
        s += a[p.a_off + r * p.a_sm + col * p.a_sk];
    }
    c[idx] = s;
}

// C (m, n) at c[c_off + row*c_sm + col] += the k partials a[a_off + z*a_sk + row*n + col],
// z = 0, 1, .. k-1 in order. One invocation per element of C, on a flat index over a 2D
// grid (x: SUM_WG-wide groups, y: rows of groups).
const SUM_WG: u32 = 256u;

@compute @workgroup_size(256)
fn matmul_sum_splits(inv: Invocation) {
    let i = (inv.wg.y * inv.nwg.x + inv.wg.x) * SUM_WG + inv.lid;
    if (i >= p.m * p.n) {
        return;
    }
    let idx = p.c_off + (i / p.n) * p.c_sm + i % p.n;
    var s = c[idx];
    for (var z = 0u; z < p.k; z++) {
        s += a[p.a_off + z * p.a_sk + i];
    }
    c[idx] = s;
}
