//! What every launcher shares: the scaffold [`Launcher`] (bind group layout, pipelines,
//! dummy buffer, workgroup cap) and the generic [`Kernels`] and [`Binding`] every
//! launcher is made of (with a row-count uniform), the named tensors ([`tensors!`]), the
//! shader prelude, the field table of a `Params` struct ([`WgslParams`], checked against
//! the shader by naga in the tests), and the dispatch helpers: a dispatch of `div_ceil`
//! workgroups that stays within the device's `max_compute_workgroups_per_dimension`, and
//! the check that a new batch size fits the binding (rules 3 to 5 of the module doc of
//! [`crate::gpu`]).

use std::marker::PhantomData;

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

/// The shader of a launcher, named by its uniform: the entry points and the storage
/// slots [`Kernels::new`] creates pipelines and a layout for.
pub trait KernelSet: WgslParams {
    /// The entry points of [`WgslParams::SHADER`], one pipeline each.
    const ENTRIES: &'static [&'static str];
    /// Storage buffers after the uniform at `@binding(0)`.
    const STORAGE: usize;
}

/// The pipelines of one shader, created once, named by its uniform `P`
/// (`MaskKernels` is `Kernels<MaskParams>`). Each op's module adds its `bind` and its
/// dispatches (`forward`, `backward`, ...).
#[derive(Debug)]
pub struct Kernels<P> {
    pub(crate) k: Launcher,
    params: PhantomData<P>,
}

impl<P: KernelSet> Kernels<P> {
    /// Compiles the shader and creates its pipelines.
    pub fn new(ctx: &GpuContext) -> Result<Self, GpuError> {
        let name = P::SHADER.trim_end_matches(".wgsl");
        let k = Launcher::new(ctx, name, P::SOURCE, P::STORAGE, P::ENTRIES)?;
        Ok(Self {
            k,
            params: PhantomData,
        })
    }

    /// Caps the workgroups per dimension below the device's
    /// `max_compute_workgroups_per_dimension` (at least 1), so that grid-stride loops
    /// walk several elements per invocation and flat grids spill into a second row:
    /// lets tests reach both without huge data.
    pub fn with_max_workgroups_per_dim(mut self, max: u32) -> Self {
        self.k.cap(max);
        self
    }

    /// The binding of `params` for at most `rows` rows of `per_row` counted elements
    /// each: its uniform, and its bind group with `storage` after the uniform.
    pub(crate) fn binding<X>(
        &self,
        ctx: &GpuContext,
        params: P,
        (rows, per_row): (u32, u32),
        storage: &[&wgpu::Buffer],
        has_grads: bool,
        extra: X,
    ) -> Binding<P, X> {
        let name = P::SHADER.trim_end_matches(".wgsl");
        let uniform = ctx.uniform_buffer(&format!("{name} params"), &params);
        let group = self.k.bind_group(ctx, name, &uniform, storage);
        Binding {
            rows,
            max_rows: rows,
            per_row,
            params,
            uniform,
            group,
            has_grads,
            extra,
        }
    }

    /// Records `entry` over `groups` workgroups with the binding's group (see [`dispatch`]).
    pub(crate) fn run<X>(
        &self,
        pass: &mut wgpu::ComputePass,
        entry: &str,
        b: &Binding<P, X>,
        groups: [u32; 3],
    ) {
        self.k.run(pass, entry, &b.group, groups);
    }
}

/// A uniform whose sizes follow the batch: the field a new batch size is written to.
pub trait RowParams: WgslParams {
    /// The count the shader walks: rows, or elements (rows x width) for element-wise
    /// ops (see [`Binding::set_rows`]).
    fn count(&mut self) -> &mut u32;
}

/// Uniform and bind group of one call site of a launcher, made by its `bind`: the
/// `Params` `P`, the current and largest row counts (the buffers hold `max_rows`),
/// whether gradient buffers were bound, and what else the op keeps (`X`).
#[derive(Debug)]
pub struct Binding<P, X = ()> {
    pub(crate) rows: u32,
    max_rows: u32,
    /// Counted elements per row (the width of an element-wise op; else 1).
    per_row: u32,
    pub(crate) params: P,
    pub(crate) uniform: wgpu::Buffer,
    pub(crate) group: wgpu::BindGroup,
    has_grads: bool,
    pub(crate) extra: X,
}

