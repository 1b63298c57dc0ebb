//! Loaders (RecBole atomic files, Taobao UserBehavior) and sample construction (spec 1).

use bst_core::config::{DataConfig, ModelConfig, Position};
use bst_core::data::samples::{build_reference, hour_and_weekday, split_sizes, time_gap_bucket};
use bst_core::data::{DataError, Field, Interaction, InteractionLog, Samples, Vocab};
use bst_core::data::{recbole, taobao};
use std::path::{Path, PathBuf};
use tempfile::TempDir;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A fresh, empty folder `<temp>/<name>` (a RecBole folder's name is its files'), and
/// the temporary folder `<temp>` that removes it when dropped.
fn temp_folder(name: &str) -> (TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    std::fs::create_dir(&dir).unwrap();
    (tmp, dir)
}

/// A RecBole folder `bad` holding `bad.inter` with `inter` (and nothing else).
fn recbole_folder(inter: &str) -> (TempDir, PathBuf) {
    let (tmp, dir) = temp_folder("bad");
    std::fs::write(dir.join("bad.inter"), inter).unwrap();
    (tmp, dir)
}

/// The error message of loading a RecBole folder that must fail.
fn recbole_error(dir: &Path, data: &DataConfig) -> String {
    match recbole::load(dir, data) {
        Ok(_) => panic!("{} should not load", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn assert_contains(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "`{msg}` should contain `{p}`");
    }
}

fn strings(xs: &[&str]) -> Vec<String> {
    xs.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------
// RecBole
// ---------------------------------------------------------------------------------------

#[test]
fn tiny_recbole_folder_loads_with_crlf_odd_ids_and_shuffled_columns() {
    let log = recbole::load(&fixtures().join("tiny"), &DataConfig::default()).unwrap();
    let v = &log.vocab;
    assert!(!log.implicit);
    assert_eq!(
        v.item_ids,
        strings(&["", "Toy Story (1995)", "1m_17", "i#3", "nometa 9"])
    );
    assert_eq!(v.user_ids, strings(&["u 1", "u-2", "user_3"]));
    // `class` comes before `genre` in the search order; "nometa 9" is not in the item file.
    assert_eq!(v.cat_names, strings(&["", "Animation", "Drama"]));
    assert_eq!(v.item_cat, vec![0, 1, 2, 1, 0]);
    let expect = |user, item, time, label| Interaction {
        user,
        item,
        time,
        label,
    };
    assert_eq!(
        log.interactions,
        vec![
            expect(0, 1, 100, 1.0),
            expect(0, 2, 50, 0.0),
            expect(1, 2, 10, 1.0),
            expect(0, 3, 200, 1.0),
            expect(1, 4, 880, 0.0),
            expect(2, 1, 300, 0.0),
        ]
    );
    // Every user-file column is a field, in file order; "u-2" is not in the user file.
    let names: Vec<&str> = v.fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["age", "user_id", "gender"]);
    assert_eq!(v.fields[0].tokens, strings(&["", "24", "53"]));
    assert_eq!(
        v.fields[1].tokens,
        strings(&["", "u 1", "user_3", "not in inter"])
    );
    assert_eq!(v.fields[2].tokens, strings(&["", "M", "F"]));
    let layout: Vec<(usize, usize)> = v.fields.iter().map(|f| (f.size, f.offset)).collect();
    assert_eq!(layout, [(3, 0), (4, 3), (3, 7)]);
    assert_eq!(
        log.user_features,
        vec![vec![1, 1, 1], vec![0, 0, 0], vec![2, 2, 2]]
    );
    assert!(log.true_prob.is_none());
}

#[test]
fn rating_threshold_and_category_column_come_from_the_config() {
    let data = DataConfig {
        rating_threshold: 3.0,
        category_column: Some("genre".into()),
        ..DataConfig::default()
    };
    let log = recbole::load(&fixtures().join("tiny"), &data).unwrap();
    let labels: Vec<f32> = log.interactions.iter().map(|i| i.label).collect();
    assert_eq!(labels, [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]);
    assert_eq!(log.vocab.cat_names, strings(&["", "G", "X", "Z"]));

    let data = DataConfig {
        category_column: Some("colour".into()),
        ..DataConfig::default()
    };
    let e = recbole_error(&fixtures().join("tiny"), &data);
    assert_contains(&e, &["tiny.item", "`colour`", "item_id:token"]);
}

#[test]
fn a_folder_with_only_inter_is_implicit_without_rating_and_has_a_user_id_field() {
    let (_tmp, dir) = recbole_folder(
        "item_id:token\tuser_id:token\ttimestamp:float\n\
         a b\tx\t5\n\
         c\ty\t6\n\
         a b\ty\t7\n",
    );
    let log = recbole::load(&dir, &DataConfig::default()).unwrap();
    assert!(log.implicit);
    assert!(log.interactions.iter().all(|i| i.label == 1.0));
    assert_eq!(log.vocab.item_ids, strings(&["", "a b", "c"]));
    assert_eq!(log.vocab.item_cat, vec![0, 0, 0]);
    assert_eq!(log.vocab.cat_names, strings(&[""]));
    let expected = Field {
        name: "user_id".into(),
        size: 3,
        offset: 0,
        tokens: strings(&["", "x", "y"]),
    };
    assert_eq!(log.vocab.fields, vec![expected]);
    assert_eq!(log.user_features, vec![vec![1], vec![2]]);
}

#[test]
fn a_missing_inter_file_is_an_error_naming_it() {
    let (_tmp, dir) = temp_folder("nothing");
    let e = recbole_error(&dir, &DataConfig::default());
    assert_contains(&e, &["nothing.inter", "cannot open"]);
}

#[test]
fn a_missing_column_is_named_with_the_header() {
    let (_tmp, dir) = recbole_folder("user_id:token\titem_id:token\trating:float\nu\ti\t4\n");
    let e = recbole_error(&dir, &DataConfig::default());
    assert_contains(
        &e,
        &[
            "bad.inter",
            "missing column `timestamp`",
            "user_id:token, item_id:token, rating:float",
        ],
    );
}

#[test]
fn a_wrong_cell_count_says_expected_and_got_with_the_line() {
    // Line 3 is blank (skipped but counted); line 4 has three cells.
    let (_tmp, dir) =
        recbole_folder("user_id:token\titem_id:token\ttimestamp:float\r\nu\ti\t1\r\n\r\nu\ti\r\n");
    let e = recbole_error(&dir, &DataConfig::default());
    assert_contains(&e, &["bad.inter:4:", "expected 3", "got 2"]);
}

#[test]
fn non_numeric_rating_and_timestamp_are_quoted() {
    let head = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n";
    let (_tmp, dir) = recbole_folder(&format!("{head}u\ti\t4\t1\nu\ti\tfive\t2\n"));
    let e = recbole_error(&dir, &DataConfig::default());
    assert_contains(&e, &["bad.inter:3:", "rating `five` is not a number"]);

    let (_tmp, dir) = recbole_folder(&format!("{head}u\ti\t4\tyesterday\n"));
    let e = recbole_error(&dir, &DataConfig::default());
    assert_contains(
        &e,
        &["bad.inter:2:", "timestamp `yesterday` is not a number"],
    );
}

#[test]
fn empty_and_header_only_files_are_errors() {
    let (_tmp, dir) = recbole_folder("");
    assert_contains(
        &recbole_error(&dir, &DataConfig::default()),
        &["bad.inter", "empty file"],
    );
    let (_tmp, dir) = recbole_folder("\r\n\r\n");
    assert_contains(
        &recbole_error(&dir, &DataConfig::default()),
        &["bad.inter", "empty file"],
    );
    let (_tmp, dir) = recbole_folder("user_id:token\titem_id:token\ttimestamp:float\r\n");
    assert_contains(
        &recbole_error(&dir, &DataConfig::default()),
        &["bad.inter", "no data rows"],
    );
}

#[test]
fn a_header_cell_without_type_is_an_error() {
    let (_tmp, dir) = recbole_folder("user_id:token\titem_id\ttimestamp:float\nu\ti\t1\n");
    let e = recbole_error(&dir, &DataConfig::default());
    assert_contains(&e, &["bad.inter:1:", "`item_id` has no type"]);
}

#[test]
fn bad_item_and_user_files_are_reported_too() {
    let inter = "user_id:token\titem_id:token\ttimestamp:float\nu\ti\t1\n";
    let (_tmp, dir) = recbole_folder(inter);
    std::fs::write(dir.join("bad.item"), "item_id:token\tclass:token_seq\ni\n").unwrap();
    let e = recbole_error(&dir, &DataConfig::default());
    assert_contains(&e, &["bad.item:2:", "expected 2", "got 1"]);

    let (_tmp, dir) = recbole_folder(inter);
    std::fs::write(dir.join("bad.user"), "age:token\n30\n").unwrap();
    let e = recbole_error(&dir, &DataConfig::default());
    assert_contains(&e, &["bad.user", "missing column `user_id`", "age:token"]);
}

// ---------------------------------------------------------------------------------------
// Taobao
// ---------------------------------------------------------------------------------------

#[test]
fn taobao_keeps_clicks_only() {
    let path = fixtures().join("taobao/UserBehavior.csv");
    let log = taobao::load(&path, &DataConfig::default()).unwrap();
    assert!(log.implicit);
    let v = &log.vocab;
    // Item 102 has only a `cart` row; 101's `buy` row is dropped but its `pv` row kept.
    assert_eq!(v.item_ids, strings(&["", "100", "101", "103"]));
    assert_eq!(v.user_ids, strings(&["1", "2"]));
    // Item 100's category is that of its first row (7, not 9).
    assert_eq!(v.cat_names, strings(&["", "7", "8"]));
    assert_eq!(v.item_cat, vec![0, 1, 2, 2]);
    let rows: Vec<(u32, u32, i64)> = log
        .interactions
        .iter()
        .map(|i| (i.user, i.item, i.time))
        .collect();
    assert_eq!(
        rows,
        [
            (0, 1, 1511544070),
            (0, 2, 1511544090),
            (1, 1, 1511544100),
            (1, 3, 1511544120)
        ]
    );
    assert!(log.interactions.iter().all(|i| i.label == 1.0));
    assert_eq!(v.fields.len(), 1);
    assert_eq!(v.fields[0].tokens, strings(&["", "1", "2"]));
    assert_eq!(log.user_features, vec![vec![1], vec![2]]);
}

#[test]
fn taobao_skips_a_header_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let plain = fixtures().join("taobao/UserBehavior.csv");
    let body = std::fs::read_to_string(&plain).unwrap();
    let path = dir.join("UserBehavior.csv");
    let header = "user_id,item_id,category_id,behavior_type,timestamp";
    let expected = taobao::load(&plain, &DataConfig::default()).unwrap();
    for text in [
        format!("{header}\n{body}"),
        format!("\u{feff}{header}\r\n\n{body}"),
    ] {
        std::fs::write(&path, text).unwrap();
        let log = taobao::load(&path, &DataConfig::default()).expect("a header is skipped");
        assert_eq!(log.interactions, expected.interactions);
        assert_eq!(log.vocab, expected.vocab);
    }
}

