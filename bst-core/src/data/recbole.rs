//! Loader for RecBole atomic files (spec 1.3): a folder `NAME` holding `NAME.inter` and,
//! optionally, `NAME.item` and `NAME.user`.
//!
//! Each file is tab-separated with a header row of `field:type` cells (types `token`,
//! `token_seq`, `float`, `float_seq`). Columns are found by field name, so their order does
//! not matter. Ids are kept as strings (spaces, punctuation and prefixes are fine). Lines may
//! end in CRLF; empty lines are skipped.
//!
//! What the loader builds (see [`InteractionLog`]):
//! - items numbered 1.. in order of first appearance in `NAME.inter` (0 = padding);
//! - users numbered 0.. in order of first appearance in `NAME.inter`;
//! - item categories from the first space-separated token of the item file's category
//!   column (0 = unknown), numbered 1.. in item order;
//! - one categorical field per user-file column (or a lone `user_id` field without a user
//!   file); `samples::build` appends the `hour` and `weekday` context fields later.

pub use super::read::user_id_field;
use super::read::{LineReader, Row, intern, number_categories, parse_number, parse_timestamp};
use super::{DataError, Field, Interaction, InteractionLog, Vocab};
use crate::config::DataConfig;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::{Path, PathBuf};

/// Item-file columns searched for the category, in this order, when the config names none.
pub const CATEGORY_COLUMNS: [&str; 5] = ["category", "categories", "class", "genre", "genres"];

/// Column types allowed in a header cell `name:type`.
const COLUMN_TYPES: [&str; 4] = ["token", "token_seq", "float", "float_seq"];

/// Loads the RecBole folder `dir` (named `NAME`, holding `NAME.inter`, optionally
/// `NAME.item` and `NAME.user`).
///
/// Labels: `rating >= data.rating_threshold` gives 1, else 0; without a `rating` column the
/// log is implicit (every interaction a positive).
pub fn load(dir: &Path, data: &DataConfig) -> Result<InteractionLog, DataError> {
    let name = folder_name(dir)?;
    let inter = read_interactions(&dir.join(format!("{name}.inter")), data)?;

    let item_path = dir.join(format!("{name}.item"));
    let item_cat_tokens = if item_path.exists() {
        read_item_categories(&item_path, data)?
    } else if let Some(col) = &data.category_column {
        return Err(DataError::File {
            path: item_path,
            msg: format!("data.category_column is `{col}` but there is no item file"),
        });
    } else {
        HashMap::new()
    };
    let (item_cat, cat_names) = number_categories(&inter.item_ids, &item_cat_tokens);

    let user_path = dir.join(format!("{name}.user"));
    let (fields, user_features) = if user_path.exists() {
        read_user_fields(&user_path, &inter.user_ids)?
    } else {
        user_id_field(&inter.user_ids)
    };

    Ok(InteractionLog {
        interactions: inter.interactions,
        implicit: inter.implicit,
        vocab: Vocab {
            item_ids: inter.item_ids,
            item_cat,
            cat_names,
            user_ids: inter.user_ids,
            fields,
        },
        user_features,
        true_prob: None,
    })
}

/// The folder's own name `NAME`, which names the files inside it.
fn folder_name(dir: &Path) -> Result<String, DataError> {
    let named = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .or_else(|| {
            let abs = dir.canonicalize().ok()?;
            Some(abs.file_name()?.to_string_lossy().into_owned())
        });
    named.ok_or_else(|| DataError::File {
        path: dir.to_path_buf(),
        msg: "cannot tell the dataset name: a RecBole folder NAME holds NAME.inter".into(),
    })
}

// ---------------------------------------------------------------------------------------
// Atomic files
// ---------------------------------------------------------------------------------------

/// A header cell `name:type`.
#[derive(Clone, Debug)]
struct Column {
    name: String,
    kind: String,
}

/// An open atomic file whose header has been read.
struct AtomicFile {
    path: PathBuf,
    lines: LineReader,
    columns: Vec<Column>,
}

impl AtomicFile {
    /// Opens `path` and parses its header row.
    fn open(path: &Path, what: &str) -> Result<AtomicFile, DataError> {
        let mut lines = LineReader::open(path, what)?;
        let (line, header) = match lines.next_line()? {
            // A UTF-8 byte order mark is not part of the first field name.
            Some((line, text)) => (line, text.trim_start_matches('\u{feff}').to_string()),
            None => {
                return Err(lines.file_error(format!(
                    "empty file: the {what} needs a header row of `field:type` cells"
                )));
            }
        };
        let columns = parse_header(&header).map_err(|msg| lines.error(line, msg))?;
        Ok(AtomicFile {
            path: path.to_path_buf(),
            lines,
            columns,
        })
    }

