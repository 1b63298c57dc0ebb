//! What a training step costs as the item vocabulary grows, with dense and with sparse
//! (row-wise lazy) embedding updates (`train.sparse_embeddings`), on the CPU and the GPU:
//! item vocabularies of 1,000 and 1,000,000 rows, the default model, batch 256 (set
//! `BST_BENCH_BATCH`). The batch is the synthetic data's, its item ids spread over the
//! whole vocabulary (`1 + id * 7919 mod (V - 1)`), so both vocabularies touch the same
//! number of rows. With sparse updates the two step times should be within 1.2x; dense
//! ones grow with V (a fill and an update over every table row each step).
//!
//! Timed as training runs a step: on the GPU the batch's embedding segments are prepared
//! once before the timed loop (training prepares them ahead on its prefetch thread), and
//! each iteration is `train_step_prepared` and the loss read; on the CPU, `train_step`
//! (it has no preparation).
//!
//! `cargo bench -p bst-benches --bench vocab` (the GPU groups need a Vulkan, Metal or DX12
//! adapter; lavapipe will do, slowly: at 1M rows every arena is 128 MB).

use bst_benches::{bench_batch, bench_context};
use bst_core::backend::{Backend, CpuBackend};
use bst_core::batch::Batch;
use bst_core::config::Config;
use bst_core::data::{self, DataSource};
use bst_core::gpu_backend::GpuBackend;
use bst_core::params::VocabSizes;
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use std::time::Duration;

const VOCABS: [usize; 2] = [1_000, 1_000_000];

fn vocab(c: &mut Criterion) {
    let batch_size = bench_batch();
    let mut cfg = Config::synthetic(300);
    cfg.train.batch = batch_size;
    cfg.train.eval_batch = batch_size;
    let ds = data::load(&DataSource::Synthetic, &cfg).expect("synthetic data");
    let ctx = bench_context();
    let software = ctx.is_software();
    for items in VOCABS {
        let sizes = VocabSizes {
            items,
            ..ds.vocab.sizes()
        };
        let mut batch = Batch::from_range(&ds.train, 0..batch_size);
        let spread = |id: &mut u32| {
            if *id != 0 {
                *id = 1 + (u64::from(*id) * 7919 % (items as u64 - 1)) as u32;
            }
        };
        batch.hist_item.iter_mut().for_each(spread);
        batch.target_item.iter_mut().for_each(spread);
        for sparse in [false, true] {
            cfg.train.sparse_embeddings = sparse;
            let name = format!(
                "train_step_b{batch_size}_{}",
                if sparse { "sparse" } else { "dense" }
            );
            let mut g = c.benchmark_group(name);
            g.sample_size(10);
            g.throughput(Throughput::Elements(batch_size as u64));
            g.warm_up_time(Duration::from_millis(500));
            g.measurement_time(Duration::from_secs(3));
            let mut cpu = CpuBackend::new(&cfg, sizes);
            g.bench_function(format!("cpu/items_{items}"), |b| {
                b.iter(|| cpu.train_step(&batch).expect("CPU train step"))
            });
            drop(cpu);
            let mut gpu = GpuBackend::init(ctx.clone(), &cfg, sizes).expect("GPU backend");
            if software {
                g.sampling_mode(SamplingMode::Flat);
            }
            // Each iteration waits for the device (the loss read), as training does every
            // few steps. The segments are prepared once, outside the timed loop.
            let preparer = gpu
                .batch_preparer()
                .expect("the GPU backend prepares batches");
            let mut prepared = preparer.prepare(&batch);
            g.bench_function(format!("gpu/items_{items}"), |b| {
                b.iter(|| {
                    gpu.train_step_prepared(&batch, Some(&mut prepared))
                        .expect("GPU train step");
                    gpu.take_loss().expect("GPU loss read")
                })
            });
            g.finish();
        }
    }
}

criterion_group!(benches, vocab);
criterion_main!(benches);