#[test]
fn taobao_errors_name_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let path = dir.join("UserBehavior.csv");
    let load = |text: &str| {
        std::fs::write(&path, text).unwrap();
        taobao::load(&path, &DataConfig::default())
            .unwrap_err()
            .to_string()
    };
    assert_contains(
        &load("1,2,3,pv,10\r\n1,2,pv,11\r\n"),
        &["UserBehavior.csv:2:", "expected 5", "got 4"],
    );
    assert_contains(
        &load("1,2,3,pv,10\n1,2,3,pv,soon\n"),
        &["UserBehavior.csv:2:", "timestamp `soon` is not a number"],
    );
    assert_contains(&load(""), &["UserBehavior.csv", "empty file"]);
    assert_contains(&load("1,2,3,buy,10\n"), &["no `pv`"]);
    // The header is read as such on the first line only; a header alone is an empty file.
    let header = "user_id,item_id,category_id,behavior_type,timestamp";
    assert_contains(
        &load(&format!("1,2,3,pv,10\n{header}\n")),
        &[
            "UserBehavior.csv:2:",
            "timestamp `timestamp` is not a number",
        ],
    );
    assert_contains(&load(&format!("{header}\r\n")), &["empty file"]);
    let missing = dir.join("absent.csv");
    let e = taobao::load(&missing, &DataConfig::default()).unwrap_err();
    assert_contains(&e.to_string(), &["absent.csv", "cannot open"]);
}

