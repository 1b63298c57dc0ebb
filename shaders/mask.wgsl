// The valid mask of a batch, from its history item ids, so that a caller who holds the
// ids on the device need not build the mask on the host.
// CPU reference: bst-kernels/src/cpu/mask.rs; launcher: bst-kernels/src/gpu/mask.rs.
//
//   valid_mask   valid (B, T) = 1 where hist_item (B, L) != 0, 0 where it is padding;
//                the target token (t = L = T - 1) is always valid.          (overwrites)
//
// One invocation per element of valid, a flat index over a 2D grid of workgroups (the
// launcher spreads more than 65535 workgroups over y).

struct Params {
    b: u32, // rows of the current batch
    l: u32, // history length L (T = L + 1)
    hist_off: u32,
    valid_off: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// Storage is read_write even for inputs: see the design rules in gpu/mod.rs.
@group(0) @binding(1) var<storage, read_write> hist_item: array<u32>;
@group(0) @binding(2) var<storage, read_write> valid: array<u32>;

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
