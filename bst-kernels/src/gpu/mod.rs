//! GPU kernels (wgpu + hand-written WGSL in `shaders/`), tested against `crate::cpu`.
//!
//! # Kernel design rules (every launcher follows them)
//!
//! 1. **Whole buffers, offsets in a uniform.** A kernel binds whole buffers (parameter
//!    arena, gradient arena, activations, ...) and receives the element offset of each
//!    tensor and the dimensions in one small uniform struct: `#[repr(C)]`,
//!    `bytemuck::Pod`, every field `u32`/`f32`, padded to a multiple of 16 bytes, declared
//!    with `launch::wgsl_params!`, which also writes the shader's `struct Params` and its
//!    bindings from it (the shader file declares neither). Tensors inside an arena are
//!    not aligned to `min_storage_buffer_offset_alignment` (256 bytes), so they cannot be
//!    bound at an offset. A tensor is passed to `bind` as a [`TensorRef`] (buffer +
//!    element offset).
//! 2. **Storage is always `read_write`.** Layouts use [`Slot::Storage`] (`read_only:
//!    false`) and shaders declare `var<storage, read_write>` even for inputs: WebGPU
//!    forbids binding one buffer read-only and writable in the same dispatch, and inputs
//!    and outputs often share an arena (a layer reads and writes the activation arena).
//!    Two writable bindings of one buffer are allowed; the ranges a kernel writes must
//!    not overlap the ranges it reads (the caller's job). Unused optional bindings get a
//!    small dummy buffer of the launcher's.
//! 3. **A launcher per op family**, e.g. [`matmul::MatmulKernels`]: `new(ctx)` creates its
//!    bind group layout and one `wgpu::ComputePipeline` per entry point, once, from
//!    `shaders/<op>.wgsl` behind the prelude and its interface ([`wgsl_module`]; forward
//!    and backward entry points in the same file, sharing one explicit layout). Most are
//!    [`launch::Kernels`] of their uniform (`PoolingKernels = Kernels<PoolParams>`), their
//!    bindings [`launch::Binding`]s, which bring `new`, the workgroup cap, `rows` and `set_rows`.
//! 4. **Bind once per call site.** `bind(ctx, Site { bufs, grads, dims }) -> <Op>Binding`
//!    (a [`Site`] names the forward's tensors, the backward's, and the sizes) creates the
//!    uniform buffer(s) and bind group(s) once per buffer set (one per layer, say) and
//!    checks every tensor range fits its buffer (one uniform:
//!    [`GpuContext::uniform_buffer`]; one per kernel or pass:
//!    [`GpuContext::uniform_slots_buffer`] and [`uniform_slot`]; the group:
//!    [`GpuContext::kernel_bind_group`]). Sizes that change per step (the last, partial
//!    batch) are rewritten with `<Op>Binding::set_rows(ctx, rows)`, a
//!    `queue.write_buffer` that takes effect at the next submit: every dispatch in that
//!    submit sees the last value written.
//! 5. **Record into the caller's pass.** Launcher methods take `&mut wgpu::ComputePass`
//!    and the binding, set pipeline and bind group, and dispatch with `div_ceil` counts
//!    (`launch::dispatch` with `flat_grid` or `strided_grid`, which respect the device's
//!    `max_compute_workgroups_per_dimension`). wgpu inserts the barriers between
//!    dispatches of one pass.
//! 6. **Shaders guard out-of-range invocations** and never `return` early before a
//!    `workgroupBarrier` (barriers must stay in uniform control flow).
//! 7. **As on the CPU:** parameter gradients accumulate (`+=`), activation gradients
//!    overwrite (`=`). No atomics: one invocation owns each output element, and
//!    reductions run in a fixed order, so results are deterministic.
//! 8. Readback ([`GpuContext::read_f32`]) waits for the GPU: tests, logs, final answers.

pub mod attention;
pub mod buffer;
pub mod context;
pub mod dropout;
pub mod elementwise;
pub mod embedding;
pub mod launch;
pub mod layernorm;
pub mod loss;
pub mod mask;
pub mod matmul;
pub mod optim;
pub mod pooling;
pub mod target_attention;
pub mod topk;

pub use buffer::{
    Readback, STORAGE_USAGE, TensorRef, UNIFORM_STRIDE, bytes_created_on_this_thread, uniform_slot,
};
pub use context::{GpuContext, GpuError, GpuOptions, GpuResult};
pub use launch::{CompiledShader, PRELUDE, Site, wgsl_module};
/// The wgpu this crate is built against, so that users name the same version.
pub use wgpu;

