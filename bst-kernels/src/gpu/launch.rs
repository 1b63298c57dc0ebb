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

/// `source` as a launcher compiles it: its `enable` directives (which must come first),
/// the prelude, the interface `P` declares ([`WgslParams::interface`]: `struct Params`,
/// the uniform `p` and the storage bindings), then the rest of `source` with each line
/// `// #include "common/<file>.wgsl"` replaced by that file. Panics on an unknown include
/// (a shader bug the naga tests catch).
pub fn wgsl_module<P: WgslParams>(source: &str) -> String {
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
    format!("{directives}{PRELUDE}\n{}\n{body}", P::interface())
}

/// A shader as its launcher compiles it ([`wgsl_module`]), with the table of the Rust
/// struct its `Params` comes from: what the naga tests read (see [`crate::gpu::shaders`]).
#[derive(Debug)]
pub struct CompiledShader {
    /// The file under `shaders/`.
    pub file: &'static str,
    /// The Rust struct that declares its interface.
    pub params: &'static str,
    /// That struct's fields.
    pub fields: &'static [ParamField],
    /// That struct's size in bytes.
    pub size: usize,
    /// The text compiled.
    pub wgsl: String,
}

impl CompiledShader {
    /// `P`'s own shader ([`WgslParams::SHADER`]).
    pub fn of<P: WgslParams>() -> Self {
        Self::with_source::<P>(P::SHADER, P::SOURCE)
    }

