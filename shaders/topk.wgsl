// Top-k selection: the k best (index, score) pairs of n scores, best first.
// CPU reference: bst-kernels/src/cpu/topk.rs; launcher: bst-kernels/src/gpu/topk.rs.
//
// The order is cpu::topk::better: a higher score first, equal scores by lower index, NaN
// below every number, -0.0 just below +0.0. A score's bits become a u32 key whose
// unsigned order is that order (score_key); a pair (key, index) compares by key, then by
// lower index. No two pairs are equal, so the answer is unique: every device gives the
// CPU's, bit for bit. Scores are read as bits (u32), never as f32 values.
//
//   topk_pass   one workgroup loads CHUNK (2048) pairs into workgroup memory and keeps
//               the best RUN of them (K = p.run, a power of two <= CHUNK / 2), sorted:
//               - from the scores (first = 1): first sorts each run of K pairs best first
//                 with a bitonic network (each stage starts with a "flip", so every run
//                 ends in the same order);
//               - from the previous pass's output (first = 0): its runs are sorted.
//               Then the CHUNK / K runs merge pairwise, log2(CHUNK / K) rounds: for runs
//               a and b, c[i] = the better of a[i] and b[K-1-i] holds the best K of both
//               as a bitonic sequence, which log2(K) half-cleaner steps sort.
//               Writes its K pairs to dst as (key, index), or, on the last pass (one
//               workgroup), the first k to out as (index, score bits).
//
// The launcher chains passes until one workgroup is left; each pass keeps K of every
// CHUNK pairs. No atomics; every step is a fixed compare-exchange network.

// The interface is written from TopKParams (bst-kernels/src/gpu/topk.rs): the uniform
// p: Params, then the storage (all u32) scores (n) f32 bits, src (n, 2) key and index,
// dst (groups * K, 2) key and index, out (k, 2) index and score bits.

const WG: u32 = 256u;
const CHUNK: u32 = 2048u;
// The index of a padding pair (key 0): below every real pair, NaN ones included.
const NONE: u32 = 0xffffffffu;

var<workgroup> keys: array<u32, 2048>; // CHUNK
var<workgroup> idx: array<u32, 2048>;  // CHUNK

// The sort key of a score's bits: unsigned order = score order, NaN (any payload) = 0.
fn score_key(bits: u32) -> u32 {
    if ((bits & 0x7fffffffu) > 0x7f800000u) {
        return 0u; // NaN
    }
    if ((bits & 0x80000000u) != 0u) {
        return ~bits; // negative: a larger magnitude ranks lower
    }
    return bits | 0x80000000u;
}

// Pair i ranks before pair j.
fn before(i: u32, j: u32) -> bool {
    return keys[i] > keys[j] || (keys[i] == keys[j] && idx[i] < idx[j]);
}

// Puts the better of pairs i and j at i, the other at j.
fn order(i: u32, j: u32) {
    if (before(j, i)) {
        let key = keys[i];
        keys[i] = keys[j];
        keys[j] = key;
        let at = idx[i];
        idx[i] = idx[j];
        idx[j] = at;
    }
}

@compute @workgroup_size(256)
fn topk_pass(inv: Invocation) {
    let group = inv.wg.y * inv.nwg.x + inv.wg.x;
    // Uniform per workgroup; an overhanging workgroup sorts padding and writes nothing.
    let live = group < p.groups;
    let run = p.run;

    // Load: real pairs, then padding (key 0, index NONE).
    for (var t = inv.lid; t < CHUNK; t += WG) {
        let i = group * CHUNK + t;
        var key = 0u;
        var at = NONE;
        if (live && i < p.n) {
            if (p.first == 1u) {
                key = score_key(scores[p.scores_off + i]);
                at = i;
            } else {
                key = src[2u * i];
                at = src[2u * i + 1u];
            }
        }
        keys[t] = key;
        idx[t] = at;
    }
    workgroupBarrier();

    // Scores: sort every run of K, best first (bitonic; stage s sorts runs of s).
    if (p.first == 1u) {
        for (var s = 2u; s <= run; s <<= 1u) {
            let half = s >> 1u;
            for (var t = inv.lid; t < CHUNK / 2u; t += WG) {
                let i = (t / half) * s + t % half;
                order(i, i ^ (s - 1u)); // the flip: i against its mirror in the run of s
            }
            workgroupBarrier();
            for (var h = s >> 2u; h > 0u; h >>= 1u) {
                for (var t = inv.lid; t < CHUNK / 2u; t += WG) {
                    let i = (t / h) * 2u * h + t % h;
                    order(i, i + h);
                }
                workgroupBarrier();
            }
        }
    }

    // Merge: the run at b + g into the run at b, for every b a multiple of 2g.
    for (var g = run; g < CHUNK; g <<= 1u) {
        let merges = CHUNK / (2u * g);
        for (var t = inv.lid; t < merges * run; t += WG) {
            let b = (t / run) * 2u * g;
            let r = t % run;
            order(b + r, b + g + run - 1u - r);
        }
        workgroupBarrier();
        for (var h = run >> 1u; h > 0u; h >>= 1u) {
            let halfrun = run >> 1u;
            for (var t = inv.lid; t < merges * halfrun; t += WG) {
                let b = (t / halfrun) * 2u * g;
                let u = t % halfrun;
                let i = b + (u / h) * 2u * h + u % h;
                order(i, i + h);
            }
            workgroupBarrier();
        }
    }

    if (live) {
        if (p.last == 1u) {
            for (var t = inv.lid; t < p.k; t += WG) {
                out[p.out_off + 2u * t] = idx[t];
                out[p.out_off + 2u * t + 1u] = scores[p.scores_off + idx[t]];
            }
        } else {
            for (var t = inv.lid; t < run; t += WG) {
                let o = 2u * (group * run + t);
                dst[o] = keys[t];
                dst[o + 1u] = idx[t];
            }
        }
    }
}
