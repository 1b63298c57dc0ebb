//! Reading shared by the loaders (RecBole atomic files, Taobao CSV): lines with their
//! numbers and errors by file and line, numbers and timestamps, dense ids in order of
//! first appearance, category numbering and the lone `user_id` field.

use super::{DataError, Field};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// Reads a text file line by line, with 1-based line numbers, without the line ending
/// (`\n` or `\r\n`), skipping lines that are empty or only whitespace.
pub(crate) struct LineReader {
    path: PathBuf,
    reader: BufReader<File>,
    buf: Vec<u8>,
    line: usize,
}

impl LineReader {
    /// Opens `path`; `what` says what the file is for the error message.
    pub(crate) fn open(path: &Path, what: &str) -> Result<LineReader, DataError> {
        let file = File::open(path).map_err(|e| DataError::File {
            path: path.to_path_buf(),
            msg: format!("cannot open the {what}: {e}"),
        })?;
        Ok(LineReader {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(1 << 16, file),
            buf: Vec::new(),
            line: 0,
        })
    }

    /// The next non-empty line as `(line number, text)`, or `None` at the end of the file.
    pub(crate) fn next_line(&mut self) -> Result<Option<(usize, &str)>, DataError> {
        // Length of the line without its ending; the loop skips blank lines.
        let len = loop {
            self.buf.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut self.buf)
                .map_err(|e| DataError::Line {
                    path: self.path.clone(),
                    line: self.line + 1,
                    msg: format!("cannot read: {e}"),
                })?;
            if n == 0 {
                return Ok(None);
            }
            self.line += 1;
            let mut len = self.buf.len();
            while len > 0 && matches!(self.buf[len - 1], b'\n' | b'\r') {
                len -= 1;
            }
            if !self.buf[..len].iter().all(u8::is_ascii_whitespace) {
                break len;
            }
        };
        let text = std::str::from_utf8(&self.buf[..len]).map_err(|e| DataError::Line {
            path: self.path.clone(),
            line: self.line,
            msg: format!("not valid UTF-8: {e}"),
        })?;
        Ok(Some((self.line, text)))
    }

    /// An error about line `line` of this file.
    pub(crate) fn error(&self, line: usize, msg: String) -> DataError {
        DataError::Line {
            path: self.path.clone(),
            line,
            msg,
        }
    }

    /// An error about the whole file.
    pub(crate) fn file_error(&self, msg: String) -> DataError {
        DataError::File {
            path: self.path.clone(),
            msg,
        }
    }
}

/// Where a data row sits, to make errors about it.
pub(crate) struct Row<'a> {
    pub path: &'a Path,
    /// 1-based line number.
    pub line: usize,
}

impl Row<'_> {
    /// An error about this line.
    pub(crate) fn error(&self, msg: String) -> DataError {
        DataError::Line {
            path: self.path.to_path_buf(),
            line: self.line,
            msg,
        }
    }
}

/// Parses a finite number, or says which value is not one.
pub(crate) fn parse_number(cell: &str, what: &str) -> Result<f64, String> {
    match cell.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(format!("{what} `{cell}` is not a number")),
    }
}

/// Parses a timestamp in seconds (`881250949`, `8.8e8`, `881250949.5`) into whole seconds.
pub(crate) fn parse_timestamp(cell: &str) -> Result<i64, String> {
    if let Ok(t) = cell.trim().parse::<i64>() {
        return Ok(t);
    }
    let v = parse_number(cell, "timestamp")?.floor();
    if v.abs() >= 9.0e18 {
        return Err(format!("timestamp `{cell}` is out of range"));
    }
    Ok(v as i64)
}

/// The dense index of `key` in `ids`; a new key is appended and gets the next index.
pub(crate) fn intern(map: &mut HashMap<String, u32>, ids: &mut Vec<String>, key: &str) -> u32 {
    if let Some(&i) = map.get(key) {
        return i;
    }
    let i = ids.len() as u32;
    map.insert(key.to_string(), i);
    ids.push(key.to_string());
    i
}

/// Numbers the categories of the log's items in item order.
/// Returns `(item_cat, cat_names)`: `item_cat[item]`, and `cat_names[0]` = "".
pub(crate) fn number_categories(
    item_ids: &[String],
    item_cat_tokens: &HashMap<String, String>,
) -> (Vec<u32>, Vec<String>) {
    let mut cat_names = vec![String::new()];
    let mut index = HashMap::new();
    let item_cat = item_ids
        .iter()
        .enumerate()
        .map(|(i, id)| match item_cat_tokens.get(id) {
            Some(token) if i > 0 => intern(&mut index, &mut cat_names, token),
            _ => 0,
        })
        .collect();
    (item_cat, cat_names)
}

/// Without a user file: one field `user_id` whose local index is the dense user + 1.
pub fn user_id_field(user_ids: &[String]) -> (Vec<Field>, Vec<Vec<u32>>) {
    let mut tokens = vec![String::new()];
    tokens.extend(user_ids.iter().cloned());
    let field = Field {
        name: "user_id".into(),
        size: tokens.len(),
        offset: 0,
        tokens,
    };
    let features = (1..=user_ids.len() as u32).map(|i| vec![i]).collect();
    (vec![field], features)
}
