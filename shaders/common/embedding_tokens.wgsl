// Shared by shaders/embedding.wgsl and shaders/embedding_f16.wgsl (each includes it with
// `// #include "common/embedding_tokens.wgsl"`, expanded by gpu::launch::wgsl_module):
// the bindings but the table's, the token mapping and the gather. The including shader
// declares `table` (binding 1) and `table_value`, its element as f32. The uniform
// p: Params is written from EmbParams (bst-kernels/src/gpu/embedding.rs).

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
