//! Buffer helpers: create storage and uniform buffers, write them, and read them back.
//!
//! Readback blocks until the GPU is idle: use it for tests, logs and final answers only,
//! never inside the training step. [`GpuContext::read_f32`] and `read_u32` create a
//! staging buffer per call (tests, checkpoints); code that reads back repeatedly keeps a
//! [`Readback`], whose staging buffer is reused, and records its copy into the encoder of
//! the work that produced the data, so one submit does both.
//!
//! Every buffer created here is counted per thread ([`bytes_created_on_this_thread`]), so
//! that an owner of many buffers can report what it allocated from the allocations
//! themselves.

use std::cell::Cell;

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
        self.create_buffer(label, 4 * len.max(1) as u64, STORAGE_USAGE)
    }

    /// A buffer of `size` bytes, counted in [`bytes_created_on_this_thread`].
    fn create_buffer(&self, label: &str, size: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
        CREATED.set(CREATED.get() + size);
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage,
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
        CREATED.set(CREATED.get() + bytes.len() as u64);
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

    /// [`GpuContext::write`], and an error when the queue refuses the write: a device
    /// lost or destroyed (where `write` does nothing, silently, and wgpu reports the loss
    /// only once the device's work has drained), or no memory for the staging copy. Then
    /// it waits for the device, so that the error says why.
    pub fn write_checked<T: Pod>(
        &self,
        buffer: &wgpu::Buffer,
        offset: u32,
        data: &[T],
    ) -> Result<(), GpuError> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let Some(size) = wgpu::BufferSize::new(bytes.len() as u64) else {
            return Ok(());
        };
        match self
            .queue
            .write_buffer_with(buffer, 4 * u64::from(offset), size)
        {
            Some(mut staging) => {
                staging.copy_from_slice(bytes);
                Ok(())
            }
            None => {
                self.wait_check()?;
                Err(GpuError::Device(
                    "the queue refused a buffer write (the device is lost)".into(),
                ))
            }
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

    /// A staging buffer made for this one read, dropped after it.
    fn read_words<T: Pod>(
        &self,
        buffer: &wgpu::Buffer,
        offset: u32,
        len: usize,
    ) -> Result<Vec<T>, GpuError> {
        Readback::new("readback").read(self, TensorRef::new(buffer, offset), len)
    }
}

thread_local! {
    /// Bytes of the buffers created on this thread by this module's helpers.
    static CREATED: Cell<u64> = const { Cell::new(0) };
}

/// Bytes of every buffer this module's helpers ([`GpuContext::storage_buffer`],
/// `storage_buffer_zeroed`, `uniform_buffer`, `uniform_slots_buffer`, [`Readback`]) have
/// created on the calling thread, on any device, since the thread started (buffers
/// dropped since are not subtracted). The difference of two calls is what the code
/// between them allocated: per thread, so other threads creating buffers at the same time
/// do not disturb it. Sizes are the buffers' own (`wgpu::Buffer::size`); what the
/// driver adds for alignment is not included.
pub fn bytes_created_on_this_thread() -> u64 {
    CREATED.get()
}

/// How long [`Readback`] waits for its map callback once the device is idle.
const MAP_CALLBACK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A reusable staging buffer (`MAP_READ | COPY_DST`) for reading results back without
/// creating a buffer per read: [`Readback::copy`] records a copy into it (in the encoder
/// of the work that produced the data, so that one submit runs both), and after the
/// submit [`Readback::finish`] maps it, waits for the device and returns the words. The
/// buffer grows to the largest copy asked and never shrinks; one copy at a time.
#[derive(Debug)]
pub struct Readback {
    label: &'static str,
    staging: Option<wgpu::Buffer>,
    /// Bytes of the copy recorded and not yet read.
    pending: Option<u64>,
}

impl Readback {
    /// No staging buffer yet: the first copy creates it.
    pub fn new(label: &'static str) -> Readback {
        Readback {
            label,
            staging: None,
            pending: None,
        }
    }

    /// A staging buffer of `len` 4-byte words from the start (at least one), so that no
    /// later copy of up to `len` words allocates.
    pub fn with_capacity(ctx: &GpuContext, label: &'static str, len: usize) -> Readback {
        let mut r = Readback::new(label);
        r.grow(ctx, 4 * len.max(1) as u64);
        r
    }

    /// Bytes of the staging buffer (0 before the first copy).
    pub fn capacity_bytes(&self) -> u64 {
        self.staging.as_ref().map_or(0, wgpu::Buffer::size)
    }

    /// Records into `encoder` a copy of `len` 4-byte words from `src` into the staging
    /// buffer, growing it first if it is smaller. Submit `encoder`, then call
    /// [`Readback::finish`]. A second copy before `finish` replaces the first.
    pub fn copy(
        &mut self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        src: TensorRef,
        len: usize,
    ) -> Result<(), GpuError> {
        src.check_len(self.label, len as u64)?;
        let size = 4 * len as u64;
        if size > 0 {
            let staging = self.grow(ctx, size);
            encoder.copy_buffer_to_buffer(src.buffer, 4 * u64::from(src.offset), staging, 0, size);
        }
        self.pending = Some(size);
        Ok(())
    }

    /// The words of the last [`Readback::copy`], after the submit of its encoder: waits
    /// for the device (blocking).
    pub fn finish<T: Pod>(&mut self, ctx: &GpuContext) -> Result<Vec<T>, GpuError> {
        let mut out = Vec::new();
        self.map(ctx, |bytes| out = bytemuck::pod_collect_to_vec(bytes))?;
        Ok(out)
    }

    /// [`Readback::finish`] into `out`, which must hold exactly the words copied.
    pub fn finish_into<T: Pod>(&mut self, ctx: &GpuContext, out: &mut [T]) -> Result<(), GpuError> {
        let dst: &mut [u8] = bytemuck::cast_slice_mut(out);
        self.map(ctx, |bytes| {
            assert_eq!(
                dst.len(),
                bytes.len(),
                "Readback::finish_into: the slice has another size than the copy"
            );
            dst.copy_from_slice(bytes);
        })
    }

    /// Copies `len` words from `src` in an encoder of its own, submits it and returns
    /// them (blocking).
    pub fn read<T: Pod>(
        &mut self,
        ctx: &GpuContext,
        src: TensorRef,
        len: usize,
    ) -> Result<Vec<T>, GpuError> {
        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some(self.label),
            });
        self.copy(ctx, &mut encoder, src, len)?;
        ctx.queue.submit([encoder.finish()]);
        self.finish(ctx)
    }

    /// The staging buffer, replaced by one of `size` bytes if it is smaller.
    fn grow(&mut self, ctx: &GpuContext, size: u64) -> &wgpu::Buffer {
        if self.capacity_bytes() < size {
            self.staging = None; // freed before its successor is made
            let usage = wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST;
            self.staging = Some(ctx.create_buffer(self.label, size, usage));
        }
        self.staging.as_ref().expect("a staging buffer")
    }

    /// Maps the pending copy's bytes, hands them to `f` and unmaps. On a device error
    /// the staging buffer is dropped (the next copy makes a new one).
    fn map(&mut self, ctx: &GpuContext, f: impl FnOnce(&[u8])) -> Result<(), GpuError> {
        let what = self.label;
        let size = self.pending.take().ok_or_else(|| {
            GpuError::Device(format!("{what}: finish without a copy recorded before it"))
        })?;
        let Some(staging) = self.staging.as_ref().filter(|_| size > 0) else {
            f(&[]);
            return Ok(());
        };
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, ..size, move |r| {
            let _ = tx.send(r);
        });
        let mapped = (|| {
            ctx.device.poll(wgpu::PollType::wait_indefinitely())?;
            ctx.check()?;
            // The work is done: its callback has run, or is running on a thread that
            // polled at the same time. Bounded, so that a callback that never comes is
            // an error, not a hang.
            rx.recv_timeout(MAP_CALLBACK_WAIT).map_err(|_| {
                GpuError::Device(format!(
                    "{what}: the map callback did not run within {MAP_CALLBACK_WAIT:?} of the \
                     device going idle"
                ))
            })??;
            let view = staging
                .get_mapped_range(..size)
                .map_err(|e| GpuError::Device(format!("{what}: {e}")))?;
            f(&view);
            Ok(())
        })();
        match mapped {
            Ok(()) => staging.unmap(),
            Err(_) => self.staging = None,
        }
        mapped
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
