//! Scoring with each user's history computed once (`bst_core::shared_history`) against
//! scoring one sample per candidate (`Backend::predict`, the full forward): the same
//! probabilities within 1e-6 absolute for every candidate, on synthetic models with
//! random parameters and on a model of ml-100k's vocabulary after a few training steps;
//! the models where sharing is not exact fall back and give the full forward's results.
//!
//! The ml-100k case fails when the data is missing, unless BST_SKIP_ML100K=1.

mod common;

use bst_core::backend::{Backend, CpuBackend};
use bst_core::batch::Batch;
use bst_core::config::{Config, Pooling};
use bst_core::data::{self, DataSource};
use bst_core::model::Model;
use bst_core::rank::top_k;
use bst_core::requests::Requests;
use common::{SIZES, random_params, random_samples, requests, small_config};
use std::path::PathBuf;

/// probs of every candidate, one sample each, through `Backend::predict`.
fn per_sample(backend: &mut CpuBackend, req: &Requests) -> Vec<f32> {
    let mut probs = vec![0.0; req.candidates()];
    let mut batch = Batch::default();
    req.to_batch(0..req.candidates(), &mut batch);
    backend.predict(&batch, &mut probs).unwrap();
    probs
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn history_once_equals_one_sample_per_candidate() {
    for blocks in [0, 1] {
        let cfg = small_config(blocks, Pooling::Target);
        let model = Model::new(&cfg.model, SIZES);
        let params = random_params(&cfg, &model, 5);
        let mut cpu = CpuBackend::with_params(&cfg, model, params);
        assert!(cpu.shares_history());
        // random_samples: row 0 has an all-padding history, row 1 a full one, rows 2
        // and 3 partly padded. 1 candidate; more than a chunk (1024); 3; 2.
        let s = random_samples(5, &cfg.model, 3);
        let req = requests(&s, &[0, 1, 2, 3], &[1, 1100, 3, 2], SIZES.items);
        let mut got = vec![f32::NAN; req.candidates()];
        cpu.predict_requests(&req, &mut got).unwrap();
        let want = per_sample(&mut cpu, &req);
        let diff = max_diff(&got, &want);
        eprintln!(
            "blocks {blocks}: {} candidates, max |diff| {diff:e}",
            got.len()
        );
        for (n, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-6,
                "blocks {blocks}, candidate {n}: {g} vs {w}"
            );
        }
        // The history matters (the test would not see a wrong one otherwise).
        if blocks == 1 {
            let mut moved = req.clone();
            moved.hist_pos.iter_mut().for_each(|p| *p = (*p + 1) % 8);
            let mut other = vec![0.0; req.candidates()];
            cpu.predict_requests(&moved, &mut other).unwrap();
            assert!(
                max_diff(&got, &other) > 1e-4,
                "the positions change the scores"
            );
        }
        // The top k, k larger than the candidates: all of them, in the host's order.
        let top = cpu.predict_top_k_requests(&req, 5000).unwrap();
        assert_eq!(top.len(), req.candidates());
        let want_top = top_k(&want, 10);
        let got_top: Vec<usize> = top[..10].iter().map(|p| p.0).collect();
        assert_eq!(got_top, want_top.iter().map(|p| p.0).collect::<Vec<_>>());
    }
}

#[test]
fn other_models_fall_back_to_one_sample_per_candidate() {
    for (blocks, pooling) in [
        (1, Pooling::Mean),
        (1, Pooling::Flatten),
        (2, Pooling::Target),
        (0, Pooling::Mean),
    ] {
        let cfg = small_config(blocks, pooling);
        let model = Model::new(&cfg.model, SIZES);
        let params = random_params(&cfg, &model, 6);
        let mut cpu = CpuBackend::with_params(&cfg, model, params);
        assert!(!cpu.shares_history(), "{blocks} blocks, {pooling:?}");
        let s = random_samples(3, &cfg.model, 4);
        let req = requests(&s, &[1, 2], &[20, 5], SIZES.items);
        let mut got = vec![0.0; req.candidates()];
        cpu.predict_requests(&req, &mut got).unwrap();
        assert_eq!(
            got,
            per_sample(&mut cpu, &req),
            "{blocks} blocks, {pooling:?}"
        );
    }
}

