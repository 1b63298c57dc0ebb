// The embedding gather of shaders/embedding.wgsl from an f16 table, for scoring: the
// tables are stored as f16 (half the memory and bandwidth) and the activations stay f32.
// CPU reference: cpu::embedding's gathers on `f16_rounded` tables (f16 -> f32 is exact, so
// the results are bit-identical); launcher: bst-kernels/src/gpu/embedding.rs (`bind_f16`).
//
// `enable f16` makes this module compile only on devices with wgpu::Features::SHADER_F16,
// which is why it is a file of its own: embedding.wgsl must compile everywhere.
//
// Params and the token mapping (linear_index, act_index, token_id) are embedding.wgsl's,
// from shaders/common/embedding_tokens.wgsl; the gather is embedding.wgsl's with the
// table's element type f16, and `table_off` counts f16 elements.
enable f16;

// #include "common/embedding_tokens.wgsl"

@group(0) @binding(0) var<uniform> p: Params;
// Storage is read_write even for inputs: see the design rules in gpu/mod.rs.
@group(0) @binding(1) var<storage, read_write> table: array<f16>; // E, f16
@group(0) @binding(2) var<storage, read_write> act: array<f32>; // x / z
@group(0) @binding(3) var<storage, read_write> ids: array<u32>; // batch ids

const WG: u32 = 64u;

// act[k, c] = f32(table[id(k), c]) (exact). An id past the table reads as zeros.
@compute @workgroup_size(64)
fn embedding_gather_f16(inv: Invocation) {
    let i = linear_index(inv);
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
