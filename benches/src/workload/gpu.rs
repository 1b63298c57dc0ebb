//! The cases of [`super::cases`] on the GPU, and two ways to time them: many calls in one
//! pass timed by the host ([`GpuWorkloads::time_batched`]), or one pass per call timed by
//! the device's timestamps ([`GpuWorkloads::time_with_timestamps`]).
//!
//! The cases run on a [`GpuBackend`]'s own call sites (`GpuBackend::record_call`), so
//! each kernel is timed as the training step binds it, after one real step on the
//! workload's batch: block 0's sites for the block's cases, each MLP layer's, the
//! embedding, pooling, loss and the optimiser updates. Only the standalone LeakyReLU
//! backward, which the step fuses into the ffn2 backward, is bound here.

use bst_kernels::gpu::Site;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Case, Inputs, Op, Shapes, values};
use bst_core::backend::{Backend, BackendError};
use bst_core::batch::Batch;
use bst_core::config::{Config, Optimizer, TrainConfig};
use bst_core::gpu_backend::{BlockOp, Call, Direction, GpuBackend};
use bst_core::model::Model;
use bst_kernels::gpu::elementwise::{
    ActivationBuffers, ActivationDims, ActivationGradBuffers, ElementwiseBinding,
    ElementwiseKernels,
};
use bst_kernels::gpu::{GpuContext, GpuError, TensorRef, wgpu};

/// Every case's call, bound once; [`GpuWorkloads::record`] records one.
pub struct GpuWorkloads {
    cases: Vec<Case>,
    /// The model's bindings, after one training step on the workload's batch.
    backend: GpuBackend,
    leaky: LeakyRelu,
    /// Bytes of the storage buffers allocated for the workloads.
    bytes: u64,
}

/// The FFN's LeakyReLU backward over (B T, d_ff) on its own (the step fuses it into the
/// ffn2 backward): its kernels, binding, and buffers `ff`, `dff` and `dff_pre`.
struct LeakyRelu {
    k: ElementwiseKernels,
    binding: ElementwiseBinding,
    bufs: [wgpu::Buffer; 3],
}

/// The call of linear layer `j` of [`Shapes::linears`]: block 0's four, then the MLP's.
fn linear_call(j: usize, dir: Direction) -> Call {
    const BLOCK: [BlockOp; 4] = [BlockOp::Qkv, BlockOp::Out, BlockOp::Ffn1, BlockOp::Ffn2];
    match BLOCK.get(j) {
        Some(&op) => Call::Block(0, op, dir),
        None => Call::Mlp(j - BLOCK.len(), dir),
    }
}

impl GpuWorkloads {
    /// A GPU backend for `model` with Adam and batches of `batch` samples, trained one
    /// step on the workload's batch ([`super::cases`] at `crate::kernel_shapes(model,
    /// batch)`), and the standalone LeakyReLU backward. An error for a model without
    /// blocks (the cases time block 0's sites).
    pub fn new(
        ctx: &Arc<GpuContext>,
        model: &Model,
        batch: usize,
    ) -> Result<GpuWorkloads, GpuError> {
        if model.dims.blocks == 0 {
            return Err(GpuError::Binding(
                "the kernel workloads time a block's call sites: the model has no block".into(),
            ));
        }
        let s = crate::kernel_shapes(model, batch);
        let cfg = Config {
            model: model.cfg.clone(),
            train: TrainConfig {
                optimizer: Optimizer::Adam,
                batch,
                eval_batch: batch,
                sparse_embeddings: false,
                ..TrainConfig::default()
            },
            ..Config::default()
        };
        let params = model.layout.init(cfg.train.seed);
        let mut backend = GpuBackend::new(ctx.clone(), &cfg, model.clone(), params)?;
        backend.train_step(&step_batch(&s)).map_err(|e| match e {
            BackendError::Gpu { source, .. } => *source,
            e => GpuError::Binding(e.to_string()),
        })?;
        let leaky = LeakyRelu::new(ctx, &s)?;
        let leaky_bytes: u64 = leaky.bufs.iter().map(wgpu::Buffer::size).sum();
        ctx.device.poll(wgpu::PollType::wait_indefinitely())?;
        ctx.check()?;
        Ok(GpuWorkloads {
            cases: super::cases(&s),
            bytes: backend.device_memory().total + leaky_bytes,
            backend,
            leaky,
        })
    }

