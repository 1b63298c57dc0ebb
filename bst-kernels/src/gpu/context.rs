//! The GPU context: instance, adapter choice, device and queue, created once per process.
//!
//! Adapter choice, in order: hardware before software (discrete, integrated, virtual,
//! other; then CPU/software adapters such as lavapipe, llvmpipe, SwiftShader or WARP),
//! and within one device type the native backends (Vulkan, Metal, DX12) before GL.
//! Adapters that lack what the kernels need (compute shaders, limits below) are skipped,
//! and the error lists each one with the reason.
//!
//! Environment: `WGPU_BACKEND` (`vulkan`, `metal`, `dx12`, `gl`; comma-separated) and
//! `WGPU_ADAPTER_NAME` (case-insensitive substring of the adapter name) override
//! [`GpuOptions`]; `WGPU_DEBUG` / `WGPU_VALIDATION` tune the instance flags as in wgpu.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

/// Fewest storage buffers one kernel may bind (the WebGPU default; matmul binds 5).
pub const MIN_STORAGE_BUFFERS_PER_STAGE: u32 = 8;
/// Invocations per workgroup the kernels use (16 x 16 tiles).
pub const MIN_INVOCATIONS_PER_WORKGROUP: u32 = 256;
/// Workgroup memory the kernels may use, in bytes (the WebGPU default).
pub const MIN_WORKGROUP_STORAGE_BYTES: u32 = 16 << 10;

/// What a fallible GPU call returns.
pub type GpuResult<T> = Result<T, GpuError>;

/// Errors from device creation, binding and readback. Each message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// wgpu enumerated no adapter on the backends tried.
    #[error(
        "no GPU adapter found (backends: {backends}). Install a Vulkan driver (on \
         Debian/Ubuntu: `apt-get install mesa-vulkan-drivers libvulkan1` for the software \
         lavapipe driver, or your GPU vendor's driver), or run with --device cpu"
    )]
    NoAdapter {
        /// The backends tried, e.g. "vulkan, gl".
        backends: String,
    },

    /// No adapter's name contains the requested `WGPU_ADAPTER_NAME` / `adapter_name`.
    #[error(
        "no adapter matches WGPU_ADAPTER_NAME / adapter_name {wanted:?}; adapters found:\n{found}"
    )]
    NoAdapterNamed {
        /// The requested name (substring).
        wanted: String,
        /// The adapters found, one per line.
        found: String,
    },

    /// Every adapter lacks something the kernels need (compute shaders or a limit).
    #[error(
        "no usable GPU adapter (backends: {backends}); adapters found and why each was \
         skipped:\n{found}Use a GPU that meets these limits, or run with --device cpu"
    )]
    NoSuitableAdapter {
        /// The backends tried.
        backends: String,
        /// Each adapter found and why it was skipped, one per line.
        found: String,
    },

    /// `WGPU_BACKEND` holds a name that is not a backend.
    #[error(
        "WGPU_BACKEND={value:?} names no backend; use a comma-separated list of vulkan, \
         metal, dx12, gl"
    )]
    BadBackendEnv {
        /// The variable's value.
        value: String,
    },

    /// The chosen adapter refused to create the device.
    #[error("requesting a device from {adapter} failed: {source}")]
    RequestDevice {
        /// The adapter, as [`GpuContext::describe`] writes it.
        adapter: String,
        /// wgpu's reason.
        source: wgpu::RequestDeviceError,
    },

    /// A validation, out-of-memory or internal error reported by wgpu, or a lost device.
    #[error("GPU error: {0}")]
    Device(String),

    /// Mapping a readback buffer failed.
    #[error("mapping a buffer for readback failed: {0}")]
    Map(#[from] wgpu::BufferAsyncError),

    /// Waiting for the GPU (`device.poll`) failed.
    #[error("waiting for the GPU failed: {0}")]
    Poll(#[from] wgpu::PollError),

    /// The device lacks an optional feature that was asked for (`SHADER_F16` for f16
    /// embedding tables); the message names it and how to get it.
    #[error("{0}")]
    MissingFeature(String),

    /// A kernel binding does not fit: a tensor past the end of its buffer, a buffer
    /// larger than the device's binding limit, ...
    #[error("cannot bind {0}")]
    Binding(String),
}

/// How to choose the adapter. Environment variables override these fields.
#[derive(Clone, Debug)]
pub struct GpuOptions {
    /// Backends to consider; `WGPU_BACKEND` overrides. Default: all of them.
    pub backends: wgpu::Backends,
    /// Case-insensitive substring of the adapter name; `WGPU_ADAPTER_NAME` overrides.
    pub adapter_name: Option<String>,
    /// Software adapters (lavapipe, llvmpipe, ...) are always ranked last and chosen only
    /// when no hardware adapter qualifies. With `false`, choosing one prints a warning
    /// (expect 100x slower than a GPU); with `true` it is taken silently (tests).
    pub allow_software: bool,
}

impl Default for GpuOptions {
    fn default() -> Self {
        Self {
            backends: wgpu::Backends::all(),
            adapter_name: None,
            allow_software: false,
        }
    }
}

/// Device, queue and what the kernels need to know about them. Create once, share by `&`.
pub struct GpuContext {
    /// The device: creates buffers, bind groups, pipelines and command encoders.
    pub device: wgpu::Device,
    /// The device's queue: buffer writes and submissions.
    pub queue: wgpu::Queue,
    /// Name, backend and type of the adapter the device came from.
    pub adapter_info: wgpu::AdapterInfo,
    /// The limits the device was created with (exactly what kernels may use).
    pub limits: wgpu::Limits,
    /// The optional features the device was created with (none unless asked for with
    /// [`GpuContext::with_optional_features`]).
    pub features: wgpu::Features,
    /// What the uncaptured-error and device-lost handlers recorded.
    errors: Arc<Mutex<Failures>>,
}

/// What a [`GpuContext`]'s handlers recorded, for [`GpuContext::check`].
#[derive(Debug, Default)]
struct Failures {
    /// The first uncaptured wgpu error since the last check (cleared by it).
    first: Option<String>,
    /// Why the device is gone (lost, or destroyed with `wgpu::Device::destroy`): every
    /// later check reports it, since nothing on the device works any more.
    lost: Option<String>,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.describe())
            .finish_non_exhaustive()
    }
}

