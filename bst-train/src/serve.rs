//! `eval`, `predict` and `rank`: using a checkpoint.
//!
//! Raw ids are written as in the data files. In the space-separated cells (user features,
//! history) a `%`, space, tab, `=` or `@` inside an id is written `%25`, `%20`, `%09`,
//! `%3D`, `%40` (URL style); any `%XX` is decoded.

use crate::cli::{EvalArgs, PredictArgs, RankArgs, Split};
use crate::device::backend_from_checkpoint;
use crate::run::load_data;
use anyhow::{Context, bail};
use bst_core::checkpoint::Checkpoint;
use bst_core::config::Position;
use bst_core::encode::{Encoder, Unknown};
use bst_core::rank::rank_items;
use bst_core::train::{evaluate, predict_all};
use std::io::{BufRead, Write};
use std::path::Path;

fn load(path: &Path) -> anyhow::Result<Checkpoint> {
    let c = Checkpoint::load(path)?;
    let p = &c.progress;
    eprintln!(
        "checkpoint {}: {} epoch(s) trained{}",
        path.display(),
        p.epoch,
        p.best
            .map(|b| format!(
                ", best epoch {} (validation AUC {:.4})",
                b.epoch, b.valid_auc
            ))
            .unwrap_or_default()
    );
    Ok(c)
}

pub fn eval(args: &EvalArgs) -> anyhow::Result<()> {
    let ckpt = load(&args.checkpoint)?;
    let src = match (&args.data, &ckpt.data_source) {
        (Some(d), _) | (None, Some(d)) => d.parse()?,
        (None, None) => bail!("the checkpoint does not name its data: pass --data"),
    };
    let ds = load_data(&src, &ckpt.config, false)?;
    ckpt.check_vocab(&ds.vocab)
        .with_context(|| format!("evaluating {} on {src}", args.checkpoint.display()))?;
    let (name, samples) = match args.split {
        Split::Train => ("train", &ds.train),
        Split::Valid => ("valid", &ds.valid),
        Split::Test => ("test", &ds.test),
    };
    if samples.is_empty() {
        bail!("the {name} split of {src} is empty");
    }
    let mut backend = backend_from_checkpoint(args.device, &ckpt)?;
    let m = evaluate(backend.as_mut(), samples, ckpt.config.train.eval_batch)?;
    println!("{name}  {m}  ({} samples)", m.samples);
    Ok(())
}

/// Decodes `%XX` escapes.
fn decode(s: &str) -> Result<String, String> {
    if !s.contains('%') {
        return Ok(s.to_string());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    format!("bad escape in `{s}`: `%` must be followed by two hex digits")
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("`{s}` does not decode to UTF-8"))
}

/// Space-separated cell items; an empty cell or `-` has none.
fn items(cell: &str) -> impl Iterator<Item = &str> {
    let cell = if cell.trim() == "-" { "" } else { cell };
    cell.split(' ').filter(|t| !t.is_empty())
}

/// User features: `field=value ...` in any order, or bare values in the checkpoint's
/// user-field order.
fn parse_user(cell: &str, enc: &Encoder) -> Result<Vec<(String, String)>, String> {
    let tokens: Vec<&str> = items(cell).collect();
    let named = tokens.iter().filter(|t| t.contains('=')).count();
    if named == 0 {
        let fields = enc.user_fields();
        if tokens.len() > fields.len() {
            return Err(format!(
                "{} user values for the checkpoint's {} user fields ({})",
                tokens.len(),
                fields.len(),
                fields.join(", ")
            ));
        }
        return fields
            .iter()
            .zip(&tokens)
            .map(|(f, t)| Ok((f.to_string(), decode(t)?)))
            .collect();
    }
    if named != tokens.len() {
        return Err("user features mix `field=value` pairs and bare values: use one form".into());
    }
    tokens
        .iter()
        .map(|t| {
            let (f, v) = t.split_once('=').expect("has =");
            Ok((decode(f)?, decode(v)?))
        })
        .collect()
}

/// History `item@unix_time ...`, oldest first. Times may be left out (`item`) only for
/// ordinal positions.
fn parse_history(cell: &str, position: Position) -> Result<Vec<(String, i64)>, String> {
    items(cell)
        .map(|t| match t.rsplit_once('@') {
            Some((item, time)) => {
                let time = time
                    .parse::<i64>()
                    .map_err(|_| format!("history item `{t}`: `{time}` is not a unix time"))?;
                Ok((decode(item)?, time))
            }
            None if position == Position::Ordinal => Ok((decode(t)?, 0)),
            None => Err(format!(
                "history item `{t}` has no `@unix_time`: the model's positions are time gaps"
            )),
        })
        .collect()
}

fn report_unknown(scored: usize, unknown: &Unknown) {
    eprintln!("scored {scored} sample(s); unknown ids, scored as index 0: {unknown}");
}

