//! `bst-train bench` end to end on a tiny model: one JSON object on standard output with
//! every documented key and positive measurements, on the CPU and on the GPU (lavapipe
//! in CI; `BST_SKIP_GPU_TESTS=1` skips the GPU run when there is no adapter).

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A small model (d = 16, MLP 32-16) so the run takes seconds even on lavapipe.
fn tiny_config(dir: &Path) -> PathBuf {
    let path = dir.join("tiny.toml");
    std::fs::write(
        &path,
        "[model]\nseq_len = 10\nd_item = 8\nd_cat = 4\nd_pos = 4\nheads = 2\nd_ff = 32\n\
         d_other = 4\nmlp = [32, 16]\n[train]\nbatch = 32\neval_batch = 64\n",
    )
    .unwrap();
    path
}

fn bench(device: &str, extra: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path());
    Command::new(env!("CARGO_BIN_EXE_bst-train"))
        .args(["bench", "--device", device, "--config"])
        .arg(&cfg)
        .args([
            "--synthetic-users",
            "60",
            "--steps",
            "12",
            "--warmup",
            "1",
            "--runs",
            "5",
            "--candidates",
            "100",
            "--kernel-reps",
            "3",
            "--max-seconds",
            "1",
        ])
        .args(extra)
        .output()
        .expect("bst-train runs")
}

fn positive(v: &Value, path: &str) -> f64 {
    let x = path
        .split('.')
        .fold(v, |v, k| &v[k])
        .as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number in {v:#}"));
    assert!(x > 0.0 && x.is_finite(), "{path} = {x}");
    x
}

/// Parses standard output as one JSON object and checks what every device reports.
fn check_report(out: &Output) -> Value {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bst-train bench failed:\n{stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(v["schema"], 2);
    let c = &v["config"];
    assert_eq!(c["model"]["d_item"], 8);
    assert_eq!(c["model"]["mlp"], serde_json::json!([32, 16]));
    assert_eq!(c["batch"], 32);
    assert_eq!(c["eval_batch"], 64);
    assert_eq!(c["optimizer"], "adam");
    let sizes: Vec<u64> = c["vocab"]["field_sizes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap())
        .collect();
    assert_eq!(c["vocab"]["other"].as_u64(), Some(sizes.iter().sum()));
    for key in [
        "config.vocab.items",
        "config.vocab.cats",
        "config.vocab.pos_buckets",
        "config.params",
        "train.samples_per_sec",
        "train.seconds",
        "train.mean_loss",
        "inference.samples_per_sec",
        "scoring.median_ms",
        "scoring.p99_ms",
        "scoring.min_ms",
    ] {
        positive(&v, key);
    }
    assert_eq!(v["train"]["steps"], 12);
    assert_eq!(v["scoring"]["candidates"], 100);
    assert!(v["scoring"]["runs"].as_u64().unwrap() >= 3);
    assert!(positive(&v, "scoring.p99_ms") >= positive(&v, "scoring.median_ms"));
    let results = v["kernels"]["results"].as_array().expect("kernel results");
    let names: Vec<&str> = results
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    for name in [
        "embedding_forward",
        "embedding_backward",
        "qkv_forward",
        "attention_forward",
        "attention_backward",
        "layernorm_backward",
        "ffn1_forward",
        "mlp.0_backward",
        "bce_forward",
        "adam",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    for k in results {
        positive(k, "ms");
        positive(k, "gb_per_s");
        positive(k, "bytes");
    }
    v
}

#[test]
fn bench_on_the_cpu_prints_one_json_object_with_positive_numbers() {
    let v = check_report(&bench("cpu", &[]));
    assert_eq!(v["adapter"], "cpu");
    assert!(v["memory"].is_null());
    assert_eq!(v["train"]["loss_read_every"], 1);
    assert_eq!(v["kernels"]["timestamps"], false);
}

#[test]
fn bench_on_the_gpu_reports_the_adapter_memory_and_kernel_times() {
    let out = bench("gpu", &[]);
    if !out.status.success() && std::env::var("BST_SKIP_GPU_TESTS").is_ok_and(|v| v == "1") {
        eprintln!(
            "note: BST_SKIP_GPU_TESTS=1, skipping: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let v = check_report(&out);
    let a = &v["adapter"];
    assert!(a["name"].as_str().is_some_and(|n| !n.is_empty()), "{a}");
    assert!(a["backend"].is_string() && a["device_type"].is_string());
    assert_eq!(v["train"]["loss_read_every"], 10);
    let total = positive(&v, "memory.peak_device_bytes");
    let parts = &v["memory"]["breakdown"];
    let sum: f64 = [
        "arenas",
        "inputs",
        "activations",
        "gradients",
        "bindings",
        "readback",
    ]
    .iter()
    .map(|k| positive(parts, k))
    .sum();
    assert_eq!(sum, total);
    if let Some(seen) = v["memory"]["allocator_bytes"].as_f64() {
        // The allocator adds alignment padding to the backend's count.
        assert!(
            seen >= total && seen - total < (256 << 10) as f64,
            "{seen} vs {total}"
        );
    }
    assert_eq!(v["memory"]["buffers_hold_samples"], 100);
    assert_eq!(
        v["kernels"]["timestamps"], a["timestamp_query"],
        "timestamps are used exactly where the adapter has them"
    );
}

#[test]
fn bench_refuses_the_flags_of_a_run_folder() {
    let out = bench("cpu", &["--epochs", "2"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--epochs"), "{err}");
}
