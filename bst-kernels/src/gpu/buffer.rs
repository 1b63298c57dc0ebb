//! Buffer helpers: create storage and uniform buffers, write them, and read them back.
//!
//! Readback blocks until the GPU is idle: use it for tests, logs and final answers only,
//! never inside the training step.

use bytemuck::Pod;
use wgpu::util::DeviceExt;

use super::{GpuContext, GpuError};

/// Usage of every storage buffer: bound by kernels, written by the queue, read back.
pub const STORAGE_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// Launchers with several uniforms (one per kernel or pass) keep them in one buffer at
/// this stride: a multiple of every device's `min_uniform_buffer_offset_alignment`,
/// which WebGPU caps at 256.
pub const UNIFORM_STRIDE: u64 = 256;

/// A tensor inside a buffer (an arena): the buffer and the tensor's first element.
/// Kernels bind the whole buffer and receive `offset` through their uniform.
#[derive(Clone, Copy, Debug)]
pub struct TensorRef<'a> {
    /// The whole buffer (kernels bind it entire).
    pub buffer: &'a wgpu::Buffer,
    /// Index of the first element (of 4 bytes) in `buffer`.
    pub offset: u32,
}

impl<'a> TensorRef<'a> {
    /// The tensor at element `offset` of `buffer`.
    pub fn new(buffer: &'a wgpu::Buffer, offset: u32) -> Self {
        Self { buffer, offset }
    }

    /// The tensor that starts at element 0.
    pub fn whole(buffer: &'a wgpu::Buffer) -> Self {
        Self { buffer, offset: 0 }
    }

    /// Checks that `len` elements from `offset` lie inside the buffer; `what` names the
    /// tensor in the error (e.g. "matmul weight (n_out, n_in)").
    pub fn check_len(&self, what: &str, len: u64) -> Result<(), GpuError> {
        let have = self.buffer.size() / 4;
        let end = u64::from(self.offset) + len;
        if end > have {
            return Err(GpuError::Binding(format!(
                "{what}: elements {}..{end} lie past the end of its buffer ({have} elements)",
                self.offset
            )));
        }
        Ok(())
    }

    /// [`TensorRef::check_len`], and that the device can bind the whole buffer
    /// (`max_storage_buffer_binding_size`). Call from every launcher's `bind`.
    pub fn check(&self, ctx: &GpuContext, what: &str, len: u64) -> Result<(), GpuError> {
        self.check_len(what, len)?;
        let max = ctx.limits.max_storage_buffer_binding_size;
        if self.buffer.size() > max {
            return Err(GpuError::Binding(format!(
                "{what}: its buffer has {} bytes, more than the device's \
                 max_storage_buffer_binding_size ({max}); split the arena",
                self.buffer.size()
            )));
        }
        Ok(())
    }
}

impl GpuContext {
    /// A storage buffer holding `data` (size rounded up to 4 bytes, at least 4).
    pub fn storage_buffer<T: Pod>(&self, label: &str, data: &[T]) -> wgpu::Buffer {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        if !bytes.len().is_multiple_of(4) || bytes.is_empty() {
            let mut padded = bytes.to_vec();
            padded.resize(bytes.len().next_multiple_of(4).max(4), 0);
            return self.buffer_init(label, &padded, STORAGE_USAGE);
        }
        self.buffer_init(label, bytes, STORAGE_USAGE)
    }

