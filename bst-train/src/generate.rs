//! `bst-train generate-taobao`: a UserBehavior-shaped CSV (`bst_core::data::taobao_gen`),
//! streamed to a file with a progress line every few seconds.

use crate::progress::{Throttle, thousands};
use anyhow::Context;
use bst_core::data::taobao_gen::{self, FULL_ROWS, TaobaoSpec};
use clap::Args;
use std::io::BufWriter;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Args, Debug, Clone)]
pub struct GenerateArgs {
    /// Rows to write; users, items and categories scale with it (the real file's counts
    /// at 100,150,807 rows).
    #[arg(long, default_value_t = FULL_ROWS, value_parser = clap::value_parser!(u64).range(1..))]
    pub rows: u64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The CSV file to write (read it with `--data taobao:FILE`).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn generate(args: &GenerateArgs) -> anyhow::Result<()> {
    let spec = TaobaoSpec {
        rows: args.rows,
        seed: args.seed,
    };
    let s = spec.sizes();
    eprintln!(
        "writing {}: {} rows, {} users, {} items, {} categories, seed {}",
        args.out.display(),
        thousands(s.rows),
        thousands(s.users),
        thousands(s.items),
        thousands(s.categories),
        args.seed
    );
    let file = std::fs::File::create(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let start = Instant::now();
    let mut throttle = Throttle::new(Duration::from_secs(5));
    throttle.ready(start);
    let mut progress = |k: u64| {
        if k < s.rows && throttle.ready(Instant::now()) {
            let secs = start.elapsed().as_secs_f64();
            eprintln!(
                "{} / {} rows ({:.1}%), {} rows/s",
                thousands(k),
                thousands(s.rows),
                100.0 * k as f64 / s.rows as f64,
                thousands((k as f64 / secs) as u64)
            );
        }
    };
    taobao_gen::write(&spec, &mut out, &mut progress)
        .with_context(|| format!("writing {}", args.out.display()))?;
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "wrote {} rows to {} in {:.1}s ({} rows/s)",
        thousands(s.rows),
        args.out.display(),
        secs,
        thousands((s.rows as f64 / secs.max(1e-9)) as u64)
    );
    Ok(())
}
