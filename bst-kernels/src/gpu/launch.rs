//! What every launcher shares: the scaffold [`Launcher`] (bind group layout, pipelines,
//! dummy buffer, workgroup cap), the row-count uniform [`RowUniform`] of a binding, the
//! shader prelude, the field table of a `Params` struct ([`WgslParams`], checked against
//! the shader by naga in the tests), and the dispatch helpers: a dispatch of `div_ceil`
//! workgroups that stays within the device's `max_compute_workgroups_per_dimension`, and
//! the check that a new batch size fits the binding (rules 3 to 5 of the module doc of
//! [`crate::gpu`]).

use bytemuck::Pod;

use super::{GpuContext, GpuError, Slot};

/// `shaders/common/prelude.wgsl`: helpers shared by every shader (`flat_index`).
pub const PRELUDE: &str = include_str!("../../../shaders/common/prelude.wgsl");

/// The files of `shaders/common/` a shader may include, by the path it names.
const INCLUDES: &[(&str, &str)] = &[(
    "common/embedding_tokens.wgsl",
    include_str!("../../../shaders/common/embedding_tokens.wgsl"),
)];

/// `source` with the prelude prepended (after its `enable` directives, which must come
/// first) and each line `// #include "common/<file>.wgsl"` replaced by that file: the text
/// the launchers compile and the naga tests validate. Panics on an unknown include (a
/// shader bug the naga tests catch).
pub fn wgsl_with_prelude(source: &str) -> String {
    let mut directives = String::new();
    let mut body = String::new();
    for line in source.lines() {
        let target = if line.trim_start().starts_with("enable ") {
            &mut directives
        } else {
            &mut body
        };
        match line.trim().strip_prefix("// #include ") {
            Some(name) => {
                let name = name.trim_matches('"');
                let (_, text) = INCLUDES
                    .iter()
                    .find(|(n, _)| *n == name)
                    .unwrap_or_else(|| panic!("#include \"{name}\": not in gpu::launch::INCLUDES"));
                target.push_str(text);
            }
            None => target.push_str(line),
        }
        target.push('\n');
    }
    format!("{directives}{PRELUDE}\n{body}")
}

