//! The host's work per training batch, which training overlaps with the device's work on
//! a producer thread (`bst_core::prefetch`): the gather of a batch's samples, and the GPU
//! backend's embedding segments (`EmbeddingSegments::build`, sorted per table on rayon's
//! pool; `embedding_segments_into`: `build_into` the segments of an earlier batch, as the
//! producer does, allocating nothing), at batch 256 and 4096 of the default model. No GPU
//! needed. When gather + segments exceeds a step's device time, the host is the
//! bottleneck.
//!
//! `cargo bench -p bst-benches --bench host`

use bst_core::batch::Batch;
use bst_core::config::Config;
use bst_core::data::{self, DataSource};
use bst_core::gpu_backend::embedding_dims;
use bst_core::model::Model;
use bst_core::train::epoch_order;
use bst_kernels::gpu::embedding::EmbeddingSegments;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

fn host(c: &mut Criterion) {
    let cfg = Config::synthetic(600);
    let ds = data::load(&DataSource::Synthetic, &cfg).expect("synthetic data");
    let sizes = ds.vocab.sizes();
    let model = Model::new(&cfg.model, sizes);
    let order = epoch_order(ds.train.len(), 0, 1);
    for b in [256, 4096] {
        let idx = &order[..b];
        let mut g = c.benchmark_group(format!("host_b{b}"));
        g.sample_size(20);
        g.throughput(Throughput::Elements(b as u64));
        let mut batch = Batch::default();
        g.bench_function("gather", |bench| {
            bench.iter(|| batch.gather(&ds.train, black_box(idx)))
        });
        // Gathered here too: a filter may have skipped the gather bench.
        batch.gather(&ds.train, idx);
        let dims = embedding_dims(&model, b);
        g.bench_function("embedding_segments", |bench| {
            bench.iter(|| {
                EmbeddingSegments::build(&dims, b as u32, batch.token_ids(), &batch.other)
                    .expect("segments")
            })
        });
        let mut segs = EmbeddingSegments::build(&dims, b as u32, batch.token_ids(), &batch.other)
            .expect("segments");
        let live: usize = segs.live().map(|r| r.len()).sum();
        eprintln!(
            "batch {b}: the segments image has {} bytes, a step uploads {} of them",
            4 * segs.data().len(),
            4 * live
        );
        g.bench_function("embedding_segments_into", |bench| {
            bench.iter(|| {
                segs.build_into(&dims, b as u32, batch.token_ids(), &batch.other)
                    .expect("segments")
            })
        });
        g.finish();
    }
}

criterion_group!(benches, host);
criterion_main!(benches);
