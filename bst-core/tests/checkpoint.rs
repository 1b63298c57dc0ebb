//! Checkpoints on a tiny synthetic world: spec-3 names and shapes, an exact round trip,
//! clear errors for truncated, corrupted and foreign files and for a mismatched config or
//! data; resumed training (at an epoch boundary and mid-epoch) that ends bit for bit where
//! an uninterrupted run does; a non-finite loss, or a failed step (a lost GPU), that stops
//! training and keeps the last good checkpoint; and a writer killed at random times that
//! always leaves a loadable file.

use bst_core::backend::{Backend, BackendError, CpuBackend};
use bst_core::batch::Batch;
use bst_core::checkpoint::{self, Checkpoint, RunCheckpointer};
use bst_core::config::{Config, Optimizer};
use bst_core::data::Dataset;
use bst_core::model::Model;
use bst_core::optim::OptimSnapshot;
use bst_core::params::ParamLayout;
use bst_core::rng::Rng;
use bst_core::scorer::GpuError;
use bst_core::train::{Event, Progress, Snapshot, TrainError, TrainOptions, train_with};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[path = "common/run.rs"]
mod run;
use run::{dataset, info};

fn tiny_config(optimizer: Optimizer) -> Config {
    let mut cfg = run::tiny_config();
    cfg.train.optimizer = optimizer;
    cfg.train.epochs = 2;
    cfg
}

/// Trains with checkpoints into `dir`; `stop_after` sets the stop flag after that
/// (epoch, step). The loss is read every step.
fn run(
    cfg: &Config,
    ds: &Dataset,
    dir: &Path,
    resume: Option<&Path>,
    stop_after: Option<(usize, usize)>,
) -> Result<CpuBackend, TrainError> {
    let at_step = |e: &Event| match *e {
        Event::Step { epoch, step, .. } => Some((epoch, step)) == stop_after,
        _ => false,
    };
    run_until(cfg, ds, dir, resume, at_step)
}

/// [`run`], Ctrl-C pressed (the stop flag set) at the first event `stop_at` picks.
fn run_until(
    cfg: &Config,
    ds: &Dataset,
    dir: &Path,
    resume: Option<&Path>,
    mut stop_at: impl FnMut(&Event) -> bool,
) -> Result<CpuBackend, TrainError> {
    let mut backend = CpuBackend::new(cfg, ds.vocab.sizes());
    let resume = resume.map(|p| {
        let c = Checkpoint::load(p).expect("checkpoint loads");
        c.check_vocab(&ds.vocab).unwrap();
        c.check_config(cfg).unwrap();
        c.into_resume(p).unwrap()
    });
    let stop = AtomicBool::new(false);
    let mut ckpt = RunCheckpointer::new(dir, info(cfg, ds));
    let opts = TrainOptions {
        resume,
        checkpointer: Some(&mut ckpt),
        stop: Some(&stop),
        loss_every: 1,
    };
    let mut on_event = |e: Event| {
        if stop_at(&e) {
            stop.store(true, Ordering::SeqCst);
        }
    };
    train_with(&mut backend, ds, &cfg.train, opts, &mut on_event)?;
    Ok(backend)
}

fn assert_bits_equal(what: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{what}: length");
    let diff = a
        .iter()
        .zip(b)
        .position(|(x, y)| x.to_bits() != y.to_bits());
    assert!(
        diff.is_none(),
        "{what}: first difference at {}: {} vs {}",
        diff.unwrap(),
        a[diff.unwrap()],
        b[diff.unwrap()]
    );
}

fn assert_same_run(a: &Checkpoint, b: &Checkpoint) {
    assert_bits_equal("parameters", &a.params, &b.params);
    let (oa, ob) = (a.optim.as_ref().unwrap(), b.optim.as_ref().unwrap());
    assert_eq!(oa.steps, ob.steps, "update count");
    for ((name, x), (_, y)) in oa.state.arenas().into_iter().zip(ob.state.arenas()) {
        assert_bits_equal(name, x, y);
    }
    assert_bits_equal(
        "best parameters",
        a.best_params.as_ref().unwrap(),
        b.best_params.as_ref().unwrap(),
    );
    assert_eq!(a.progress.epoch, b.progress.epoch);
    assert_eq!(a.progress.best, b.progress.best);
    let auc = |c: &Checkpoint| {
        c.progress
            .epochs
            .iter()
            .map(|e| e.valid.auc)
            .collect::<Vec<_>>()
    };
    assert_eq!(auc(a), auc(b), "validation AUCs");
}

