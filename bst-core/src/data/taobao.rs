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
use std::collections::HashMap;
use std::path::Path;

/// Cells per row.
const WIDTH: usize = 5;

/// The column names, as a header line some copies of the file begin with.
pub const HEADER: &str = "user_id,item_id,category_id,behavior_type,timestamp";

/// The behaviour type kept as a click.
const CLICK: &str = "pv";

/// Loads a UserBehavior CSV file. `data` is accepted for symmetry with the other loaders
/// (nothing in it changes how the file is read).
pub fn load(path: &Path, data: &DataConfig) -> Result<InteractionLog, DataError> {
    let _ = data;
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

    if rows == 0 {
        return Err(empty(
            path,
            "empty file: expected rows of user_id,item_id,category_id,behavior_type,timestamp",
        ));
    }
    if interactions.is_empty() {
        return Err(empty(path, "no `pv` (click) rows: nothing to learn from"));
    }
    let (item_cat, cat_names) = number_categories(&item_ids, &item_cat_tokens);
    let (fields, user_features) = user_id_field(&user_ids);
    Ok(InteractionLog {
        interactions,
        implicit: true,
        vocab: Vocab {
            item_ids,
            item_cat,
            cat_names,
            user_ids,
            fields,
        },
        user_features,
        true_prob: None,
    })
}

/// An error about the whole file.
fn empty(path: &Path, msg: &str) -> DataError {
    DataError::File {
        path: path.to_path_buf(),
        msg: msg.to_string(),
    }
}