/// Every shader under `shaders/`, as its launcher compiles it: what the naga tests parse,
/// validate and check against the Rust structs. A new shader adds its line here.
pub fn shaders() -> Vec<CompiledShader> {
    use launch::CompiledShader as S;
    vec![
        S::of::<attention::AttentionParams>(),
        S::of::<dropout::DropoutParams>(),
        S::of::<elementwise::ElementwiseParams>(),
        S::of::<embedding::EmbParams>(),
        S::with_source::<embedding::EmbParams>("embedding_f16.wgsl", embedding::F16_SOURCE),
        S::of::<layernorm::LayerNormParams>(),
        S::of::<loss::LossParams>(),
        S::of::<mask::MaskParams>(),
        S::of::<matmul::GemmParams>(),
        S::of::<optim::OptimParams>(),
        S::of::<pooling::PoolParams>(),
        S::of::<target_attention::TargetAttentionParams>(),
        S::of::<topk::TopKParams>(),
    ]
}

/// A binding whose sizes follow the batch: `set_rows` rewrites its uniform for the next
/// submit (each launcher's `<Op>Binding::set_rows`; what a row is, a sample or a token,
/// is the caller's unit).
pub trait SetRows {
    /// Sets the rows of the current batch (at most the bound maximum).
    fn set_rows(&mut self, ctx: &GpuContext, rows: u32);
}

// Every `launch::Binding` implements it (in `launch.rs`); so do these two.
impl SetRows for matmul::MatmulBinding {
    fn set_rows(&mut self, ctx: &GpuContext, rows: u32) {
        matmul::MatmulBinding::set_rows(self, ctx, rows)
    }
}

impl SetRows for embedding::EmbeddingBinding {
    fn set_rows(&mut self, ctx: &GpuContext, rows: u32) {
        embedding::EmbeddingBinding::set_rows(self, ctx, rows)
    }
}

/// Kind of one binding in a kernel's bind group layout; binding index = position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// `var<uniform>`: the kernel's parameter struct.
    Uniform,
    /// `var<storage, read_write>` (see rule 2 above).
    Storage,
}

impl GpuContext {
    /// A compute-visible bind group layout with `slots[i]` at `@binding(i)`.
    pub fn bind_group_layout(&self, label: &str, slots: &[Slot]) -> wgpu::BindGroupLayout {
        let entries: Vec<wgpu::BindGroupLayoutEntry> = slots
            .iter()
            .enumerate()
            .map(|(i, slot)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: match slot {
                        Slot::Uniform => wgpu::BufferBindingType::Uniform,
                        Slot::Storage => wgpu::BufferBindingType::Storage { read_only: false },
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        self.device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(label),
                entries: &entries,
            })
    }

    /// A bind group with `resources[i]` at `@binding(i)`.
    pub fn bind_group(
        &self,
        label: &str,
        layout: &wgpu::BindGroupLayout,
        resources: &[wgpu::BindingResource<'_>],
    ) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry> = resources
            .iter()
            .enumerate()
            .map(|(i, r)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: r.clone(),
            })
            .collect();
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout,
            entries: &entries,
        })
    }

    /// A bind group of the layout every launcher uses: `uniform` at `@binding(0)`, then
    /// `storage[i]`, whole, at `@binding(i + 1)` (rule 1 above). `uniform` is
    /// `buffer.as_entire_binding()`, or a [`uniform_slot`] of a buffer of several.
    pub fn kernel_bind_group(
        &self,
        label: &str,
        layout: &wgpu::BindGroupLayout,
        uniform: wgpu::BindingResource<'_>,
        storage: &[&wgpu::Buffer],
    ) -> wgpu::BindGroup {
        let mut resources = vec![uniform];
        resources.extend(storage.iter().map(|b| b.as_entire_binding()));
        self.bind_group(label, layout, &resources)
    }

    /// A shader module from WGSL source (errors surface through [`GpuContext::checked`]).
    pub fn shader_module(&self, label: &str, wgsl: &str) -> wgpu::ShaderModule {
        self.device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(wgsl.into()),
            })
    }

    /// A compute pipeline for `entry` of `module`. With `layout = Some(bgl)` the pipeline
    /// uses that one bind group layout at group 0 (shared by all entry points of the
    /// op); with `None`, wgpu derives a layout from the entry point (get it back with
    /// `pipeline.get_bind_group_layout(0)`; bind groups then fit only that pipeline).
    pub fn compute_pipeline(
        &self,
        module: &wgpu::ShaderModule,
        entry: &str,
        layout: Option<&wgpu::BindGroupLayout>,
    ) -> wgpu::ComputePipeline {
        let pipeline_layout = layout.map(|bgl| {
            self.device
                .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                    label: Some(entry),
                    bind_group_layouts: &[Some(bgl)],
                    immediate_size: 0,
                })
        });
        self.device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: pipeline_layout.as_ref(),
                module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            })
    }

    /// Runs `f` inside a validation error scope and returns its first error as a value
    /// (e.g. a shader that fails to compile), instead of the uncaptured-error handler.
    pub fn checked<T>(&self, what: &str, f: impl FnOnce() -> T) -> Result<T, GpuError> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let value = f();
        match pollster::block_on(scope.pop()) {
            Some(e) => Err(GpuError::Device(format!("{what}: {e}"))),
            None => Ok(value),
        }
    }
}
