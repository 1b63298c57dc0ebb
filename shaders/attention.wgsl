// Multi-head softmax attention over the T tokens of each sample, keys masked by validity,
// forward and backward. CPU reference: bst-kernels/src/cpu/attention.rs; launcher:
// bst-kernels/src/gpu/attention.rs.
//
//   attention_forward   out (B, T, d) = concat_j softmax(q_j k_j^T * scale + mask) v_j
//                       att (B, h, T, T): the probabilities, 0 on masked keys
//   attention_backward  dqkv (B, T, 3d), overwritten, from dout (B, T, d), att, qkv
//
// qkv (B, T, 3d) holds Q, K, V side by side (columns 0..d, d..2d, 2d..3d); head j owns
// columns j*dh .. (j+1)*dh of each. valid (B, T): keys with valid = 0 are masked. A
// sample with no valid key at all gets zero probabilities, outputs and gradients (as on
// the CPU) rather than 0 / 0.
//
// One workgroup per (head, sample): workgroup_id.x = head, .y = sample (grid-stride over
// samples). Workgroup memory is 16 KiB (the WebGPU minimum), 4096 f32:
//   forward   smem = [K (T, dh) | V (T, dh)] when 2 T dh <= 4096 (fwd_staged), else K
//             and V are read from qkv; the probabilities go straight to `att`.
//   backward  smem = [dS (T, T) | K (T, dh) | V (T, dh)]: dS always (so T <= 64), K and V
//             when T T + 2 T dh <= 4096 (bwd_staged), else read from qkv.
// Every output element is owned by one invocation that sums its terms in the CPU's order
// (no atomics), so results are deterministic.

// The interface is written from AttentionParams (bst-kernels/src/gpu/attention.rs): the
// uniform p: Params, then the storage qkv (B, T, 3d), valid (B, T) u32, out (B, T, d),
// att (B, h, T, T), dout (B, T, d), dqkv (B, T, 3d).

const WG: u32 = 64u;
var<workgroup> smem: array<f32, 4096>; // 16 KiB; layouts above

// The head one workgroup works on.
struct Head {
    bi: u32, // sample
    j: u32, // head
    staged: bool, // K and V are in smem, from kv0
    kv0: u32,
}

// Index of column c of head j's Q, K or V (part 0, 1, 2) at token t of sample bi, in a
// (B, T, 3d) tensor starting at `off` (qkv or dqkv).
fn qkv_index(off: u32, hd: Head, part: u32, t: u32, c: u32) -> u32 {
    return off + (hd.bi * p.t + t) * 3u * p.d + part * p.d + hd.j * p.dh + c;
}

// Copies the head's K and V to smem[kv0 ..]: K (T, dh), then V (T, dh).
fn stage_kv(hd: Head, tid: u32) {
    let n = p.t * p.dh;
    for (var e = tid; e < n; e += WG) {
        let t = e / p.dh;
        let c = e % p.dh;
        smem[hd.kv0 + e] = qkv[qkv_index(p.qkv_off, hd, 1u, t, c)];
        smem[hd.kv0 + n + e] = qkv[qkv_index(p.qkv_off, hd, 2u, t, c)];
    }
}

fn query(hd: Head, t: u32, c: u32) -> f32 {
    return qkv[qkv_index(p.qkv_off, hd, 0u, t, c)];
}

fn key(hd: Head, t: u32, c: u32) -> f32 {
    if (hd.staged) {
        return smem[hd.kv0 + t * p.dh + c];
    }
    return qkv[qkv_index(p.qkv_off, hd, 1u, t, c)];
}

fn value(hd: Head, t: u32, c: u32) -> f32 {
    if (hd.staged) {
        return smem[hd.kv0 + (p.t + t) * p.dh + c];
    }
    return qkv[qkv_index(p.qkv_off, hd, 2u, t, c)];
}

fn grad_out(hd: Head, t: u32, c: u32) -> f32 {
    return dout[p.dout_off + (hd.bi * p.t + t) * p.d + hd.j * p.dh + c];
}

fn is_valid(hd: Head, t: u32) -> bool {
    return valid[p.valid_off + hd.bi * p.t + t] != 0u;
}