/// The block parser gives the line-by-line reading's log, whatever the block size (blocks
/// end inside rows, headers and blank lines), and the same errors by line.
#[test]
fn taobao_block_parser_equals_the_line_reader() {
    use bst_core::data::taobao_gen::{TaobaoSpec, write};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let path = dir.join("ub.csv");
    let mut text = Vec::new();
    write(
        &TaobaoSpec {
            rows: 3000,
            seed: 5,
        },
        &mut text,
        &mut |_| {},
    )
    .unwrap();
    // Blank lines, CRLF endings and a row with an empty category, here and there.
    let mut text = String::from_utf8(text)
        .unwrap()
        .replacen("\n", "\r\n\n  \n", 7);
    text.push_str("77,5,,pv,1511544070\n");
    std::fs::write(&path, &text).unwrap();
    let want = taobao::load_lines(&path).unwrap();
    assert!(want.interactions.len() > 2000);
    for block in [1, 7, 64, 1000, 1 << 20] {
        let p = taobao::parse(&path, block).unwrap();
        let got: Vec<(u32, u32, i64)> = (0..p.user.len())
            .map(|i| (p.user[i], p.item[i], p.time[i]))
            .collect();
        let exp: Vec<(u32, u32, i64)> = want
            .interactions
            .iter()
            .map(|i| (i.user, i.item, i.time))
            .collect();
        assert_eq!(got, exp, "block {block}");
        assert_eq!(p.vocab, want.vocab, "block {block}");
        assert_eq!(p.user_features, want.user_features);
    }
    let header = "user_id,item_id,category_id,behavior_type,timestamp";
    let bad = [
        "1,2,3,pv,10\r\n1,2,pv,11\r\n".to_string(),
        "1,2,3,pv,10\n\n\n1,2,3,pv,soon\n".to_string(),
        format!("\n\u{feff}{header}\n1,2,3,pv,1e3\n,2,3,pv,10\n"),
        format!("1,2,3,pv,10\n{header}\n"),
        "1,2,3,pv,10\n1,\u{e9},3,pv,x\n".to_string(),
        "1,2,3,pv,10\n1,2,3\\xff,pv,10\n".to_string(),
        "\n \n".to_string(),
        format!("{header}\n"),
        "1,2,3,buy,5\n".to_string(),
    ];
    for text in bad {
        // `\xff` above stands for a byte that is not UTF-8.
        let bytes: Vec<u8> = text
            .replace("\\xff", "\u{1}")
            .bytes()
            .map(|b| if b == 1 { 0xff } else { b })
            .collect();
        std::fs::write(&path, &bytes).unwrap();
        let want = taobao::load_lines(&path).unwrap_err().to_string();
        for block in [1, 3, 1 << 20] {
            let got = taobao::parse(&path, block).unwrap_err().to_string();
            assert_eq!(got, want, "block {block}, text {text:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Samples
// ---------------------------------------------------------------------------------------

/// A log over `n_items` items (each its own category) from `(user, item, time, label)`
/// rows, with one `user_id` field.
fn make_log(n_items: usize, rows: &[(u32, u32, i64, f32)], implicit: bool) -> InteractionLog {
    let n_users = rows.iter().map(|r| r.0 as usize + 1).max().unwrap_or(0);
    let user_ids: Vec<String> = (0..n_users).map(|u| format!("u{u}")).collect();
    let mut tokens = vec![String::new()];
    tokens.extend(user_ids.iter().cloned());
    InteractionLog {
        interactions: rows
            .iter()
            .map(|&(user, item, time, label)| Interaction {
                user,
                item,
                time,
                label,
            })
            .collect(),
        implicit,
        vocab: Vocab {
            item_ids: (0..=n_items).map(|i| format!("i{i}")).collect(),
            item_cat: (0..=n_items as u32).collect(),
            cat_names: (0..=n_items).map(|i| format!("c{i}")).collect(),
            fields: vec![Field {
                name: "user_id".into(),
                size: n_users + 1,
                offset: 0,
                tokens,
            }],
            user_ids,
        },
        user_features: (1..=n_users as u32).map(|u| vec![u]).collect(),
        true_prob: None,
    }
}

fn model(seq_len: usize, position: Position, pos_buckets: usize) -> ModelConfig {
    ModelConfig {
        seq_len,
        position,
        pos_buckets,
        ..ModelConfig::default()
    }
}

/// A dataset with its splits materialised, to look at their rows.
#[derive(Debug)]
struct Dataset {
    name: String,
    vocab: Vocab,
    train: Samples,
    valid: Samples,
    test: Samples,
}

/// `samples::build`, its splits materialised; checked against the plain reference
/// assembly (`samples::build_reference`), field for field.
fn build(
    log: InteractionLog,
    model: &ModelConfig,
    data: &DataConfig,
    name: &str,
) -> Result<Dataset, DataError> {
    let reference = build_reference(log.clone(), model, data);
    let ds = bst_core::data::samples::build(log, model, data, name)?;
    let [train, valid, test] = [&ds.train, &ds.valid, &ds.test].map(|s| s.samples());
    let reference = reference.expect("the reference builds what build builds");
    assert_eq!(
        [&train, &valid, &test],
        reference.each_ref(),
        "store vs reference"
    );
    Ok(Dataset {
        name: ds.name,
        vocab: ds.vocab,
        train,
        valid,
        test,
    })
}

/// Row `i` of a `[n, width]` array.
fn row(xs: &[u32], width: usize, i: usize) -> &[u32] {
    &xs[i * width..(i + 1) * width]
}

#[test]
fn tiny_folder_gives_right_aligned_samples_with_time_gap_positions() {
    let log = recbole::load(&fixtures().join("tiny"), &DataConfig::default()).unwrap();
    let ds = build(
        log,
        &model(2, Position::Timegap, 64),
        &DataConfig::default(),
        "tiny",
    )
    .unwrap();
    assert_eq!(ds.name, "tiny");
    let s = &ds.train;
    assert_eq!((s.len(), ds.valid.len(), ds.test.len()), (3, 0, 0));
    // u 1 in time order: 1m_17 (t 50), Toy Story (100), i#3 (200); u-2: 1m_17 (10), nometa 9 (880).
    assert_eq!(s.hist_item, [0, 2, 2, 1, 0, 2]);
    assert_eq!(s.hist_cat, [0, 2, 2, 1, 0, 2]);
    // Buckets 1 + floor(log2(1 + gap)): gap 50 -> 6, 150 -> 8, 100 -> 7, 870 -> 10.
    assert_eq!(s.hist_pos, [0, 6, 8, 7, 0, 10]);
    assert_eq!(s.target_item, [1, 3, 4]);
    assert_eq!(s.target_cat, [1, 1, 0]);
    assert_eq!(s.label, [1.0, 1.0, 0.0]);
    assert_eq!(s.user, [0, 0, 1]);
    // Fields: age (0), user_id (3), gender (7), hour (10), weekday (34); 41 rows.
    let names: Vec<&str> = ds.vocab.fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["age", "user_id", "gender", "hour", "weekday"]);
    assert_eq!(ds.vocab.fields[3].offset, 10);
    assert_eq!(ds.vocab.fields[4].offset, 34);
    assert_eq!(ds.vocab.n_other(), 41);
    assert_eq!(s.fields, 5);
    // Times 100, 200 and 880 are all Thursday 1970-01-01, hour 0.
    assert_eq!(row(&s.other, 5, 0), [1, 4, 8, 10, 37]);
    assert_eq!(row(&s.other, 5, 2), [0, 3, 7, 10, 37]);
}

#[test]
fn time_gap_buckets_and_ordinal_positions() {
    assert_eq!(time_gap_bucket(0, 64), 1);
    assert_eq!(time_gap_bucket(1, 64), 2);
    assert_eq!(time_gap_bucket(3, 64), 3);
    assert_eq!(time_gap_bucket(7, 64), 4);
    assert_eq!(time_gap_bucket(i64::MAX, 64), 63);
    assert_eq!(time_gap_bucket(1_000_000_000, 16), 15);

    // One user: the last target (t = 1e9) sees gaps 1e9, 3, 1 and 0.
    let t = 1_000_000_000;
    let rows = [
        (0, 1, 0, 1.0),
        (0, 2, t - 3, 1.0),
        (0, 3, t - 1, 1.0),
        (0, 4, t, 1.0),
        (0, 5, t, 1.0),
    ];
    let data = DataConfig::default();
    let ds = build(
        make_log(5, &rows, false),
        &model(4, Position::Timegap, 16),
        &data,
        "gaps",
    )
    .unwrap();
    // 4 samples: 2 train, 1 valid, 1 test.
    assert_eq!(ds.test.hist_item, [1, 2, 3, 4]);
    assert_eq!(ds.test.hist_pos, [15, 3, 2, 1]);
    assert_eq!(ds.train.hist_pos, [0, 0, 0, 15, 0, 0, 15, 2]);

    let ds = build(
        make_log(5, &rows, false),
        &model(4, Position::Ordinal, 16),
        &data,
        "ordinal",
    )
    .unwrap();
    assert_eq!(ds.test.hist_pos, [4, 3, 2, 1]);
    assert_eq!(ds.train.hist_pos, [0, 0, 0, 1, 0, 0, 2, 1]);
    assert_eq!(ds.valid.hist_pos, [0, 3, 2, 1]);
}

#[test]
fn history_is_truncated_to_the_last_l_items() {
    let rows: Vec<(u32, u32, i64, f32)> = (0..6).map(|k| (0, k + 1, k as i64, 1.0)).collect();
    let ds = build(
        make_log(6, &rows, false),
        &model(3, Position::Ordinal, 8),
        &DataConfig::default(),
        "trunc",
    )
    .unwrap();
    // 5 samples: 3 train, 1 valid, 1 test.
    assert_eq!(ds.train.hist_item, [0, 0, 1, 0, 1, 2, 1, 2, 3]);
    assert_eq!(ds.valid.hist_item, [2, 3, 4]);
    assert_eq!(ds.test.hist_item, [3, 4, 5]);
    assert_eq!(ds.test.target_item, [6]);
}

/// Every user's samples in `earlier` come before (in time) their samples in `later`; the
/// fixtures number items by time, so the target item stands for the time.
fn assert_no_leak(earlier: &Samples, later: &Samples) {
    for (i, &u) in earlier.user.iter().enumerate() {
        for (j, &v) in later.user.iter().enumerate() {
            if u == v {
                assert!(
                    earlier.target_item[i] < later.target_item[j],
                    "user {u} leaks"
                );
            }
        }
    }
}

#[test]
fn split_sizes_per_user_and_no_leak() {
    assert_eq!(split_sizes(25), (21, 2, 2));
    assert_eq!(split_sizes(2), (2, 0, 0));
    assert_eq!(split_sizes(3), (1, 1, 1));
    // User 0: 26 interactions (25 samples), user 1: 3 (2), user 2: 4 (3). Items rise with
    // time; rows are given in reverse time order to check the sort.
    let mut rows = Vec::new();
    for (user, n) in [(0u32, 26u32), (1, 3), (2, 4)] {
        for k in (0..n).rev() {
            rows.push((user, 100 * user + k + 1, k as i64 * 60, 1.0));
        }
    }
    let ds = build(
        make_log(400, &rows, false),
        &model(5, Position::Timegap, 64),
        &DataConfig::default(),
        "split",
    )
    .unwrap();
    let count = |s: &Samples, u: u32| s.user.iter().filter(|&&x| x == u).count();
    let per_user = |u| (count(&ds.train, u), count(&ds.valid, u), count(&ds.test, u));
    assert_eq!(per_user(0), (21, 2, 2));
    assert_eq!(per_user(1), (2, 0, 0));
    assert_eq!(per_user(2), (1, 1, 1));
    // Ordered by user, then time.
    assert!(ds.train.user.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(ds.train.target_item[..3], [2, 3, 4]);
    assert_no_leak(&ds.train, &ds.valid);
    assert_no_leak(&ds.train, &ds.test);
    assert_no_leak(&ds.valid, &ds.test);
}

#[test]
fn hour_and_weekday_in_utc() {
    assert_eq!(hour_and_weekday(0), (0, 3)); // Thursday 1970-01-01 00:00
    assert_eq!(hour_and_weekday(881_250_949), (15, 3)); // Thursday 1997-12-04 15:55:49
    assert_eq!(hour_and_weekday(4 * 86_400 + 3600), (1, 0)); // Monday 1970-01-05 01:00
    assert_eq!(hour_and_weekday(-1), (23, 2)); // Wednesday 1969-12-31 23:59:59
}

/// A click log: user 0 clicks items 1, 2, 3, 4 at times 0..4; 10 items in all.
fn click_log() -> InteractionLog {
    let rows: Vec<(u32, u32, i64, f32)> = (0..4).map(|k| (0, k + 1, k as i64, 1.0)).collect();
    make_log(10, &rows, true)
}

fn build_clicks(negatives: usize, seed: u64) -> Dataset {
    let data = DataConfig {
        negatives,
        seed,
        ..DataConfig::default()
    };
    build(
        click_log(),
        &model(3, Position::Timegap, 64),
        &data,
        "clicks",
    )
    .unwrap()
}

#[test]
fn negatives_share_the_context_exclude_the_positive_and_are_seeded() {
    let ds = build_clicks(3, 7);
    // 3 groups of 4 samples (a positive and 3 negatives): 1/1/1 groups.
    for s in [&ds.train, &ds.valid, &ds.test] {
        assert_eq!(s.len(), 4);
        assert_eq!(s.label, [1.0, 0.0, 0.0, 0.0]);
        for k in 1..4 {
            assert_ne!(s.target_item[k], s.target_item[0]);
            assert!((1..=10).contains(&s.target_item[k]));
            assert_eq!(s.target_cat[k], s.target_item[k]);
            assert_eq!(row(&s.hist_item, 3, k), row(&s.hist_item, 3, 0));
            assert_eq!(row(&s.hist_pos, 3, k), row(&s.hist_pos, 3, 0));
            assert_eq!(row(&s.other, 3, k), row(&s.other, 3, 0));
        }
    }
    assert_eq!(ds.test.target_item[0], 4);
    let again = build_clicks(3, 7);
    assert_eq!(again.train, ds.train);
    assert_eq!(again.test, ds.test);
    // Over many seeds the negatives of the first group cover all other items.
    let mut seen = [false; 11];
    for seed in 0..200 {
        for &x in &build_clicks(3, seed).train.target_item[1..] {
            seen[x as usize] = true;
        }
    }
    assert_eq!(
        seen,
        [
            false, true, false, true, true, true, true, true, true, true, true
        ]
    );
}

#[test]
fn implicit_logs_need_two_items_and_no_true_prob() {
    let one_item = make_log(1, &[(0, 1, 0, 1.0), (0, 1, 5, 1.0)], true);
    let e = build(
        one_item,
        &ModelConfig::default(),
        &DataConfig::default(),
        "x",
    )
    .unwrap_err();
    assert_contains(&e.to_string(), &["cannot sample negatives", "1 item"]);

    let mut log = click_log();
    log.true_prob = Some(vec![0.5; 4]);
    let e = build(log, &ModelConfig::default(), &DataConfig::default(), "x").unwrap_err();
    assert_contains(&e.to_string(), &["true_prob", "implicit"]);
}

#[test]
fn true_prob_is_carried_for_explicit_logs() {
    let rows = [
        (0, 1, 0, 1.0),
        (0, 2, 1, 0.0),
        (0, 3, 2, 1.0),
        (0, 4, 3, 0.0),
    ];
    let mut log = make_log(4, &rows, false);
    log.true_prob = Some(vec![0.1, 0.2, 0.3, 0.4]);
    let ds = build(log, &ModelConfig::default(), &DataConfig::default(), "p").unwrap();
    assert_eq!(ds.train.true_prob, Some(vec![0.2]));
    assert_eq!(ds.valid.true_prob, Some(vec![0.3]));
    assert_eq!(ds.test.true_prob, Some(vec![0.4]));
    assert_eq!(ds.test.label, [0.0]);
}

// ---------------------------------------------------------------------------------------
// MovieLens-100k (spec section 5 reference counts)
// ---------------------------------------------------------------------------------------

#[test]
fn movielens_100k_gives_the_reference_sample_counts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/ml-100k");
    if !dir.join("ml-100k.inter").exists() {
        if std::env::var("BST_SKIP_ML100K").as_deref() == Ok("1") {
            eprintln!(
                "skipped: {} is missing and BST_SKIP_ML100K=1",
                dir.display()
            );
            return;
        }
        panic!(
            "{} is missing: run scripts/fetch-data.sh (or set BST_SKIP_ML100K=1 to skip)",
            dir.join("ml-100k.inter").display()
        );
    }
    let data = DataConfig::default();
    let log = recbole::load(&dir, &data).unwrap();
    assert_eq!(log.interactions.len(), 100_000);
    assert_eq!(log.vocab.user_ids.len(), 943);
    assert_eq!(log.vocab.n_items(), 1683);
    let ds = build(log, &ModelConfig::default(), &data, "ml-100k").unwrap();
    let names: Vec<&str> = ds.vocab.fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "user_id",
            "age",
            "gender",
            "occupation",
            "zip_code",
            "hour",
            "weekday"
        ]
    );
    assert_eq!(
        (ds.train.len(), ds.valid.len(), ds.test.len()),
        (80_065, 9_496, 9_496)
    );
    let rate = ds.test.positive_rate();
    assert!((rate - 0.471).abs() <= 0.0005, "test positive rate {rate}");
}