impl GpuContext {
    /// Chooses an adapter (see the module doc) and creates the device, with no optional
    /// features.
    pub fn new(opts: &GpuOptions) -> Result<GpuContext, GpuError> {
        Self::with_optional_features(opts, wgpu::Features::empty())
    }

    /// As [`GpuContext::new`], and requests those of the `optional` features that the
    /// chosen adapter has (the choice itself does not depend on them; see
    /// [`GpuContext::features`] for what was granted). The benchmarks ask for
    /// `TIMESTAMP_QUERY` to time kernels on the device.
    pub fn with_optional_features(
        opts: &GpuOptions,
        optional: wgpu::Features,
    ) -> Result<GpuContext, GpuError> {
        Self::create(opts, optional, 0)
    }

    /// As [`GpuContext::new`] for one of several processes sharing a machine (the ranks
    /// of a data-parallel launch on one host): among the suitable adapters of the best
    /// kind (type and backend, e.g. a machine's discrete GPUs on Vulkan), in enumeration
    /// order, the one at `local_rank` modulo their number. One such adapter (or a
    /// software one) is shared by every rank.
    pub fn for_local_rank(opts: &GpuOptions, local_rank: usize) -> Result<GpuContext, GpuError> {
        Self::create(opts, wgpu::Features::empty(), local_rank)
    }

