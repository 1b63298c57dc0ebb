//! Evaluation reports its progress ([`Event::Evaluating`]): a validation or test split of
//! tens of millions of samples takes minutes, and a log should say how far it got.

use bst_core::backend::CpuBackend;
use bst_core::config::Config;
use bst_core::data::{self, DataSource};
use bst_core::train::{Event, train};

#[test]
fn every_evaluation_batch_reports_the_samples_scored() {
    let mut cfg = Config::synthetic(60);
    (cfg.train.epochs, cfg.train.eval_batch) = (2, 100);
    let ds = data::load(&DataSource::Synthetic, &cfg).unwrap();
    let mut backend = CpuBackend::new(&cfg, ds.vocab.sizes());
    let mut seen: Vec<(&str, usize, usize)> = Vec::new();
    train(&mut backend, &ds, &cfg.train, &mut |e| {
        if let Event::Evaluating { split, done, total } = e {
            seen.push((split, done, total));
        }
    })
    .unwrap();
    // Per evaluation: one event per batch, the count rising to the split's size.
    let expect = |split: &'static str, n: usize| -> Vec<(&str, usize, usize)> {
        (1..=n.div_ceil(100))
            .map(|k| (split, (k * 100).min(n), n))
            .collect()
    };
    let (v, t) = (ds.valid.len(), ds.test.len());
    assert!(v > 100 && t > 100, "several batches per split");
    let want: Vec<_> = [
        expect("validation", v),
        expect("validation", v),
        expect("test", t),
    ]
    .concat();
    assert_eq!(seen, want);
}
