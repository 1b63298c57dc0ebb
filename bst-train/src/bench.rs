//! `bst-train bench`: how fast this machine trains and scores BST, as ONE JSON object on
//! standard output (notes go to standard error). The README's "Benchmarks" section
//! describes every field; `benches/compare.sh` sets it beside the PyTorch reference.
//!
//! What is measured, in order:
//! - `train`: `--steps` training steps of `--batch` samples after `--warmup` untimed ones,
//!   batches gathered from the shuffled training samples as in training, the loss read
//!   every `Backend::loss_read_interval` steps as in training (10 on a GPU), and once at
//!   the end, which waits for the device.
//! - `inference`: `Backend::predict` of the eval batch (`--eval-batch`, default
//!   `train.eval_batch`), probabilities read back, repeated.
//! - `scoring`: `Backend::predict_requests` of `--candidates` items (1,000) for one user
//!   (one request: the history computed once where that is exact), the readback
//!   included; median and p99 (nearest rank) of the runs; and the median of
//!   `Backend::predict` of the same candidates as one sample each, for the record.
//! - `memory` (GPU): the bytes of the GPU backend's buffers after the runs, as the
//!   backend counted them when it created them (`GpuBackend::device_memory`), and what
//!   wgpu's allocator gained from before the backend's creation to then, where the
//!   adapter reports it (a cross-check: only alignment padding may differ).
//! - `kernels`: every kernel family of `bst_benches::workload` in isolation at the batch's
//!   shapes: on a GPU with `TIMESTAMP_QUERY`, one compute pass per call with timestamps at
//!   its start and end (median of the calls); without it, calls recorded into one pass
//!   and timed by the host; on the CPU, the reference ops timed by the host (median).
//!
//! Runs and kernel calls repeat up to `--runs` / `--kernel-reps` times but stop after
//! about `--max-seconds` per measurement (at least [`MIN_RUNS`]), so a run on a slow
//! software adapter finishes in about a minute.

use crate::cli::BenchArgs;
use crate::run::load_data;
use anyhow::{Context, bail};
use bst_benches::workload::{Case, CpuWorkloads, GpuWorkloads};
use bst_benches::{allocator_bytes, kernel_shapes, scoring_batch};
use bst_core::backend::{Backend, BackendError, CpuBackend, PrepareBatch};
use bst_core::batch::Batch;
use bst_core::config::{Config, ModelConfig, Optimizer};
use bst_core::data::Dataset;
use bst_core::gpu_backend::{DeviceMemory, GpuBackend};
use bst_core::model::Model;
use bst_core::prefetch::for_each_batch;
use bst_core::requests::Requests;
use bst_core::train::epoch_order;
use bst_kernels::gpu::{GpuContext, GpuOptions, wgpu};
use serde::Serialize;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

/// Version of the JSON layout; raised when a field changes meaning. 2: `memory` is the
/// backend's own count of its buffers, uniforms and readback included (breakdown
/// `bindings` and `readback` instead of `layernorm_scratch`).
const SCHEMA: u32 = 2;
/// Fewest runs of a repeated measurement, whatever the time limit.
pub const MIN_RUNS: usize = 3;

/// The device the benchmark runs on.
enum Device {
    Cpu,
    Gpu(Arc<GpuContext>),
}

