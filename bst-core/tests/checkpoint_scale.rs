//! Checkpoints at click-log scale (spec section 3, "Vocabularies at scale"): vocabularies
//! of 4.2M items and 1M users, as in Taobao's UserBehavior, whose JSON is far over the
//! 1 MiB kept in the header, so it moves into the `U8` tensor `meta.vocab`. A tiny model
//! over those vocabularies is trained with checkpoints, loaded back, evaluated, used to
//! score and rank raw ids, and resumed. The vocabularies are built in memory (a few
//! interactions, the full id lists) so the test stays at a few seconds.

use bst_core::backend::CpuBackend;
use bst_core::checkpoint::{self, Checkpoint, RunCheckpointer, RunInfo, VOCAB_IN_TENSOR};
use bst_core::config::Config;
use bst_core::data::recbole::user_id_field;
use bst_core::data::{Dataset, Interaction, InteractionLog, Vocab, samples};
use bst_core::encode::{Encoder, Unknown};
use bst_core::rank::rank_items;
use bst_core::train::{TrainOptions, TrainReport, evaluate, predict_all, train_with};
use safetensors::tensor::{Dtype, SafeTensors};
use std::path::Path;
use std::time::Instant;

const ITEMS: usize = 4_200_000;
const USERS: usize = 1_000_000;
const CATEGORIES: usize = 9_439;
/// Users with interactions (the rest are only in the vocabulary), and theirs each.
const ACTIVE: usize = 40;
const EVENTS: usize = 8;
const T0: i64 = 1_511_539_200; // 2017-11-25 00:00 China time

fn tiny_config() -> Config {
    let mut cfg = Config::default();
    let m = &mut cfg.model;
    (m.seq_len, m.d_item, m.d_cat, m.d_pos, m.heads) = (4, 1, 1, 2, 1);
    (m.d_ff, m.d_other, m.mlp) = (4, 1, vec![4]);
    cfg.train.batch = 16;
    cfg.train.epochs = 1;
    cfg
}

/// A click log with the full vocabularies: item `i` (1-based) is raw id `i`, in category
/// `1 + i % CATEGORIES`; user `u` is raw id `u + 1`. Active users click items spread over
/// the whole table, the last one included.
fn log() -> InteractionLog {
    let item_ids: Vec<String> = std::iter::once(String::new())
        .chain((1..=ITEMS).map(|i| i.to_string()))
        .collect();
    let item_cat: Vec<u32> = (0..=ITEMS)
        .map(|i| {
            if i == 0 {
                0
            } else {
                1 + (i % CATEGORIES) as u32
            }
        })
        .collect();
    let cat_names: Vec<String> = std::iter::once(String::new())
        .chain((1..=CATEGORIES).map(|c| format!("c{c}")))
        .collect();
    let user_ids: Vec<String> = (1..=USERS).map(|u| u.to_string()).collect();
    let (fields, user_features) = user_id_field(&user_ids);
    let mut interactions = Vec::new();
    for a in 0..ACTIVE {
        let user = if a + 1 == ACTIVE { USERS - 1 } else { a * 997 };
        for e in 0..EVENTS {
            let k = (a * EVENTS + e) as u64;
            let item = 1 + (k * 2_654_435_761 % ITEMS as u64) as u32;
            let item = if e == EVENTS - 1 && a == 0 {
                ITEMS as u32
            } else {
                item
            };
            interactions.push(Interaction {
                user: user as u32,
                item,
                time: T0 + (a * 3600 + e * 60) as i64,
                label: 1.0,
            });
        }
    }
    InteractionLog {
        interactions,
        implicit: true,
        vocab: Vocab {
            item_ids,
            item_cat,
            cat_names,
            user_ids,
            fields,
        },
        user_features,
        true_prob: None,
    }
}

fn train(
    cfg: &Config,
    ds: &Dataset,
    dir: &Path,
    resume: Option<&Path>,
) -> (CpuBackend, TrainReport) {
    let mut backend = CpuBackend::new(cfg, ds.vocab.sizes());
    let resume = resume.map(|p| {
        let c = Checkpoint::load(p).expect("latest checkpoint loads");
        c.check_vocab(&ds.vocab).expect("same vocabularies");
        c.check_config(cfg).expect("only the epochs differ");
        c.into_resume(p).expect("has optimiser state")
    });
    let info = RunInfo {
        config: cfg,
        vocab: &ds.vocab,
        data_source: "memory",
    };
    let mut ckpt = RunCheckpointer::new(dir, info);
    let opts = TrainOptions {
        resume,
        checkpointer: Some(&mut ckpt),
        ..TrainOptions::default()
    };
    let report = train_with(&mut backend, ds, &cfg.train, opts, &mut |_| {}).expect("trains");
    (backend, report)
}

/// The header of a checkpoint file: `bst.vocab` and the `meta.vocab` tensor's dtype
/// and length.
fn vocab_form(path: &Path) -> (String, Option<(Dtype, usize)>) {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().clone().unwrap();
    let t = st
        .tensor("meta.vocab")
        .ok()
        .map(|t| (t.dtype(), t.data().len()));
    (meta["bst.vocab"].clone(), t)
}