/// A checkpoint file of a briefly trained tiny model, with optimiser and best tensors.
fn sample_checkpoint(dir: &Path) -> (Config, Dataset, PathBuf) {
    let mut cfg = tiny_config(Optimizer::Adam);
    cfg.train.epochs = 1;
    let ds = dataset(&cfg);
    run(&cfg, &ds, dir, None, None).unwrap();
    (cfg, ds, dir.join(checkpoint::LATEST))
}

#[test]
fn names_and_shapes_follow_spec_section_3_and_round_trip_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (cfg, ds, path) = sample_checkpoint(dir);
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let layout = ParamLayout::new(&cfg.model, ds.vocab.sizes());
    for spec in &layout.specs {
        for prefix in ["", "optim.adam.m.", "optim.adam.v.", "best."] {
            let t = st.tensor(&format!("{prefix}{}", spec.name)).unwrap();
            assert_eq!(t.dtype(), Dtype::F32);
            assert_eq!(t.shape(), spec.shape.as_slice(), "{prefix}{}", spec.name);
        }
    }
    assert_eq!(st.len(), 4 * layout.specs.len(), "no other tensors");
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().as_ref().unwrap();
    let model: serde_json::Value = serde_json::from_str(&meta["bst.config"]).unwrap();
    assert_eq!(model["blocks"], 1);
    assert_eq!(meta["bst.optimizer"], "adam");

    let c = Checkpoint::load(&path).unwrap();
    assert_eq!(c.config, cfg);
    assert_eq!(c.vocab, ds.vocab);
    assert_eq!(c.data_source.as_deref(), Some("synthetic"));
    assert_eq!(c.progress.epoch, 1);
    assert_eq!(c.progress.best.unwrap().epoch, 1);
    let steps = ds.train.len().div_ceil(cfg.train.batch) as u64;
    assert_eq!(c.optim.as_ref().unwrap().steps, steps);
    // Save and load again: every bit survives.
    let again = dir.join("again.safetensors");
    c.save(&again).unwrap();
    let d = Checkpoint::load(&again).unwrap();
    assert_same_run(&c, &d);
    assert_eq!(c.progress, d.progress);
    // The best model file has the model tensors only.
    let best = Checkpoint::load(&dir.join(checkpoint::BEST)).unwrap();
    assert!(best.optim.is_none() && best.best_params.is_none());
    assert_bits_equal("best file", &best.params, c.best_params.as_ref().unwrap());
    let e = best.into_resume(&dir.join(checkpoint::BEST)).unwrap_err();
    assert!(e.to_string().contains("no optimiser state"), "{e}");
}

fn load_err(path: &Path) -> String {
    match Checkpoint::load(path) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn truncated_and_corrupted_files_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_, _, path) = sample_checkpoint(dir);
    let bytes = std::fs::read(&path).unwrap();
    let bad = dir.join("bad.safetensors");
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    // Cut inside the length field, inside the header, inside the data, one byte short.
    for cut in [
        0,
        5,
        8 + n / 2,
        8 + n + 100,
        bytes.len() / 2,
        bytes.len() - 1,
    ] {
        std::fs::write(&bad, &bytes[..cut]).unwrap();
        let e = load_err(&bad);
        assert!(e.contains("truncated checkpoint"), "cut at {cut}: {e}");
        assert!(e.contains("bad.safetensors"), "{e}");
    }
    // A byte flipped inside the JSON header.
    let mut b = bytes.clone();
    b[8 + n / 3] = b'\x01';
    std::fs::write(&bad, &b).unwrap();
    let e = load_err(&bad);
    assert!(
        e.contains("corrupted checkpoint") && e.contains("header"),
        "{e}"
    );
    // A flipped bit in the tensor data: only the checksum can tell.
    let mut b = bytes.clone();
    let last = b.len() - 7;
    b[last] ^= 0x10;
    std::fs::write(&bad, &b).unwrap();
    let e = load_err(&bad);
    assert!(e.contains("does not match its checksum"), "{e}");
    // Extra bytes after the last tensor.
    let mut b = bytes.clone();
    b.extend_from_slice(&[0; 16]);
    std::fs::write(&bad, &b).unwrap();
    let e = load_err(&bad);
    assert!(e.contains("16 bytes follow the last tensor"), "{e}");
    // Not there at all.
    let e = load_err(&dir.join("missing.safetensors"));
    assert!(e.contains("missing.safetensors: cannot read"), "{e}");
}

