// The prelude: prepended to every shader of shaders/*.wgsl by its launcher before compiling
// (bst_kernels::gpu::wgsl_module, which puts the shader's interface after it). WGSL has no includes, and
// module-scope declarations may come in any order, so a helper here uses the `WG`
// (workgroup size) that each shader declares.

// The builtins of an invocation, the one argument of every entry point (`inv`); each
// reads the ones it needs.
struct Invocation {
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid3: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
}

// The flat index of an invocation in an (x, y) grid of WG-wide workgroups, as dispatched
// by launch::flat_grid (the last row of the grid may overhang: guard `i < n`).
fn flat_index(inv: Invocation) -> u32 {
    return (inv.wg.y * inv.nwg.x + inv.wg.x) * WG + inv.lid;
}