pub fn predict(args: &PredictArgs) -> anyhow::Result<()> {
    let ckpt = load(&args.checkpoint)?;
    let enc = Encoder::new(&ckpt.vocab, &ckpt.config.model).map_err(anyhow::Error::msg)?;
    let input: Box<dyn BufRead> = if args.input.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(&args.input)
            .with_context(|| format!("opening {}", args.input.display()))?;
        Box::new(std::io::BufReader::new(f))
    };
    let mut samples = enc.samples();
    let mut unknown = Unknown::default();
    for (n, line) in input.lines().enumerate() {
        let at = || format!("{}:{}", args.input.display(), n + 1);
        let line = line.with_context(at)?;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        let [user, history, target, time] = cols.as_slice() else {
            bail!(
                "{}: expected 4 tab-separated columns (user, history, target item, target time), found {}",
                at(),
                cols.len()
            );
        };
        let sample = (|| -> Result<(), String> {
            let time: i64 = time
                .trim()
                .parse()
                .map_err(|_| format!("target time `{time}` is not a unix time"))?;
            let user = parse_user(user, &enc)?;
            let history = parse_history(history, ckpt.config.model.position)?;
            let ctx = enc.context(&user, &history, time, &mut unknown)?;
            let item = enc.item(&decode(target.trim())?).unwrap_or_else(|| {
                unknown.targets += 1;
                0
            });
            enc.push(&mut samples, &ctx, item);
            Ok(())
        })();
        sample.map_err(|e| anyhow::anyhow!("{}: {e}", at()))?;
    }
    let mut backend = backend_from_checkpoint(args.device, &ckpt)?;
    let probs = predict_all(backend.as_mut(), &samples, ckpt.config.train.eval_batch)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for p in &probs {
        writeln!(out, "{p}")?;
    }
    out.flush()?;
    report_unknown(probs.len(), &unknown);
    Ok(())
}

/// Candidate item ids: `all`, a file with one id per line, or a comma-separated list.
fn candidates(spec: &str, ckpt: &Checkpoint) -> anyhow::Result<Vec<String>> {
    if spec == "all" {
        return Ok(ckpt.vocab.item_ids[1..].to_vec());
    }
    let path = Path::new(spec);
    if path.is_file() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading candidates {}", path.display()))?;
        return Ok(text
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect());
    }
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| decode(s).map_err(anyhow::Error::msg))
        .collect()
}

pub fn rank(args: &RankArgs) -> anyhow::Result<()> {
    let ckpt = load(&args.checkpoint)?;
    let model = &ckpt.config.model;
    let enc = Encoder::new(&ckpt.vocab, model).map_err(anyhow::Error::msg)?;
    let history = parse_history(&args.user_history, model.position)
        .map_err(|e| anyhow::anyhow!("--user-history: {e}"))?;
    let user = parse_user(&args.user, &enc).map_err(|e| anyhow::anyhow!("--user: {e}"))?;
    let time = match (args.time, history.last()) {
        (Some(t), _) => t,
        (None, Some(&(_, t))) => t,
        (None, None) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs() as i64,
    };
    let mut unknown = Unknown::default();
    let ctx = enc
        .context(&user, &history, time, &mut unknown)
        .map_err(|e| anyhow::anyhow!("--user: {e}"))?;
    let mut seen = std::collections::HashSet::new();
    let (mut ids, mut items) = (Vec::new(), Vec::new());
    let mut skipped = 0;
    for id in candidates(&args.candidates, &ckpt)? {
        match enc.item(&id) {
            Some(i) if seen.insert(i) => {
                ids.push(id);
                items.push(i);
            }
            Some(_) => {}
            None => skipped += 1,
        }
    }
    if items.is_empty() {
        bail!("none of the candidates is in the checkpoint's item vocabulary");
    }
    let mut backend = backend_from_checkpoint(args.device, &ckpt)?;
    let start = std::time::Instant::now();
    let top = rank_items(backend.as_mut(), &enc, &ctx, &items, args.k)?;
    let ms = 1e3 * start.elapsed().as_secs_f64();
    let path = match backend.shares_history() {
        true => "the history computed once",
        false => "one sample per candidate",
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (r, (i, p)) in top.iter().enumerate() {
        writeln!(out, "{}\t{}\t{p}", r + 1, ids[*i])?;
    }
    out.flush()?;
    eprintln!(
        "ranked {} candidate(s) in {ms:.1} ms ({path}), {skipped} unknown candidate(s) \
         skipped; unknown ids in the user's features and history, scored as index 0: {} \
         history item(s), {} user feature value(s)",
        items.len(),
        unknown.history,
        unknown.features
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_decode_and_bad_ones_are_refused() {
        assert_eq!(decode("Toy%20Story%20(1995)").unwrap(), "Toy Story (1995)");
        assert_eq!(decode("a%40b%3Dc%25").unwrap(), "a@b=c%");
        assert!(decode("50%").unwrap_err().contains("two hex digits"));
        assert!(decode("%zz").is_err());
    }

    #[test]
    fn history_needs_times_for_time_gaps() {
        let h = parse_history("a@10  b%40x@20", Position::Timegap).unwrap();
        assert_eq!(h, vec![("a".into(), 10), ("b@x".into(), 20)]);
        assert!(parse_history("a", Position::Timegap).is_err());
        assert_eq!(parse_history("a", Position::Ordinal).unwrap()[0].1, 0);
        assert!(parse_history("-", Position::Timegap).unwrap().is_empty());
        assert!(
            parse_history("a@x", Position::Timegap)
                .unwrap_err()
                .contains("unix time")
        );
    }
}
