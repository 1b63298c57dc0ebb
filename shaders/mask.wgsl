// The valid mask of a batch, from its history item ids, so that a caller who holds the
// ids on the device need not build the mask on the host.
// CPU reference: bst-kernels/src/cpu/mask.rs; launcher: bst-kernels/src/gpu/mask.rs.
//
//   valid_mask   valid (B, T) = 1 where hist_item (B, L) != 0, 0 where it is padding;
//                the target token (t = L = T - 1) is always valid.          (overwrites)
//
// One invocation per element of valid, a flat index over a 2D grid of workgroups (the
// launcher spreads more than 65535 workgroups over y).

// The interface is written from MaskParams (bst-kernels/src/gpu/mask.rs): the uniform
// p: Params, then the storage hist_item (B, L) and valid (B, T), both u32.

const WG: u32 = 256u;

// valid (B, T) from hist_item (B, L)
@compute @workgroup_size(256)
fn valid_mask(inv: Invocation) {
    let i = flat_index(inv);
    let t = p.l + 1u;
    if (i >= p.b * t) {
        return;
    }
    let bi = i / t;
    let j = i % t;
    var v = 1u;
    if (j < p.l) {
        v = select(0u, 1u, hist_item[p.hist_off + bi * p.l + j] != 0u);
    }
    valid[p.valid_off + i] = v;
}