    /// A zero-filled storage buffer of `len` 4-byte elements (f32 or u32; at least one).
    pub fn storage_buffer_zeroed(&self, label: &str, len: usize) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: 4 * len.max(1) as u64,
            usage: STORAGE_USAGE,
            mapped_at_creation: false,
        })
    }

    /// A uniform buffer holding one `#[repr(C)]` Pod struct (padded to 16 bytes by its
    /// author), writable later with [`GpuContext::write`].
    pub fn uniform_buffer<T: Pod>(&self, label: &str, value: &T) -> wgpu::Buffer {
        self.buffer_init(
            label,
            bytemuck::bytes_of(value),
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        )
    }

    /// A uniform buffer holding `slots[i]` at byte `i * UNIFORM_STRIDE` (at least one
    /// slot), bound one slot at a time with [`uniform_slot`] and rewritten with
    /// [`GpuContext::write_uniform_slots`].
    pub fn uniform_slots_buffer<T: Pod>(&self, label: &str, slots: &[T]) -> wgpu::Buffer {
        let mut bytes = slot_bytes(slots);
        bytes.resize(bytes.len().max(UNIFORM_STRIDE as usize), 0);
        self.buffer_init(
            label,
            &bytes,
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        )
    }

    /// Rewrites the first `slots.len()` slots of a buffer made by
    /// [`GpuContext::uniform_slots_buffer`]; takes effect at the next `queue.submit`.
    pub fn write_uniform_slots<T: Pod>(&self, buffer: &wgpu::Buffer, slots: &[T]) {
        self.queue.write_buffer(buffer, 0, &slot_bytes(slots));
    }

    fn buffer_init(&self, label: &str, bytes: &[u8], usage: wgpu::BufferUsages) -> wgpu::Buffer {
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytes,
                usage,
            })
    }

    /// Writes `data` at element `offset` (of 4 bytes) of `buffer`. Takes effect at the
    /// next `queue.submit`, before that submission's commands run.
    pub fn write<T: Pod>(&self, buffer: &wgpu::Buffer, offset: u32, data: &[T]) {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        if !bytes.is_empty() {
            self.queue
                .write_buffer(buffer, 4 * u64::from(offset), bytes);
        }
    }

    /// Copies `len` f32 from element `offset` of `buffer` back to the host (blocking).
    pub fn read_f32(
        &self,
        buffer: &wgpu::Buffer,
        offset: u32,
        len: usize,
    ) -> Result<Vec<f32>, GpuError> {
        self.read_words(buffer, offset, len)
    }

    /// Copies `len` u32 from element `offset` of `buffer` back to the host (blocking).
    pub fn read_u32(
        &self,
        buffer: &wgpu::Buffer,
        offset: u32,
        len: usize,
    ) -> Result<Vec<u32>, GpuError> {
        self.read_words(buffer, offset, len)
    }

    fn read_words<T: Pod>(
        &self,
        buffer: &wgpu::Buffer,
        offset: u32,
        len: usize,
    ) -> Result<Vec<T>, GpuError> {
        TensorRef::new(buffer, offset).check_len("readback", len as u64)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let size = 4 * len as u64;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("readback"),
            });
        encoder.copy_buffer_to_buffer(buffer, 4 * u64::from(offset), &staging, 0, size);
        self.queue.submit([encoder.finish()]);

        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.device.poll(wgpu::PollType::wait_indefinitely())?;
        self.check()?;
        let mapped = rx
            .recv()
            .map_err(|_| GpuError::Device("readback: map callback never ran".into()))?;
        mapped?;
        let out = {
            let view = staging
                .get_mapped_range(..)
                .map_err(|e| GpuError::Device(format!("readback: {e}")))?;
            bytemuck::pod_collect_to_vec::<u8, T>(&view)
        };
        staging.unmap();
        Ok(out)
    }
}

/// Slot `i` of a buffer made by [`GpuContext::uniform_slots_buffer`], to bind as a kernel's
/// uniform.
pub fn uniform_slot<T: Pod>(buffer: &wgpu::Buffer, i: usize) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer,
        offset: i as u64 * UNIFORM_STRIDE,
        size: wgpu::BufferSize::new(std::mem::size_of::<T>() as u64),
    })
}

/// `slots[i]` at byte `i * UNIFORM_STRIDE`, zeros between.
fn slot_bytes<T: Pod>(slots: &[T]) -> Vec<u8> {
    let stride = UNIFORM_STRIDE as usize;
    let mut bytes = vec![0u8; stride * slots.len()];
    for (i, slot) in slots.iter().enumerate() {
        let src = bytemuck::bytes_of(slot);
        bytes[i * stride..i * stride + src.len()].copy_from_slice(src);
    }
    bytes
}
