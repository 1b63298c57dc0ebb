//! The cases of [`super::cases`] on the GPU launchers, and two ways to time them:
//! many calls in one pass timed by the host ([`GpuWorkloads::time_batched`]), or one
//! pass per call timed by the device's timestamps ([`GpuWorkloads::time_with_timestamps`]).

use std::time::{Duration, Instant};

use super::{Case, Inputs, Linear, Op, Shapes, values};
use bst_kernels::cpu::dropout::DropoutKey;
use bst_kernels::cpu::embedding::TokenIds;
use bst_kernels::gpu::attention::{
    AttentionBinding, AttentionBuffers, AttentionDims, AttentionGradBuffers, AttentionKernels,
};
use bst_kernels::gpu::dropout::{
    DropoutBinding, DropoutBuffers, DropoutDims, DropoutGradBuffers, DropoutKernels,
};
use bst_kernels::gpu::elementwise::{
    ActivationBuffers, ActivationDims, ActivationGradBuffers, ElementwiseBinding,
    ElementwiseKernels,
};
use bst_kernels::gpu::embedding::{
    EmbeddingBinding, EmbeddingBuffers, EmbeddingDims, EmbeddingGradBuffers, EmbeddingKernels,
    EmbeddingSegments,
};
use bst_kernels::gpu::layernorm::{
    LayerNormBinding, LayerNormBuffers, LayerNormDims, LayerNormGradBuffers, LayerNormKernels,
};
use bst_kernels::gpu::loss::{LossBinding, LossBuffers, LossDims, LossKernels};
use bst_kernels::gpu::matmul::{
    Activation, MatmulBinding, MatmulBuffers, MatmulDims, MatmulGradBuffers, MatmulKernels,
};
use bst_kernels::gpu::optim::{AdamHyper, OptimBinding, OptimKernels, UpdateRule};
use bst_kernels::gpu::pooling::{
    PoolingBinding, PoolingBuffers, PoolingDims, PoolingGradBuffers, PoolingKernels,
};
use bst_kernels::gpu::{GpuContext, GpuError, TensorRef, wgpu};

/// Pipelines of every family, created once.
struct Kernels {
    emb: EmbeddingKernels,
    mm: MatmulKernels,
    attn: AttentionKernels,
    drop: DropoutKernels,
    ln: LayerNormKernels,
    act: ElementwiseKernels,
    pool: PoolingKernels,
    loss: LossKernels,
    optim: OptimKernels,
}

/// Every case's buffers and bindings, made once; [`GpuWorkloads::record`] records a call.
pub struct GpuWorkloads {
    cases: Vec<Case>,
    k: Kernels,
    emb: EmbeddingBinding,
    linears: Vec<MatmulBinding>,
    attn: AttentionBinding,
    drop: DropoutBinding,
    ln: LayerNormBinding,
    act: ElementwiseBinding,
    pool: PoolingBinding,
    loss: LossBinding,
    adam: OptimBinding,
    /// Bytes of the storage buffers allocated here.
    bytes: u64,
}

/// Creates storage buffers and counts their bytes.
struct Alloc<'a> {
    ctx: &'a GpuContext,
    seed: u32,
    bytes: u64,
}

impl Alloc<'_> {
    /// A buffer of `len` seeded values in [-1, 1).
    fn random(&mut self, label: &str, len: usize) -> wgpu::Buffer {
        self.seed += 1;
        self.data(label, &values(len, self.seed))
    }

    fn zeros(&mut self, label: &str, len: usize) -> wgpu::Buffer {
        self.bytes += 4 * len.max(1) as u64;
        self.ctx.storage_buffer_zeroed(label, len)
    }

    fn data<T: bytemuck::Pod>(&mut self, label: &str, data: &[T]) -> wgpu::Buffer {
        let buf = self.ctx.storage_buffer(label, data);
        self.bytes += buf.size();
        buf
    }
}

fn all(b: &wgpu::Buffer) -> TensorRef<'_> {
    TensorRef::whole(b)
}