impl<P: RowParams, X> Binding<P, X> {
    /// Rows of the current batch.
    pub fn rows(&self) -> u32 {
        self.rows
    }

    /// Sets the batch rows (at most the bound maximum) for the following dispatches:
    /// the count in the params becomes `rows` times the row's elements, then a
    /// `queue.write_buffer`, effective at the next submit (every dispatch of the binding
    /// in that submit sees the last value set). Panics if `rows` exceeds the bound (the
    /// buffers are not big enough).
    #[track_caller]
    pub fn set_rows(&mut self, ctx: &GpuContext, rows: u32) {
        let name = P::SHADER.trim_end_matches(".wgsl");
        assert_bound(format_args!("{name} set_rows"), rows, self.max_rows, "rows");
        self.rows = rows;
        *self.params.count() = rows * self.per_row;
        self.write(ctx);
    }

    /// Writes the params as they are now.
    pub(crate) fn write(&self, ctx: &GpuContext) {
        ctx.write(&self.uniform, 0, &[self.params]);
    }

    /// Panics unless the binding was made with gradient buffers: `what` names the
    /// backward in the message.
    #[track_caller]
    pub(crate) fn require_grads(&self, what: &str) {
        assert!(
            self.has_grads,
            "{what}: the binding was made without gradient buffers"
        );
    }
}

impl<P: RowParams, X> super::SetRows for Binding<P, X> {
    fn set_rows(&mut self, ctx: &GpuContext, rows: u32) {
        Binding::set_rows(self, ctx, rows)
    }
}

/// Declares a launcher's named tensors, the arguments of its `bind`:
/// `#[derive(Clone, Copy, Debug)] pub struct Name<'a>` with a `pub field: TensorRef<'a>`
/// per listed field, each documented with its shape.
macro_rules! tensors {
    ($(#[$meta:meta])* pub struct $name:ident {
        $($(#[$fmeta:meta])* $field:ident),* $(,)?
    }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug)]
        pub struct $name<'a> {
            $($(#[$fmeta])* pub $field: $crate::gpu::TensorRef<'a>,)*
        }
    };
}
pub(crate) use tensors;

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
    /// Its source text.
    const SOURCE: &'static str;
    /// The fields in declaration order.
    const FIELDS: &'static [ParamField];
}

/// Declares a uniform struct (`u32`/`f32` fields, `#[repr(C)]`, Pod, Default) and its
/// [`WgslParams`] table in one go, so the table cannot drift from the struct:
/// `wgsl_params!("dropout.wgsl", struct DropoutParams { n: u32, scale: f32 })`. A
/// launcher's uniform goes on with its kernels, `kernels [entry points], storage N` (a
/// [`KernelSet`]), and with `rows field` the count its `set_rows` writes (a
/// [`RowParams`]).
macro_rules! wgsl_params {
    ($shader:literal, $(#[$meta:meta])* $vis:vis struct $name:ident {
        $($(#[$fmeta:meta])* $field:ident: $ty:ident),* $(,)?
    } $(, kernels [$($entry:literal),* $(,)?], storage $storage:literal
        $(, rows $rows:ident)?)? $(,)?) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
        $vis struct $name {
            $($(#[$fmeta])* $field: $ty),*
        }
        impl $crate::gpu::launch::WgslParams for $name {
            const SHADER: &'static str = $shader;
            const SOURCE: &'static str = include_str!(concat!("../../../shaders/", $shader));
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
        $(
            impl $crate::gpu::launch::KernelSet for $name {
                const ENTRIES: &'static [&'static str] = &[$($entry),*];
                const STORAGE: usize = $storage;
            }
            $(
                impl $crate::gpu::launch::RowParams for $name {
                    fn count(&mut self) -> &mut u32 {
                        &mut self.$rows
                    }
                }
            )?
        )?
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
pub(crate) fn assert_bound(call: impl std::fmt::Display, n: u32, max: u32, unit: &str) {
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