    /// Index of the column `name`, if present.
    fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// Index of the column `name`, or an error naming it and listing the header.
    fn require(&self, name: &str) -> Result<usize, DataError> {
        self.column(name).ok_or_else(|| {
            self.lines.file_error(format!(
                "missing column `{name}`; the header has: {}",
                self.header_list()
            ))
        })
    }

    /// The header as `a:token, b:float, ...`.
    fn header_list(&self) -> String {
        let cells: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("{}:{}", c.name, c.kind))
            .collect();
        cells.join(", ")
    }

    /// Calls `row(where, cells)` for every data row, after checking that it has as many
    /// cells as the header. A file with no data row is an error.
    fn for_each_row(
        mut self,
        mut row: impl FnMut(Row, &[&str]) -> Result<(), DataError>,
    ) -> Result<(), DataError> {
        let width = self.columns.len();
        let mut rows = 0usize;
        while let Some((line, text)) = self.lines.next_line()? {
            let at = Row {
                path: &self.path,
                line,
            };
            let cells: Vec<&str> = text.split('\t').collect();
            if cells.len() != width {
                let msg = format!(
                    "expected {width} tab-separated cells (as in the header), got {}",
                    cells.len()
                );
                return Err(at.error(msg));
            }
            rows += 1;
            row(at, &cells)?;
        }
        if rows == 0 {
            return Err(self
                .lines
                .file_error("the file has a header but no data rows".into()));
        }
        Ok(())
    }
}

/// Parses a header row of `name:type` cells.
fn parse_header(header: &str) -> Result<Vec<Column>, String> {
    let mut columns: Vec<Column> = Vec::new();
    for (i, cell) in header.split('\t').enumerate() {
        let Some((name, kind)) = cell.rsplit_once(':') else {
            return Err(format!(
                "header cell {} `{cell}` has no type: write it as `name:type` with type one of {}",
                i + 1,
                COLUMN_TYPES.join(", ")
            ));
        };
        let (name, kind) = (name.trim(), kind.trim());
        if name.is_empty() {
            return Err(format!("header cell {} `{cell}` has no field name", i + 1));
        }
        if !COLUMN_TYPES.contains(&kind) {
            return Err(format!(
                "header cell {} `{cell}` has unknown type `{kind}`: use one of {}",
                i + 1,
                COLUMN_TYPES.join(", ")
            ));
        }
        if columns.iter().any(|c| c.name == name) {
            return Err(format!("header names column `{name}` twice"));
        }
        columns.push(Column {
            name: name.to_string(),
            kind: kind.to_string(),
        });
    }
    Ok(columns)
}

// ---------------------------------------------------------------------------------------
// The three files
// ---------------------------------------------------------------------------------------

/// What `NAME.inter` gives.
struct Interactions {
    interactions: Vec<Interaction>,
    implicit: bool,
    /// `item_ids[0]` = "" (padding).
    item_ids: Vec<String>,
    user_ids: Vec<String>,
}

/// Reads `NAME.inter`: columns `user_id`, `item_id`, `timestamp` and, optionally, `rating`.
fn read_interactions(path: &Path, data: &DataConfig) -> Result<Interactions, DataError> {
    let file = AtomicFile::open(path, "interaction file")?;
    let user_col = file.require("user_id")?;
    let item_col = file.require("item_id")?;
    let time_col = file.require("timestamp")?;
    let rating_col = file.column("rating");

    let mut out = Interactions {
        interactions: Vec::new(),
        implicit: rating_col.is_none(),
        item_ids: vec![String::new()],
        user_ids: Vec::new(),
    };
    let (mut items, mut users) = (HashMap::new(), HashMap::new());
    file.for_each_row(|at, cells| {
        let bad = |msg: String| at.error(msg);
        let (user_id, item_id) = (cells[user_col], cells[item_col]);
        if user_id.is_empty() || item_id.is_empty() {
            return Err(bad("empty user_id or item_id".into()));
        }
        let time = parse_timestamp(cells[time_col]).map_err(bad)?;
        let label = match rating_col {
            Some(c) => {
                let rating = parse_number(cells[c], "rating").map_err(bad)?;
                if rating >= data.rating_threshold as f64 {
                    1.0
                } else {
                    0.0
                }
            }
            None => 1.0,
        };
        out.interactions.push(Interaction {
            user: intern(&mut users, &mut out.user_ids, user_id),
            item: intern(&mut items, &mut out.item_ids, item_id),
            time,
            label,
        });
        Ok(())
    })?;
    Ok(out)
}