/// The scaffold of a launcher: one bind group layout (a uniform at `@binding(0)`, then
/// storage buffers), one pipeline per entry point of its shader, a small dummy buffer for
/// absent optional tensors, and the cap on workgroups per dimension.
#[derive(Debug)]
pub(crate) struct Launcher {
    pub(crate) layout: wgpu::BindGroupLayout,
    pipelines: Vec<(&'static str, wgpu::ComputePipeline)>,
    /// Bound where an optional tensor is absent.
    pub(crate) dummy: wgpu::Buffer,
    /// Workgroups of a dispatch along one dimension, at most (the device's limit, or a
    /// test's smaller cap: [`Launcher::cap`]).
    pub(crate) max_groups: u32,
}

impl Launcher {
    /// Compiles `source` (`<name>.wgsl`, prelude prepended) and creates the layout of a
    /// uniform and `storage` storage buffers, and a pipeline per entry point in `entries`.
    /// A shader that fails to compile is an error, not a panic.
    pub(crate) fn new(
        ctx: &GpuContext,
        name: &str,
        source: &str,
        storage: usize,
        entries: &[&'static str],
    ) -> Result<Self, GpuError> {
        ctx.checked(&format!("creating the {name} kernels"), || {
            let mut slots = vec![Slot::Uniform];
            slots.resize(storage + 1, Slot::Storage);
            let layout = ctx.bind_group_layout(name, &slots);
            let module = ctx.shader_module(&format!("{name}.wgsl"), &wgsl_with_prelude(source));
            let pipelines = entries
                .iter()
                .map(|&e| (e, ctx.compute_pipeline(&module, e, Some(&layout))))
                .collect();
            Self {
                pipelines,
                dummy: ctx.storage_buffer_zeroed(&format!("{name} dummy"), 4),
                max_groups: ctx.limits.max_compute_workgroups_per_dimension,
                layout,
            }
        })
    }

    /// The pipeline of `entry`. Panics on a name not given to [`Launcher::new`].
    pub(crate) fn pipeline(&self, entry: &str) -> &wgpu::ComputePipeline {
        self.pipelines
            .iter()
            .find(|(e, _)| *e == entry)
            .map(|(_, p)| p)
            .unwrap_or_else(|| panic!("no entry point `{entry}` in this launcher"))
    }

    /// Records `entry` over `groups` workgroups with `group` bound (see [`dispatch`]).
    pub(crate) fn run(
        &self,
        pass: &mut wgpu::ComputePass,
        entry: &str,
        group: &wgpu::BindGroup,
        groups: [u32; 3],
    ) {
        dispatch(pass, self.pipeline(entry), group, groups);
    }

    /// Caps the workgroups per dimension below the device's limit (at least 1), so that
    /// grid-stride loops walk several elements per invocation: lets tests run the
    /// loops' strides without huge data.
    pub(crate) fn cap(&mut self, max: u32) {
        self.max_groups = max.clamp(1, self.max_groups);
    }

    /// A bind group of this layout: `uniform` at `@binding(0)`, then `storage` whole.
    pub(crate) fn bind_group(
        &self,
        ctx: &GpuContext,
        label: &str,
        uniform: &wgpu::Buffer,
        storage: &[&wgpu::Buffer],
    ) -> wgpu::BindGroup {
        ctx.kernel_bind_group(label, &self.layout, uniform.as_entire_binding(), storage)
    }
}

/// The uniform of a binding whose sizes follow the batch: its `Params`, the buffer they
/// live in, and the current and largest row counts (the buffers hold `max_rows`).
#[derive(Debug)]
pub(crate) struct RowUniform<P> {
    pub(crate) rows: u32,
    pub(crate) max_rows: u32,
    pub(crate) params: P,
    pub(crate) buffer: wgpu::Buffer,
}

impl<P: Pod> RowUniform<P> {
    /// The uniform of `params`, made for `rows` rows at most.
    pub(crate) fn new(ctx: &GpuContext, label: &str, rows: u32, params: P) -> Self {
        Self {
            rows,
            max_rows: rows,
            buffer: ctx.uniform_buffer(label, &params),
            params,
        }
    }

    /// Sets the batch rows (at most the bound maximum) for the following dispatches:
    /// `resize` writes the row-dependent sizes into the params, then a
    /// `queue.write_buffer`, effective at the next submit (every dispatch of the binding
    /// in that submit sees the last value set). Panics if `rows` exceeds the bound.
    #[track_caller]
    pub(crate) fn set_rows(
        &mut self,
        ctx: &GpuContext,
        call: &str,
        rows: u32,
        resize: impl FnOnce(&mut P, u32),
    ) {
        assert_bound(call, rows, self.max_rows, "rows");
        self.rows = rows;
        resize(&mut self.params, rows);
        self.write(ctx);
    }

