// Optimiser updates over a parameter arena (or a range of it). CPU reference: bst-kernels/src/cpu/optim.rs; launcher:
// bst-kernels/src/gpu/optim.rs.
//
//   (every update first takes g = grad + weight_decay * p: PyTorch's coupled L2)
//   adam_update     m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g g;
//                   p -= step m / (sqrt(v) / bc2_sqrt + eps)
//                   with step = lr / (1 - b1^t), bc2_sqrt = sqrt(1 - b2^t) from the host
//   adagrad_update  sum += g g;  p -= lr g / (sqrt(sum) + eps)
// over elements 0 .. n of each tensor; p, m, v (sum) are updated in place, g only read.
//
//   adam_rows, adagrad_rows   the same updates, lazily, on the rows of an embedding table
//       (R, w) that a batch touched: rows[rows_off .. rows_off + U] lists them (the
//       embedding segments' unique ids), n = U * w, element i is column i % w of row
//       rows[rows_off + i / w]. Each then sets its gradient to 0: the update consumes
//       the table's gradient, so the next step's segment sums start from zeros without a
//       fill over the whole table. Untouched rows are not read or written.
//
// Operations in the order of the CPU reference. One invocation per element, on a flat
// index over a 2D grid of workgroups (the launcher spreads more than 65535 workgroups
// over y, for arenas of up to ~1G elements).

// The interface is written from OptimParams (bst-kernels/src/gpu/optim.rs): the uniform
// p: Params, then the storage params, grads, m, v (n each) and rows (u32: the *_rows
// kernels' row ids).

const WG: u32 = 256u;

@compute @workgroup_size(256)
fn adam_update(inv: Invocation) {
    let i = flat_index(inv);
    if (i >= p.n) {
        return;
    }
    adam_at(i);
}

// Adam on element i of the bound tensors.
fn adam_at(i: u32) {
    let g = grads[p.g_off + i] + p.weight_decay * params[p.p_off + i];
    let mi = p.beta1 * m[p.m_off + i] + p.one_minus_beta1 * g;
    let vi = p.beta2 * v[p.v_off + i] + p.one_minus_beta2 * g * g;
    m[p.m_off + i] = mi;
    v[p.v_off + i] = vi;
    params[p.p_off + i] -= p.step * mi / (sqrt(vi) / p.bc2_sqrt + p.eps);
}

// Adagrad on element i of the bound tensors.
fn adagrad_at(i: u32) {
    let g = grads[p.g_off + i] + p.weight_decay * params[p.p_off + i];
    let s = m[p.m_off + i] + g * g;
    m[p.m_off + i] = s;
    params[p.p_off + i] -= p.lr * g / (sqrt(s) + p.eps);
}

// The element of the table that invocation i of a *_rows update owns, or 0xffffffff for
// none (past the n = U * w elements, or a row id past the table).
fn row_element(i: u32) -> u32 {
    if (i >= p.n) {
        return 0xffffffffu;
    }
    let row = rows[p.rows_off + i / p.w];
    if (row >= p.table_rows) {
        return 0xffffffffu;
    }
    return row * p.w + i % p.w;
}

@compute @workgroup_size(256)
fn adam_rows(inv: Invocation) {
    let e = row_element(flat_index(inv));
    if (e == 0xffffffffu) {
        return;
    }
    adam_at(e);
    grads[p.g_off + e] = 0.0;
}

@compute @workgroup_size(256)
fn adagrad_rows(inv: Invocation) {
    let e = row_element(flat_index(inv));
    if (e == 0xffffffffu) {
        return;
    }
    adagrad_at(e);
    grads[p.g_off + e] = 0.0;
}

@compute @workgroup_size(256)
fn adagrad_update(inv: Invocation) {
    let i = flat_index(inv);
    if (i >= p.n) {
        return;
    }
    adagrad_at(i);
}
