//! Data-parallel training on MPI (issue 13), with `mpirun --allow-run-as-root
//! --oversubscribe -n 2` on the CPU backend. Without the libtest harness: run plainly
//! (`cargo test -p bst-train --features mpi --test mpi`), this binary is the launcher;
//! under mpirun it is one rank of the step test.
//!
//! 1. Steps: 3 Adam steps of 2 ranks give every parameter of 1 process within
//!    1e-5 + 1e-4 |x|, with the embedding tables exchanged by their touched rows, whole,
//!    and by the automatic choice, for dense and sparse updates, on uneven shards.
//!    The same on the GPU backend (lavapipe in CI, both ranks on it): 3 Adam steps of 2 GPU
//!    ranks give 1 GPU process's parameters within the GPU tests' 1e-5 + 1e-4 |x|
//!    (`bst-core/tests/gpu_training.rs`), dense and sparse updates, the tables exchanged
//!    by rows and whole. `BST_SKIP_GPU_TESTS=1` skips it where no Vulkan adapter exists.
//! 2. `mpirun -n 2 bst-train train`: one epoch of ml-100k gives the test AUC of one
//!    process within 0.002; its checkpoint resumes in one process for a second epoch.

#[allow(dead_code)]
#[path = "../src/cluster.rs"]
mod cluster;
#[allow(dead_code)]
#[path = "../src/mpi_group.rs"]
mod mpi_group;

use bst_core::backend::{Backend, CpuBackend};
use bst_core::batch::Batch;
use bst_core::collective::{ExchangePolicy, shard_range};
use bst_core::config::Config;
use bst_core::data::{self, DataSource};
use bst_core::gpu_backend::GpuBackend;
use bst_core::model::Shard;
use bst_core::train::epoch_order;
use bst_kernels::gpu::{GpuContext, GpuOptions, wgpu};
use std::path::{Path, PathBuf};
use std::process::Command;

const RANKS: usize = 2;

