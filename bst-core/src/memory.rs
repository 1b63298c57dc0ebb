//! Up-front estimates of the big allocations, checked against the memory the machine has
//! available, so that a request that cannot fit is refused before allocating, saying what
//! it needs, what the machine has and which knob to turn, instead of aborting with
//! "memory allocation of N bytes failed" (or swapping for minutes).
//!
//! Counted: the samples' arrays (history `3 L` slots per sample, then targets, other
//! features, labels, users), the parameter arenas (parameters, gradients, optimiser state,
//! the best epoch's copy, and the buffers a checkpoint is serialised through) and, on the
//! CPU, a batch's activations and activation gradients (`Activations`, `GradScratch`).
//! Smaller allocations are left out: the estimate is a floor, not a ceiling.
//!
//! The memory available is `MemAvailable` of `/proc/meminfo` (Linux); elsewhere nothing is
//! checked.

use crate::config::{Config, Optimizer};
use crate::model::{Activations, Dims, GradScratch};
use crate::params::{ParamLayout, VocabSizes};

/// One big allocation: what it is, its bytes, and what to change to shrink it.
#[derive(Clone, Debug, PartialEq)]
pub struct Need {
    /// What is allocated, with the sizes that make it up.
    pub what: String,
    /// Bytes (u128: an impossible request is sized rather than overflowing).
    pub bytes: u128,
    /// The knobs that shrink it.
    pub knobs: &'static str,
}

/// A request that does not fit in the memory available.
#[derive(Debug, thiserror::Error)]
#[error(
    "not enough memory: this needs at least {} but the machine has {} available (MemAvailable in /proc/meminfo):\n{}",
    human(*.needed),
    human(*.available as u128),
    list(.needs)
)]
pub struct MemoryError {
    /// Bytes needed in all.
    pub needed: u128,
    /// Bytes available.
    pub available: u64,
    /// The allocations, largest first.
    pub needs: Vec<Need>,
}

