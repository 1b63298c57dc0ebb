// The prelude: prepended to every shader of shaders/*.wgsl by its launcher before compiling
// (bst_kernels::gpu::wgsl_with_prelude), and by the naga tests. WGSL has no includes, and
// module-scope declarations may come in any order, so a helper here uses the `WG`
// (workgroup size) that each shader declares.

// The flat index of an invocation in an (x, y) grid of WG-wide workgroups, as dispatched
// by launch::flat_grid (the last row of the grid may overhang: guard `i < n`).
fn flat_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.y * nwg.x + wg.x) * WG + lid;
}
