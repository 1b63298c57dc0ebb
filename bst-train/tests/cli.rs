//! The binary end to end on a small synthetic world: a run folder with the config and
//! metrics, clear errors for bad flags.

use std::process::Command;

fn bst_train() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bst-train"))
}

#[test]
fn train_writes_a_run_folder_with_config_and_metrics() {
    let out = std::env::temp_dir().join(format!("bst-cli-test-{}", std::process::id()));
    let status = bst_train()
        .args([
            "train",
            "--synthetic-users",
            "60",
            "--epochs",
            "1",
            "--blocks",
            "1",
            "--quiet",
            "--out",
        ])
        .arg(&out)
        .status()
        .expect("bst-train runs");
    assert!(status.success());
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert!(metrics["test"]["auc"].as_f64().is_some(), "{metrics}");
    assert!(metrics["oracle_test_auc"].as_f64().is_some());
    let cfg = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(cfg.contains("blocks = 1"), "{cfg}");
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn bad_flags_give_clear_errors() {
    let o = bst_train()
        .args(["train", "--heads", "7", "--quiet"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("divisible by heads = 7"), "{err}");

    let o = bst_train()
        .args(["train", "--pooling", "max"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("target, mean, flatten"));

    let o = bst_train()
        .args(["train", "--data", "recbole:/nonexistent/ml-1m", "--quiet"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("/nonexistent/ml-1m"), "{err}");
}
