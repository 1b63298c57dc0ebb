//! Progress for logs: when stderr is not a terminal (a log file, a batch job, nohup), the
//! progress bar draws nothing, so a plain line is printed every few seconds instead.

use std::time::{Duration, Instant};

/// Seconds between two plain progress lines.
pub const EVERY: Duration = Duration::from_secs(10);

/// Says when the next line is due: at the first call, then `every` after the last line.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    last: Option<Instant>,
}

impl Throttle {
    pub fn new(every: Duration) -> Throttle {
        Throttle { every, last: None }
    }

    /// Whether to print at `now`; when it says yes, the next line is due `every` later.
    pub fn ready(&mut self, now: Instant) -> bool {
        match self.last {
            Some(t) if now.duration_since(t) < self.every => false,
            _ => {
                self.last = Some(now);
                true
            }
        }
    }
}

/// `h:mm:ss`, or `m:ss` under an hour; `?` when unknown (not finite or negative).
pub fn clock(secs: f64) -> String {
    if !(secs.is_finite() && secs >= 0.0) {
        return "?".into();
    }
    let s = secs.round() as u64;
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

/// `1234567` as `1,234,567`.
pub fn thousands(x: u64) -> String {
    let digits = x.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Where a training epoch stands.
#[derive(Clone, Copy, Debug)]
pub struct StepProgress {
    pub epoch: usize,
    pub step: usize,
    pub steps: usize,
    /// Samples trained on so far in this epoch.
    pub samples: u64,
    /// Samples per step.
    pub batch: usize,
    /// Seconds since the epoch (or the resumed part of it) began.
    pub seconds: f64,
    /// Steps done when the clock started (a resumed epoch starts mid-way).
    pub first_step: usize,
    pub loss: f32,
}

/// The plain progress line of a training step:
/// `epoch 1 step 120/400 (30.0%), 30,720 samples, 5,120 samples/s, loss 0.6931, ETA 0:54`.
pub fn step_line(p: &StepProgress) -> String {
    let done = p.step.saturating_sub(p.first_step);
    let rate = if p.seconds > 0.0 {
        (done * p.batch) as f64 / p.seconds
    } else {
        f64::NAN
    };
    let eta = if done > 0 {
        (p.steps - p.step.min(p.steps)) as f64 * p.seconds / done as f64
    } else {
        f64::NAN
    };
    let rate = if rate.is_finite() {
        thousands(rate.round() as u64)
    } else {
        "?".into()
    };
    format!(
        "epoch {} step {}/{} ({:.1}%), {} samples, {} samples/s, loss {:.4}, ETA {}",
        p.epoch,
        p.step,
        p.steps,
        100.0 * p.step as f64 / p.steps.max(1) as f64,
        thousands(p.samples),
        rate,
        p.loss,
        clock(eta)
    )
}

/// The plain progress line of an evaluation: `scoring validation: 1,024,000 of
/// 16,932,636 samples (6.0%), 20,480 samples/s, ETA 12:56`; `seconds` since it began.
pub fn eval_line(split: &str, done: usize, total: usize, seconds: f64) -> String {
    let rate = done as f64 / seconds;
    let (rate, eta) = if rate.is_finite() && rate > 0.0 {
        (
            thousands(rate.round() as u64),
            clock((total - done.min(total)) as f64 / rate),
        )
    } else {
        ("?".into(), "?".into())
    };
    format!(
        "scoring {split}: {} of {} samples ({:.1}%), {rate} samples/s, ETA {eta}",
        thousands(done as u64),
        thousands(total as u64),
        100.0 * done as f64 / total.max(1) as f64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluation_lines_show_samples_rate_and_eta() {
        assert_eq!(
            eval_line("validation", 1_024_000, 16_932_636, 50.0),
            "scoring validation: 1,024,000 of 16,932,636 samples (6.0%), 20,480 samples/s, ETA 12:57"
        );
        assert_eq!(
            eval_line("test", 0, 10, 0.0),
            "scoring test: 0 of 10 samples (0.0%), ? samples/s, ETA ?"
        );
    }

    #[test]
    fn lines_show_step_samples_rate_loss_and_eta() {
        let p = StepProgress {
            epoch: 2,
            step: 120,
            steps: 400,
            samples: 30_720,
            batch: 256,
            seconds: 6.0,
            first_step: 0,
            loss: std::f32::consts::LN_2,
        };
        assert_eq!(
            step_line(&p),
            "epoch 2 step 120/400 (30.0%), 30,720 samples, 5,120 samples/s, loss 0.6931, ETA 0:14"
        );
        // A resumed epoch: the rate and ETA come from the steps taken since it resumed.
        let r = StepProgress {
            first_step: 100,
            seconds: 1.0,
            ..p
        };
        assert!(step_line(&r).ends_with("5,120 samples/s, loss 0.6931, ETA 0:14"));
        let start = StepProgress {
            step: 0,
            samples: 0,
            seconds: 0.0,
            ..p
        };
        assert!(step_line(&start).ends_with("? samples/s, loss 0.6931, ETA ?"));
    }

    #[test]
    fn clocks_and_thousands() {
        assert_eq!(clock(0.0), "0:00");
        assert_eq!(clock(59.6), "1:00");
        assert_eq!(clock(3725.0), "1:02:05");
        assert_eq!(clock(f64::NAN), "?");
        assert_eq!(clock(f64::INFINITY), "?");
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(100_150_807), "100,150,807");
    }

    #[test]
    fn the_throttle_lets_one_line_through_per_interval() {
        let t0 = Instant::now();
        let mut t = Throttle::new(Duration::from_secs(10));
        let at = |s: u64| t0 + Duration::from_secs(s);
        let fired: Vec<u64> = [0, 1, 9, 10, 11, 19, 21, 40]
            .into_iter()
            .filter(|&s| t.ready(at(s)))
            .collect();
        assert_eq!(fired, [0, 10, 21, 40]);
    }
}