@compute @workgroup_size(64)
fn attention_forward(inv: Invocation) {
    let tt = p.t * p.t;
    for (var bi = inv.wg.y; bi < p.b; bi += inv.nwg.y) {
        let hd = Head(bi, inv.wg.x, p.fwd_staged == 1u, 0u);
        if (hd.staged) {
            stage_kv(hd, inv.lid);
        }
        workgroupBarrier();
        let a0 = p.att_off + (bi * p.h + hd.j) * tt; // this head's (T, T) block of att

        // Scaled scores q[t1] . k[t2] of the valid keys, one (t1, t2) per invocation.
        for (var e = inv.lid; e < tt; e += WG) {
            let t1 = e / p.t;
            let t2 = e % p.t;
            var s = 0.0;
            if (is_valid(hd, t2)) {
                for (var c = 0u; c < p.dh; c++) {
                    s += query(hd, t1, c) * key(hd, t2, c);
                }
                s *= p.scale;
            }
            att[a0 + e] = s;
        }
        storageBarrier();

        // Softmax over the valid keys of each query row; masked keys get 0.
        for (var t1 = inv.lid; t1 < p.t; t1 += WG) {
            let r0 = a0 + t1 * p.t;
            var mx = -3.0e38; // below any score
            for (var t2 = 0u; t2 < p.t; t2++) {
                if (is_valid(hd, t2)) {
                    mx = max(mx, att[r0 + t2]);
                }
            }
            var sum = 0.0;
            for (var t2 = 0u; t2 < p.t; t2++) {
                var e = 0.0;
                if (is_valid(hd, t2)) {
                    e = exp(att[r0 + t2] - mx);
                }
                att[r0 + t2] = e;
                sum += e;
            }
            // sum >= 1 (the max's own term) unless no key is valid: then every e is 0
            // and dividing by 1 keeps the row 0 (the backward then gives 0 too).
            let denom = select(sum, 1.0, sum == 0.0);
            for (var t2 = 0u; t2 < p.t; t2++) {
                att[r0 + t2] /= denom;
            }
        }
        storageBarrier();

        // out[t1] = sum_t2 att[t1][t2] v[t2], one (t1, c) per invocation.
        for (var e = inv.lid; e < p.t * p.dh; e += WG) {
            let t1 = e / p.dh;
            let c = e % p.dh;
            var o = 0.0;
            for (var t2 = 0u; t2 < p.t; t2++) {
                o += att[a0 + t1 * p.t + t2] * value(hd, t2, c);
            }
            out[p.out_off + (bi * p.t + t1) * p.d + hd.j * p.dh + c] = o;
        }
        workgroupBarrier(); // before the next sample restages smem
    }
}

// With P = att[t1][.], dP[t1][t2] = dout[t1] . v[t2] and
// dS[t1][t2] = P (dP - sum_t2' P dP) * scale (softmax, then the scaled dot product):
//   dq[t1] = sum_t2 dS[t1][t2] k[t2],  dk[t2] = sum_t1 dS[t1][t2] q[t1],
//   dv[t2] = sum_t1 P[t1][t2] dout[t1].
@compute @workgroup_size(64)
fn attention_backward(inv: Invocation) {
    let tt = p.t * p.t;
    let n = p.t * p.dh;
    for (var bi = inv.wg.y; bi < p.b; bi += inv.nwg.y) {
        let hd = Head(bi, inv.wg.x, p.bwd_staged == 1u, tt);
        if (hd.staged) {
            stage_kv(hd, inv.lid);
        }
        workgroupBarrier();
        let a0 = p.att_off + (bi * p.h + hd.j) * tt;

        // dP into smem[0 .. T T), one (t1, t2) per invocation.
        for (var e = inv.lid; e < tt; e += WG) {
            let t1 = e / p.t;
            let t2 = e % p.t;
            var s = 0.0;
            for (var c = 0u; c < p.dh; c++) {
                s += grad_out(hd, t1, c) * value(hd, t2, c);
            }
            smem[e] = s;
        }
        workgroupBarrier();

        // dS in place of dP, one query row per invocation.
        for (var t1 = inv.lid; t1 < p.t; t1 += WG) {
            let r0 = t1 * p.t;
            var p_dot_dp = 0.0;
            for (var t2 = 0u; t2 < p.t; t2++) {
                p_dot_dp += att[a0 + r0 + t2] * smem[r0 + t2];
            }
            for (var t2 = 0u; t2 < p.t; t2++) {
                smem[r0 + t2] = att[a0 + r0 + t2] * (smem[r0 + t2] - p_dot_dp) * p.scale;
            }
        }
        workgroupBarrier();

        // dq, dk, dv: one (part, t, c) per invocation, each summed in order.
        for (var e = inv.lid; e < 3u * n; e += WG) {
            let part = e / n;
            let t = (e % n) / p.dh;
            let c = e % p.dh;
            var g = 0.0;
            if (part == 0u) {
                for (var t2 = 0u; t2 < p.t; t2++) {
                    g += smem[t * p.t + t2] * key(hd, t2, c);
                }
            } else if (part == 1u) {
                for (var t1 = 0u; t1 < p.t; t1++) {
                    g += smem[t1 * p.t + t] * query(hd, t1, c);
                }
            } else {
                for (var t1 = 0u; t1 < p.t; t1++) {
                    g += att[a0 + t1 * p.t + t] * grad_out(hd, t1, c);
                }
            }
            dqkv[qkv_index(p.dqkv_off, hd, part, t, c)] = g;
        }
        workgroupBarrier(); // before the next sample rewrites smem
    }
}