    /// Writes the params as they are now.
    pub(crate) fn write(&self, ctx: &GpuContext) {
        ctx.write(&self.buffer, 0, &[self.params]);
    }
}

/// One field of a uniform struct: its name, byte offset and size, and `float` for `f32`
/// (else `u32`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamField {
    /// The field's name, as in the shader.
    pub name: &'static str,
    /// Byte offset in the struct.
    pub offset: usize,
    /// Bytes.
    pub size: usize,
    /// `f32` (else `u32`).
    pub float: bool,
}

/// A `#[repr(C)]` uniform struct mirrored field for field by `struct Params` in its
/// shader: the table the naga test compares with the shader's struct.
pub trait WgslParams: Pod {
    /// The shader file under `shaders/` that declares the mirror.
    const SHADER: &'static str;
    /// The fields in declaration order.
    const FIELDS: &'static [ParamField];
}

/// Declares a uniform struct (`u32`/`f32` fields, `#[repr(C)]`, Pod, Default) and its
/// [`WgslParams`] table in one go, so the table cannot drift from the struct:
/// `wgsl_params!("dropout.wgsl", struct DropoutParams { n: u32, scale: f32 })`.
macro_rules! wgsl_params {
    ($shader:literal, $(#[$meta:meta])* $vis:vis struct $name:ident {
        $($(#[$fmeta:meta])* $field:ident: $ty:ident),* $(,)?
    }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
        $vis struct $name {
            $($(#[$fmeta])* $field: $ty),*
        }
        impl $crate::gpu::launch::WgslParams for $name {
            const SHADER: &'static str = $shader;
            const FIELDS: &'static [$crate::gpu::launch::ParamField] = &[$(
                $crate::gpu::launch::ParamField {
                    name: stringify!($field),
                    offset: std::mem::offset_of!($name, $field),
                    size: size_of::<$ty>(),
                    float: $crate::gpu::launch::is_f32(stringify!($ty)),
                }
            ),*];
        }
        const _: () = assert!(size_of::<$name>().is_multiple_of(16));
    };
}
pub(crate) use wgsl_params;

/// Whether a field type named `ty` is `f32` (the macro's helper).
pub const fn is_f32(ty: &str) -> bool {
    matches!(ty.as_bytes(), b"f32")
}

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
    use crate::gpu::*;

    /// Every uniform struct of a launcher, with its shader's mirror.
    fn params_tables() -> Vec<(&'static str, &'static str, &'static [ParamField], usize)> {
        fn entry<P: WgslParams>() -> (&'static str, &'static str, &'static [ParamField], usize) {
            (
                P::SHADER,
                std::any::type_name::<P>(),
                P::FIELDS,
                size_of::<P>(),
            )
        }
        vec![
            entry::<elementwise::ElementwiseParams>(),
            entry::<attention::AttentionParams>(),
            entry::<dropout::DropoutParams>(),
            entry::<embedding::EmbParams>(),
            entry::<layernorm::LayerNormParams>(),
            entry::<loss::LossParams>(),
            entry::<mask::MaskParams>(),
            entry::<matmul::GemmParams>(),
            entry::<optim::OptimParams>(),
            entry::<pooling::PoolParams>(),
            entry::<target_attention::TargetAttentionParams>(),
            entry::<topk::TopKParams>(),
        ]
    }

    /// The fields of `struct Params` in `shader` as naga lays them out (WGSL's uniform
    /// layout): name, offset, size, and whether it is an `f32`.
    fn shader_params(shader: &str) -> (Vec<ParamField>, usize) {
        let path = format!("{}/../shaders/{shader}", env!("CARGO_MANIFEST_DIR"));
        let source = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let module = naga::front::wgsl::parse_str(&wgsl_with_prelude(&source))
            .unwrap_or_else(|e| panic!("{shader}: {}", e.emit_to_string(&source)));
        let ty = module
            .types
            .iter()
            .find(|(_, t)| t.name.as_deref() == Some("Params"))
            .unwrap_or_else(|| panic!("{shader}: no struct Params"))
            .1;
        let naga::TypeInner::Struct { members, span } = &ty.inner else {
            panic!("{shader}: Params is not a struct");
        };
        let gctx = module.to_ctx();
        let fields = members
            .iter()
            .map(|m| {
                let inner = &module.types[m.ty].inner;
                ParamField {
                    name: String::leak(m.name.clone().unwrap_or_default()),
                    offset: m.offset as usize,
                    size: inner.size(gctx) as usize,
                    float: matches!(
                        inner,
                        naga::TypeInner::Scalar(s) if s.kind == naga::ScalarKind::Float
                    ),
                }
            })
            .collect();
        (fields, *span as usize)
    }

    #[test]
    fn every_params_struct_matches_its_shader_field_by_field() {
        let mut failures = Vec::new();
        for (shader, rust, fields, size) in params_tables() {
            let (wgsl, wgsl_size) = shader_params(shader);
            if wgsl != fields {
                failures.push(format!(
                    "{rust} vs {shader}:\n  rust {fields:?}\n  wgsl {wgsl:?}"
                ));
            }
            if wgsl_size != size {
                failures.push(format!(
                    "{rust} is {size} bytes, {shader}'s Params {wgsl_size}"
                ));
            }
        }
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }

    #[test]
    fn a_drifted_params_struct_is_caught() {
        // The check itself: a struct with two fields swapped differs from the shader.
        let (mut wgsl, _) = shader_params("elementwise.wgsl");
        assert_eq!(wgsl, elementwise::ElementwiseParams::FIELDS);
        wgsl.swap(0, 5);
        assert_ne!(wgsl, elementwise::ElementwiseParams::FIELDS);
    }

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
