// Embedding gathers (forward) and their deterministic scatter-add (backward).
// CPU reference: bst-kernels/src/cpu/embedding.rs; launcher: bst-kernels/src/gpu/embedding.rs.
//
// Both entry points see one table and one activation through the same token mapping.
// Token `k` of a batch belongs to sample s = k / per_sample, slot j = k % per_sample; its
// id is ids[hist_off + s*hist_len + j] for j < hist_len, else (the target, j = hist_len)
// ids[target_off + s] or, without target_from_ids, the constant 0 (the target's position
// bucket). Its w columns lie in `act` at act_off + s*act_stride + act_col + j*col_step:
//   token table X (item, cat, pos): per_sample = T, hist_len = L, act = x (B, T, d),
//                                   act_stride = T*d, col_step = d, act_col = X's column
//   other fields:                   per_sample = hist_len = F, act = z (B, width),
//                                   act_stride = width, col_step = d_o, act_col = off
//
//   embedding_gather       act[token k, c] = table[id(k), c]               (overwrite)
//       one invocation per (token, column), n = B * per_sample tokens
//   embedding_segment_sum  table[ids[u], c] += act[order[k], c] for k in start[u]..start[u+1]
//       one invocation per (unique id, column), n = U unique ids; `ids` then holds the
//       host's segmentation (unique ids, segment starts, token order: see build_segments),
//       so every table row has one owner and no atomics are needed. The tokens of a
//       segment are added one by one, in ascending token order, onto the table value: the
//       same additions in the same order as the CPU reference, so results are bit-identical.
//       Only segments of at most `piece` tokens; the longer ones take two steps:
//   embedding_piece_sum    partial[q, c] = sum of act[order[k], c] over piece q, from 0
//       one invocation per (piece, column), n = pieces. Long segment l (segment long_u[l])
//       has pieces long_piece[l] .. long_piece[l + 1]; piece j of it covers the tokens
//       start[u] + j*piece .. min(start[u] + (j+1)*piece, start[u+1]) of the order.
//       `table` is bound to the scratch of partial sums (pieces, w).
//   embedding_long_sum     table[ids[u], c] += partial[q, c] for q in long_piece[l]..long_piece[l+1]
//       one invocation per (long segment, column), n = longs, adding its pieces in order.
//       `act` is bound to the scratch of partial sums.
//
// The grid is two-dimensional when one dimension's workgroup limit is too small: the
// linear invocation index is gid.y * (num_workgroups.x * WG) + gid.x.

// #include "common/embedding_tokens.wgsl"

@group(0) @binding(1) var<storage, read_write> table: array<f32>; // E (gather) or dE (segment_sum)

fn table_value(at: u32) -> f32 {
    return table[at];
}

// act[k, c] = table[id(k), c] (see `gather`).
@compute @workgroup_size(64)
fn embedding_gather(inv: Invocation) {
    gather(inv);
}

// table[ids[u], c] += act[order[k], c] for k in start[u]..start[u + 1], in that order.
// An id past the table (the host's segmentation rejects them) is skipped.
@compute @workgroup_size(64)
fn embedding_segment_sum(inv: Invocation) {
    let i = linear_index(inv);
    if (i >= p.n * p.w) {
        return;
    }
    let u = i / p.w;
    let c = i % p.w;
    let id = ids[p.seg_ids_off + u];
    if (id >= p.table_rows) {
        return;
    }
    let first = ids[p.seg_start_off + u];
    let end = ids[p.seg_start_off + u + 1u];
    if (end - first > p.piece) {
        return; // embedding_long_sum's
    }
    let at = p.table_off + id * p.w + c;
    var acc = table[at];
    for (var k = first; k < end; k++) {
        acc += act[act_index(ids[p.seg_order_off + k], c)];
    }
    table[at] = acc;
}

// partial[q, c] = the sum of piece q's tokens, in order from 0; partial is `table`.
@compute @workgroup_size(64)
fn embedding_piece_sum(inv: Invocation) {
    let i = linear_index(inv);
    if (i >= p.pieces * p.w) {
        return;
    }
    let q = i / p.w;
    let c = i % p.w;
    let l = ids[p.piece_long_off + q];
    let u = ids[p.long_u_off + l];
    let first = ids[p.seg_start_off + u] + (q - ids[p.long_piece_off + l]) * p.piece;
    let end = min(first + p.piece, ids[p.seg_start_off + u + 1u]);
    var acc = 0.0;
    for (var k = first; k < end; k++) {
        acc += act[act_index(ids[p.seg_order_off + k], c)];
    }
    table[q * p.w + c] = acc;
}

// table[ids[u], c] += partial[q, c] for the pieces q of long segment l (segment u), in
// order; partial is `act`. An id past the table is skipped, as in segment_sum.
@compute @workgroup_size(64)
fn embedding_long_sum(inv: Invocation) {
    let i = linear_index(inv);
    if (i >= p.longs * p.w) {
        return;
    }
    let l = i / p.w;
    let c = i % p.w;
    let id = ids[p.seg_ids_off + ids[p.long_u_off + l]];
    if (id >= p.table_rows) {
        return;
    }
    let at = p.table_off + id * p.w + c;
    var acc = table[at];
    let end = ids[p.long_piece_off + l + 1u];
    for (var q = ids[p.long_piece_off + l]; q < end; q++) {
        acc += act[q * p.w + c];
    }
    table[at] = acc;
}
