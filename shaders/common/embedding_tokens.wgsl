// Shared by shaders/embedding.wgsl and shaders/embedding_f16.wgsl (each includes it with
// `// #include "common/embedding_tokens.wgsl"`, expanded by gpu::launch::wgsl_with_prelude):
// the uniform, the bindings but the table's, the token mapping and the gather. The
// including shader declares `table` (binding 1) and `table_value`, its element as f32.

struct Params {
    n: u32, // tokens (gather) or unique ids (segment_sum); rewritten per step
    w: u32, // table width (columns per token)
    table_off: u32,
    table_rows: u32, // ids >= table_rows are out of range (see the entry points)
    per_sample: u32,
    hist_len: u32,
    hist_off: u32,
    target_off: u32,
    target_from_ids: u32, // 1: the token at slot hist_len has id ids[target_off + s]; 0: id 0
    act_off: u32,
    act_stride: u32,
    act_col: u32,
    col_step: u32,
    seg_ids_off: u32, // segment_sum: the unique ids (U), ascending, in `ids`
    seg_start_off: u32, // segment_sum: U + 1 offsets into the order, in `ids`
    seg_order_off: u32, // segment_sum: the token indices sorted by id (stable), in `ids`
    long_u_off: u32, // the segments (indices u) longer than `piece`, in `ids`
    long_piece_off: u32, // longs + 1 offsets into the pieces, in `ids`
    piece_long_off: u32, // the long segment of each piece, in `ids`
    piece: u32, // piece length: longer segments are summed in pieces of this many tokens
    longs: u32, // long segments (rewritten per step)
    pieces: u32, // their pieces (rewritten per step)
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// Storage is read_write even for inputs: see the design rules in gpu/mod.rs.
@group(0) @binding(2) var<storage, read_write> act: array<f32>; // x / z (gather) or dx / dz
@group(0) @binding(3) var<storage, read_write> ids: array<u32>; // batch ids or segments

const WG: u32 = 64u;

fn linear_index(inv: Invocation) -> u32 {
    return inv.gid.y * (inv.nwg.x * WG) + inv.gid.x;
}

// Index in `act` of column c of token k.
fn act_index(k: u32, c: u32) -> u32 {
    let s = k / p.per_sample;
    let j = k % p.per_sample;
    return p.act_off + s * p.act_stride + p.act_col + j * p.col_step + c;
}

// Table row of token k.
fn token_id(k: u32) -> u32 {
    let s = k / p.per_sample;
    let j = k % p.per_sample;
    if (j < p.hist_len) {
        return ids[p.hist_off + s * p.hist_len + j];
    }
    if (p.target_from_ids == 1u) {
        return ids[p.target_off + s];
    }
    return 0u;
}

// act[k, c] = table[id(k), c] for invocation `inv`, the body of both gathers. An id past
// the table (which the CPU reference rejects with a panic) reads as a row of zeros
// instead of another tensor's data.
fn gather(inv: Invocation) {
    let i = linear_index(inv);
    if (i >= p.n * p.w) {
        return;
    }
    let k = i / p.w;
    let c = i % p.w;
    let id = token_id(k);
    var v = 0.0;
    if (id < p.table_rows) {
        v = table_value(p.table_off + id * p.w + c);
    }
    act[act_index(k, c)] = v;
}