pub fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    // Under mpirun: the data-parallel training step only.
    if let Some(member) = crate::cluster::member() {
        return crate::bench_group::bench_group(args, member);
    }
    let r = &args.run;
    if r.resume.is_some() || r.out.is_some() || r.epochs.is_some() {
        bail!(
            "bench trains for --steps steps and writes no run folder: leave out --resume, --out and --epochs"
        );
    }
    if args.steps == 0 || args.candidates == 0 || args.runs == 0 {
        bail!("--steps, --candidates and --runs must be at least 1");
    }
    let mut cfg = r.config()?;
    let eval_batch = args.eval_batch.unwrap_or(cfg.train.eval_batch).max(1);
    // The backend's buffers hold the largest of the three batches.
    cfg.train.eval_batch = eval_batch.max(args.candidates);
    let src = r.source()?;
    let ds = load_data(&src, &cfg, false)?;
    if ds.train.is_empty() {
        bail!("{src} has no training samples to benchmark with");
    }
    let device = choose_device(r.device)?;
    let sizes = ds.vocab.sizes();
    let (mut cpu, mut gpu, mut before) = (None, None, None);
    let backend: &mut dyn Backend = match &device {
        Device::Cpu => cpu.insert(CpuBackend::new(&cfg, sizes)),
        Device::Gpu(ctx) => {
            before = allocator_bytes(ctx);
            gpu.insert(GpuBackend::init(ctx.clone(), &cfg, sizes)?)
        }
    };
    eprintln!("bench: {} on {}", src, backend.describe());

    let train = bench_train(backend, &ds, &cfg, args)?;
    let inference = bench_inference(backend, &ds, eval_batch, args)?;
    let scoring = bench_scoring(backend, &ds, args)?;
    let model = backend.model().clone();
    // After the runs, with the backend alive: what it holds, and what the allocator
    // gained since before its creation.
    let memory = gpu.as_ref().map(GpuBackend::device_memory);
    let allocated = match &device {
        Device::Gpu(ctx) => allocator_bytes(ctx)
            .zip(before)
            .map(|(a, b)| a.saturating_sub(b)),
        Device::Cpu => None,
    };
    drop((cpu, gpu));
    let v = &ds.vocab;
    let vocab = VocabReport {
        items: v.n_items(),
        cats: v.n_cats(),
        pos_buckets: cfg.model.pos_buckets,
        other: v.n_other(),
        field_sizes: v.fields.iter().map(|f| f.size).collect(),
    };
    // The kernels' workloads hold arenas of the whole model: not beside the data, which
    // would set the process's peak (at 100M Taobao rows, 0.6 GB above training's).
    drop(ds);
    let cap = cfg.train.batch.max(cfg.train.eval_batch);
    let (adapter, memory, kernels) = match &device {
        Device::Cpu => (
            Adapter::Cpu("cpu"),
            None,
            bench_cpu_kernels(&model, &cfg, args),
        ),
        Device::Gpu(ctx) => (
            Adapter::Gpu(adapter(ctx)),
            Some(Memory {
                peak_device_bytes: memory.map_or(0, |m| m.total),
                method: "the sum of the sizes of the buffers the GPU backend created, counted \
                         as it created them (GpuBackend::device_memory): arenas, inputs, \
                         activations, gradients, the kernels' uniforms and scratch, the \
                         readback staging buffer",
                buffers_hold_samples: cap,
                breakdown: memory.unwrap_or_default(),
                allocator_bytes: allocated,
            }),
            bench_gpu_kernels(ctx, &model, &cfg, args)?,
        ),
    };
    let report = Report {
        schema: SCHEMA,
        adapter,
        config: ReportConfig {
            model: cfg.model.clone(),
            batch: cfg.train.batch,
            eval_batch,
            optimizer: cfg.train.optimizer,
            lr: cfg.train.lr(),
            emb_lr_scale: cfg.train.emb_lr_scale(),
            seed: cfg.train.seed,
            data: src.to_string(),
            vocab,
            params: model.layout.total,
        },
        train,
        inference,
        scoring,
        memory,
        kernels,
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// The JSON object `bst-train bench` prints (README: "Benchmarks").
#[derive(Serialize)]
struct Report {
    schema: u32,
    adapter: Adapter,
    config: ReportConfig,
    train: Train,
    inference: Inference,
    scoring: Scoring,
    /// `null` on the CPU.
    memory: Option<Memory>,
    /// `null` with --no-kernels.
    kernels: Option<Kernels>,
}

/// `"cpu"`, or the GPU adapter.
#[derive(Serialize)]
#[serde(untagged)]
enum Adapter {
    Cpu(&'static str),
    Gpu(GpuAdapter),
}

#[derive(Serialize)]
struct GpuAdapter {
    name: String,
    backend: String,
    device_type: String,
    driver: String,
    software: bool,
    timestamp_query: bool,
}

/// What the PyTorch bench needs to build the same model on the same vocabularies.
#[derive(Serialize)]
struct ReportConfig {
    model: ModelConfig,
    batch: usize,
    eval_batch: usize,
    optimizer: Optimizer,
    lr: f32,
    emb_lr_scale: f32,
    seed: u64,
    data: String,
    vocab: VocabReport,
    params: usize,
}

#[derive(Serialize)]
struct VocabReport {
    items: usize,
    cats: usize,
    pos_buckets: usize,
    /// Rows of the stacked other-feature table: the sum of `field_sizes`.
    other: usize,
    field_sizes: Vec<usize>,
}

#[derive(Serialize)]
struct Train {
    samples_per_sec: f64,
    batch: usize,
    steps: usize,
    warmup_steps: usize,
    seconds: f64,
    loss_read_every: usize,
    mean_loss: f64,
    host: Host,
}

/// The host's work per training batch (median milliseconds), see `bench_host`.
#[derive(Serialize)]
struct Host {
    gather_ms: f64,
    /// `null` for a backend without preparation (the CPU).
    prepare_ms: Option<f64>,
    /// Threads the preparation may use (rayon's pool).
    threads: usize,
}

#[derive(Serialize)]
struct Inference {
    samples_per_sec: f64,
    batch: usize,
    runs: usize,
    seconds: f64,
}

#[derive(Serialize)]
struct Scoring {
    candidates: usize,
    runs: usize,
    median_ms: f64,
    p99_ms: f64,
    min_ms: f64,
    mean_ms: f64,
    includes_readback: bool,
    /// Whether the backend computed the history once (`Backend::shares_history`).
    history_once: bool,
    /// The same candidates scored one sample per candidate (`Backend::predict`).
    per_sample_median_ms: f64,
}

#[derive(Serialize)]
struct Memory {
    peak_device_bytes: u64,
    method: &'static str,
    buffers_hold_samples: usize,
    breakdown: DeviceMemory,
    /// What wgpu's allocator gained from before `GpuBackend::init` to after the runs
    /// (alignment padding included), where the backend reports it: a cross-check of
    /// `peak_device_bytes`.
    allocator_bytes: Option<u64>,
}

#[derive(Serialize)]
struct Kernels {
    timer: &'static str,
    timestamps: bool,
    batch: usize,
    results: Vec<KernelTime>,
}

#[derive(Serialize)]
struct KernelTime {
    name: String,
    ms: f64,
    gflop_per_s: f64,
    gb_per_s: f64,
    flop: f64,
    bytes: f64,
    calls: usize,
}

/// `--device`: the CPU, or a GPU context with timestamps where the adapter has them.
/// `auto` takes a hardware GPU only, as `train` does.
fn choose_device(device: crate::device::Device) -> anyhow::Result<Device> {
    use crate::device::Device as D;
    let context = |allow_software| {
        let opts = GpuOptions {
            allow_software,
            ..Default::default()
        };
        GpuContext::with_optional_features(&opts, wgpu::Features::TIMESTAMP_QUERY)
    };
    Ok(match device {
        D::Cpu => Device::Cpu,
        D::Gpu => Device::Gpu(Arc::new(context(false)?)),
        D::Auto => match context(true) {
            Ok(ctx) if !ctx.is_software() => Device::Gpu(Arc::new(ctx)),
            Ok(ctx) => {
                eprintln!(
                    "note: only a software GPU adapter ({}); benchmarking the CPU (--device gpu forces it)",
                    ctx.describe()
                );
                Device::Cpu
            }
            Err(_) => {
                eprintln!(
                    "note: no GPU adapter found; benchmarking the CPU (--device gpu says why)"
                );
                Device::Cpu
            }
        },
    })
}

fn adapter(ctx: &GpuContext) -> GpuAdapter {
    let i = &ctx.adapter_info;
    GpuAdapter {
        name: i.name.clone(),
        backend: format!("{:?}", i.backend),
        device_type: format!("{:?}", i.device_type),
        driver: format!("{} {}", i.driver, i.driver_info).trim().to_string(),
        software: ctx.is_software(),
        timestamp_query: ctx.has_timestamps(),
    }
}

/// Training samples per second over `--steps` steps after `--warmup`, with the batches
/// gathered and prepared ahead on a producer thread as in training
/// ([`bst_core::prefetch`]); and the host's work per batch, timed alone.
fn bench_train(
    backend: &mut dyn Backend,
    ds: &Dataset,
    cfg: &Config,
    args: &BenchArgs,
) -> anyhow::Result<Train> {
    let b = cfg.train.batch;
    let shuffled = epoch_order(ds.train.len(), cfg.train.seed, 1);
    // Full batches, wrapping around the shuffled samples.
    let order: Vec<u32> = (0..(args.warmup + args.steps) * b)
        .map(|j| shuffled[j % shuffled.len()])
        .collect();
    let preparer = backend.batch_preparer();
    let host = bench_host(ds, &order[..b], preparer.as_deref(), args);
    let every = backend.loss_read_interval().max(1);
    let (mut loss_sum, mut loss_steps) = (0.0, 0);
    let mut start = Instant::now();
    if args.warmup == 0 {
        backend.take_loss()?;
    }
    for_each_batch(
        &ds.train,
        &order,
        b,
        0,
        preparer.as_deref(),
        |i, batch, p| {
            backend.train_step_prepared(batch, p)?;
            let s = i + 1;
            if s == args.warmup {
                backend.take_loss()?; // waits for the warm-up
                start = Instant::now();
            } else if s > args.warmup {
                let timed = s - args.warmup;
                if timed.is_multiple_of(every) || timed == args.steps {
                    let (sum, k) = backend.take_loss()?;
                    loss_sum += sum;
                    loss_steps += k;
                }
            }
            Ok::<(), BackendError>(())
        },
    )?;
    let seconds = start.elapsed().as_secs_f64();
    let loss = loss_sum / loss_steps.max(1) as f64;
    if !loss.is_finite() {
        bail!("the training loss is {loss} after the benchmark's steps");
    }
    Ok(Train {
        samples_per_sec: (args.steps * b) as f64 / seconds,
        batch: b,
        steps: args.steps,
        warmup_steps: args.warmup,
        seconds,
        loss_read_every: every,
        mean_loss: loss,
        host,
    })
}

/// The host's work per training batch, timed with nothing else running:
/// the gather of the samples, and the backend's preparation (the GPU's embedding
/// segments). Training overlaps both with the device's work; when their sum exceeds the
/// time of a step, the host is the bottleneck.
fn bench_host(
    ds: &Dataset,
    idx: &[u32],
    preparer: Option<&dyn PrepareBatch>,
    args: &BenchArgs,
) -> Host {
    let mut batch = Batch::default();
    let gather = repeat(args.runs, args.max_seconds.min(2.0), || {
        batch.gather(&ds.train, idx)
    });
    // Into a recycled preparation, as the prefetch producer prepares.
    let prepare = preparer.map(|p| {
        let mut spent = p.prepare(&batch);
        repeat(args.runs, args.max_seconds.min(2.0), || {
            p.prepare_into(&batch, &mut spent);
            std::hint::black_box(&spent);
        })
    });
    let median_ms = |t: &[f64]| {
        let mut t = t.to_vec();
        t.sort_by(f64::total_cmp);
        1e3 * t[t.len() / 2]
    };
    Host {
        gather_ms: median_ms(&gather),
        prepare_ms: prepare.as_deref().map(median_ms),
        threads: rayon::current_num_threads(),
    }
}

/// Runs `f` once untimed, then up to `runs` times (at least [`MIN_RUNS`]) until
/// `max_seconds` have passed; returns each timed run's seconds.
fn repeat(runs: usize, max_seconds: f64, mut f: impl FnMut()) -> Vec<f64> {
    let Ok(times) = try_repeat(runs, max_seconds, || {
        f();
        Ok::<(), Infallible>(())
    });
    times
}

/// [`repeat`] of a run that can fail (the backend's): stops at the first error.
fn try_repeat<E>(
    runs: usize,
    max_seconds: f64,
    mut f: impl FnMut() -> Result<(), E>,
) -> Result<Vec<f64>, E> {
    f()?;
    let start = Instant::now();
    let mut times = Vec::new();
    while times.len() < runs.max(1)
        && (times.len() < MIN_RUNS || start.elapsed().as_secs_f64() < max_seconds)
    {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(times)
}

/// Inference samples per second: predictions of the eval batch, read back.
fn bench_inference(
    backend: &mut dyn Backend,
    ds: &Dataset,
    eval_batch: usize,
    args: &BenchArgs,
) -> anyhow::Result<Inference> {
    let n = ds.train.len();
    let idx: Vec<usize> = (0..eval_batch).map(|i| i % n).collect();
    let mut batch = Batch::default();
    batch.gather(&ds.train, &idx);
    let mut probs = vec![0.0; eval_batch];
    let times = try_repeat(args.runs, args.max_seconds, || {
        backend.predict(&batch, &mut probs)
    })?;
    let seconds: f64 = times.iter().sum();
    Ok(Inference {
        samples_per_sec: (eval_batch * times.len()) as f64 / seconds,
        batch: eval_batch,
        runs: times.len(),
        seconds,
    })
}

/// Training samples searched for the scoring benchmark's user (the whole split of a
/// large log would not fit materialised).
const SCORING_PREFIX: usize = 100_000;

/// Latency of scoring `--candidates` items for one user, the readback included: as one
/// request (`Backend::predict_requests`: the history once, where that is exact), and, for
/// the record, as one sample per candidate (`Backend::predict`, the path before requests).
fn bench_scoring(
    backend: &mut dyn Backend,
    ds: &Dataset,
    args: &BenchArgs,
) -> anyhow::Result<Scoring> {
    // A prefix of the training split, materialised: the user is taken from it.
    let prefix = ds
        .train
        .samples_range(0..ds.train.len().min(SCORING_PREFIX));
    let batch = scoring_batch(&prefix, &ds.vocab, args.candidates);
    let req = Requests::from_batch(&batch);
    let mut probs = vec![0.0; args.candidates];
    let request = latencies(try_repeat(args.runs, args.max_seconds, || {
        backend.predict_requests(&req, &mut probs)
    })?);
    let per_sample = latencies(try_repeat(args.runs, args.max_seconds, || {
        backend.predict(&batch, &mut probs)
    })?);
    Ok(Scoring {
        candidates: args.candidates,
        runs: request.len(),
        median_ms: rank(&request, 0.5),
        p99_ms: rank(&request, 0.99),
        min_ms: request[0],
        mean_ms: request.iter().sum::<f64>() / request.len() as f64,
        includes_readback: true,
        history_once: backend.shares_history(),
        per_sample_median_ms: rank(&per_sample, 0.5),
    })
}

/// Seconds to sorted milliseconds.
fn latencies(seconds: Vec<f64>) -> Vec<f64> {
    let mut ms: Vec<f64> = seconds.into_iter().map(|s| 1e3 * s).collect();
    ms.sort_by(f64::total_cmp);
    ms
}

/// Nearest rank of sorted `ms`: the smallest time at least `p` of the runs do not exceed.
fn rank(ms: &[f64], p: f64) -> f64 {
    ms[((p * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1]
}

/// Milliseconds per call, GFLOP/s and GB/s of one case (see `bst_benches::workload`).
fn kernel_time(case: &Case, seconds: f64, calls: usize) -> KernelTime {
    KernelTime {
        name: case.name.clone(),
        ms: 1e3 * seconds,
        gflop_per_s: case.flop / seconds / 1e9,
        gb_per_s: case.bytes / seconds / 1e9,
        flop: case.flop,
        bytes: case.bytes,
        calls,
    }
}

/// Calls per case within the kernels' share of `--max-seconds`, given one call's time.
fn kernel_calls(args: &BenchArgs, cases: usize, one_call: f64) -> usize {
    let budget = args.max_seconds / cases.max(1) as f64;
    let fit = (budget / one_call.max(1e-9)) as usize;
    fit.clamp(MIN_RUNS, args.kernel_reps.max(MIN_RUNS))
}

fn bench_gpu_kernels(
    ctx: &Arc<GpuContext>,
    model: &Model,
    cfg: &Config,
    args: &BenchArgs,
) -> anyhow::Result<Option<Kernels>> {
    if args.no_kernels {
        return Ok(None);
    }
    if model.dims.blocks == 0 {
        // The cases time the training step's own bindings of block 0.
        eprintln!("bench: the model has no transformer block: no GPU kernel cases");
        return Ok(None);
    }
    let w =
        GpuWorkloads::new(ctx, model, cfg.train.batch).context("binding the kernel workloads")?;
    let mut results = Vec::new();
    for (i, case) in w.cases().iter().enumerate() {
        // One call in its own submit: a warm-up, and the time that sizes the repetitions.
        let one = w.time_batched(ctx, i, 1)?.as_secs_f64();
        let calls = kernel_calls(args, w.cases().len(), one);
        let t = w.time(ctx, i, calls as u32)?;
        results.push(kernel_time(case, t.seconds, calls));
    }
    let timer = if ctx.has_timestamps() {
        "gpu_timestamps: one compute pass per call with timestamp_writes at its start and end; median of the calls"
    } else {
        "gpu_host_batched: the calls recorded into one compute pass, submit and wait timed by the host, divided by the calls"
    };
    Ok(Some(Kernels {
        timer,
        timestamps: ctx.has_timestamps(),
        batch: cfg.train.batch,
        results,
    }))
}

fn bench_cpu_kernels(model: &Model, cfg: &Config, args: &BenchArgs) -> Option<Kernels> {
    if args.no_kernels {
        return None;
    }
    let mut w = CpuWorkloads::new(&kernel_shapes(model, cfg.train.batch));
    let cases = w.cases().to_vec();
    let mut results = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let t = Instant::now();
        w.run(i);
        let calls = kernel_calls(args, cases.len(), t.elapsed().as_secs_f64());
        let mut secs: Vec<f64> = (0..calls)
            .map(|_| {
                let t = Instant::now();
                w.run(i);
                t.elapsed().as_secs_f64()
            })
            .collect();
        secs.sort_by(f64::total_cmp);
        let median = secs[secs.len() / 2].max(1e-9);
        results.push(kernel_time(case, median, calls));
    }
    Some(Kernels {
        timer: "cpu_host: the CPU reference op timed by the host; median of the calls",
        timestamps: false,
        batch: cfg.train.batch,
        results,
    })
}