    /// The cases, as [`super::cases`] lists them.
    pub fn cases(&self) -> &[Case] {
        &self.cases
    }

    /// Bytes of the storage buffers the workloads allocated (the backend's
    /// `device_memory`, and the LeakyReLU case's).
    pub fn allocated_bytes(&self) -> u64 {
        self.bytes
    }

    /// Records one call of case `i`.
    pub fn record(&self, i: usize, pass: &mut wgpu::ComputePass) -> Result<(), GpuError> {
        use Direction::{Backward, Forward};
        let call = match self.cases[i].op {
            Op::EmbeddingForward => Call::Embedding(Forward),
            Op::EmbeddingBackward => Call::Embedding(Backward),
            Op::LinearForward(j) => linear_call(j, Forward),
            Op::LinearBackward(j) => linear_call(j, Backward),
            Op::AttentionForward => Call::Block(0, BlockOp::Attention, Forward),
            Op::AttentionBackward => Call::Block(0, BlockOp::Attention, Backward),
            Op::ResidualDropoutForward => Call::Block(0, BlockOp::Res1, Forward),
            Op::ResidualDropoutBackward => Call::Block(0, BlockOp::Res1, Backward),
            Op::LayerNormForward => Call::Block(0, BlockOp::Ln1, Forward),
            Op::LayerNormBackward => Call::Block(0, BlockOp::Ln1, Backward),
            Op::LeakyReluBackward => {
                self.leaky.k.backward(pass, &self.leaky.binding);
                return Ok(());
            }
            Op::PoolingForward => Call::Pooling(Forward),
            Op::PoolingBackward => Call::Pooling(Backward),
            Op::LossForward => Call::Loss(Forward),
            Op::LossBackward => Call::Loss(Backward),
            Op::Adam => Call::Update,
        };
        self.backend.record_call(call, pass)
    }