    /// Another shader `file` (its text `source`) compiled with `P`'s interface.
    pub fn with_source<P: WgslParams>(file: &'static str, source: &str) -> Self {
        Self {
            file,
            params: P::NAME,
            fields: P::FIELDS,
            size: size_of::<P>(),
            wgsl: wgsl_module::<P>(source),
        }
    }
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
    /// Compiles the shader of `P` ([`wgsl_module`]) and creates the layout of its uniform
    /// and storage bindings, and a pipeline per entry point in `entries`. A shader that
    /// fails to compile is an error, not a panic.
    pub(crate) fn new<P: WgslParams>(
        ctx: &GpuContext,
        entries: &[&'static str],
    ) -> Result<Self, GpuError> {
        let name = P::SHADER.trim_end_matches(".wgsl");
        ctx.checked(&format!("creating the {name} kernels"), || {
            let mut slots = vec![Slot::Uniform];
            slots.resize(P::STORAGE.len() + 1, Slot::Storage);
            let layout = ctx.bind_group_layout(name, &slots);
            let module = ctx.shader_module(P::SHADER, &wgsl_module::<P>(P::SOURCE));
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

/// The shader of a launcher, named by its uniform: the entry points [`Kernels::new`]
/// creates pipelines for (its layout: [`WgslParams::STORAGE`]).
pub trait KernelSet: WgslParams {
    /// The entry points of [`WgslParams::SHADER`], one pipeline each.
    const ENTRIES: &'static [&'static str];
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
        let k = Launcher::new::<P>(ctx, P::ENTRIES)?;
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
    /// the count in the params becomes `rows` times the row's elements, written with a
    /// `queue.write_buffer` (where it changed), effective at the next submit (every
    /// dispatch of the binding in that submit sees the last value set). Panics if `rows`
    /// exceeds the bound (the buffers are not big enough).
    #[track_caller]
    pub fn set_rows(&mut self, ctx: &GpuContext, rows: u32) {
        let name = P::SHADER.trim_end_matches(".wgsl");
        assert_bound(format_args!("{name} set_rows"), rows, self.max_rows, "rows");
        self.rows = rows;
        let count = rows * self.per_row;
        self.update(ctx, |p| *p.count() = count);
    }
}

impl<P: Pod, X> Binding<P, X> {
    /// Changes the params with `f`, and writes them to the uniform if that changed them
    /// (a `queue.write_buffer`, effective at the next submit like `set_rows`).
    pub(crate) fn update(&mut self, ctx: &GpuContext, f: impl FnOnce(&mut P)) {
        let before = self.params;
        f(&mut self.params);
        if bytemuck::bytes_of(&before) != bytemuck::bytes_of(&self.params) {
            ctx.write(&self.uniform, 0, &[self.params]);
        }
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

/// What a launcher's `bind` takes, by name: its forward's tensors, its backward's, and
/// the sizes (`<Op>Site` is `Site<<Op>Buffers, <Op>GradBuffers, <Op>Dims>`).
#[derive(Clone, Copy, Debug)]
pub struct Site<B, G, D> {
    /// The forward's tensors.
    pub bufs: B,
    /// The backward's tensors; `None` binds the forward only.
    pub grads: Option<G>,
    /// The sizes; `rows` or `batch` is the most the buffers hold.
    pub dims: D,
}

impl<B, G, D> Site<B, G, D> {
    /// The forward only: no gradient buffers.
    pub fn forward(bufs: B, dims: D) -> Self {
        Self {
            bufs,
            grads: None,
            dims,
        }
    }

    /// The forward and the backward.
    pub fn with_grads(bufs: B, grads: G, dims: D) -> Self {
        Self {
            bufs,
            grads: Some(grads),
            dims,
        }
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

/// One field of a uniform struct: its name, byte offset and size, and its scalar type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamField {
    /// The field's name, as in the shader.
    pub name: &'static str,
    /// Byte offset in the struct.
    pub offset: usize,
    /// Bytes.
    pub size: usize,
    /// The scalar type, as Rust and WGSL both spell it (`u32`, `f32`).
    pub ty: &'static str,
}

/// One storage binding of a shader's interface: `var<storage, read_write> name:
/// array<elem>` (design rule 2 of [`crate::gpu`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StorageSlot {
    /// The variable's name in the shader.
    pub name: &'static str,
    /// Its element type (`f32`, `u32`).
    pub elem: &'static str,
}

/// A `#[repr(C)]` uniform struct that declares its shader's interface: the WGSL
/// `struct Params` is written from its fields ([`WgslParams::interface`]), so the two
/// cannot drift; the naga test checks that WGSL lays it out as Rust does.
pub trait WgslParams: Pod {
    /// The Rust struct's name.
    const NAME: &'static str;
    /// The shader file under `shaders/` it declares the interface of.
    const SHADER: &'static str;
    /// Its source text.
    const SOURCE: &'static str;
    /// The fields in declaration order.
    const FIELDS: &'static [ParamField];
    /// The storage bindings after the uniform, `@binding(1)` on, in order; empty where the
    /// shader declares its own (the embedding shaders, whose table's type differs).
    const STORAGE: &'static [StorageSlot];

    /// The WGSL that [`wgsl_module`] puts before the shader's own text: `struct Params`
    /// with these fields, the uniform `p: Params` at `@binding(0)` and the storage
    /// bindings [`WgslParams::STORAGE`].
    fn interface() -> String {
        let mut wgsl = format!(
            "// The interface, from {} (bst-kernels/src/gpu): the uniform, then the storage,\n\
             // read_write even for inputs (the design rules in gpu/mod.rs).\n\
             struct Params {{\n",
            Self::NAME
        );
        for f in Self::FIELDS {
            wgsl.push_str(&format!("    {}: {},\n", f.name, f.ty));
        }
        wgsl.push_str("}\n@group(0) @binding(0) var<uniform> p: Params;\n");
        for (i, s) in Self::STORAGE.iter().enumerate() {
            wgsl.push_str(&format!(
                "@group(0) @binding({}) var<storage, read_write> {}: array<{}>;\n",
                i + 1,
                s.name,
                s.elem
            ));
        }
        wgsl
    }
}

/// Declares a uniform struct (scalar fields: `u32`, `f32`, `#[repr(C)]`, Pod, Default) and with
/// it its shader's interface ([`WgslParams`]), so the shader's `Params` is this struct:
/// `wgsl_params!("dropout.wgsl", struct DropoutParams { n: u32, scale: f32 })`. Then, in
/// order and each optional: `storage [name: elem, ..]`, the storage bindings the shader
/// gets; `kernels [entry points]`, the launcher's pipelines (a [`KernelSet`]); `rows
/// field`, the count its `set_rows` writes (a [`RowParams`]).
macro_rules! wgsl_params {
    ($shader:literal, $(#[$meta:meta])* $vis:vis struct $name:ident {
        $($(#[$fmeta:meta])* $field:ident: $ty:ident),* $(,)?
    } $(, storage [$($slot:ident: $elem:ident),* $(,)?])?
      $(, kernels [$($entry:literal),* $(,)?] $(, rows $rows:ident)?)? $(,)?) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
        $vis struct $name {
            $($(#[$fmeta])* $field: $ty),*
        }
        impl $crate::gpu::launch::WgslParams for $name {
            const NAME: &'static str = stringify!($name);
            const SHADER: &'static str = $shader;
            const SOURCE: &'static str = include_str!(concat!("../../../shaders/", $shader));
            const FIELDS: &'static [$crate::gpu::launch::ParamField] = &[$(
                $crate::gpu::launch::ParamField {
                    name: stringify!($field),
                    offset: std::mem::offset_of!($name, $field),
                    size: size_of::<$ty>(),
                    ty: stringify!($ty),
                }
            ),*];
            const STORAGE: &'static [$crate::gpu::launch::StorageSlot] = &[$($(
                $crate::gpu::launch::StorageSlot {
                    name: stringify!($slot),
                    elem: stringify!($elem),
                }
            ),*)?];
        }
        const _: () = assert!(size_of::<$name>().is_multiple_of(16));
        $(
            impl $crate::gpu::launch::KernelSet for $name {
                const ENTRIES: &'static [&'static str] = &[$($entry),*];
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

    /// The fields of `struct Params` in the compiled `shader` as naga lays them out
    /// (WGSL's uniform layout): name, offset, size and scalar type; and its size.
    fn shader_params(shader: &CompiledShader) -> (Vec<ParamField>, usize) {
        let (file, wgsl) = (shader.file, &shader.wgsl);
        let module = naga::front::wgsl::parse_str(wgsl)
            .unwrap_or_else(|e| panic!("{file}: {}", e.emit_to_string(wgsl)));
        let ty = module
            .types
            .iter()
            .find(|(_, t)| t.name.as_deref() == Some("Params"))
            .unwrap_or_else(|| panic!("{file}: no struct Params"))
            .1;
        let naga::TypeInner::Struct { members, span } = &ty.inner else {
            panic!("{file}: Params is not a struct");
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
                    ty: scalar_name(inner),
                }
            })
            .collect();
        (fields, *span as usize)
    }

    /// The WGSL name of a 32-bit scalar type; else what it is not.
    fn scalar_name(ty: &naga::TypeInner) -> &'static str {
        use naga::ScalarKind::{Float, Sint, Uint};
        match ty {
            naga::TypeInner::Scalar(s) => match (s.kind, s.width) {
                (Float, 4) => "f32",
                (Uint, 4) => "u32",
                (Sint, 4) => "i32",
                _ => "another scalar",
            },
            _ => "not a scalar",
        }
    }

    #[test]
    fn every_params_struct_is_laid_out_in_wgsl_as_in_rust() {
        // The WGSL struct is written from the Rust one; this checks that WGSL's uniform
        // layout then puts every field where `#[repr(C)]` does (a field type WGSL lays out
        // otherwise, or does not have, fails here or in the parse).
        let mut failures = Vec::new();
        for shader in shaders() {
            let (file, rust, fields, size) =
                (shader.file, shader.params, shader.fields, shader.size);
            let (wgsl, wgsl_size) = shader_params(&shader);
            if wgsl != fields {
                failures.push(format!(
                    "{rust} vs {file}:\n  rust {fields:?}\n  wgsl {wgsl:?}"
                ));
            }
            if wgsl_size != size {
                failures.push(format!(
                    "{rust} is {size} bytes, {file}'s Params {wgsl_size}"
                ));
            }
        }
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }

    #[test]
    fn a_drifted_params_struct_is_caught() {
        // The check itself: a struct with two fields swapped differs from the shader's.
        let shader = CompiledShader::of::<elementwise::ElementwiseParams>();
        let (mut wgsl, _) = shader_params(&shader);
        assert_eq!(wgsl, elementwise::ElementwiseParams::FIELDS);
        wgsl.swap(0, 5);
        assert_ne!(wgsl, elementwise::ElementwiseParams::FIELDS);
    }

    #[test]
    fn the_interface_declares_the_fields_and_the_storage_in_order() {
        let wgsl = dropout::DropoutParams::interface();
        let lines: Vec<&str> = wgsl.lines().filter(|l| !l.starts_with("//")).collect();
        assert_eq!(
            lines[..3],
            ["struct Params {", "    n: u32,", "    x_off: u32,"]
        );
        assert!(lines.contains(&"    scale: f32,"));
        let bindings = &lines[lines.len() - 6..];
        assert_eq!(bindings[0], "@group(0) @binding(0) var<uniform> p: Params;");
        assert_eq!(
            bindings[1],
            "@group(0) @binding(1) var<storage, read_write> x: array<f32>;"
        );
        assert_eq!(
            bindings[5],
            "@group(0) @binding(5) var<storage, read_write> da: array<f32>;"
        );
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