    fn create(
        opts: &GpuOptions,
        optional: wgpu::Features,
        nth: usize,
    ) -> Result<GpuContext, GpuError> {
        let backends = backends_from_env()?.unwrap_or(opts.backends);
        let wanted = std::env::var("WGPU_ADAPTER_NAME")
            .ok()
            .filter(|s| !s.trim().is_empty())
            .or_else(|| opts.adapter_name.clone());

        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends,
            flags: wgpu::InstanceFlags::from_build_config().with_env(),
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let mut adapters = pollster::block_on(instance.enumerate_adapters(backends));
        if adapters.is_empty() {
            return Err(GpuError::NoAdapter {
                backends: backends_name(backends),
            });
        }
        if let Some(wanted) = &wanted {
            let needle = wanted.to_lowercase();
            let found = list_adapters(&adapters, |_| None);
            adapters.retain(|a| a.get_info().name.to_lowercase().contains(&needle));
            if adapters.is_empty() {
                return Err(GpuError::NoAdapterNamed {
                    wanted: wanted.clone(),
                    found,
                });
            }
        }

        // Best first; the sort is stable, so ties keep the enumeration order.
        adapters.sort_by_key(|a| rank(&a.get_info()));
        let suitable: Vec<&wgpu::Adapter> = adapters
            .iter()
            .filter(|a| unsuitable(a).is_none())
            .collect();
        let Some(best) = suitable.first().map(|a| rank(&a.get_info())) else {
            return Err(GpuError::NoSuitableAdapter {
                backends: backends_name(backends),
                found: list_adapters(&adapters, unsuitable),
            });
        };
        let peers: Vec<&wgpu::Adapter> = suitable
            .into_iter()
            .filter(|a| rank(&a.get_info()) == best)
            .collect();
        let adapter = peers[nth % peers.len()];

        let info = adapter.get_info();
        if is_software_adapter(&info) && !opts.allow_software && wanted.is_none() {
            eprintln!(
                "warning: no hardware GPU adapter found; using the software adapter {} \
                 (expect it to be far slower than a GPU)",
                describe_info(&info)
            );
        }
        let have = adapter.limits();
        let required_limits = wgpu::Limits {
            max_storage_buffer_binding_size: have.max_storage_buffer_binding_size,
            max_buffer_size: have.max_buffer_size,
            max_storage_buffers_per_shader_stage: have.max_storage_buffers_per_shader_stage,
            max_compute_workgroup_storage_size: have.max_compute_workgroup_storage_size,
            max_compute_invocations_per_workgroup: have.max_compute_invocations_per_workgroup,
            max_compute_workgroup_size_x: have.max_compute_workgroup_size_x,
            max_compute_workgroup_size_y: have.max_compute_workgroup_size_y,
            max_compute_workgroup_size_z: have.max_compute_workgroup_size_z,
            max_compute_workgroups_per_dimension: have.max_compute_workgroups_per_dimension,
            // Everything else: the WebGPU defaults, lowered where the adapter has less.
            ..wgpu::Limits::defaults().or_worse_values_from(&have)
        };
        let desc = wgpu::DeviceDescriptor {
            label: Some("bst"),
            required_features: optional & adapter.features(),
            required_limits,
            ..Default::default()
        };
        let (device, queue) =
            pollster::block_on(adapter.request_device(&desc)).map_err(|source| {
                GpuError::RequestDevice {
                    adapter: describe_info(&info),
                    source,
                }
            })?;
        Ok(Self::from_device(device, queue, info))
    }