#[test]
fn a_checkpoint_with_4_2m_items_and_1m_users_trains_loads_scores_ranks_and_resumes() {
    let clock = Instant::now();
    let mut cfg = tiny_config();
    let ds = samples::build(log(), &cfg.model, &cfg.data, "memory").unwrap();
    assert_eq!(ds.vocab.n_items(), ITEMS + 1);
    assert_eq!(ds.vocab.user_ids.len(), USERS);
    let built = clock.elapsed();

    // Train one epoch with checkpoints: both files hold the vocabulary as a tensor.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut trained, _) = train(&cfg, &ds, dir, None);
    let latest = dir.join(checkpoint::LATEST);
    let best = dir.join(checkpoint::BEST);
    let json_len = serde_json::to_string(&ds.vocab).unwrap().len();
    assert!(json_len > 50_000_000, "vocabulary JSON of {json_len} bytes");
    for path in [&latest, &best] {
        let (value, tensor) = vocab_form(path);
        assert_eq!(value, VOCAB_IN_TENSOR, "{}", path.display());
        assert_eq!(tensor, Some((Dtype::U8, json_len)), "{}", path.display());
    }
    let written = clock.elapsed();

    // Loaded back: the same vocabularies and parameters, and the same predictions.
    let ckpt = Checkpoint::load(&best).expect("best model loads");
    assert!(ckpt.vocab == ds.vocab, "vocabularies round-trip");
    ckpt.check_vocab(&ds.vocab).unwrap();
    let mut loaded = ckpt.cpu_backend();
    let eb = cfg.train.eval_batch;
    let a = predict_all(&mut trained, &ds.test, eb).unwrap();
    let b = predict_all(&mut loaded, &ds.test, eb).unwrap();
    assert_eq!(a, b, "the loaded model predicts as the trained one");
    let m = evaluate(&mut loaded, &ds.test, eb).unwrap();
    assert!(m.logloss.is_finite() && m.samples == ds.test.len(), "{m}");
    let loaded_at = clock.elapsed();

    // Scoring raw ids at the far end of both tables, and ranking the last 100,000 items
    // and the first.
    let enc = Encoder::new(&ckpt.vocab, &ckpt.config.model).unwrap();
    assert_eq!(enc.item(&ITEMS.to_string()), Some(ITEMS as u32));
    let mut unknown = Unknown::default();
    let user = [("user_id".to_string(), USERS.to_string())];
    let history = [(ITEMS.to_string(), T0), ("1".to_string(), T0 + 60)];
    let ctx = enc
        .context(&user, &history, T0 + 120, &mut unknown)
        .unwrap();
    assert_eq!(unknown.total(), 0, "every raw id is known");
    let items: Vec<u32> = std::iter::once(1)
        .chain((ITEMS - 100_000) as u32..=ITEMS as u32)
        .collect();
    let top = rank_items(&mut loaded, &enc, &ctx, &items, 5).unwrap();
    assert_eq!(top.len(), 5);
    assert!(top.windows(2).all(|w| w[0].1 >= w[1].1), "{top:?}");
    let mut s = enc.samples();
    enc.push(&mut s, &ctx, items[top[0].0]);
    let p = predict_all(&mut loaded, &s, eb).unwrap();
    assert_eq!(p[0], top[0].1, "rank's best probability is predict's");
    let ranked = clock.elapsed();

    // Resumed for a second epoch from the latest checkpoint, which it then overwrites.
    cfg.train.epochs = 2;
    let resumed_tmp = tempfile::tempdir().unwrap();
    let resumed = resumed_tmp.path();
    std::fs::copy(&latest, resumed.join(checkpoint::LATEST)).unwrap();
    let (_, report) = train(&cfg, &ds, resumed, Some(&resumed.join(checkpoint::LATEST)));
    assert_eq!(
        report.epochs.len(),
        2,
        "epoch 1 from the checkpoint, epoch 2 trained"
    );
    assert_eq!(
        vocab_form(&resumed.join(checkpoint::LATEST)).0,
        VOCAB_IN_TENSOR
    );
    let size = |p: &Path| std::fs::metadata(p).unwrap().len() as f64 / 1e6;
    eprintln!(
        "vocabulary JSON {:.1} MB; {} {:.1} MB, {} {:.1} MB; built {:.2}s, trained and written \
         {:.2}s, loaded and evaluated {:.2}s, ranked {} items {:.2}s, resumed {:.2}s",
        json_len as f64 / 1e6,
        checkpoint::LATEST,
        size(&latest),
        checkpoint::BEST,
        size(&best),
        built.as_secs_f64(),
        (written - built).as_secs_f64(),
        (loaded_at - written).as_secs_f64(),
        items.len(),
        (ranked - loaded_at).as_secs_f64(),
        (clock.elapsed() - ranked).as_secs_f64(),
    );
}
