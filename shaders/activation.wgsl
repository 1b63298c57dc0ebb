// LeakyReLU, element-wise over n elements, forward and backward.
// CPU reference: bst-kernels/src/cpu/activation.rs; launcher: bst-kernels/src/gpu/activation.rs.
//
//   leaky_relu_forward   out (n)  = inp > 0 ? inp : alpha * inp
//   leaky_relu_backward  dinp (n) = inp > 0 ? dout : alpha * dout      (overwrites)
//
// One invocation per element, grid-stride: the launcher dispatches at most the device's
// workgroups per dimension and each invocation walks the rest. Results are bit-identical
// to the CPU's (one correctly rounded multiply or none).

struct Params {
    n: u32,
    inp_off: u32,
    out_off: u32,
    dout_off: u32,
    dinp_off: u32,
    alpha: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// Storage is read_write even for inputs: see the design rules in gpu/mod.rs.
@group(0) @binding(1) var<storage, read_write> inp: array<f32>;  // (n)
@group(0) @binding(2) var<storage, read_write> out: array<f32>;  // (n)
@group(0) @binding(3) var<storage, read_write> dout: array<f32>; // (n)
@group(0) @binding(4) var<storage, read_write> dinp: array<f32>; // (n)

const WG: u32 = 256u;

@compute @workgroup_size(256)
fn leaky_relu_forward(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    for (var i = gid.x; i < p.n; i += nwg.x * WG) {
        let x = inp[p.inp_off + i];
        out[p.out_off + i] = select(p.alpha * x, x, x > 0.0);
    }
}

@compute @workgroup_size(256)
fn leaky_relu_backward(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    for (var i = gid.x; i < p.n; i += nwg.x * WG) {
        let g = dout[p.dout_off + i];
        dinp[p.dinp_off + i] = select(p.alpha * g, g, inp[p.inp_off + i] > 0.0);
    }
}
