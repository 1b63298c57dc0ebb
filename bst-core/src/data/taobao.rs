//! Loader for the Taobao UserBehavior click log: a CSV file without header whose rows are
//! `user_id,item_id,category_id,behavior_type,timestamp`.
//!
//! Only `pv` rows (page views, i.e. clicks) are kept, each as a positive: the log is implicit
//! and `samples::build` draws the negatives. Users and items are numbered in order of first
//! appearance among the kept rows (items from 1; 0 = padding). An item's category is the
//! `category_id` of its first kept row. The only other-feature field is `user_id`.
//! Cells are plain (no quoting); lines may end in CRLF; empty lines are skipped, and so is
//! a first line that is the header [`HEADER`] (some copies of the file carry one).

use super::read::{LineReader, intern, number_categories, parse_timestamp, user_id_field};
use super::{DataError, Interaction, InteractionLog, Vocab};
use crate::config::DataConfig;
use rayon::prelude::*;
use rustc_hash::FxHashMap;
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// Cells per row.
const WIDTH: usize = 5;

/// The column names, as a header line some copies of the file begin with.
pub const HEADER: &str = "user_id,item_id,category_id,behavior_type,timestamp";

/// The behaviour type kept as a click.
const CLICK: &str = "pv";

/// Loads a UserBehavior CSV file. `data` is accepted for symmetry with the other loaders
/// (nothing in it changes how the file is read). Reads with [`parse`]; for a large file
/// `data::load` keeps the columns instead of making [`Interaction`]s.
pub fn load(path: &Path, data: &DataConfig) -> Result<InteractionLog, DataError> {
    let _ = data;
    let p = parse(path, BLOCK)?;
    let interactions = (0..p.user.len())
        .map(|i| Interaction {
            user: p.user[i],
            item: p.item[i],
            time: p.time[i],
            label: 1.0,
        })
        .collect();
    Ok(InteractionLog {
        interactions,
        implicit: true,
        vocab: p.vocab,
        user_features: p.user_features,
        true_prob: None,
    })
}

/// The plain line-by-line reading [`parse`] replaced, kept as the reference the tests
/// compare it with (the same log, the same errors).
#[doc(hidden)]
pub fn load_lines(path: &Path) -> Result<InteractionLog, DataError> {
    let mut lines = LineReader::open(path, "Taobao UserBehavior CSV file")?;
    let mut interactions = Vec::new();
    let mut item_ids = vec![String::new()];
    let mut user_ids = Vec::new();
    let (mut items, mut users) = (HashMap::new(), HashMap::new());
    // Category token of each item id (first kept row wins).
    let mut item_cat_tokens: HashMap<String, String> = HashMap::new();
    let mut rows = 0usize;
    let mut first = true;

    while let Some((line, text)) = lines.next_line()? {
        if std::mem::take(&mut first) && text.trim_start_matches('\u{feff}').trim() == HEADER {
            continue;
        }
        let bad = |msg: String| DataError::Line {
            path: path.to_path_buf(),
            line,
            msg,
        };
        let cells: Vec<&str> = text.split(',').collect();
        if cells.len() != WIDTH {
            return Err(bad(format!(
                "expected {WIDTH} comma-separated cells \
                 (user_id,item_id,category_id,behavior_type,timestamp), got {}",
                cells.len()
            )));
        }
        rows += 1;
        let [user_id, item_id, category, behavior, time] = [0, 1, 2, 3, 4].map(|i| cells[i]);
        let time = parse_timestamp(time).map_err(bad)?;
        if user_id.is_empty() || item_id.is_empty() {
            return Err(bad("empty user_id or item_id".into()));
        }
        if behavior.trim() != CLICK {
            continue;
        }
        if !category.is_empty() && !item_cat_tokens.contains_key(item_id) {
            item_cat_tokens.insert(item_id.to_string(), category.to_string());
        }
        interactions.push(Interaction {
            user: intern(&mut users, &mut user_ids, user_id),
            item: intern(&mut items, &mut item_ids, item_id),
            time,
            label: 1.0,
        });
    }

    check_not_empty(path, rows, interactions.len())?;
    let cats = number_categories(&item_ids, &item_cat_tokens);
    let (vocab, user_features) = click_log_vocab(item_ids, cats, user_ids);
    Ok(InteractionLog {
        interactions,
        implicit: true,
        vocab,
        user_features,
        true_prob: None,
    })
}