/// Tensors that several cases share, as in the model: the token activations and their
/// gradients, z and its gradient, the valid mask.
struct Shared {
    x: wgpu::Buffer,     // (B, T, d): the embedding output, LayerNorm's dinp
    out: wgpu::Buffer,   // (B, T, d): dropout and LayerNorm output, pooling's dx
    a: wgpu::Buffer,     // (B, T, d), random: a second operand (dropout, LayerNorm, pooling)
    dx: wgpu::Buffer,    // (B, T, d), random
    z: wgpu::Buffer,     // (B, zw)
    dz: wgpu::Buffer,    // (B, zw), random
    valid: wgpu::Buffer, // (B, T) u32
}

/// What binding the cases needs: the device, pipelines, allocator, shapes and inputs.
struct Setup<'a> {
    ctx: &'a GpuContext,
    k: &'a Kernels,
    a: Alloc<'a>,
    s: &'a Shapes,
    x: Inputs,
}

impl GpuWorkloads {
    /// Creates the pipelines, allocates and fills every buffer, binds every case and
    /// uploads the embedding segments of the batch.
    pub fn new(ctx: &GpuContext, s: &Shapes) -> Result<GpuWorkloads, GpuError> {
        let k = Kernels {
            emb: EmbeddingKernels::new(ctx)?,
            mm: MatmulKernels::new(ctx)?,
            attn: AttentionKernels::new(ctx)?,
            drop: DropoutKernels::new(ctx)?,
            ln: LayerNormKernels::new(ctx)?,
            act: ElementwiseKernels::new(ctx)?,
            pool: PoolingKernels::new(ctx)?,
            loss: LossKernels::new(ctx)?,
            optim: OptimKernels::new(ctx)?,
        };
        let mut setup = Setup {
            ctx,
            k: &k,
            a: Alloc {
                ctx,
                seed: 1000,
                bytes: 0,
            },
            s,
            x: Inputs::new(s),
        };
        let sh = setup.shared();
        let emb = setup.embedding(&sh)?;
        let linears = s
            .linears()
            .iter()
            .map(|l| setup.linear(l))
            .collect::<Result<_, _>>()?;
        let attn = setup.attention(&sh)?;
        let (drop, ln) = setup.residual_and_layernorm(&sh)?;
        let act = setup.leaky_relu()?;
        let pool = setup.pooling(&sh)?;
        let loss = setup.loss()?;
        let adam = setup.adam()?;
        let bytes = setup.a.bytes;
        ctx.device.poll(wgpu::PollType::wait_indefinitely())?;
        ctx.check()?;
        Ok(GpuWorkloads {
            cases: super::cases(s),
            k,
            emb,
            linears,
            attn,
            drop,
            ln,
            act,
            pool,
            loss,
            adam,
            bytes,
        })
    }

    /// The cases, as [`super::cases`] lists them.
    pub fn cases(&self) -> &[Case] {
        &self.cases
    }

    /// Bytes of the storage buffers the workloads allocated.
    pub fn allocated_bytes(&self) -> u64 {
        self.bytes
    }

