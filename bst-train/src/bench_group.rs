//! `bst-train bench` under `mpirun` (README: "Data-parallel training"): the training
//! step of a data-parallel group, as ONE JSON object from rank 0 on standard output.
//!
//! Every rank runs `--warmup` then `--steps` steps of its shard of the global batch
//! (`--batch`, the same for any number of ranks), the batches taken from the shuffled
//! training samples in order. A step's time is the backend's whole step (forward and
//! backward, the gradient exchange, the update); the gathering of the shard's samples,
//! which training does ahead on another thread, is left out. Reported: the median step,
//! its compute (the step less the exchange), the exchange's time (what it adds to the
//! step: the part not overlapped with the backward, waiting for the slowest rank
//! included) and bytes, which way each embedding table went, and the global samples/s
//! (the global batch over the mean step). `--no-overlap` sums everything after the
//! backward, to measure what the overlap gains. With `mpirun -n 1` the same
//! measurement runs without any exchange: `scripts/bench-mpi.sh` sets the two side by
//! side.

use crate::cli::BenchArgs;
use crate::cluster::Member;
use crate::run::load_data;
use anyhow::bail;
use bst_core::backend::{Backend, CpuBackend};
use bst_core::batch::Batch;
use bst_core::collective::{ExchangeStats, shard_range};
use bst_core::model::Shard;
use bst_core::train::epoch_order;
use serde::Serialize;
use std::time::Instant;

/// The JSON object.
#[derive(Serialize)]
struct GroupBench {
    ranks: usize,
    /// CPU threads of each rank.
    threads_per_rank: usize,
    /// Global batch.
    batch: usize,
    steps: usize,
    exchange: &'static str,
    /// Whether the blocks' and the MLP's sums ran during the backward.
    overlap: bool,
    /// Global samples per second.
    samples_per_sec: f64,
    /// Mean and median of the step, as rank 0 timed it.
    step_ms_mean: f64,
    step_ms_median: f64,
    /// The step less the exchange, mean over steps and ranks.
    compute_ms: f64,
    /// What the exchange adds to the step (the part not overlapped with the backward,
    /// waiting for the slowest rank included), mean over steps and ranks.
    exchange_ms: f64,
    /// The medians over the steps of compute and exchange, mean over the ranks.
    compute_ms_median: f64,
    exchange_ms_median: f64,
    /// Payload bytes of the collectives per step and rank (0 for one rank).
    exchange_bytes_per_step: f64,
    allreduce_bytes_per_step: f64,
    allgather_bytes_per_step: f64,
    /// Of the 4 embedding tables, how many went by their touched rows per step.
    sparse_tables_per_step: f64,
    dense_tables_per_step: f64,
    parameters: usize,
    mean_loss: f64,
}

pub fn bench_group(args: &BenchArgs, member: &Member) -> anyhow::Result<()> {
    let r = &args.run;
    if r.resume.is_some() || r.out.is_some() || r.epochs.is_some() {
        bail!("bench writes no run folder: leave out --resume, --out and --epochs");
    }
    if args.steps == 0 {
        bail!("--steps must be at least 1");
    }
    if r.device == crate::device::Device::Gpu {
        bail!("bench under mpirun measures the CPU backend (--device cpu)");
    }
    let g = member.group.clone();
    let (rank, ranks) = (g.rank(), g.size());
    let cfg = r.config()?;
    let ds = load_data(&r.source()?, &cfg, true)?;
    let n = ds.train.len();
    if n == 0 {
        bail!("no training samples to benchmark with");
    }
    let b = cfg.train.batch;
    let mut backend = CpuBackend::new(&cfg, ds.vocab.sizes());
    backend.exchange.policy = args.exchange.policy();
    backend.exchange.no_overlap = args.no_overlap;
    if ranks > 1 {
        backend.join_group(g.clone())?;
    }
    eprintln!(
        "rank {rank} of {ranks} on {}: device {}",
        member.host,
        backend.describe()
    );
    let order = epoch_order(n, cfg.train.seed, 1);
    let mut batch = Batch::default();
    let mut times = Vec::with_capacity(args.steps);
    let (mut computes, mut exchanges) = (times.clone(), times.clone());
    let mut loss = 0.0;
    for s in 0..args.warmup + args.steps {
        // The global batch of step s (wrapping around the epoch), then this rank's rows.
        let global: Vec<u32> = (0..b).map(|j| order[(s * b + j) % n]).collect();
        let rows = shard_range(b, rank, ranks);
        batch.gather(&ds.train, &global[rows.clone()]);
        if s == args.warmup {
            backend.take_exchange_stats();
            backend.take_loss()?;
        }
        let t = Instant::now();
        let shard = Shard {
            row0: rows.start,
            global: b,
        };
        backend.train_step_shard(&batch, None, shard)?;
        if s >= args.warmup {
            let step = t.elapsed().as_secs_f64();
            let exchange = if ranks > 1 {
                backend.exchange.last.seconds
            } else {
                0.0
            };
            times.push(step);
            computes.push(step - exchange);
            exchanges.push(exchange);
        }
    }
    let (sum, k) = backend.take_loss()?;
    loss += sum / k.max(1) as f64;
    let ex = backend.take_exchange_stats().unwrap_or_default();
    let steps = args.steps as f64;
    let step_total: f64 = times.iter().sum();
    // Means over the ranks of compute and exchange time.
    let mut per_rank = [step_total - ex.seconds, ex.seconds];
    g.sum_f64(&mut per_rank);
    let [compute, exchange] = per_rank.map(|x| x / ranks as f64);
    // Means over the ranks of the medians (robust to a loaded machine's stalls).
    let mut medians = [median(&mut computes), median(&mut exchanges)];
    g.sum_f64(&mut medians);
    let [compute_median, exchange_median] = medians.map(|x| x / ranks as f64);
    let per_step = |x: u64| x as f64 / steps;
    let ExchangeStats {
        sparse_tables,
        dense_tables,
        ..
    } = ex;
    let report = GroupBench {
        ranks,
        threads_per_rank: rayon::current_num_threads(),
        batch: b,
        steps: args.steps,
        exchange: args.exchange.name(),
        overlap: ranks > 1 && !args.no_overlap,
        samples_per_sec: b as f64 * steps / step_total,
        step_ms_mean: 1e3 * step_total / steps,
        step_ms_median: 1e3 * median(&mut times),
        compute_ms: 1e3 * compute / steps,
        exchange_ms: 1e3 * exchange / steps,
        compute_ms_median: 1e3 * compute_median,
        exchange_ms_median: 1e3 * exchange_median,
        exchange_bytes_per_step: per_step(ex.bytes),
        allreduce_bytes_per_step: per_step(ex.allreduce_bytes),
        allgather_bytes_per_step: per_step(ex.allgather_bytes),
        sparse_tables_per_step: sparse_tables as f64 / steps,
        dense_tables_per_step: dense_tables as f64 / steps,
        parameters: backend.model.layout.total,
        mean_loss: loss,
    };
    if rank == 0 {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

/// The median of `x` (sorted in place; not empty).
fn median(x: &mut [f64]) -> f64 {
    x.sort_by(f64::total_cmp);
    x[x.len() / 2]
}