/// The vocabulary of a click log of items `item_ids` with their categories
/// `(item_cat, cat_names)` and users `user_ids`, whose one user field is the user id
/// ([`user_id_field`]), and each user's features.
fn click_log_vocab(
    item_ids: Vec<String>,
    (item_cat, cat_names): (Vec<u32>, Vec<String>),
    user_ids: Vec<String>,
) -> (Vocab, Vec<Vec<u32>>) {
    let (fields, user_features) = user_id_field(&user_ids);
    let vocab = Vocab {
        item_ids,
        item_cat,
        cat_names,
        user_ids,
        fields,
    };
    (vocab, user_features)
}

/// Refuses a file of no data rows, or of no clicks among its `rows` data rows.
fn check_not_empty(path: &Path, rows: usize, clicks: usize) -> Result<(), DataError> {
    let msg = match (rows, clicks) {
        (0, _) => {
            "empty file: expected rows of user_id,item_id,category_id,behavior_type,timestamp"
        }
        (_, 0) => "no `pv` (click) rows: nothing to learn from",
        _ => return Ok(()),
    };
    Err(DataError::File {
        path: path.to_path_buf(),
        msg: msg.to_string(),
    })
}

/// Bytes read (and parsed in parallel) at a time.
pub const BLOCK: usize = 32 << 20;

/// A parsed UserBehavior file: the kept (`pv`) rows as columns, in file order, and the
/// vocabularies (as [`load`] gives them).
#[derive(Debug)]
pub struct Parsed {
    /// Dense user of each kept row.
    pub user: Vec<u32>,
    /// Item row (>= 1) of each kept row.
    pub item: Vec<u32>,
    /// Time of each kept row.
    pub time: Vec<i64>,
    /// Vocabularies; `fields` holds the lone `user_id` field.
    pub vocab: Vocab,
    /// `user_features[u] = [u + 1]`.
    pub user_features: Vec<Vec<u32>>,
}

/// One kept row of a block: byte ranges of its ids in the block, and its time.
struct RowAt {
    user: (u32, u32),
    item: (u32, u32),
    cat: (u32, u32),
    time: i64,
}

/// A block's lines, parsed: the kept rows, the data rows seen, the lines it spans, and its
/// first error (line within the block, 1-based; message).
#[derive(Default)]
struct Piece {
    rows: Vec<RowAt>,
    data_rows: usize,
    lines: usize,
    error: Option<(usize, String)>,
}

