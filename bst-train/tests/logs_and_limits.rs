//! Runs at click-log scale, from the command line: `generate-taobao` writes a
//! UserBehavior-shaped file that `train --data taobao:FILE` reads; a run whose stderr is
//! not a terminal prints plain progress lines; requests that cannot fit in memory are
//! refused at once, naming the knob, instead of aborting or running for minutes.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn bst_train(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bst-train"))
        .env("RUST_BACKTRACE", "0")
        .args(args)
        .output()
        .expect("bst-train runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn a_generated_click_log_trains_with_plain_progress_lines_in_a_log() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (a, b) = (dir.join("a.csv"), dir.join("b.csv"));
    for f in [&a, &b] {
        let o = bst_train(&[
            "generate-taobao",
            "--rows",
            "20000",
            "--seed",
            "4",
            "--out",
            s(f),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stderr(&o).contains("wrote 20,000 rows"), "{}", stderr(&o));
    }
    let text = std::fs::read_to_string(&a).unwrap();
    assert_eq!(text.lines().count(), 20_000);
    assert!(
        text == std::fs::read_to_string(&b).unwrap(),
        "seeded: the same bytes"
    );
    let o = bst_train(&["generate-taobao", "--rows", "0", "--out", s(&a)]);
    assert!(
        !o.status.success() && stderr(&o).contains("--rows"),
        "{}",
        stderr(&o)
    );

    // Trained with stderr captured (not a terminal): plain lines instead of a bar.
    let cfg = dir.join("tiny.toml");
    std::fs::write(
        &cfg,
        "[model]\nseq_len = 5\nd_item = 8\nd_cat = 4\nd_pos = 4\nheads = 2\nd_ff = 16\n\
         d_other = 4\nmlp = [16]\n[train]\nbatch = 256\nepochs = 1\n",
    )
    .unwrap();
    let data = format!("taobao:{}", s(&a));
    let out = dir.join("run");
    let o = bst_train(&[
        "train",
        "--data",
        &data,
        "--config",
        s(&cfg),
        "--out",
        s(&out),
    ]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("epoch 1 step "))
        .unwrap_or_else(|| panic!("no progress line in:\n{err}"));
    for part in ["samples,", "samples/s, loss ", ", ETA "] {
        assert!(line.contains(part), "{line}");
    }
}

#[test]
fn requests_that_cannot_fit_are_refused_at_once_naming_the_knob() {
    if !Path::new("/proc/meminfo").exists() {
        eprintln!("no /proc/meminfo: the memory check is Linux-only");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let out = dir.join("run");
    for (flag, value, knob, what) in [
        // The samples are assembled per batch (issue 12): L no longer grows them, and the
        // refusal is the activations'.
        (
            "--seq-len",
            "1000000000",
            "--seq-len",
            "T = L + 1 = 1000000001",
        ),
        // 60 users' samples fit; attention over 100,001 tokens does not.
        ("--seq-len", "100000", "--seq-len", "T = L + 1 = 100001"),
        (
            "--batch",
            "100000000",
            "--batch",
            "activations of a batch of 100000000",
        ),
    ] {
        let start = Instant::now();
        let o = bst_train(&[
            "train",
            "--device",
            "cpu",
            "--synthetic-users",
            "60",
            "--quiet",
            flag,
            value,
            "--out",
            s(&out),
        ]);
        let err = stderr(&o);
        assert!(!o.status.success(), "{flag} {value} ran:\n{err}");
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{flag} {value}: slow"
        );
        for part in ["not enough memory", "available (MemAvailable", knob, what] {
            assert!(
                err.contains(part),
                "{flag} {value}: `{part}` missing from:\n{err}"
            );
        }
        assert!(!err.contains("memory allocation"), "{err}");
    }
}