/// Rewrites the safetensors file `src` into `dst` with tensors changed by `edit`
/// (`name -> (dtype, shape, bytes)`; `None` drops the tensor) and metadata by `meta`.
fn rewrite(
    src: &Path,
    dst: &Path,
    edit: impl Fn(&str, &TensorView) -> Option<(Dtype, Vec<usize>, Vec<u8>)>,
    meta: impl Fn(&mut HashMap<String, String>),
) {
    let bytes = std::fs::read(src).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let mut md = header.metadata().clone().unwrap_or_default();
    meta(&mut md);
    let owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .filter_map(|(name, t)| edit(&name, &t).map(|(d, s, b)| (name, d, s, b)))
        .collect();
    let views: Vec<(String, TensorView)> = owned
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let out = safetensors::serialize(views, Some(md).filter(|m| !m.is_empty())).unwrap();
    std::fs::write(dst, out).unwrap();
}

fn keep(_: &str, t: &TensorView) -> Option<(Dtype, Vec<usize>, Vec<u8>)> {
    Some((t.dtype(), t.shape().to_vec(), t.data().to_vec()))
}

#[test]
fn foreign_files_missing_tensors_wrong_shapes_and_dtypes_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_, _, path) = sample_checkpoint(dir);
    let bad = dir.join("foreign.safetensors");
    let unchecked = |m: &mut HashMap<String, String>| {
        m.remove("bst.checksum");
    };

    // Someone else's model: tensors, no BST metadata.
    rewrite(&path, &bad, keep, |m| m.clear());
    let e = load_err(&bad);
    assert!(
        e.contains("not a BST checkpoint") && e.contains("bst.config"),
        "{e}"
    );

    rewrite(
        &path,
        &bad,
        |n, t| (n != "blocks.0.ffn1.weight").then(|| keep(n, t)).flatten(),
        unchecked,
    );
    let e = load_err(&bad);
    assert!(
        e.contains("tensor `blocks.0.ffn1.weight` is missing (expected shape [32, 16])"),
        "{e}"
    );

    rewrite(
        &path,
        &bad,
        |n, t| {
            let (d, s, b) = keep(n, t)?;
            Some(if n == "mlp.1.weight" {
                (d, vec![s[1], s[0]], b)
            } else {
                (d, s, b)
            })
        },
        unchecked,
    );
    let e = load_err(&bad);
    assert!(
        e.contains("tensor `mlp.1.weight` has shape [32, 16], expected [16, 32]"),
        "{e}"
    );

    rewrite(
        &path,
        &bad,
        |n, t| {
            let (d, s, b) = keep(n, t)?;
            Some(if n == "emb.cat.weight" {
                (Dtype::F16, s, b[..b.len() / 2].to_vec())
            } else {
                (d, s, b)
            })
        },
        unchecked,
    );
    let e = load_err(&bad);
    assert!(
        e.contains("tensor `emb.cat.weight` is F16, expected F32"),
        "{e}"
    );

    // A config that says 2 blocks for tensors of 1.
    rewrite(&path, &bad, keep, |m| {
        m.remove("bst.checksum");
        let c = m["bst.config"].replace("\"blocks\":1", "\"blocks\":2");
        m.insert("bst.config".into(), c);
    });
    let e = load_err(&bad);
    assert!(e.contains("tensor `blocks.1.qkv.weight` is missing"), "{e}");

    // An extra tensor the table does not know.
    rewrite(&path, &bad, keep, unchecked);
    let bytes = std::fs::read(&bad).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let mut views: Vec<(String, TensorView)> = st.tensors();
    let extra = [0u8; 8];
    views.push((
        "head.extra".into(),
        TensorView::new(Dtype::F32, vec![2], &extra).unwrap(),
    ));
    let out = safetensors::serialize(views, header.metadata().clone()).unwrap();
    std::fs::write(&bad, out).unwrap();
    let e = load_err(&bad);
    assert!(e.contains("unexpected tensor `head.extra`"), "{e}");
}