    /// Wraps a device the application created itself. Installs this context's
    /// uncaptured-error and device-lost handlers on it (see [`GpuContext::check`]); the
    /// kernels assume the device has at least the limits checked by [`GpuContext::new`].
    pub fn from_device(
        device: wgpu::Device,
        queue: wgpu::Queue,
        adapter_info: wgpu::AdapterInfo,
    ) -> GpuContext {
        let errors = Arc::new(Mutex::new(Failures::default()));
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            eprintln!("wgpu error: {e}");
            let mut f = sink.lock().unwrap_or_else(|e| e.into_inner());
            f.first.get_or_insert_with(|| e.to_string());
        }));
        let sink = errors.clone();
        // wgpu reports a lost device only here (its calls on the device then do nothing,
        // silently), when the device is next polled.
        device.set_device_lost_callback(move |reason, msg| {
            let why = match reason {
                wgpu::DeviceLostReason::Destroyed => {
                    "the device was destroyed (wgpu::Device::destroy)".to_string()
                }
                _ => {
                    eprintln!("wgpu device lost ({reason:?}): {msg}");
                    format!("the device was lost ({reason:?}): {msg}")
                }
            };
            let mut f = sink.lock().unwrap_or_else(|e| e.into_inner());
            f.lost.get_or_insert(why);
        });
        let limits = device.limits();
        GpuContext {
            features: device.features(),
            device,
            queue,
            adapter_info,
            limits,
            errors,
        }
    }

    /// e.g. "NVIDIA H200 (Vulkan, discrete)" or "llvmpipe (LLVM 15.0.7, 256 bits) (Vulkan, cpu)".
    pub fn describe(&self) -> String {
        describe_info(&self.adapter_info)
    }

    /// A CPU/software adapter (lavapipe, llvmpipe, SwiftShader, WARP): correct but slow.
    pub fn is_software(&self) -> bool {
        is_software_adapter(&self.adapter_info)
    }

    /// The device can write timestamps at the start and end of a compute pass
    /// (`TIMESTAMP_QUERY`, requested with [`GpuContext::with_optional_features`]).
    pub fn has_timestamps(&self) -> bool {
        self.features.contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// Returns (and clears) the first uncaptured wgpu error since the last check; once
    /// the device is lost or destroyed, that, at every check. Validation and
    /// out-of-memory errors are reported during the call that caused them, a lost device
    /// when the device is next polled: call after `device.poll(..)`, or use
    /// [`GpuContext::poll_check`].
    pub fn check(&self) -> Result<(), GpuError> {
        let mut guard = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        let f = &mut *guard;
        match (&f.lost, f.first.take()) {
            (Some(lost), _) => Err(GpuError::Device(lost.clone())),
            (None, Some(msg)) => Err(GpuError::Device(msg)),
            (None, None) => Ok(()),
        }
    }

    /// Polls the device without waiting (so that a loss since the last poll is
    /// reported), then [`GpuContext::check`]: after a submit that reads nothing back.
    pub fn poll_check(&self) -> Result<(), GpuError> {
        self.device.poll(wgpu::PollType::Poll)?;
        self.check()
    }

    /// Waits until the device is idle (so that a loss is reported, whatever work was
    /// queued), then [`GpuContext::check`]: before creating buffers, which a lost device
    /// fails in a panic of wgpu's.
    pub fn wait_check(&self) -> Result<(), GpuError> {
        self.device.poll(wgpu::PollType::wait_indefinitely())?;
        self.check()
    }

    /// The limits kernel authors care about, one per line, for logs and test output.
    pub fn limits_report(&self) -> String {
        let l = &self.limits;
        let i = &self.adapter_info;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "adapter: {} driver: {} {}",
            self.describe(),
            i.driver,
            i.driver_info
        );
        // (name, value) of each field listed, named as in wgpu.
        macro_rules! fields {
            ($of:ident: $($field:ident),*) => {
                [$((stringify!($field), u64::from($of.$field))),*]
            };
        }
        let limits = fields!(l:
            max_storage_buffer_binding_size,
            max_buffer_size,
            max_storage_buffers_per_shader_stage,
            max_uniform_buffer_binding_size,
            max_compute_workgroup_storage_size,
            max_compute_invocations_per_workgroup,
            max_compute_workgroup_size_x,
            max_compute_workgroups_per_dimension,
            min_storage_buffer_offset_alignment,
            min_uniform_buffer_offset_alignment
        );
        let subgroups = fields!(i: subgroup_min_size, subgroup_max_size);
        for (name, v) in limits.into_iter().chain(subgroups) {
            let _ = writeln!(s, "  {name} = {v}");
        }
        s
    }
}

/// `WGPU_BACKEND`, parsed; `None` when unset or blank.
fn backends_from_env() -> Result<Option<wgpu::Backends>, GpuError> {
    let Ok(value) = std::env::var("WGPU_BACKEND") else {
        return Ok(None);
    };
    if value.trim().is_empty() {
        return Ok(None);
    }
    let mut backends = wgpu::Backends::empty();
    for name in value.split(',') {
        backends |= match name.trim().to_lowercase().as_str() {
            "vulkan" | "vk" => wgpu::Backends::VULKAN,
            "metal" | "mtl" => wgpu::Backends::METAL,
            "dx12" | "d3d12" => wgpu::Backends::DX12,
            "gl" | "gles" | "opengl" => wgpu::Backends::GL,
            _ => return Err(GpuError::BadBackendEnv { value }),
        };
    }
    Ok(Some(backends))
}