/// Reads `path` in blocks of `block` bytes: each block's lines are split and parsed in
/// parallel (rayon) on a reader thread while the ids of the block before are numbered in
/// order of first appearance here, so the ids, the rows and the errors (by file and
/// line) are those of the line-by-line reading ([`load_lines`]).
pub fn parse(path: &Path, block: usize) -> Result<Parsed, DataError> {
    let mut file = std::fs::File::open(path).map_err(|e| DataError::File {
        path: path.to_path_buf(),
        msg: format!("cannot open the Taobao UserBehavior CSV file: {e}"),
    })?;
    let size = file.metadata().map_or(0, |m| m.len()) as usize;
    let line_err = |line: usize, msg: String| DataError::Line {
        path: path.to_path_buf(),
        line,
        msg,
    };
    // Columns reserved for the shortest rows (`1,1,1,pv,1`): untouched capacity costs no
    // memory, and the columns never grow by copying.
    let cap = size / 11 + 1;
    let (mut user, mut item, mut time) = (
        Vec::with_capacity(cap),
        Vec::with_capacity(cap),
        Vec::<i64>::with_capacity(cap),
    );
    let mut users = Interner::default();
    let mut items = Interner {
        next: 1, // item 0: padding
        ..Interner::default()
    };
    let mut cats = Interner::default();
    // Raw category (index into `cats`) of each item; NONE until a kept row gives one.
    const NONE: u32 = u32::MAX;
    let mut item_cat_raw: Vec<u32> = vec![NONE];
    let mut data_rows = 0usize;

    std::thread::scope(|scope| -> Result<(), DataError> {
        let (tx, rx) =
            std::sync::mpsc::sync_channel::<Result<(Vec<u8>, usize, Piece), DataError>>(1);
        scope.spawn(move || {
            let mut carry: Vec<u8> = Vec::new();
            let mut line_base = 0usize; // lines before the block
            let mut first = true; // the file's first non-blank line is not seen yet
            loop {
                let mut buf = std::mem::take(&mut carry);
                let start = buf.len();
                buf.resize(start + block.max(1), 0);
                let mut filled = start;
                let mut eof = false;
                while filled < buf.len() {
                    match file.read(&mut buf[filled..]) {
                        Ok(0) => {
                            eof = true;
                            break;
                        }
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            let _ =
                                tx.send(Err(line_err(line_base + 1, format!("cannot read: {e}"))));
                            return;
                        }
                    }
                }
                buf.truncate(filled);
                let end = if eof {
                    buf.len()
                } else {
                    match buf.iter().rposition(|&b| b == b'\n') {
                        Some(i) => i + 1,
                        None => {
                            carry = buf; // a line longer than the block: read more
                            continue;
                        }
                    }
                };
                carry = buf[end..].to_vec();
                buf.truncate(end);
                let mut skip = 0; // bytes of a leading header (and blank lines before it)
                if first {
                    let mut at = 0;
                    while at < buf.len() {
                        let stop = buf[at..]
                            .iter()
                            .position(|&b| b == b'\n')
                            .map_or(buf.len(), |i| at + i + 1);
                        let line = trim_end(&buf[at..stop]);
                        if !line.iter().all(u8::is_ascii_whitespace) {
                            first = false;
                            let header = std::str::from_utf8(line)
                                .is_ok_and(|t| t.trim_start_matches('\u{feff}').trim() == HEADER);
                            if header {
                                skip = stop;
                            }
                            break;
                        }
                        at = stop;
                    }
                    if first {
                        // Only blank lines so far: nothing to parse in this block.
                        skip = buf.len();
                    }
                }
                let piece = parse_block(&buf, skip);
                let base = line_base;
                line_base += buf.iter().filter(|&&b| b == b'\n').count();
                if tx.send(Ok((buf, base, piece))).is_err() || eof {
                    return;
                }
            }
        });
        for msg in rx {
            let (buf, base, piece) = msg?;
            if let Some((line, e)) = piece.error {
                return Err(line_err(base + line, e));
            }
            data_rows += piece.data_rows;
            let text = |(a, b): (u32, u32)| {
                // The kept rows' lines were checked to be UTF-8 when parsed.
                std::str::from_utf8(&buf[a as usize..b as usize]).expect("checked UTF-8")
            };
            for r in &piece.rows {
                user.push(users.intern(text(r.user)));
                let i = items.intern(text(r.item));
                if i as usize == item_cat_raw.len() {
                    item_cat_raw.push(NONE);
                }
                let cat = text(r.cat);
                if item_cat_raw[i as usize] == NONE && !cat.is_empty() {
                    item_cat_raw[i as usize] = cats.intern(cat);
                }
                item.push(i);
                time.push(r.time);
            }
        }
        Ok(())
    })?;

    check_not_empty(path, data_rows, item.len())?;
    // Categories numbered in item order (as `number_categories`).
    let mut cat_ids = cats.into_ids();
    let mut cat_new = vec![0u32; cat_ids.len()];
    let mut cat_names = vec![String::new()];
    let item_cat = item_cat_raw
        .iter()
        .enumerate()
        .map(|(i, &raw)| {
            if i == 0 || raw == NONE {
                return 0;
            }
            let c = &mut cat_new[raw as usize];
            if *c == 0 {
                *c = cat_names.len() as u32;
                cat_names.push(std::mem::take(&mut cat_ids[raw as usize]));
            }
            *c
        })
        .collect();
    let (user_ids, item_ids) = (users.into_ids(), items.into_ids());
    let (vocab, user_features) = click_log_vocab(item_ids, (item_cat, cat_names), user_ids);
    Ok(Parsed {
        user,
        item,
        time,
        vocab,
        user_features,
    })
}

/// Numbers ids in order of first appearance from `next` on, with a fast hash. Each id is allocated once, as
/// its map key, which becomes its entry of the list ([`Interner::into_ids`]): a second
/// copy would leave millions of small holes in the heap once the map is dropped, which
/// the process keeps (about 300 MiB at 100M Taobao rows).
#[derive(Default)]
struct Interner {
    map: FxHashMap<Box<str>, u32>,
    next: u32,
}