fn main() {
    if mpi_group::launched() {
        let _universe = mpi_group::init().expect("MPI starts");
        steps_of_two_ranks_equal_one_process();
        gpu_steps_of_two_ranks_equal_one_gpu_process();
        return;
    }
    let Some(mpirun) = which("mpirun") else {
        // Built with the mpi feature but no launcher: fail, as the GPU tests do without an
        // adapter, unless told to leave it out (CI never sets this).
        if std::env::var("BST_NO_MPI").as_deref() == Ok("1") {
            eprintln!("mpi: BST_NO_MPI=1 and no mpirun on PATH: left out");
            return;
        }
        panic!(
            "mpi: no mpirun on PATH (Debian: openmpi-bin libopenmpi-dev); BST_NO_MPI=1 leaves this test out"
        );
    };
    let me = std::env::current_exe().expect("the test's path");
    println!("mpi: 3 steps, 2 ranks against 1 process");
    let ok = mpi_command(&mpirun, RANKS)
        .arg(&me)
        .status()
        .expect("mpirun runs");
    assert!(ok.success(), "the step test failed under mpirun: {ok}");
    println!("mpi: ml-100k, 2 ranks against 1 process, resumed in 1");
    ml100k_two_ranks_match_one_and_resume_in_one(&mpirun);
    println!("mpi: ok");
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `mpirun -n ranks`, as root too, one thread per rank. (No single-copy shared memory:
/// containers often forbid the cross-process reads it takes.)
fn mpi_command(mpirun: &Path, ranks: usize) -> Command {
    let mut c = Command::new(mpirun);
    c.args(["--allow-run-as-root", "--oversubscribe"])
        .args(["--mca", "btl_vader_single_copy_mechanism", "none", "-n"])
        .arg(ranks.to_string())
        .args(["-x", "RAYON_NUM_THREADS=1"]);
    c
}

/// One rank: 3 steps of its shards against 3 steps of the whole batches in this process.
fn steps_of_two_ranks_equal_one_process() {
    let member = cluster::member().expect("launched by mpirun");
    let g = member.group.clone();
    assert_eq!(g.size(), RANKS);
    let mut cfg = Config::default();
    cfg.data.synthetic_users = 200;
    cfg.train.batch = 63; // uneven shards: 32 and 31 rows
    cfg.model.seq_len = 12;
    cfg.model.dropout = 0.2;
    let ds = data::load(&DataSource::Synthetic, &cfg).expect("synthetic data");
    let order = epoch_order(ds.train.len(), cfg.train.seed, 1);
    let batches: Vec<&[u32]> = order.chunks(cfg.train.batch).take(3).collect();
    for sparse in [false, true] {
        cfg.train.sparse_embeddings = sparse;
        let mut one = CpuBackend::new(&cfg, ds.vocab.sizes());
        let mut batch = Batch::default();
        for idx in &batches {
            batch.gather(&ds.train, idx);
            one.train_step(&batch).unwrap();
        }
        let (loss_one, _) = one.take_loss().unwrap();
        for policy in [
            ExchangePolicy::Sparse,
            ExchangePolicy::Dense,
            ExchangePolicy::Auto,
        ] {
            let mut rank = CpuBackend::new(&cfg, ds.vocab.sizes());
            rank.exchange.policy = policy;
            rank.join_group(g.clone()).unwrap();
            for idx in &batches {
                let rows = shard_range(idx.len(), g.rank(), g.size());
                batch.gather(&ds.train, &idx[rows.clone()]);
                let shard = Shard {
                    row0: rows.start,
                    global: idx.len(),
                };
                rank.train_step_shard(&batch, None, shard).unwrap();
            }
            let (loss, _) = rank.take_loss().unwrap();
            let stats = rank.take_exchange_stats().unwrap();
            let what = format!("sparse updates {sparse}, exchange {policy:?}");
            assert!(
                (loss - loss_one).abs() < 1e-5,
                "{what}: loss {loss} against {loss_one}"
            );
            match policy {
                ExchangePolicy::Sparse => assert_eq!(stats.dense_tables, 0, "{what}"),
                ExchangePolicy::Dense => assert_eq!(stats.sparse_tables, 0, "{what}"),
                ExchangePolicy::Auto => {}
            }
            let mut worst = 0.0f32;
            for (i, (&a, &b)) in rank.params.iter().zip(&one.params).enumerate() {
                let tol = 1e-5 + 1e-4 * b.abs();
                assert!(
                    (a - b).abs() <= tol,
                    "{what}: parameter {i} is {a} on rank {}, {b} in one process",
                    g.rank()
                );
                worst = worst.max((a - b).abs() / tol);
            }
            if g.rank() == 0 {
                println!(
                    "  {what}: {} tables by rows, {} whole over 3 steps, {:.0} bytes/step, worst |diff|/tol {worst:.3}",
                    stats.sparse_tables,
                    stats.dense_tables,
                    stats.bytes as f64 / 3.0
                );
            }
        }
    }
}

/// One rank: 3 Adam steps of 2 GPU ranks against 3 steps of 1 GPU backend in this
/// process, on a small model (lavapipe is slow), with dropout, on uneven shards.
fn gpu_steps_of_two_ranks_equal_one_gpu_process() {
    let member = cluster::member().expect("launched by mpirun");
    let g = member.group.clone();
    let opts = GpuOptions {
        backends: wgpu::Backends::VULKAN,
        allow_software: true,
        ..Default::default()
    };
    let ctx = match GpuContext::for_local_rank(&opts, member.local_rank) {
        Ok(ctx) => std::sync::Arc::new(ctx),
        Err(e) if std::env::var("BST_SKIP_GPU_TESTS").as_deref() == Ok("1") => {
            eprintln!("BST_SKIP_GPU_TESTS=1: no GPU ({e}): skipping the GPU ranks' test");
            return;
        }
        Err(e) => panic!(
            "rank {}: no GPU adapter ({e}); BST_SKIP_GPU_TESTS=1 skips",
            g.rank()
        ),
    };
    let mut cfg = Config::default();
    cfg.data.synthetic_users = 60;
    cfg.train.batch = 15; // uneven shards: 8 and 7 rows
    cfg.train.eval_batch = 15;
    let m = &mut cfg.model;
    (m.seq_len, m.d_item, m.d_cat, m.d_pos, m.d_other) = (6, 8, 4, 4, 4);
    (m.heads, m.d_ff, m.blocks, m.mlp) = (2, 16, 1, vec![32, 16]);
    m.dropout = 0.2;
    // Gradients well above the rounding of the two summation orders (see
    // bst-core/tests/common's small_config).
    m.emb_init_std = 1.0;
    cfg.validate().expect("a valid config");
    let ds = data::load(&DataSource::Synthetic, &cfg).expect("synthetic data");
    let order = epoch_order(ds.train.len(), cfg.train.seed, 1);
    let batches: Vec<&[u32]> = order.chunks(cfg.train.batch).take(3).collect();
    let sizes = ds.vocab.sizes();
    for sparse in [false, true] {
        cfg.train.sparse_embeddings = sparse;
        let mut one = GpuBackend::init(ctx.clone(), &cfg, sizes).expect("a GPU backend");
        let mut batch = Batch::default();
        for idx in &batches {
            batch.gather(&ds.train, idx);
            one.train_step(&batch).unwrap();
        }
        let (loss_one, _) = one.take_loss().unwrap();
        let params_one = one.read_params().unwrap();
        drop(one);
        for policy in [ExchangePolicy::Sparse, ExchangePolicy::Dense] {
            let mut rank = GpuBackend::init(ctx.clone(), &cfg, sizes).expect("a GPU backend");
            rank.join_group(g.clone()).unwrap();
            rank.set_exchange_policy(policy);
            for idx in &batches {
                let rows = shard_range(idx.len(), g.rank(), g.size());
                batch.gather(&ds.train, &idx[rows.clone()]);
                let shard = Shard {
                    row0: rows.start,
                    global: idx.len(),
                };
                rank.train_step_shard(&batch, None, shard).unwrap();
            }
            let (loss, _) = rank.take_loss().unwrap();
            let stats = rank.take_exchange_stats().unwrap();
            let what = format!("GPU, sparse updates {sparse}, exchange {policy:?}");
            assert!(
                (loss - loss_one).abs() <= 1e-5 * (1.0 + loss_one.abs()),
                "{what}: loss {loss} against {loss_one}"
            );
            match policy {
                ExchangePolicy::Sparse => assert_eq!(stats.dense_tables, 0, "{what}"),
                _ => assert_eq!(stats.sparse_tables, 0, "{what}"),
            }
            let params = rank.read_params().unwrap();
            let (mut worst, mut max_diff) = (0.0f32, 0.0f32);
            for (i, (&a, &b)) in params.iter().zip(&params_one).enumerate() {
                let tol = 1e-5 + 1e-4 * b.abs();
                assert!(
                    (a - b).abs() <= tol,
                    "{what}: parameter {i} is {a} on rank {}, {b} in one process",
                    g.rank()
                );
                worst = worst.max((a - b).abs() / tol);
                max_diff = max_diff.max((a - b).abs());
            }
            if g.rank() == 0 {
                println!(
                    "  {what}: {} values, max |diff| {max_diff:.3e}, worst |diff|/tol {worst:.3}, loss {loss:.6} against {loss_one:.6}, {:.0} bytes/step",
                    params.len(),
                    stats.bytes as f64 / 3.0
                );
            }
        }
    }
}

fn ml100k() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/ml-100k");
    if dir.join("ml-100k.inter").exists() {
        return Some(dir);
    }
    if std::env::var("BST_SKIP_ML100K").as_deref() == Ok("1") {
        eprintln!("BST_SKIP_ML100K=1: skipping the ml-100k test");
        return None;
    }
    panic!(
        "{} is missing: run scripts/fetch-data.sh (or set BST_SKIP_ML100K=1)",
        dir.display()
    );
}

fn test_metrics(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("metrics.json")).expect("metrics.json");
    serde_json::from_str(&text).expect("metrics.json parses")
}