/// Spec section 3, "Vocabularies at scale": either form of the vocabulary reads the same
/// (a small vocabulary moved into `meta.vocab` by another tool loads as it was); a pointer
/// to a missing or non-U8 tensor is a clear error, not a panic.
#[test]
fn a_vocabulary_in_the_meta_vocab_tensor_reads_like_one_in_the_header() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_, ds, path) = sample_checkpoint(dir);
    let (value, tensor) = {
        let bytes = std::fs::read(&path).unwrap();
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let md = header.metadata().clone().unwrap();
        (md["bst.vocab"].clone(), st.tensor("meta.vocab").is_ok())
    };
    assert!(
        value.starts_with('{') && !tensor,
        "a small vocabulary stays in the header"
    );

    // Rewrites the file with the vocabulary as a tensor of `dtype` (or none).
    let moved = |dst: &Path, dtype: Option<Dtype>| {
        let bytes = std::fs::read(&path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        let mut md = header.metadata().clone().unwrap();
        let json = md.insert("bst.vocab".into(), checkpoint::VOCAB_IN_TENSOR.into());
        let json = json.unwrap().into_bytes();
        md.remove("bst.checksum");
        let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = st
            .tensors()
            .into_iter()
            .map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
            .collect();
        if let Some(d) = dtype {
            let width = d.bitsize() / 8;
            let n = json.len() / width;
            owned.push(("meta.vocab".into(), d, vec![n], json[..n * width].to_vec()));
        }
        let views: Vec<(String, TensorView)> = owned
            .iter()
            .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        std::fs::write(dst, safetensors::serialize(views, Some(md)).unwrap()).unwrap();
    };
    let ok = dir.join("tensor.safetensors");
    moved(&ok, Some(Dtype::U8));
    let a = Checkpoint::load(&path).unwrap();
    let b = Checkpoint::load(&ok).expect("the tensor form loads");
    assert!(a.vocab == b.vocab && b.vocab == ds.vocab);
    assert_bits_equal("parameters", &a.params, &b.params);

    let missing = dir.join("missing.safetensors");
    moved(&missing, None);
    let e = load_err(&missing);
    assert!(
        e.contains("no tensor `meta.vocab`") && e.contains("missing.safetensors"),
        "{e}"
    );
    let wrong = dir.join("wrong.safetensors");
    moved(&wrong, Some(Dtype::F32));
    let e = load_err(&wrong);
    assert!(
        e.contains("`meta.vocab` is F32") && e.contains("expected U8"),
        "{e}"
    );
}

#[test]
fn a_config_or_data_that_does_not_match_is_refused_with_the_difference() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (cfg, ds, path) = sample_checkpoint(dir);
    let c = Checkpoint::load(&path).unwrap();

    let mut other = cfg.clone();
    other.train.epochs = 7; // may change on resume
    other.train.eval_batch = 33;
    c.check_config(&other).unwrap();
    other.model.blocks = 2;
    other.train.lr = Some(0.5);
    let e = c.check_config(&other).unwrap_err().to_string();
    assert!(
        e.contains("model.blocks is 1 in the checkpoint but 2"),
        "{e}"
    );
    assert!(
        e.contains("train.lr is null in the checkpoint but 0.5"),
        "{e}"
    );

    // Another synthetic world: more users, so another vocabulary.
    let mut bigger = cfg.clone();
    bigger.data.synthetic_users = 90;
    let ds2 = dataset(&bigger);
    let e = c.check_vocab(&ds2.vocab).unwrap_err().to_string();
    assert!(e.contains("does not match the data"), "{e}");
    assert!(
        e.contains(
            "the checkpoint has \"user_id (81 rows at 0)\", the data \"user_id (91 rows at 0)\""
        ),
        "{e}"
    );
    c.check_vocab(&ds.vocab).unwrap();

    // Resuming on other samples (another data seed, same vocabularies) is refused too.
    let mut reseeded = cfg.clone();
    reseeded.data.seed = 5;
    let ds3 = dataset(&reseeded);
    let mut backend = CpuBackend::new(&cfg, ds3.vocab.sizes());
    let opts = TrainOptions {
        resume: Some(c.into_resume(&path).unwrap()),
        ..TrainOptions::default()
    };
    let mut more = cfg.clone();
    more.train.epochs = 2;
    let e = train_with(&mut backend, &ds3, &more.train, opts, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("the training samples differ"), "{e}");
}