fn backends_name(b: wgpu::Backends) -> String {
    let names: Vec<&str> = [
        (wgpu::Backends::VULKAN, "vulkan"),
        (wgpu::Backends::METAL, "metal"),
        (wgpu::Backends::DX12, "dx12"),
        (wgpu::Backends::GL, "gl"),
        (wgpu::Backends::BROWSER_WEBGPU, "webgpu"),
    ]
    .into_iter()
    .filter(|(flag, _)| b.contains(*flag))
    .map(|(_, name)| name)
    .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

fn is_software_adapter(info: &wgpu::AdapterInfo) -> bool {
    let name = info.name.to_lowercase();
    info.device_type == wgpu::DeviceType::Cpu
        || [
            "llvmpipe",
            "lavapipe",
            "swiftshader",
            "microsoft basic render",
        ]
        .iter()
        .any(|s| name.contains(s))
}

/// Sort key: smaller is better.
fn rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let kind = match info.device_type {
        _ if is_software_adapter(info) => 4,
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other | wgpu::DeviceType::Cpu => 3,
    };
    let backend = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        _ => 1,
    };
    (kind, backend)
}

/// Why the kernels cannot run on this adapter, or `None` when they can.
fn unsuitable(adapter: &wgpu::Adapter) -> Option<String> {
    let caps = adapter.get_downlevel_capabilities();
    if !caps.flags.contains(wgpu::DownlevelFlags::COMPUTE_SHADERS) {
        return Some("no compute shaders".into());
    }
    limit_shortfall(&adapter.limits())
}

/// The first limit of `l` below what the kernels use, as "<name> is <have>, the kernels
/// need at least <need>", or `None`: the one table of minimum limits, used to skip an
/// adapter and to refuse an application's own device.
pub fn limit_shortfall(l: &wgpu::Limits) -> Option<String> {
    [
        (
            "max_storage_buffers_per_shader_stage",
            l.max_storage_buffers_per_shader_stage,
            MIN_STORAGE_BUFFERS_PER_STAGE,
        ),
        (
            "max_compute_invocations_per_workgroup",
            l.max_compute_invocations_per_workgroup,
            MIN_INVOCATIONS_PER_WORKGROUP,
        ),
        (
            "max_compute_workgroup_size_x",
            l.max_compute_workgroup_size_x,
            MIN_INVOCATIONS_PER_WORKGROUP,
        ),
        (
            "max_compute_workgroup_storage_size",
            l.max_compute_workgroup_storage_size,
            MIN_WORKGROUP_STORAGE_BYTES,
        ),
    ]
    .into_iter()
    .find(|&(_, have, need)| have < need)
    .map(|(name, have, need)| format!("{name} is {have}, the kernels need at least {need}"))
}

fn list_adapters(
    adapters: &[wgpu::Adapter],
    why_not: impl Fn(&wgpu::Adapter) -> Option<String>,
) -> String {
    let mut s = String::new();
    for a in adapters {
        let _ = match why_not(a) {
            Some(why) => writeln!(s, "  {}: {why}", describe_info(&a.get_info())),
            None => writeln!(s, "  {}", describe_info(&a.get_info())),
        };
    }
    s
}

fn describe_info(info: &wgpu::AdapterInfo) -> String {
    let backend = match info.backend {
        wgpu::Backend::Vulkan => "Vulkan",
        wgpu::Backend::Metal => "Metal",
        wgpu::Backend::Dx12 => "DX12",
        wgpu::Backend::Gl => "GL",
        wgpu::Backend::BrowserWebGpu => "WebGPU",
        wgpu::Backend::Noop => "noop",
    };
    let kind = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => "discrete",
        wgpu::DeviceType::IntegratedGpu => "integrated",
        wgpu::DeviceType::VirtualGpu => "virtual",
        wgpu::DeviceType::Cpu => "cpu",
        wgpu::DeviceType::Other => "other",
    };
    format!("{} ({backend}, {kind})", info.name)
}
