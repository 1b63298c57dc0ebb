//! The compact event store (issue 12): every batch assembled from it equals, field for
//! field, the plain materialised reference (`samples::build_reference`), on synthetic
//! data, ml-100k and the Taobao fixture; and evaluation, which keeps only score, label and
//! user per sample, gives the same metrics as on the materialised samples.

use bst_core::backend::CpuBackend;
use bst_core::batch::Batch;
use bst_core::config::Config;
use bst_core::data::samples::{build, build_reference};
use bst_core::data::{InteractionLog, SampleSource, Samples, Split, recbole, synthetic, taobao};
use bst_core::train::{epoch_order, evaluate};
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Checks every batch of each split, in a shuffled order and in order, against the
/// reference; returns the number of samples checked.
fn assert_batches_equal_the_reference(log: InteractionLog, cfg: &Config) -> usize {
    let reference = build_reference(log.clone(), &cfg.model, &cfg.data).unwrap();
    let ds = build(log, &cfg.model, &cfg.data, "x").unwrap();
    let mut checked = 0;
    for (split, want) in [&ds.train, &ds.valid, &ds.test].into_iter().zip(&reference) {
        assert_eq!(split.len(), want.len());
        for order in [
            epoch_order(split.len(), 3, 1),
            (0..split.len() as u32).collect(),
        ] {
            let (mut got, mut exp) = (Batch::default(), Batch::default());
            for idx in order.chunks(97) {
                got.gather(split, idx);
                exp.gather(want, idx);
                assert_eq!(
                    (got.size, got.seq_len, got.fields),
                    (exp.size, exp.seq_len, exp.fields)
                );
                assert_eq!(got.hist_item, exp.hist_item);
                assert_eq!(got.hist_cat, exp.hist_cat);
                assert_eq!(got.hist_pos, exp.hist_pos);
                assert_eq!(got.target_item, exp.target_item);
                assert_eq!(got.target_cat, exp.target_cat);
                assert_eq!(got.other, exp.other);
                assert_eq!(got.label, exp.label);
                for &i in idx {
                    let i = i as usize;
                    assert_eq!(split.label_user(i), (want.label[i], want.user[i]));
                }
            }
        }
        assert_eq!(split.true_prob(), want.true_prob);
        checked += split.len();
    }
    checked
}

#[test]
fn synthetic_batches_equal_the_reference() {
    let cfg = Config::default();
    let spec = synthetic::SyntheticSpec::new(500, cfg.model.seq_len, cfg.data.seed);
    let n = assert_batches_equal_the_reference(synthetic::generate(&spec), &cfg);
    assert!(n > 1000, "{n}");
}

#[test]
fn ml100k_batches_equal_the_reference() {
    let dir = root().join("../data/ml-100k");
    if !dir.join("ml-100k.inter").exists() {
        eprintln!("no data/ml-100k: skipping");
        return;
    }
    let cfg = Config::default();
    let log = recbole::load(&dir, &cfg.data).unwrap();
    let n = assert_batches_equal_the_reference(log, &cfg);
    assert!(n > 90_000, "{n}");
}

#[test]
fn taobao_batches_with_negatives_equal_the_reference() {
    let mut cfg = Config::default();
    let file = root().join("tests/fixtures/taobao/UserBehavior.csv");
    for negatives in [1, 3] {
        cfg.data.negatives = negatives;
        let log = taobao::load(&file, &cfg.data).unwrap();
        assert!(log.implicit);
        assert_batches_equal_the_reference(log, &cfg);
    }
}

/// Evaluation over a compact split equals evaluation over its materialised samples.
#[test]
fn streamed_evaluation_equals_the_materialised_one() {
    let cfg = Config::default();
    let spec = synthetic::SyntheticSpec::new(300, cfg.model.seq_len, cfg.data.seed);
    let ds = build(synthetic::generate(&spec), &cfg.model, &cfg.data, "s").unwrap();
    let mut backend = CpuBackend::new(&cfg, ds.vocab.sizes());
    let test: &Split = &ds.test;
    let materialised: Samples = test.samples();
    let a = evaluate(&mut backend, test, 64).unwrap();
    let b = evaluate(&mut backend, &materialised, 64).unwrap();
    assert_eq!(
        (a.auc, a.gauc, a.logloss, a.samples),
        (b.auc, b.gauc, b.logloss, b.samples)
    );
    assert_eq!(test.fingerprint(), test.clone().fingerprint());
    assert_ne!(ds.train.fingerprint(), ds.test.fingerprint());
}