    /// Records one call of case `i`.
    pub fn record(&self, i: usize, pass: &mut wgpu::ComputePass) {
        let k = &self.k;
        match self.cases[i].op {
            Op::EmbeddingForward => {
                k.emb.token_embedding_forward(pass, &self.emb);
                k.emb.other_embedding_forward(pass, &self.emb);
            }
            Op::EmbeddingBackward => {
                k.emb.other_embedding_backward(pass, &self.emb);
                k.emb.token_embedding_backward(pass, &self.emb);
            }
            Op::LinearForward(j) => k.mm.forward(pass, &self.linears[j]),
            Op::LinearBackward(j) => k.mm.backward(pass, &self.linears[j]),
            Op::AttentionForward => k.attn.forward(pass, &self.attn),
            Op::AttentionBackward => k.attn.backward(pass, &self.attn),
            Op::ResidualDropoutForward => k.drop.forward(pass, &self.drop),
            Op::ResidualDropoutBackward => k.drop.backward(pass, &self.drop),
            Op::LayerNormForward => k.ln.forward(pass, &self.ln),
            Op::LayerNormBackward => k.ln.backward(pass, &self.ln),
            Op::LeakyReluBackward => k.act.backward(pass, &self.act),
            Op::PoolingForward => k.pool.forward(pass, &self.pool),
            Op::PoolingBackward => k.pool.backward(pass, &self.pool),
            Op::LossForward => k.loss.forward(pass, &self.loss),
            Op::LossBackward => k.loss.backward(pass, &self.loss),
            Op::Adam => k.optim.update(pass, &self.adam),
        }
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
                self.record(i, &mut pass);
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
            self.record(i, &mut warm);
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
            self.record(i, &mut pass);
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

impl Setup<'_> {
    fn shared(&mut self) -> Shared {
        let s = self.s;
        let (n, d, zw) = (s.batch * s.t(), s.d(), s.z_width());
        let a = &mut self.a;
        Shared {
            x: a.zeros("x (B, T, d)", n * d),
            out: a.zeros("out (B, T, d)", n * d),
            a: a.random("a (B, T, d)", n * d),
            dx: a.random("dx (B, T, d)", n * d),
            z: a.zeros("z (B, zw)", s.batch * zw),
            dz: a.random("dz (B, zw)", s.batch * zw),
            valid: a.data("valid (B, T)", &self.x.valid),
        }
    }

    /// The four tables and their gradients, the ids, and the segments of the batch.
    fn embedding(&mut self, sh: &Shared) -> Result<EmbeddingBinding, GpuError> {
        let (s, x) = (self.s, &self.x);
        // The ids in one buffer (a history and its target must share one), laid out
        // [hist_item | target_item | hist_cat | target_cat | hist_pos | other].
        let ids: Vec<u32> = [
            &x.hist_item,
            &x.target_item,
            &x.hist_cat,
            &x.target_cat,
            &x.hist_pos,
            &x.other,
        ]
        .into_iter()
        .flatten()
        .copied()
        .collect();
        let ids = self.a.data("ids", &ids);
        let id_at = |at: u32| TensorRef::new(&ids, at);
        let u = |v: usize| v as u32;
        let (bl, b) = (u(s.batch * s.seq_len), u(s.batch));
        let (di, dc, dp) = s.widths;
        let widths = [di, dc, dp, s.d_other];
        let tables: Vec<_> = (0..4)
            .map(|i| self.a.random("table", s.vocab[i] * widths[i]))
            .collect();
        let dtables: Vec<_> = (0..4)
            .map(|i| self.a.zeros("dtable", s.vocab[i] * widths[i]))
            .collect();
        let dims = EmbeddingDims {
            rows: b,
            seq_len: u(s.seq_len),
            d_item: u(di),
            d_cat: u(dc),
            d_pos: u(dp),
            fields: u(s.fields),
            d_other: u(s.d_other),
            z_width: u(s.z_width()),
            z_off: u(s.pooled()),
            n_item: u(s.vocab[0]),
            n_cat: u(s.vocab[1]),
            n_pos: u(s.vocab[2]),
            n_other: u(s.vocab[3]),
        };
        let segments = self
            .a
            .zeros("segments", EmbeddingSegments::buffer_len(&dims)?);
        let mut emb = self.k.emb.bind(
            self.ctx,
            &EmbeddingBuffers {
                x: all(&sh.x),
                z: all(&sh.z),
                e_item: all(&tables[0]),
                e_cat: all(&tables[1]),
                e_pos: all(&tables[2]),
                e_other: all(&tables[3]),
                hist_item: id_at(0),
                target_item: id_at(bl),
                hist_cat: id_at(bl + b),
                target_cat: id_at(2 * bl + b),
                hist_pos: id_at(2 * bl + 2 * b),
                other: id_at(3 * bl + 2 * b),
            },
            Some(&EmbeddingGradBuffers {
                de_item: all(&dtables[0]),
                de_cat: all(&dtables[1]),
                de_pos: all(&dtables[2]),
                de_other: all(&dtables[3]),
                dx: all(&sh.dx),
                dz: all(&sh.dz),
                segments: all(&segments),
            }),
            dims,
        )?;
        let token_ids = TokenIds {
            hist_item: &x.hist_item,
            hist_cat: &x.hist_cat,
            hist_pos: &x.hist_pos,
            target_item: &x.target_item,
            target_cat: &x.target_cat,
        };
        let segs = EmbeddingSegments::build(&dims, b, token_ids, &x.other)?;
        emb.set_segments(self.ctx, &segs);
        Ok(emb)
    }

    /// One linear layer's own tensors: input, weight, bias, output (and pre-activation),
    /// their gradients.
    fn linear(&mut self, lin: &Linear) -> Result<MatmulBinding, GpuError> {
        let a = &mut self.a;
        let (mi, mo, io) = (
            lin.rows * lin.n_in,
            lin.rows * lin.n_out,
            lin.n_out * lin.n_in,
        );
        let inp = a.random("inp", mi);
        let weight = a.random("weight", io);
        let bias = a.random("bias", lin.n_out);
        let out = a.zeros("out", mo);
        let pre = lin.leaky.then(|| a.zeros("pre", mo));
        let dinp = a.zeros("dinp", mi);
        let dweight = a.zeros("dweight", io);
        let dbias = a.zeros("dbias", lin.n_out);
        let dout = a.random("dout", mo);
        let act = if lin.leaky {
            Activation::LeakyRelu {
                alpha: self.s.alpha,
            }
        } else {
            Activation::None
        };
        self.k.mm.bind(
            self.ctx,
            &MatmulBuffers {
                out: all(&out),
                pre: pre.as_ref().map(all),
                inp: all(&inp),
                weight: all(&weight),
                bias: Some(all(&bias)),
            },
            Some(&MatmulGradBuffers {
                dinp: Some(all(&dinp)),
                dweight: all(&dweight),
                dbias: Some(all(&dbias)),
                dout: all(&dout),
                dinp_act: None,
            }),
            MatmulDims {
                rows: lin.rows as u32,
                n_in: lin.n_in as u32,
                n_out: lin.n_out as u32,
                act,
            },
        )
    }

    fn attention(&mut self, sh: &Shared) -> Result<AttentionBinding, GpuError> {
        let s = self.s;
        let (b, t, d) = (s.batch, s.t(), s.d());
        let qkv = self.a.random("qkv (B, T, 3d)", b * t * 3 * d);
        let att = self.a.zeros("att (B, h, T, T)", b * s.heads * t * t);
        let atty = self.a.random("atty (B, T, d)", b * t * d);
        let dqkv = self.a.zeros("dqkv (B, T, 3d)", b * t * 3 * d);
        self.k.attn.bind(
            self.ctx,
            &AttentionBuffers {
                out: all(&atty),
                att: all(&att),
                qkv: all(&qkv),
                valid: all(&sh.valid),
            },
            Some(&AttentionGradBuffers {
                dqkv: all(&dqkv),
                // The backward reads dout; the forward's output stands in for it.
                dout: all(&atty),
            }),
            AttentionDims {
                batch: b as u32,
                t: t as u32,
                d: d as u32,
                heads: s.heads as u32,
            },
        )
    }

    /// `out = dx + dropout(a)` and `out = LN(a)`, with their backwards, over (B T, d).
    fn residual_and_layernorm(
        &mut self,
        sh: &Shared,
    ) -> Result<(DropoutBinding, LayerNormBinding), GpuError> {
        let s = self.s;
        let (n, d) = (s.batch * s.t(), s.d());
        let key = DropoutKey {
            p: s.dropout,
            seed: 0,
            step: 0,
            site: 0,
        };
        let drop = self.k.drop.bind(
            self.ctx,
            &DropoutBuffers {
                out: all(&sh.out),
                x: all(&sh.dx),
                a: all(&sh.a),
            },
            Some(&DropoutGradBuffers {
                da: all(&sh.out),
                dout: all(&sh.dx),
            }),
            DropoutDims {
                rows: n as u32,
                width: d as u32,
            },
            key,
        )?;
        let a = &mut self.a;
        let (w, bias) = (a.random("ln weight", d), a.random("ln bias", d));
        let (dw, dbias) = (a.zeros("ln dweight", d), a.zeros("ln dbias", d));
        let (mean, rstd) = (a.zeros("mean", n), a.zeros("rstd", n));
        let ln = self.k.ln.bind(
            self.ctx,
            &LayerNormBuffers {
                out: all(&sh.out),
                mean: all(&mean),
                rstd: all(&rstd),
                inp: all(&sh.a),
                weight: all(&w),
                bias: all(&bias),
            },
            Some(&LayerNormGradBuffers {
                dinp: all(&sh.x),
                dweight: all(&dw),
                dbias: all(&dbias),
                dout: all(&sh.dx),
            }),
            LayerNormDims {
                rows: n as u32,
                c: d as u32,
            },
        )?;
        Ok((drop, ln))
    }

    /// The FFN's LeakyReLU over (B T, d_ff), bound for its backward.
    fn leaky_relu(&mut self) -> Result<ElementwiseBinding, GpuError> {
        let s = self.s;
        let n = s.batch * s.t() * s.d_ff;
        let ff = self.a.random("ff (B T, d_ff)", n);
        let dff = self.a.random("dff (B T, d_ff)", n);
        let dff_pre = self.a.zeros("dff_pre (B T, d_ff)", n);
        self.k.act.bind(
            self.ctx,
            &ActivationBuffers {
                out: all(&ff),
                inp: all(&ff),
            },
            Some(&ActivationGradBuffers {
                dinp: all(&dff_pre),
                dout: all(&dff),
            }),
            ActivationDims {
                rows: (s.batch * s.t()) as u32,
                width: s.d_ff as u32,
                alpha: s.alpha,
            },
        )
    }

    fn pooling(&mut self, sh: &Shared) -> Result<PoolingBinding, GpuError> {
        let s = self.s;
        self.k.pool.bind(
            self.ctx,
            &PoolingBuffers {
                out: all(&sh.z),
                x: all(&sh.a),
                valid: all(&sh.valid),
            },
            Some(&PoolingGradBuffers {
                dx: all(&sh.out),
                dout: all(&sh.dz),
            }),
            PoolingDims {
                rows: s.batch as u32,
                t: s.t() as u32,
                d: s.d() as u32,
                row: s.z_width() as u32,
                off: 0,
                mode: s.pool,
            },
        )
    }

    fn loss(&mut self) -> Result<LossBinding, GpuError> {
        let b = self.s.batch;
        let a = &mut self.a;
        let logits = a.random("logits (B)", b);
        let labels = a.data("labels (B)", &self.x.labels);
        let probs = a.zeros("probs (B)", b);
        let losses = a.zeros("losses (B)", b);
        let mean = a.zeros("mean loss", 1);
        let dlogits = a.zeros("dlogits (B)", b);
        self.k.loss.bind(
            self.ctx,
            &LossBuffers {
                probs: all(&probs),
                losses: all(&losses),
                mean: all(&mean),
                logits: all(&logits),
                labels: all(&labels),
            },
            Some(all(&dlogits)),
            LossDims {
                rows: b as u32,
                accumulate_mean: false,
            },
        )
    }

    /// Adam over an arena of the model's parameter count.
    fn adam(&mut self) -> Result<OptimBinding, GpuError> {
        let n = self.s.params;
        let a = &mut self.a;
        let (params, grads) = (a.random("params", n), a.random("grads", n));
        let (m, v) = (a.zeros("adam m", n), a.zeros("adam v", n));
        self.k.optim.bind(
            self.ctx,
            all(&params),
            all(&grads),
            UpdateRule::Adam {
                hp: AdamHyper::default(),
                m: all(&m),
                v: all(&v),
            },
            n as u32,
        )
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