/// A checkpoint written before `model.emb_init_std`, `model.emb_l2`,
/// `train.weight_decay` and `train.patience` existed (its config JSON lacks them) loads
/// with the values those runs trained with (N(0, 1) embeddings, no regularisation, no
/// early stopping), not today's defaults, so it scores and resumes as it was.
#[test]
fn a_checkpoint_from_before_the_regularisation_keys_loads_as_it_was_trained() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut cfg = tiny_config(Optimizer::Adam);
    cfg.train.epochs = 1;
    cfg.model.emb_init_std = 1.0;
    // Adam's default rate then: 1e-3 everywhere.
    cfg.train.lr = Some(1e-3);
    cfg.train.emb_lr_scale = Some(1.0);
    let ds = dataset(&cfg);
    run(&cfg, &ds, dir, None, None).unwrap();
    let path = dir.join(checkpoint::LATEST);
    let old = dir.join("old.safetensors");
    let drop_keys = |md: &mut HashMap<String, String>, key: &str, names: &[&str]| {
        let mut v: serde_json::Value = serde_json::from_str(&md[key]).unwrap();
        for n in names {
            assert!(v.as_object_mut().unwrap().remove(*n).is_some(), "{n}");
        }
        md.insert(key.into(), v.to_string());
    };
    rewrite(&path, &old, keep, |md| {
        drop_keys(md, "bst.config", &["emb_init_std", "emb_l2"]);
        drop_keys(
            md,
            "bst.train_config",
            &["weight_decay", "patience", "lr_decay", "emb_lr_scale", "lr"],
        );
    });
    let (new, legacy) = (
        Checkpoint::load(&path).unwrap(),
        Checkpoint::load(&old).unwrap(),
    );
    assert_eq!(
        legacy.config, cfg,
        "the legacy values fill the missing keys"
    );
    assert_eq!(
        (legacy.config.model.emb_l2, legacy.config.train.weight_decay),
        (0.0, 0.0)
    );
    assert_eq!(legacy.config.train.patience, 0);
    assert_bits_equal("parameters", &legacy.params, &new.params);
    legacy
        .check_config(&cfg)
        .expect("resumable with its own config");
    // A resumed legacy run continues as the run would have.
    let mut two = cfg.clone();
    two.train.epochs = 2;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let from_new = run(&two, &ds, a.path(), Some(&path), None).unwrap();
    let from_old = run(&two, &ds, b.path(), Some(&old), None).unwrap();
    assert_bits_equal("resumed parameters", &from_old.params, &from_new.params);
}