/// Reads `NAME.item`: the category token (first space-separated token of the category
/// column) of each item id. Empty when the file has no category column (and the config
/// names none). The first row of an item wins.
fn read_item_categories(
    path: &Path,
    data: &DataConfig,
) -> Result<HashMap<String, String>, DataError> {
    let file = AtomicFile::open(path, "item file")?;
    let item_col = file.require("item_id")?;
    let cat_col = match &data.category_column {
        Some(name) => Some(file.column(name).ok_or_else(|| {
            file.lines.file_error(format!(
                "missing category column `{name}` (set by data.category_column); \
                 the header has: {}",
                file.header_list()
            ))
        })?),
        None => CATEGORY_COLUMNS.iter().find_map(|c| file.column(c)),
    };
    let mut cats = HashMap::new();
    let Some(cat_col) = cat_col else {
        // Still check the rows, so a broken file is reported.
        file.for_each_row(|_, _| Ok(()))?;
        return Ok(cats);
    };
    file.for_each_row(|_, cells| {
        let token = cells[cat_col].split(' ').find(|t| !t.is_empty());
        if let Some(token) = token {
            cats.entry(cells[item_col].to_string())
                .or_insert_with(|| token.to_string());
        }
        Ok(())
    })?;
    Ok(cats)
}

/// Reads `NAME.user`: every column is one categorical field (file column order), tokens
/// numbered 1.. in order of first appearance (0 = unknown). Users of the log missing from
/// the file get 0 in every field. Returns `(fields, user_features[user][field])`.
fn read_user_fields(
    path: &Path,
    user_ids: &[String],
) -> Result<(Vec<Field>, Vec<Vec<u32>>), DataError> {
    let file = AtomicFile::open(path, "user file")?;
    let user_col = file.require("user_id")?;
    let names: Vec<String> = file.columns.iter().map(|c| c.name.clone()).collect();
    let mut tokens: Vec<Vec<String>> = vec![vec![String::new()]; names.len()];
    let mut index: Vec<HashMap<String, u32>> = vec![HashMap::new(); names.len()];
    // Local indices of each user-file row, by raw user id (first row wins).
    let mut rows: HashMap<String, Vec<u32>> = HashMap::new();
    file.for_each_row(|_, cells| {
        let local: Vec<u32> = cells
            .iter()
            .enumerate()
            .map(|(f, cell)| intern(&mut index[f], &mut tokens[f], cell))
            .collect();
        if let Entry::Vacant(e) = rows.entry(cells[user_col].to_string()) {
            e.insert(local);
        }
        Ok(())
    })?;

    let width = names.len();
    let features = user_ids
        .iter()
        .map(|id| rows.get(id).cloned().unwrap_or_else(|| vec![0; width]))
        .collect();
    let mut offset = 0;
    let fields = names
        .into_iter()
        .zip(tokens)
        .map(|(name, tokens)| {
            let field = Field {
                name,
                size: tokens.len(),
                offset,
                tokens,
            };
            offset += field.size;
            field
        })
        .collect();
    Ok((fields, features))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_cells_need_a_known_type() {
        let cols = parse_header("timestamp:float\tuser_id:token").unwrap();
        assert_eq!(cols[1].name, "user_id");
        let e = parse_header("user_id\titem_id:token").unwrap_err();
        assert!(e.contains("`user_id` has no type"), "{e}");
        let e = parse_header("user_id:tokn").unwrap_err();
        assert!(e.contains("unknown type `tokn`"), "{e}");
        let e = parse_header("a:token\ta:float").unwrap_err();
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn timestamps_parse_as_integers_or_floats() {
        assert_eq!(parse_timestamp("881250949"), Ok(881250949));
        assert_eq!(parse_timestamp("8.8e8"), Ok(880_000_000));
        assert_eq!(parse_timestamp(" 12.9 "), Ok(12));
        assert!(parse_timestamp("noon").unwrap_err().contains("`noon`"));
        assert!(parse_timestamp("NaN").is_err());
    }
}