fn ml100k_two_ranks_match_one_and_resume_in_one(mpirun: &Path) {
    let Some(data) = ml100k() else { return };
    let bin = env!("CARGO_BIN_EXE_bst-train");
    // Owned here, by the parent of every bst-train process: removed when this returns
    // or panics.
    let tmp = tempfile::tempdir().expect("a temporary folder");
    let data = format!("recbole:{}", data.display());
    let train = |c: &mut Command, out: &Path, extra: &[&str]| {
        let o = c
            .arg(bin)
            .args(["train", "--device", "cpu", "--quiet", "--out"])
            .arg(out)
            .args(extra)
            .output()
            .expect("bst-train runs");
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "bst-train failed: {err}");
        err
    };
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    let args = ["--data", data.as_str(), "--epochs", "1"];
    train(&mut Command::new("env"), &one, &args);
    let err = train(&mut mpi_command(mpirun, RANKS), &two, &args);
    for r in 0..RANKS {
        assert!(
            err.contains(&format!("rank {r} of 2 on ")),
            "rank line: {err}"
        );
    }
    let auc = |d: &Path| test_metrics(d)["test"]["auc"].as_f64().expect("a test AUC");
    let (a1, a2) = (auc(&one), auc(&two));
    println!("  test AUC after one epoch: 1 process {a1:.4}, 2 ranks {a2:.4}");
    assert!((a1 - a2).abs() <= 0.002, "1 process {a1}, 2 ranks {a2}");
    // The checkpoint of 2 ranks, resumed by 1 process for a second epoch.
    let err = train(
        &mut Command::new("env"),
        &two,
        &["--resume", two.to_str().unwrap(), "--epochs", "2"],
    );
    assert!(err.contains("after epoch 1"), "resumed: {err}");
    let m = test_metrics(&two);
    let epochs = m["epochs"].as_array().expect("epochs");
    assert_eq!(epochs.len(), 2, "two epochs in metrics.json");
    let a = m["test"]["auc"].as_f64().unwrap();
    println!("  resumed in 1 process: test AUC {a:.4} after 2 epochs");
    assert!(a > 0.78, "the resumed run's test AUC is {a}");
}
