// The embedding gather of shaders/embedding.wgsl from an f16 table, for scoring: the
// tables are stored as f16 (half the memory and bandwidth) and the activations stay f32.
// CPU reference: cpu::embedding's gathers on `f16_rounded` tables (f16 -> f32 is exact, so
// the results are bit-identical); launcher: bst-kernels/src/gpu/embedding.rs (`bind_f16`).
//
// `enable f16` makes this module compile only on devices with wgpu::Features::SHADER_F16,
// which is why it is a file of its own: embedding.wgsl must compile everywhere.
//
// Params, the token mapping (linear_index, act_index, token_id) and the gather are those
// of embedding.wgsl, copied; only the table's element type differs, and `table_off` counts
// f16 elements. bst-kernels/tests/naga_validate.rs checks that the copies stay identical.
enable f16;

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
@group(0) @binding(1) var<storage, read_write> table: array<f16>; // E, f16
@group(0) @binding(2) var<storage, read_write> act: array<f32>; // x / z
@group(0) @binding(3) var<storage, read_write> ids: array<u32>; // batch ids

const WG: u32 = 64u;

fn linear_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.y * (nwg.x * WG) + gid.x;
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

// act[k, c] = f32(table[id(k), c]) (exact). An id past the table reads as zeros.
@compute @workgroup_size(64)
fn embedding_gather_f16(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = linear_index(gid, nwg);
    if (i >= p.n * p.w) {
        return;
    }
    let k = i / p.w;
    let c = i % p.w;
    let id = token_id(k);
    var v = 0.0;
    if (id < p.table_rows) {
        v = f32(table[p.table_off + id * p.w + c]);
    }
    act[act_index(k, c)] = v;
}
