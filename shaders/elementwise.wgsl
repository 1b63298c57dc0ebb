// Element-wise ops over n elements: the residual sum, the fill, LeakyReLU forward and
// backward. CPU reference: bst-kernels/src/cpu/elementwise.rs (add, fill) and
// bst-kernels/src/cpu/activation.rs (LeakyReLU); launcher: bst-kernels/src/gpu/elementwise.rs.
//
//   add                  out (n) = x (n) + y (n)
//   fill                 out (n) = value
//   leaky_relu_forward   out (n) = x > 0 ? x : value * x                   (value = alpha)
//   leaky_relu_backward  dx (n)  = x > 0 ? dout : value * dout             (overwrites)
//
// One invocation per element, grid-stride: the launcher dispatches at most the device's
// workgroups per dimension and each invocation walks the rest. Results are bit-identical
// to the CPU's (one correctly rounded add or multiply, or none). `out` may be `x` or `y`,
// and `dx` may be `dout`: each invocation reads its element before writing it.

// The interface is written from ElementwiseParams (bst-kernels/src/gpu/elementwise.rs):
// the uniform p: Params, then the storage x, y, out, dout, dx, each (n).

const WG: u32 = 256u;

@compute @workgroup_size(256)
fn add(inv: Invocation) {
    for (var i = inv.gid.x; i < p.n; i += inv.nwg.x * WG) {
        out[p.out_off + i] = x[p.x_off + i] + y[p.y_off + i];
    }
}

@compute @workgroup_size(256)
fn fill(inv: Invocation) {
    for (var i = inv.gid.x; i < p.n; i += inv.nwg.x * WG) {
        out[p.out_off + i] = p.value;
    }
}

@compute @workgroup_size(256)
fn leaky_relu_forward(inv: Invocation) {
    for (var i = inv.gid.x; i < p.n; i += inv.nwg.x * WG) {
        let v = x[p.x_off + i];
        out[p.out_off + i] = select(p.value * v, v, v > 0.0);
    }
}

@compute @workgroup_size(256)
fn leaky_relu_backward(inv: Invocation) {
    for (var i = inv.gid.x; i < p.n; i += inv.nwg.x * WG) {
        let g = dout[p.dout_off + i];
        dx[p.dx_off + i] = select(p.value * g, g, x[p.x_off + i] > 0.0);
    }
}
