//! The UserBehavior-shaped generator: deterministic, read by the `taobao:FILE` loader, and
//! with the real file's proportions (behaviours, counts, days, skewed popularity, one
//! category per item) at 200,000 rows.

use bst_core::config::DataConfig;
use bst_core::data::taobao;
use bst_core::data::taobao_gen::{self, DAYS, START, TaobaoSizes, TaobaoSpec};
use std::collections::{HashMap, HashSet};

fn generate(rows: u64, seed: u64) -> (Vec<u8>, TaobaoSizes) {
    let mut out = Vec::new();
    let mut reports = Vec::new();
    let sizes = taobao_gen::write(&TaobaoSpec { rows, seed }, &mut out, &mut |k| {
        reports.push(k)
    })
    .unwrap();
    assert_eq!(
        reports.last(),
        Some(&rows),
        "the last progress report is the total"
    );
    assert!(reports.windows(2).all(|w| w[0] <= w[1]));
    (out, sizes)
}

#[test]
fn the_same_seed_gives_the_same_bytes_and_another_seed_others() {
    let (a, _) = generate(30_000, 7);
    let (b, _) = generate(30_000, 7);
    let (c, _) = generate(30_000, 8);
    assert!(a == b, "deterministic");
    assert!(a != c, "the seed matters");
    assert!(
        taobao_gen::write(
            &TaobaoSpec { rows: 0, seed: 0 },
            &mut Vec::new(),
            &mut |_| {}
        )
        .is_err()
    );
}

#[test]
fn the_loader_reads_a_generated_file() {
    let (bytes, sizes) = generate(20_000, 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gen.csv");
    std::fs::write(&path, &bytes).unwrap();
    let log = taobao::load(&path, &DataConfig::default()).expect("the loader reads it");
    let text = String::from_utf8(bytes).unwrap();
    let pv = text.lines().filter(|l| l.contains(",pv,")).count();
    assert_eq!(log.interactions.len(), pv, "one click per pv row");
    // Users and items without a pv row are not in the vocabulary: nearly all are.
    let users = log.vocab.user_ids.len() as f64 / sizes.users as f64;
    let items = (log.vocab.n_items() - 1) as f64 / sizes.items as f64;
    assert!(users > 0.9 && items > 0.85, "users {users}, items {items}");
    assert!(
        log.vocab.item_cat[1..].iter().all(|&c| c > 0),
        "every item has a category"
    );
}

#[test]
fn two_hundred_thousand_rows_have_the_real_files_proportions() {
    let rows = 200_000u64;
    let (bytes, sizes) = generate(rows, 3);
    let text = String::from_utf8(bytes).unwrap();
    let (mut users, mut items) = (HashSet::new(), HashMap::new());
    let mut cats = HashSet::new();
    let mut behaviours: HashMap<&str, u64> = HashMap::new();
    let mut per_item: HashMap<&str, u64> = HashMap::new();
    let mut last: Option<(&str, i64)> = None;
    let mut n = 0u64;
    for line in text.lines() {
        let c: Vec<&str> = line.split(',').collect();
        assert_eq!(c.len(), 5, "{line}");
        let t: i64 = c[4].parse().unwrap();
        assert!((START..START + DAYS * 86_400).contains(&t), "{line}");
        if let Some((u, t0)) = last {
            assert!(
                u != c[0] || t0 <= t,
                "each user's rows in time order: {line}"
            );
        }
        last = Some((c[0], t));
        users.insert(c[0]);
        let cat = *items.entry(c[1]).or_insert(c[2]);
        assert_eq!(cat, c[2], "item {} has one category", c[1]);
        cats.insert(c[2]);
        *behaviours.entry(c[3]).or_default() += 1;
        *per_item.entry(c[1]).or_default() += 1;
        n += 1;
    }
    assert_eq!(n, rows);
    // Counts scale with rows: 200k / 100,150,807 of the real file's.
    assert_eq!(sizes.users, 1973);
    assert_eq!(sizes.items, 8312);
    assert_eq!(sizes.categories, 19);
    assert_eq!(users.len() as u64, sizes.users, "every user appears");
    assert_eq!(items.len() as u64, sizes.items, "every item appears");
    assert_eq!(
        cats.len() as u64,
        sizes.categories,
        "every category appears"
    );
    let share = |b: &str| behaviours[b] as f64 / rows as f64;
    for (b, real) in [
        ("pv", 0.897),
        ("cart", 0.055),
        ("fav", 0.029),
        ("buy", 0.019),
    ] {
        assert!(
            (share(b) - real).abs() < 0.004,
            "{b}: {} vs {real}",
            share(b)
        );
    }
    // Skewed popularity: the top 1% of items take far more than 1% of the rows.
    let mut counts: Vec<u64> = per_item.values().copied().collect();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    let top: u64 = counts[..counts.len() / 100].iter().sum();
    let top_share = top as f64 / rows as f64;
    assert!(top_share > 0.15, "top 1% of items: {top_share:.3} of rows");
}