impl Interner {
    fn intern(&mut self, key: &str) -> u32 {
        if let Some(&i) = self.map.get(key) {
            return i;
        }
        let i = self.next;
        self.map.insert(key.into(), i);
        self.next += 1;
        i
    }
    /// The ids by number (`""` for the numbers below the first).
    fn into_ids(self) -> Vec<String> {
        let mut ids = vec![String::new(); self.next as usize];
        for (key, i) in self.map {
            ids[i as usize] = key.into_string();
        }
        ids
    }
}

/// `line` without its ending (`\n`, `\r\n`, any trailing `\r`).
fn trim_end(mut line: &[u8]) -> &[u8] {
    while let [rest @ .., b'\n' | b'\r'] = line {
        line = rest;
    }
    line
}

/// Parses the lines of `buf` from byte `skip` on, in parallel pieces.
fn parse_block(buf: &[u8], skip: usize) -> Piece {
    // Piece boundaries at line starts, about 1 MiB apart.
    let mut bounds = vec![0];
    let mut at = 0;
    while at < buf.len() {
        let next = (at + (1 << 20)).min(buf.len());
        let stop = buf[next..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(buf.len(), |i| next + i + 1);
        bounds.push(stop);
        at = stop;
    }
    let pieces: Vec<Piece> = bounds
        .par_windows(2)
        .map(|w| parse_lines(buf, w[0], w[1], skip))
        .collect();
    let mut out = Piece::default();
    for p in pieces {
        if out.error.is_some() {
            break;
        }
        if let Some((line, e)) = p.error {
            out.error = Some((out.lines + line, e));
        }
        out.rows.extend(p.rows);
        out.data_rows += p.data_rows;
        out.lines += p.lines;
    }
    out
}

/// Parses the lines in `buf[from..to]` (whole lines); those before byte `skip` are counted
/// but not read (a header).
fn parse_lines(buf: &[u8], from: usize, to: usize, skip: usize) -> Piece {
    let mut p = Piece::default();
    let mut at = from;
    while at < to {
        let stop = buf[at..to]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(to, |i| at + i + 1);
        let (line_start, line) = (at, trim_end(&buf[at..stop]));
        at = stop;
        p.lines += 1;
        if line_start < skip || line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match parse_row(line, line_start as u32) {
            Ok(None) => p.data_rows += 1,
            Ok(Some(r)) => {
                p.data_rows += 1;
                p.rows.push(r);
            }
            Err(e) => {
                p.error = Some((p.lines, e));
                return p;
            }
        }
    }
    p
}

/// One data line: `Some` row when it is a click, `None` for other behaviours.
fn parse_row(line: &[u8], offset: u32) -> Result<Option<RowAt>, String> {
    let text = std::str::from_utf8(line).map_err(|e| format!("not valid UTF-8: {e}"))?;
    let mut cells = [(0u32, 0u32); WIDTH];
    let mut n = 0;
    let mut start = 0;
    for (i, b) in line.iter().enumerate() {
        if *b == b',' {
            if n < WIDTH {
                cells[n] = (start as u32, i as u32);
            }
            n += 1;
            start = i + 1;
        }
    }
    if n < WIDTH {
        cells[n] = (start as u32, line.len() as u32);
    }
    n += 1;
    if n != WIDTH {
        return Err(format!(
            "expected {WIDTH} comma-separated cells \
             (user_id,item_id,category_id,behavior_type,timestamp), got {n}"
        ));
    }
    let cell = |k: usize| &text[cells[k].0 as usize..cells[k].1 as usize];
    let t = cell(4);
    let time = match fast_int(t.as_bytes()) {
        Some(v) => v,
        None => parse_timestamp(t)?,
    };
    if cell(0).is_empty() || cell(1).is_empty() {
        return Err("empty user_id or item_id".into());
    }
    if cell(3).trim() != CLICK {
        return Ok(None);
    }
    let at = |k: usize| (offset + cells[k].0, offset + cells[k].1);
    Ok(Some(RowAt {
        user: at(0),
        item: at(1),
        cat: at(2),
        time,
    }))
}

/// A plain run of 1 to 18 ASCII digits as a number (what `parse_timestamp` gives it).
fn fast_int(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() > 18 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0i64, |v, &d| v * 10 + (d - b'0') as i64))
}
