// The embedding gather of shaders/embedding.wgsl from an f16 table, for scoring: the
// tables are stored as f16 (half the memory and bandwidth) and the activations stay f32.
// CPU reference: cpu::embedding's gathers on `f16_rounded` tables (f16 -> f32 is exact, so
// the results are bit-identical); launcher: bst-kernels/src/gpu/embedding.rs (`bind_f16`).
//
// `enable f16` makes this module compile only on devices with wgpu::Features::SHADER_F16,
// which is why it is a file of its own: embedding.wgsl must compile everywhere.
//
// Params, the bindings but the table's, the token mapping (linear_index, act_index,
// token_id) and the gather are embedding.wgsl's, from shaders/common/embedding_tokens.wgsl;
// only the table's element type is f16, and `table_off` counts f16 elements.
enable f16;

// #include "common/embedding_tokens.wgsl"

@group(0) @binding(1) var<storage, read_write> table: array<f16>; // E, f16

fn table_value(at: u32) -> f32 {
    return f32(table[at]); // exact
}

// act[k, c] = f32(table[id(k), c]) (see `gather`).
@compute @workgroup_size(64)
fn embedding_gather_f16(inv: Invocation) {
    gather(inv);
}