/// The cache of a Taobao file's store: used when it is the file's, rebuilt with a note
/// when the file changed or the cache is cut short, corrupted or foreign.
#[test]
fn the_taobao_cache_is_used_when_fresh_and_rebuilt_when_stale_or_damaged() {
    use bst_core::data::taobao_gen::{TaobaoSpec, write};
    use bst_core::data::{DataSource, cache, load, load_cached};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let file = dir.join("ub.csv");
    let cache_dir = dir.join("cache");
    let gen_file = |rows: u64| {
        let mut text = Vec::new();
        write(&TaobaoSpec { rows, seed: 1 }, &mut text, &mut |_| {}).unwrap();
        std::fs::write(&file, text).unwrap();
    };
    gen_file(3000);
    let cfg = Config::default();
    let src = DataSource::Taobao(file.clone());
    let load_noted = || {
        let mut notes = Vec::new();
        let ds = load_cached(&src, &cfg, Some(&cache_dir), &mut |n| notes.push(n)).unwrap();
        (ds, notes)
    };
    let same = |a: &bst_core::data::Dataset, b: &bst_core::data::Dataset| {
        assert_eq!(a.vocab, b.vocab);
        assert_eq!(a.train, b.train);
        assert_eq!(a.valid, b.valid);
        assert_eq!(a.test, b.test);
        assert_eq!(a.train.fingerprint(), b.train.fingerprint());
    };
    let plain = load(&src, &cfg).unwrap();
    let cached = cache::file_for(&cache_dir, &file);
    let (first, notes) = load_noted();
    assert!(notes.is_empty(), "{notes:?}");
    assert!(cached.exists());
    same(&first, &plain);
    let key = cache::SourceKey::of(&file).unwrap();
    assert!(cache::read(&cached, &key).is_ok());
    let (second, notes) = load_noted();
    assert!(notes.is_empty(), "{notes:?}");
    same(&second, &plain);

    // Stale: the file changed (other rows, another size and time).
    std::thread::sleep(std::time::Duration::from_millis(20));
    gen_file(2500);
    let fresh = load(&src, &cfg).unwrap();
    let (ds, notes) = load_noted();
    assert!(
        notes.len() == 1 && notes[0].contains("changed"),
        "{notes:?}"
    );
    same(&ds, &fresh);
    assert_ne!(ds.train.len(), plain.train.len());

    // Truncated, corrupted, foreign: each detected and rebuilt.
    let bytes = std::fs::read(&cached).unwrap();
    // Another format (an older bst's, version 1: times as i64): rebuilt, saying so.
    let mut older = bytes.clone();
    older[8..12].copy_from_slice(&1u32.to_le_bytes());
    std::fs::write(&cached, &older).unwrap();
    let (ds, notes) = load_noted();
    assert!(
        notes.len() == 1 && notes[0].contains("format 1"),
        "{notes:?}"
    );
    same(&ds, &fresh);
    assert_eq!(
        std::fs::read(&cached).unwrap(),
        bytes,
        "older format: rewritten"
    );
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    for (what, damaged) in [
        ("truncated", bytes[..bytes.len() / 2].to_vec()),
        ("corrupted", flipped),
        ("foreign", b"not a cache at all, just some bytes".to_vec()),
        ("empty", Vec::new()),
    ] {
        std::fs::write(&cached, &damaged).unwrap();
        let (ds, notes) = load_noted();
        assert!(
            notes.len() == 1 && notes[0].contains("damaged"),
            "{what}: {notes:?}"
        );
        same(&ds, &fresh);
        assert_eq!(std::fs::read(&cached).unwrap(), bytes, "{what}: rewritten");
    }
}
