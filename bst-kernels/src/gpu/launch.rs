//! What every launcher records the same way: a dispatch of `div_ceil` workgroups that stays
//! within the device's `max_compute_workgroups_per_dimension`, and the check that a new
//! batch size fits the binding (rules 4 and 5 of the module doc of [`crate::gpu`]).

/// Sets `pipeline` and `group` (at group 0) and dispatches `groups` workgroups (x, y, z).
/// Records nothing when a count is 0 (an empty batch).
pub(crate) fn dispatch(
    pass: &mut wgpu::ComputePass,
    pipeline: &wgpu::ComputePipeline,
    group: &wgpu::BindGroup,
    groups: [u32; 3],
) {
    let [x, y, z] = groups;
    if x == 0 || y == 0 || z == 0 {
        return;
    }
    pass.set_pipeline(pipeline);
    pass.set_bind_group(0, group, &[]);
    pass.dispatch_workgroups(x, y, z);
}

/// `n.div_ceil(wg)` workgroups as an (x, y) grid with x at most `max_per_dim`, for shaders
/// that compute the flat index `(workgroup_id.y * num_workgroups.x + workgroup_id.x) * WG
/// + local index` and guard `i < n` (the last row of the grid may overhang). No
/// workgroups for `n = 0`.
pub(crate) fn flat_grid(n: u32, wg: u32, max_per_dim: u32) -> [u32; 3] {
    let groups = n.div_ceil(wg);
    if groups == 0 {
        return [0, 1, 1];
    }
    let x = groups.min(max_per_dim);
    [x, groups.div_ceil(x), 1]
}

/// `n.div_ceil(wg)` workgroups along x, at most `max_per_dim` of them, for shaders that
/// loop over the rest (grid-stride by `num_workgroups.x`). `wg = 1` gives one workgroup
/// per row.
pub(crate) fn strided_grid(n: u32, wg: u32, max_per_dim: u32) -> [u32; 3] {
    [n.div_ceil(wg).min(max_per_dim), 1, 1]
}

/// Panics unless `n <= max`: a binding's buffers hold `max` (rows, samples, scores) and a
/// new size is only written into its uniform, never reallocated. `call` names the method
/// in the message, e.g. "loss set_rows".
#[track_caller]
pub(crate) fn assert_bound(call: &str, n: u32, max: u32, unit: &str) {
    assert!(
        n <= max,
        "{call}({n}): the binding was made for at most {max} {unit}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_grid_spills_into_y_and_covers_every_invocation() {
        assert_eq!(flat_grid(0, 256, 65535), [0, 1, 1]);
        assert_eq!(flat_grid(1, 256, 65535), [1, 1, 1]);
        assert_eq!(flat_grid(257, 256, 65535), [2, 1, 1]);
        assert_eq!(flat_grid(10 * 256 + 1, 256, 4), [4, 3, 1]);
        assert_eq!(flat_grid(5, 1, 5), [5, 1, 1]);
    }

    #[test]
    fn strided_grid_stops_at_the_limit() {
        assert_eq!(strided_grid(0, 256, 65535), [0, 1, 1]);
        assert_eq!(strided_grid(513, 256, 65535), [3, 1, 1]);
        assert_eq!(strided_grid(1 << 30, 256, 65535), [65535, 1, 1]);
        assert_eq!(strided_grid(7, 1, 4), [4, 1, 1]);
    }
}