#[test]
fn a_run_resumed_after_an_epoch_ends_bit_for_bit_like_an_uninterrupted_one() {
    for optimizer in [Optimizer::Adam, Optimizer::Adagrad] {
        let cfg = tiny_config(optimizer);
        let ds = dataset(&cfg);
        let (ta, tb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (ta.path(), tb.path());
        let t = Instant::now();
        let whole = run(&cfg, &ds, a, None, None).unwrap();
        let mut first = cfg.clone();
        first.train.epochs = 1;
        run(&first, &ds, b, None, None).unwrap();
        let latest = b.join(checkpoint::LATEST);
        let resumed = run(&cfg, &ds, b, Some(&latest), None).unwrap();
        eprintln!("{optimizer:?}: 3 runs in {:.1}s", t.elapsed().as_secs_f64());
        // The backends end on the best epoch's parameters; the files hold the last ones.
        assert_bits_equal("final parameters", &whole.params, &resumed.params);
        let (ca, cb) = (
            Checkpoint::load(&a.join(checkpoint::LATEST)).unwrap(),
            Checkpoint::load(&latest).unwrap(),
        );
        assert_eq!(cb.progress.epoch, 2);
        assert_same_run(&ca, &cb);
    }
}

#[test]
fn a_run_stopped_mid_epoch_resumes_at_the_same_step_of_the_same_order() {
    let cfg = tiny_config(Optimizer::Adam);
    let ds = dataset(&cfg);
    let steps = ds.train.len().div_ceil(cfg.train.batch);
    assert!(steps > 8, "{steps} steps per epoch");
    let (ta, tb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (ta.path(), tb.path());
    // Stopped before the first step: nothing to save.
    let mut backend = CpuBackend::new(&cfg, ds.vocab.sizes());
    let mut ckpt = RunCheckpointer::new(b, info(&cfg, &ds));
    let stop = AtomicBool::new(true);
    let opts = TrainOptions {
        checkpointer: Some(&mut ckpt),
        stop: Some(&stop),
        ..TrainOptions::default()
    };
    let e = train_with(&mut backend, &ds, &cfg.train, opts, &mut |_| {}).unwrap_err();
    assert_eq!(
        e.to_string(),
        "interrupted before the first step; no checkpoint was saved"
    );
    assert!(!b.join(checkpoint::LATEST).exists());

    run(&cfg, &ds, a, None, None).unwrap();
    // Stopped twice: mid-epoch 1, then mid-epoch 2 of the resumed run.
    let Err(e) = run(&cfg, &ds, b, None, Some((1, 5))) else {
        panic!("not stopped")
    };
    assert!(
        matches!(e, TrainError::Interrupted { saved: true, .. }),
        "{e}"
    );
    assert!(
        e.to_string().contains("interrupted at epoch 1, step 5"),
        "{e}"
    );
    let latest = b.join(checkpoint::LATEST);
    let c = Checkpoint::load(&latest).unwrap();
    assert_eq!((c.progress.epoch, c.progress.step), (0, 5));
    assert_eq!(c.optim.as_ref().unwrap().steps, 5);
    let Err(e) = run(&cfg, &ds, b, Some(&latest), Some((2, 3))) else {
        panic!("not stopped")
    };
    assert!(
        e.to_string().contains("interrupted at epoch 2, step 3"),
        "{e}"
    );
    run(&cfg, &ds, b, Some(&latest), None).unwrap();
    assert_same_run(
        &Checkpoint::load(&a.join(checkpoint::LATEST)).unwrap(),
        &Checkpoint::load(&latest).unwrap(),
    );
}

#[test]
fn a_run_stopped_while_scoring_resumes_there() {
    let mut cfg = tiny_config(Optimizer::Adam);
    cfg.train.eval_batch = 16; // several batches per split, so a stop can fall between two
    let ds = dataset(&cfg);
    let steps = ds.train.len().div_ceil(cfg.train.batch);
    assert!(
        ds.valid.len() > 2 * cfg.train.eval_batch,
        "{}",
        ds.valid.len()
    );
    let (ta, tb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (ta.path(), tb.path());
    run(&cfg, &ds, a, None, None).unwrap();
    let scoring = |split: &'static str, epoch_done: usize| {
        let mut epochs = 0;
        move |e: &Event| {
            // The loop reports each epoch once it is validated.
            epochs += matches!(e, Event::Epoch(_)) as usize;
            matches!(*e, Event::Evaluating { split: s, .. } if s == split) && epochs == epoch_done
        }
    };
    // Stopped after the first batch of epoch 2's validation: saved at its last step.
    let Err(e) = run_until(&cfg, &ds, b, None, scoring("validation", 1)) else {
        panic!("not stopped")
    };
    assert!(
        matches!(e, TrainError::Interrupted { saved: true, .. }),
        "{e}"
    );
    let want = format!("interrupted at epoch 2, step {steps}");
    assert!(e.to_string().contains(&want), "{e}");
    let latest = b.join(checkpoint::LATEST);
    let c = Checkpoint::load(&latest).unwrap();
    assert_eq!((c.progress.epoch, c.progress.step), (1, steps));
    assert_eq!(c.optim.as_ref().unwrap().steps, 2 * steps as u64);
    // Resumed, it validates epoch 2 and trains on; stopped again while testing, every
    // epoch is saved, and the run resumed once more only tests.
    let epochs = cfg.train.epochs;
    let Err(e) = run_until(&cfg, &ds, b, Some(&latest), scoring("test", epochs - 1)) else {
        panic!("not stopped")
    };
    let want = format!("interrupted after epoch {epochs}; a checkpoint was saved");
    assert_eq!(e.to_string(), want);
    run(&cfg, &ds, b, Some(&latest), None).unwrap();
    assert_same_run(
        &Checkpoint::load(&a.join(checkpoint::LATEST)).unwrap(),
        &Checkpoint::load(&latest).unwrap(),
    );
}

/// A CPU backend whose parameters turn NaN before update `at`: the loss goes NaN there.
/// With `fails`, update `at` fails instead, as a step on a lost GPU does.
struct Poisoned {
    inner: CpuBackend,
    at: u64,
    fails: bool,
}

impl Backend for Poisoned {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn model(&self) -> &Model {
        self.inner.model()
    }
    fn train_step(&mut self, batch: &Batch) -> Result<(), BackendError> {
        if self.inner.optim.steps + 1 == self.at && self.fails {
            let lost = GpuError::Device("the device was lost (simulated)".into());
            return Err(BackendError::gpu("running a training step")(lost));
        }
        if self.inner.optim.steps + 1 == self.at {
            let last_bias = self.inner.model.layout.index.mlp.last().unwrap().1.start;
            self.inner.params[last_bias] = f32::NAN;
        }
        self.inner.train_step(batch)
    }
    fn take_loss(&mut self) -> Result<(f64, usize), BackendError> {
        self.inner.take_loss()
    }
    fn set_lr(&mut self, lr: f32) {
        self.inner.set_lr(lr)
    }
    fn predict(&mut self, batch: &Batch, probs: &mut [f32]) -> Result<(), BackendError> {
        self.inner.predict(batch, probs)
    }
    fn read_params(&self) -> Result<Vec<f32>, BackendError> {
        self.inner.read_params()
    }
    fn write_params(&mut self, params: &[f32]) -> Result<(), BackendError> {
        self.inner.write_params(params)
    }
    fn read_optim_state(&self) -> Result<OptimSnapshot, BackendError> {
        self.inner.read_optim_state()
    }
    fn write_optim_state(&mut self, s: &OptimSnapshot) -> Result<(), BackendError> {
        self.inner.write_optim_state(s)
    }
}

/// Trains with checkpoints into a fresh temporary folder, the loss read every step, on a
/// [`Poisoned`] backend that goes bad at step 4 of epoch 2 (`fails`: the step fails, else
/// its loss is NaN). Checks that the latest checkpoint is left byte for byte as it was at
/// step 3, and returns the error and the folder (removed when dropped).
fn poisoned_run(fails: bool) -> (TrainError, tempfile::TempDir) {
    let cfg = tiny_config(Optimizer::Adam);
    let ds = dataset(&cfg);
    let steps = ds.train.len().div_ceil(cfg.train.batch);
    let dir = tempfile::tempdir().unwrap();
    let latest = dir.path().join(checkpoint::LATEST);
    let mut ckpt = RunCheckpointer::new(dir.path(), info(&cfg, &ds));
    let mut backend = Poisoned {
        inner: CpuBackend::new(&cfg, ds.vocab.sizes()),
        at: steps as u64 + 4,
        fails,
    };
    let opts = TrainOptions {
        checkpointer: Some(&mut ckpt),
        loss_every: 1,
        ..TrainOptions::default()
    };
    let mut before = None;
    let mut on_event = |e: Event| {
        if let Event::Step {
            epoch: 2, step: 3, ..
        } = e
        {
            before = Some(std::fs::read(&latest).expect("epoch 1's checkpoint"));
        }
    };
    let e = train_with(&mut backend, &ds, &cfg.train, opts, &mut on_event).unwrap_err();
    let before = before.expect("step 3 of epoch 2 was reported");
    assert!(
        std::fs::read(&latest).unwrap() == before,
        "the checkpoint changed"
    );
    (e, dir)
}

#[test]
fn a_non_finite_loss_stops_training_naming_the_step_and_keeps_the_last_good_checkpoint() {
    let (e, dir) = poisoned_run(false);
    let msg = e.to_string();
    assert!(
        msg.contains("the loss became NaN in epoch 2, step 4: lower the learning rate"),
        "{msg}"
    );
    assert!(
        msg.contains("the last good checkpoint (after epoch 1) is kept"),
        "{msg}"
    );
    let c = Checkpoint::load(&dir.path().join(checkpoint::LATEST)).unwrap();
    assert_eq!((c.progress.epoch, c.progress.step), (1, 0));
    assert!(c.params.iter().all(|x| x.is_finite()));

    // With the loss read every 10 steps the error names the window.
    let cfg = tiny_config(Optimizer::Adam);
    let ds = dataset(&cfg);
    let mut backend = Poisoned {
        inner: CpuBackend::new(&cfg, ds.vocab.sizes()),
        at: 4,
        fails: false,
    };
    let e = bst_core::train::train(&mut backend, &ds, &cfg.train, &mut |_| {}).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("in epoch 1, steps 1-"), "{msg}");
    assert!(msg.contains("no checkpoint was saved"), "{msg}");
}

#[test]
fn a_failed_step_stops_training_naming_the_step_and_leaves_the_last_checkpoint_as_it_was() {
    let (e, _) = poisoned_run(true);
    assert!(matches!(e, TrainError::Failed { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "epoch 2, step 4: the GPU failed while running a training step: GPU error: the device \
         was lost (simulated); the last good checkpoint (after epoch 1) is kept"
    );
}

const WRITER_ENV: &str = "BST_CHECKPOINT_WRITER_DIR";

/// Not a test by itself: when `WRITER_ENV` names a folder, writes checkpoints there in a
/// loop until killed. Checkpoint `k` has every parameter equal to `k` and epoch `k`, so a
/// reader can tell a torn file from a whole one.
#[test]
#[ignore = "run by the kill test as a child process, with BST_CHECKPOINT_WRITER_DIR set"]
fn checkpoint_writer_helper() {
    let Ok(dir) = std::env::var(WRITER_ENV) else {
        return;
    };
    let mut cfg = tiny_config(Optimizer::Adam);
    cfg.model.mlp = vec![512, 256]; // a few MB per file, so writes take a while
    let ds = dataset(&cfg);
    let layout = ParamLayout::new(&cfg.model, ds.vocab.sizes());
    let mut ckpt = RunCheckpointer::new(Path::new(&dir), info(&cfg, &ds));
    for k in 1.. {
        let params = vec![k as f32; layout.total];
        let progress = Progress {
            epoch: k,
            ..Progress::default()
        };
        let optim = OptimSnapshot {
            steps: k as u64,
            state: bst_core::optim::OptimState::Adam {
                m: params.clone(),
                v: params.clone(),
            },
        };
        let snap = Snapshot {
            progress: &progress,
            params: &params,
            optim: Some((&optim).into()),
            best_params: bst_core::train::BestParams::Here(&params),
        };
        use bst_core::train::Checkpointer;
        ckpt.save(bst_core::train::Save::Latest, &snap).unwrap();
    }
}

#[test]
fn a_writer_killed_at_random_times_always_leaves_a_loadable_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let path = dir.join(checkpoint::LATEST);
    // The writer's temporary files: `.latest.<pid>.<n>.tmp`.
    let tmp_prefix = format!(".{}.", checkpoint::LATEST);
    let temporaries = || -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy();
                name.starts_with(&tmp_prefix) && name.ends_with(".tmp")
            })
            .collect()
    };
    let mut rng = Rng::new(42);
    let (mut loaded, mut mid_write) = (0, 0);
    for round in 0..12 {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "checkpoint_writer_helper",
                "--exact",
                "--ignored",
                "--test-threads",
                "1",
            ])
            .env(WRITER_ENV, dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Let it write a few files first, then kill it at a random moment.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !path.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(20 + rng.below(120)));
        child.kill().unwrap(); // SIGKILL: no chance to clean up
        child.wait().unwrap();
        let tmps = temporaries();
        mid_write += !tmps.is_empty() as usize;
        let c = Checkpoint::load(&path)
            .unwrap_or_else(|e| panic!("round {round}: the checkpoint does not load: {e}"));
        let k = c.progress.epoch as f32;
        assert!(
            c.params.iter().all(|&x| x == k),
            "round {round}: a torn checkpoint"
        );
        assert_eq!(c.optim.unwrap().steps, c.progress.epoch as u64);
        loaded += 1;
        for t in &tmps {
            std::fs::remove_file(t).ok();
        }
    }
    eprintln!("{loaded} kills, {mid_write} of them with a write in progress");
    assert_eq!(loaded, 12);
    assert!(
        mid_write > 0,
        "no kill landed inside a write: the test proved nothing"
    );
}