    /// Records `calls` calls of case `i` into one compute pass, then times the submit
    /// and the wait for the device: launch overhead is paid once, so `elapsed / calls`
    /// is the time per call of a kernel in a long stream of work.
    pub fn time_batched(
        &self,
        ctx: &GpuContext,
        i: usize,
        calls: usize,
    ) -> Result<Duration, GpuError> {
        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("bench"),
            });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(&self.cases[i].name),
                timestamp_writes: None,
            });
            for _ in 0..calls {
                self.record(i, &mut pass)?;
            }
        }
        let commands = encoder.finish();
        let start = Instant::now();
        ctx.queue.submit([commands]);
        ctx.device.poll(wgpu::PollType::wait_indefinitely())?;
        let elapsed = start.elapsed();
        ctx.check()?;
        Ok(elapsed)
    }

    /// Times `reps` calls of case `i` with the device's timestamps: one compute pass per
    /// call with a timestamp at its start and end (`timestamp_writes`, which needs
    /// `TIMESTAMP_QUERY` only), all in one submit after one untimed call. Returns the
    /// seconds of each call. An error unless [`GpuContext::has_timestamps`].
    pub fn time_with_timestamps(
        &self,
        ctx: &GpuContext,
        i: usize,
        reps: u32,
    ) -> Result<Vec<f64>, GpuError> {
        if !ctx.has_timestamps() {
            return Err(GpuError::Device(format!(
                "{}: the device was created without TIMESTAMP_QUERY",
                ctx.describe()
            )));
        }
        let reps = reps.clamp(1, wgpu::QUERY_SET_MAX_QUERIES / 2);
        let queries = ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("bench timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count: 2 * reps,
        });
        let resolved = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("bench timestamps"),
            size: u64::from(2 * reps) * wgpu::QUERY_SIZE as u64,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("bench"),
            });
        let name = &self.cases[i].name;
        {
            let mut warm = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(name),
                timestamp_writes: None,
            });
            self.record(i, &mut warm)?;
        }
        for r in 0..reps {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(name),
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: &queries,
                    beginning_of_pass_write_index: Some(2 * r),
                    end_of_pass_write_index: Some(2 * r + 1),
                }),
            });
            self.record(i, &mut pass)?;
        }
        encoder.resolve_query_set(&queries, 0..2 * reps, &resolved, 0);
        ctx.queue.submit([encoder.finish()]);
        let words = ctx.read_u32(&resolved, 0, 4 * reps as usize)?;
        let period_ns = f64::from(ctx.queue.get_timestamp_period());
        Ok(words
            .chunks_exact(4)
            .map(|w| {
                let start = u64::from(w[0]) | u64::from(w[1]) << 32;
                let end = u64::from(w[2]) | u64::from(w[3]) << 32;
                end.saturating_sub(start) as f64 * period_ns * 1e-9
            })
            .collect())
    }

    /// Seconds per call of case `i`: the median of `reps` timestamped calls when the
    /// device has timestamps, else `time_batched` of `reps` calls (after one untimed
    /// call) divided by `reps`.
    pub fn time(&self, ctx: &GpuContext, i: usize, reps: u32) -> Result<Timing, GpuError> {
        let reps = reps.max(1);
        if ctx.has_timestamps() {
            let mut secs = self.time_with_timestamps(ctx, i, reps)?;
            secs.sort_by(f64::total_cmp);
            return Ok(Timing {
                seconds: secs[secs.len() / 2],
                timestamps: true,
            });
        }
        self.time_batched(ctx, i, 1)?;
        let total = self.time_batched(ctx, i, reps as usize)?;
        Ok(Timing {
            seconds: total.as_secs_f64() / f64::from(reps),
            timestamps: false,
        })
    }
}

/// The workload's batch ([`Inputs`]) as a training batch.
fn step_batch(s: &Shapes) -> Batch {
    let x = Inputs::new(s);
    Batch {
        size: s.batch,
        seq_len: s.seq_len,
        fields: s.fields,
        hist_item: x.hist_item,
        hist_cat: x.hist_cat,
        hist_pos: x.hist_pos,
        target_item: x.target_item,
        target_cat: x.target_cat,
        other: x.other,
        label: x.labels,
    }
}

impl LeakyRelu {
    /// Bound over seeded `ff` and `dff`, into `dff_pre`.
    fn new(ctx: &GpuContext, s: &Shapes) -> Result<LeakyRelu, GpuError> {
        let (rows, width) = (s.batch * s.t(), s.d_ff);
        let n = rows * width;
        let ff = ctx.storage_buffer("ff (B T, d_ff)", &values(n, 1001));
        let dff = ctx.storage_buffer("dff (B T, d_ff)", &values(n, 1002));
        let dff_pre = ctx.storage_buffer_zeroed("dff_pre (B T, d_ff)", n);
        let k = ElementwiseKernels::new(ctx)?;
        let all = TensorRef::whole;
        let binding = k.bind(
            ctx,
            Site::with_grads(
                ActivationBuffers {
                    out: all(&ff),
                    inp: all(&ff),
                },
                ActivationGradBuffers {
                    dinp: all(&dff_pre),
                    dout: all(&dff),
                },
                ActivationDims {
                    rows: rows as u32,
                    width: width as u32,
                    alpha: s.alpha,
                },
            ),
        )?;
        Ok(LeakyRelu {
            k,
            binding,
            bufs: [ff, dff, dff_pre],
        })
    }
}

/// Seconds per call of one case, and how they were measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timing {
    /// Seconds per call.
    pub seconds: f64,
    /// `true`: device timestamps around one call (median); `false`: host time of a
    /// batch of calls in one pass, divided by their number.
    pub timestamps: bool,
}