fn list(needs: &[Need]) -> String {
    needs
        .iter()
        .map(|n| format!("  {}: {} ({})", n.what, human(n.bytes), n.knobs))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Bytes in the largest fitting unit: `512 B`, `1.5 KiB`, `24.4 GiB`, ...
pub fn human(bytes: u128) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut x = bytes as f64;
    let mut u = 0;
    while x >= 1024.0 && u + 1 < UNITS.len() {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{x:.1} {}", UNITS[u])
    }
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
pub fn parse_meminfo(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut cells = line.split_whitespace().skip(1);
    let n: u64 = cells.next()?.parse().ok()?;
    match cells.next() {
        Some("kB") => n.checked_mul(1024),
        None => Some(n),
        Some(_) => None,
    }
}

/// The memory available now, when the system says (Linux); `None` elsewhere.
pub fn available() -> Option<u64> {
    parse_meminfo(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

/// Refuses `needs` when they add up to more than `available` bytes.
pub fn check(mut needs: Vec<Need>, available: u64) -> Result<(), MemoryError> {
    let needed: u128 = needs.iter().map(|n| n.bytes).sum();
    if needed <= available as u128 {
        return Ok(());
    }
    needs.sort_by_key(|n| std::cmp::Reverse(n.bytes));
    Err(MemoryError {
        needed,
        available,
        needs,
    })
}

/// [`check`] against [`available`]; passes when the system does not say.
pub fn check_available(needs: Vec<Need>) -> Result<(), MemoryError> {
    match available() {
        Some(a) => check(needs, a),
        None => Ok(()),
    }
}

/// The compact store `samples::build` makes from a log of `events` events of `users`
/// users (issue 12; `implicit`: negatives are drawn, `prob`: true probabilities kept):
/// while it is built, the log's columns (user, item, time, label), the sort permutation and the sorted store
/// (item, time (8 bytes at most), label, true probability); then per sample the
/// epoch order (4 bytes) and, for the evaluated splits, score, label and user (12 bytes,
/// counted for every sample as an upper bound). The history length does not count: the
/// rows are assembled per batch.
pub fn store_need(events: usize, users: usize, implicit: bool, prob: bool, cfg: &Config) -> Need {
    let (events, users) = (events as u128, users as u128);
    let negatives = if implicit { cfg.data.negatives } else { 0 } as u128;
    let n = events.saturating_sub(users).max(1) * (1 + negatives);
    let labels = !implicit as u128;
    let prob = prob as u128;
    let per_event = 16 + 4 * labels + 4 + 12 + 4 * labels + 4 * prob;
    Need {
        what: format!(
            "samples: {events} events in the compact store, up to {n} samples ({per_event} bytes an event, 16 a sample)"
        ),
        bytes: events * per_event + 16 * n,
        knobs: "lower data.negatives, or use less data",
    }
}

/// The parameter arenas of a model of `cfg` over vocabularies of `sizes`: with
/// `training`, parameters, gradients, optimiser state, the best epoch's copy and the
/// checkpoint buffers; otherwise (scoring a checkpoint) its arena, and the backend's
/// copy with the gradients and optimiser state it allocates.
pub fn params_need(cfg: &Config, sizes: VocabSizes, training: bool) -> Need {
    let total = ParamLayout::new(&cfg.model, sizes).total as u128;
    let optim = match cfg.train.optimizer {
        Optimizer::Adam => 2,
        Optimizer::Adagrad => 1,
    };
    // Training: params, grads, optimiser, best; a checkpoint copies params, optimiser and
    // best into tensors, then serialises them into one buffer: twice (2 + optim) more.
    let arenas = if training {
        3 + optim + 2 * (2 + optim)
    } else {
        3 + optim
    };
    Need {
        what: format!(
            "parameters: {total} values ({} item, {} category, {} other-feature rows) in {arenas} arena(s)",
            sizes.items, sizes.cats, sizes.other
        ),
        bytes: 4 * total * arenas,
        knobs: "lower the embedding widths (model.d_item, d_cat, d_other) or the vocabularies",
    }
}

/// The CPU backend's activations for its largest batch and activation gradients for a
/// training batch (it allocates both, for training and scoring alike).
pub fn activations_need(cfg: &Config, sizes: VocabSizes) -> Need {
    let dims = Dims::new(&cfg.model, sizes.fields);
    let (batch, eval) = (cfg.train.batch, cfg.train.eval_batch);
    let cap = batch.max(eval);
    let floats = Activations::floats(&dims, cap) + GradScratch::floats(&dims, batch);
    Need {
        what: format!(
            "activations of a batch of {cap} with T = L + 1 = {} tokens ({} block(s), attention B h T^2 = {} values per block)",
            dims.t,
            dims.blocks,
            cap as u128 * dims.h as u128 * (dims.t as u128).pow(2)
        ),
        bytes: 4 * floats,
        knobs: "lower --batch (train.batch, train.eval_batch) or --seq-len (model.seq_len)",
    }
}

/// Everything a model of `cfg` needs besides its samples, for training or scoring:
/// parameters, and on the CPU (`cpu`) the activations (a GPU holds them on the device).
pub fn model_needs(cfg: &Config, sizes: VocabSizes, training: bool, cpu: bool) -> Vec<Need> {
    let mut needs = vec![params_need(cfg, sizes, training)];
    if cpu {
        needs.push(activations_need(cfg, sizes));
    }
    needs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes() -> VocabSizes {
        VocabSizes {
            items: 101,
            cats: 11,
            other: 50,
            fields: 3,
        }
    }

    #[test]
    fn meminfo_is_parsed_in_bytes() {
        let text = "MemTotal:       16318748 kB\nMemFree:  1000 kB\nMemAvailable:   12000000 kB\n";
        assert_eq!(parse_meminfo(text), Some(12_000_000 * 1024));
        assert_eq!(parse_meminfo("MemTotal: 5 kB\n"), None);
        assert_eq!(parse_meminfo("MemAvailable: many kB\n"), None);
        assert_eq!(human(512), "512 B");
        assert_eq!(human(26_214_662_144), "24.4 GiB");
    }

    #[test]
    fn a_sequence_of_100000_is_refused_naming_the_knobs_and_the_sizes() {
        let mut cfg = Config::default();
        cfg.model.seq_len = 100_000;
        let needs = model_needs(&cfg, sizes(), true, true);
        let e = check(needs, 16 << 30).unwrap_err().to_string();
        for part in [
            "not enough memory",
            "16.0 GiB available",
            "--batch",
            "--seq-len",
        ] {
            assert!(e.contains(part), "`{part}` missing from: {e}");
        }
        // Attention alone: 256 x 8 x 100001^2 floats, some 75 TiB.
        assert!(e.contains("T = L + 1 = 100001"), "{e}");
        // The defaults fit in a few hundred MiB.
        cfg.model.seq_len = 20;
        let needs = model_needs(&cfg, sizes(), true, true);
        let total: u128 = needs.iter().map(|n| n.bytes).sum();
        assert!(total < 300 << 20, "{}", human(total));
        assert!(check(needs, 1 << 30).is_ok());
    }

    #[test]
    fn a_billion_history_slots_do_not_overflow_and_do_not_grow_the_samples() {
        let mut cfg = Config::default();
        cfg.model.seq_len = 1_000_000_000;
        let need = store_need(1000, 1, false, false, &cfg);
        // The compact store does not grow with L: 1000 explicit events, 999 samples.
        assert_eq!(need.bytes, 1000 * 40 + 999 * 16);
        let e = check(vec![need], 1000).unwrap_err().to_string();
        assert!(e.contains("up to 999 samples"), "{e}");
        let acts = activations_need(&cfg, sizes());
        assert!(acts.bytes > u64::MAX as u128, "sized without overflow");
    }

    #[test]
    fn the_parameter_arenas_count_the_optimiser_state() {
        let mut cfg = Config::default();
        let total = ParamLayout::new(&cfg.model, sizes()).total as u128;
        assert_eq!(params_need(&cfg, sizes(), false).bytes, 4 * total * 5);
        assert_eq!(params_need(&cfg, sizes(), true).bytes, 4 * total * 13);
        cfg.train.optimizer = Optimizer::Adagrad;
        assert_eq!(params_need(&cfg, sizes(), true).bytes, 4 * total * 10);
    }
}
