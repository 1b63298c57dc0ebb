// Attention of the target token alone over its user's shared history and itself: the
// scoring path of a one-block, target-pooled BST, where each user's history keys and
// values are computed once. CPU reference: bst-kernels/src/cpu/target_attention.rs;
// launcher: bst-kernels/src/gpu/target_attention.rs.
//
//   target_attention_forward  out (N, d): for row n of user u = user[n], head j:
//       softmax(q_j K_j^T * scale + mask) V_j over the keys [hist_kv[u, :, K] (valid
//       slots only); qkv[n, K]], values likewise; the own key is always valid.
//
// qkv (N, 3d): each row's Q, K, V. hist_kv (U, R, 2d): each user's history K then V in
// its first L of R >= L rows (R = L + 1 when they come from a batch of T-token samples).
// hist_valid (U, R) u32: 0 masks the slot. user (N) u32.
//
// One invocation per (row, head), grid-stride over the N * h pairs: it keeps the scores
// of its L + 1 keys in a private array (L + 1 <= MAX_KEYS, which the launcher checks)
// and sums every term in the CPU's order, so results are deterministic.

// The interface is written from TargetAttentionParams (gpu/target_attention.rs): the
// uniform p: Params, then the storage qkv (N, 3d), hist_kv (U, R, 2d), hist_valid (U, R)
// u32, user (N) u32, out (N, d).

const WG: u32 = 64u;
const MAX_KEYS: u32 = 128u;

// Column c of head j of key (part 0) or value (part 1) number `key` of row n: a history
// slot (key < L) of user u, or the row's own (key = L).
fn kv_at(n: u32, u: u32, key: u32, part: u32, j: u32, c: u32) -> f32 {
    if (key < p.l) {
        return hist_kv[p.kv_off + (u * p.r + key) * 2u * p.d + part * p.d + j * p.dh + c];
    }
    return qkv[p.qkv_off + n * 3u * p.d + (1u + part) * p.d + j * p.dh + c];
}

fn is_valid(u: u32, key: u32) -> bool {
    return key == p.l || hist_valid[p.valid_off + u * p.r + key] != 0u;
}

@compute @workgroup_size(64)
fn target_attention_forward(inv: Invocation) {
    var s: array<f32, MAX_KEYS>; // scores, then probabilities, of the valid keys in order
    let pairs = p.n * p.h;
    for (var i = inv.wg.x * WG + inv.lid; i < pairs; i += inv.nwg.x * WG) {
        let n = i / p.h;
        let j = i % p.h;
        let u = user[p.user_off + n];
        let q0 = p.qkv_off + n * 3u * p.d + j * p.dh;
        // Scores of the valid keys, in token order; their max.
        var nv = 0u;
        var mx = -3.402823e38;
        for (var key = 0u; key <= p.l; key++) {
            if (!is_valid(u, key)) {
                continue;
            }
            var acc = 0.0;
            for (var c = 0u; c < p.dh; c++) {
                acc += qkv[q0 + c] * kv_at(n, u, key, 0u, j, c);
            }
            s[nv] = acc * p.scale;
            mx = max(mx, s[nv]);
            nv++;
        }
        var sum = 0.0;
        for (var k = 0u; k < nv; k++) {
            s[k] = exp(s[k] - mx);
            sum += s[k];
        }
        for (var k = 0u; k < nv; k++) {
            s[k] = s[k] / sum;
        }
        // Each output column: the valid keys' values, weighted, in token order.
        for (var c = 0u; c < p.dh; c++) {
            var o = 0.0;
            var k = 0u;
            for (var key = 0u; key <= p.l; key++) {
                if (is_valid(u, key)) {
                    o += s[k] * kv_at(n, u, key, 1u, j, c);
                    k++;
                }
            }
            out[p.out_off + n * p.d + j * p.dh + c] = o;
        }
    }
}