#[test]
fn requests_that_do_not_fit_the_model_are_errors() {
    let cfg = small_config(1, Pooling::Target);
    let mut cpu = CpuBackend::new(&cfg, SIZES);
    let s = random_samples(2, &cfg.model, 4);
    let req = requests(&s, &[1], &[3], SIZES.items);
    let mut probs = vec![0.0; req.candidates()];
    let err = |r: &Requests, probs: &mut [f32], cpu: &mut CpuBackend| {
        cpu.predict_requests(r, probs).unwrap_err().to_string()
    };
    let mut bad = req.clone();
    bad.target_item[1] = SIZES.items as u32;
    assert!(err(&bad, &mut probs, &mut cpu).contains("target_item[1]"));
    let mut bad = req.clone();
    bad.hist_pos[0] = 8;
    assert!(err(&bad, &mut probs, &mut cpu).contains("hist_pos[0] = 8"));
    let mut bad = req.clone();
    bad.user[0] = 3;
    assert!(err(&bad, &mut probs, &mut cpu).contains("user[0] = 3"));
    let e = err(&req, &mut probs[..2], &mut cpu);
    assert!(e.contains("2 probabilities for 4 candidates"), "{e}");
    let bad = Requests::new(4, req.fields);
    assert!(err(&bad, &mut [], &mut cpu).contains("seq_len is 5"));
    assert!(cpu.predict_top_k_requests(&req, 3).is_ok());
    // No candidates: nothing to do, no error.
    let mut empty = req.clone();
    empty.target_item.clear();
    empty.target_cat.clear();
    empty.user.clear();
    cpu.predict_requests(&empty, &mut []).unwrap();
}

#[test]
fn history_once_on_ml100k_equals_one_sample_per_candidate() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/ml-100k");
    if !dir.join("ml-100k.inter").exists() {
        if std::env::var("BST_SKIP_ML100K").as_deref() == Ok("1") {
            eprintln!("BST_SKIP_ML100K=1: skipping the ml-100k scoring test");
            return;
        }
        panic!(
            "{} is missing: run scripts/fetch-data.sh (or set BST_SKIP_ML100K=1)",
            dir.display()
        );
    }
    let cfg = Config::default();
    let ds = data::load(&DataSource::Recbole(dir), &cfg).expect("ml-100k loads");
    let mut cpu = CpuBackend::new(&cfg, ds.vocab.sizes());
    // A few training steps, so the parameters are not the initial ones.
    for k in 0..8 {
        cpu.train_step(&Batch::from_range(&ds.train, 256 * k..256 * (k + 1)))
            .unwrap();
    }
    // Three test users (an all-padding history cannot occur in ml-100k's samples: the
    // shortest has one item), each against every item.
    let t = &ds.test.samples();
    let l = t.seq_len;
    let hist = |i: usize| {
        t.hist_item[i * l..][..l]
            .iter()
            .filter(|&&x| x != 0)
            .count()
    };
    let shortest = (0..t.len()).min_by_key(|&i| hist(i)).unwrap();
    let longest = (0..t.len()).max_by_key(|&i| hist(i)).unwrap();
    let items = ds.vocab.n_items();
    let mut req = Requests::new(l, t.fields);
    for s in [shortest, longest, t.len() / 2] {
        let one = Requests::from_batch(&Batch::from_range(t, s..s + 1));
        req.hist_item.extend_from_slice(&one.hist_item);
        req.hist_cat.extend_from_slice(&one.hist_cat);
        req.hist_pos.extend_from_slice(&one.hist_pos);
        req.other.extend_from_slice(&one.other);
        let u = req.users() as u32 - 1;
        for item in 1..items as u32 {
            req.push_candidate(u, item, ds.vocab.item_cat[item as usize]);
        }
    }
    let mut got = vec![0.0; req.candidates()];
    cpu.predict_requests(&req, &mut got).unwrap();
    let want = per_sample(&mut cpu, &req);
    let diff = max_diff(&got, &want);
    eprintln!("ml-100k: {} candidates, max |diff| {diff:e}", got.len());
    assert!(diff <= 1e-6, "max |diff| {diff}");
    for u in 0..3 {
        let r = u * (items - 1)..(u + 1) * (items - 1);
        let a: Vec<usize> = top_k(&got[r.clone()], 10).iter().map(|p| p.0).collect();
        let b: Vec<usize> = top_k(&want[r], 10).iter().map(|p| p.0).collect();
        assert_eq!(a, b, "user {u}: the same top 10");
    }
}
