//! Data: interaction logs from files or the synthetic generator, turned into BST samples
//! (spec section 1) and split per user in time order.
//!
//! The flow is `loader -> InteractionLog -> samples::build -> Dataset`.

pub mod cache;
pub mod read;
pub mod recbole;
pub mod samples;
pub mod store;
pub mod synthetic;
pub mod taobao;
pub mod taobao_gen;
pub mod times;

pub use crate::batch::{SampleIndex, SampleSource};
pub use store::{EventStore, Part, Split};
pub use times::Times;

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One user-item interaction, with dense indices.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interaction {
    /// Dense user index, 0-based (`Vocab::user_ids[user]`).
    pub user: u32,
    /// Dense item index, >= 1 (0 is padding/unknown).
    pub item: u32,
    /// Seconds since the Unix epoch (UTC).
    pub time: i64,
    /// 1 = positive. Implicit logs hold only positives (negatives are sampled later).
    pub label: f32,
}

/// One categorical field of the other-feature table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Field {
    /// The field's name (a user-file column, `user_id`, `hour` or `weekday`).
    pub name: String,
    /// Number of rows this field owns in `emb.other.weight`.
    pub size: usize,
    /// First row of this field in `emb.other.weight`.
    pub offset: usize,
    /// Token of each local index (index 0 is "unknown" for fields from files; empty for
    /// the context fields `hour` and `weekday`, whose value is the index).
    pub tokens: Vec<String>,
}

/// Vocabularies: everything needed to map raw ids to model indices and back.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Vocab {
    /// Raw item id of each item index; `item_ids[0]` is "" (padding).
    pub item_ids: Vec<String>,
    /// Category index of each item index; `item_cat[0]` = 0.
    pub item_cat: Vec<u32>,
    /// Raw category token of each category index; `cat_names[0]` is "" (unknown).
    pub cat_names: Vec<String>,
    /// Raw user id of each dense user index.
    pub user_ids: Vec<String>,
    /// The other-feature fields, in sample order (`other[f]` belongs to `fields[f]`),
    /// ending with `hour` (24) and `weekday` (7).
    pub fields: Vec<Field>,
}

impl Vocab {
    /// Rows of the item table (index 0 included).
    pub fn n_items(&self) -> usize {
        self.item_ids.len()
    }
    /// Rows of the category table (index 0 included).
    pub fn n_cats(&self) -> usize {
        self.cat_names.len()
    }
    /// Rows of the stacked other-feature table `emb.other.weight`.
    pub fn n_other(&self) -> usize {
        self.fields.iter().map(|f| f.size).sum()
    }
    /// The sizes the parameter shapes depend on.
    pub fn sizes(&self) -> crate::params::VocabSizes {
        crate::params::VocabSizes {
            items: self.n_items(),
            cats: self.n_cats(),
            other: self.n_other(),
            fields: self.fields.len(),
        }
    }

    /// The first difference from `other`, described for an error message (`self` is
    /// "the checkpoint's", `other` "the data's"), or `None` when they are equal.
    pub fn first_difference(&self, other: &Vocab) -> Option<String> {
        fn list<T: PartialEq + std::fmt::Debug>(what: &str, a: &[T], b: &[T]) -> Option<String> {
            if a.len() != b.len() {
                return Some(format!(
                    "{what}: the checkpoint has {}, the data {}",
                    a.len(),
                    b.len()
                ));
            }
            let i = a.iter().zip(b).position(|(x, y)| x != y)?;
            Some(format!(
                "{what}, entry {i}: the checkpoint has {:?}, the data {:?}",
                a[i], b[i]
            ))
        }
        let names = |v: &Vocab| -> Vec<String> {
            v.fields
                .iter()
                .map(|f| format!("{} ({} rows at {})", f.name, f.size, f.offset))
                .collect()
        };
        list("item ids", &self.item_ids, &other.item_ids)
            .or_else(|| list("item categories", &self.item_cat, &other.item_cat))
            .or_else(|| list("category names", &self.cat_names, &other.cat_names))
            .or_else(|| list("fields", &names(self), &names(other)))
            .or_else(|| {
                self.fields.iter().zip(&other.fields).find_map(|(a, b)| {
                    list(&format!("field `{}` tokens", a.name), &a.tokens, &b.tokens)
                })
            })
            .or_else(|| list("user ids", &self.user_ids, &other.user_ids))
    }
}

/// What a loader produces: interactions with dense ids, item categories, and per-user
/// feature tokens (local indices per user-file field).
#[derive(Clone, Debug, Default)]
pub struct InteractionLog {
    /// Every interaction, in file order.
    pub interactions: Vec<Interaction>,
    /// `true` for click logs: every interaction is a positive and negatives are sampled.
    pub implicit: bool,
    /// Vocabularies. `fields` here lists only the user-file fields (the user id alone
    /// when there is no user file); `samples::build` appends `hour` and `weekday`.
    pub vocab: Vocab,
    /// `user_features[u][f]`: local index into `vocab.fields[f]` for user `u`.
    pub user_features: Vec<Vec<u32>>,
    /// True click probability of each interaction, when the generator knows it.
    pub true_prob: Option<Vec<f32>>,
}

/// Samples in structure-of-arrays form (spec section 1), `n` of them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Samples {
    /// History length `L`.
    pub seq_len: usize,
    /// Other-feature fields `F`.
    pub fields: usize,
    /// (n, L), right-aligned, 0 = padding
    pub hist_item: Vec<u32>,
    /// (n, L)
    pub hist_cat: Vec<u32>,
    /// (n, L), 0 in padded slots
    pub hist_pos: Vec<u32>,
    /// (n)
    pub target_item: Vec<u32>,
    /// (n)
    pub target_cat: Vec<u32>,
    /// (n, F), global rows of emb.other.weight
    pub other: Vec<u32>,
    /// (n)
    pub label: Vec<f32>,
    /// (n), dense user index, for GAUC
    pub user: Vec<u32>,
    /// True click probability, when known (synthetic data): gives the oracle AUC.
    pub true_prob: Option<Vec<f32>>, // (n)
}

impl Samples {
    /// No samples, of history length `seq_len` and `fields` other-feature fields.
    pub fn new(seq_len: usize, fields: usize) -> Samples {
        Samples {
            seq_len,
            fields,
            ..Default::default()
        }
    }
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.label.len()
    }
    /// No samples.
    pub fn is_empty(&self) -> bool {
        self.label.is_empty()
    }
    /// A 64-bit FNV-1a hash of every sample row, to tell whether two runs saw the same
    /// data (a resumed run checks it against its checkpoint).
    pub fn fingerprint(&self) -> u64 {
        let mut h = crate::hash::Fnv1a::new();
        let mut eat = |x: u32| h.bytes(&x.to_le_bytes());
        eat(self.seq_len as u32);
        eat(self.fields as u32);
        for part in [
            &self.hist_item,
            &self.hist_cat,
            &self.hist_pos,
            &self.target_item,
            &self.target_cat,
            &self.other,
            &self.user,
        ] {
            eat(part.len() as u32);
            part.iter().for_each(|&x| eat(x));
        }
        self.label.iter().for_each(|y| eat(y.to_bits()));
        h.finish()
    }

    /// Fraction of positive labels.
    pub fn positive_rate(&self) -> f64 {
        self.label.iter().map(|&y| y as f64).sum::<f64>() / self.len().max(1) as f64
    }
}

/// Train, validation and test samples with their vocabularies: three [`Split`]s of one
/// compact [`EventStore`]; a batch's rows are assembled when it is gathered.
#[derive(Clone, Debug, Default)]
pub struct Dataset {
    /// The data's name, for run folders (`synthetic`, `ml-100k`, ...).
    pub name: String,
    /// The vocabularies.
    pub vocab: Vocab,
    /// Training samples.
    pub train: Split,
    /// Validation samples (model selection).
    pub valid: Split,
    /// Test samples (the reported metrics).
    pub test: Split,
}

/// A data error that says which file and line, and what is wrong there.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A whole file is wrong (missing, unreadable, a missing column).
    #[error("{path}: {msg}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to change.
        msg: String,
    },
    /// One line is wrong.
    #[error("{path}:{line}: {msg}")]
    Line {
        /// The file.
        path: PathBuf,
        /// The line, 1-based.
        line: usize,
        /// What is wrong and what to change.
        msg: String,
    },
    /// Anything else (a bad data spec, too little data).
    #[error("{0}")]
    Other(String),
}

/// Where the samples come from, as given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataSource {
    /// The built-in synthetic world.
    Synthetic,
    /// RecBole atomic files in folder `NAME` (`NAME.inter`, optional `.item` and `.user`).
    Recbole(PathBuf),
    /// A Taobao UserBehavior CSV file.
    Taobao(PathBuf),
}

impl std::str::FromStr for DataSource {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        match s.split_once(':') {
            _ if s == "synthetic" => Ok(DataSource::Synthetic),
            Some(("recbole", dir)) if !dir.is_empty() => Ok(DataSource::Recbole(dir.into())),
            Some(("taobao", file)) if !file.is_empty() => Ok(DataSource::Taobao(file.into())),
            _ => Err(DataError::Other(format!(
                "unknown data source `{s}`: use synthetic, recbole:FOLDER or taobao:FILE"
            ))),
        }
    }
}

impl std::fmt::Display for DataSource {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            DataSource::Synthetic => write!(f, "synthetic"),
            DataSource::Recbole(p) => write!(f, "recbole:{}", p.display()),
            DataSource::Taobao(p) => write!(f, "taobao:{}", p.display()),
        }
    }
}

/// Loads a source and builds its train, validation and test samples (no cache).
pub fn load(src: &DataSource, cfg: &crate::config::Config) -> Result<Dataset, DataError> {
    load_cached(src, cfg, None, &mut |_| {})
}

/// [`load`], keeping a Taobao file's parsed store in the cache folder `cache` (see
/// [`cache`]) and reading it from there when it is the file's; `note` gets a one-line note
/// when a cache is rebuilt (stale or damaged) or cannot be written.
pub fn load_cached(
    src: &DataSource,
    cfg: &crate::config::Config,
    cache: Option<&std::path::Path>,
    note: &mut dyn FnMut(String),
) -> Result<Dataset, DataError> {
    if let DataSource::Taobao(file) = src {
        return load_taobao(file, cfg, cache, note);
    }
    let (log, name) = match src {
        DataSource::Synthetic => {
            let spec = synthetic::SyntheticSpec::new(
                cfg.data.synthetic_users,
                cfg.model.seq_len,
                cfg.data.seed,
            );
            (synthetic::generate(&spec), "synthetic".to_string())
        }
        DataSource::Recbole(dir) => (recbole::load(dir, &cfg.data)?, dir_name(dir)),
        DataSource::Taobao(file) => (taobao::load(file, &cfg.data)?, dir_name(file)),
    };
    // Refuse before allocating samples that cannot fit (a huge --seq-len, say).
    let need = crate::memory::store_need(
        log.interactions.len(),
        log.vocab.user_ids.len(),
        log.implicit,
        log.true_prob.is_some(),
        cfg,
    );
    crate::memory::check_available(vec![need])
        .map_err(|e| DataError::Other(format!("{name}: {e}")))?;
    samples::build(log, &cfg.model, &cfg.data, &name)
}

fn dir_name(p: &std::path::Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// A Taobao file: columns straight from the file (no `Interaction` per row), sorted per
/// user, or the sorted store from the cache (issue 12).
fn load_taobao(
    file: &std::path::Path,
    cfg: &crate::config::Config,
    cache_dir: Option<&std::path::Path>,
    note: &mut dyn FnMut(String),
) -> Result<Dataset, DataError> {
    let name = dir_name(file);
    let at = cache_dir.map(|dir| {
        let key = cache::SourceKey::of(file);
        (cache::file_for(dir, file), key)
    });
    if let Some((path, Ok(key))) = &at {
        match cache::read(path, key) {
            Ok(c) => {
                let mut vocab = c.vocab;
                let (fields, user_features) = read::user_id_field(&vocab.user_ids);
                vocab.fields = fields;
                let sorted = store::Sorted {
                    user_start: c.user_start,
                    item: c.item,
                    time: c.time,
                    label: None,
                    true_prob: None,
                };
                return samples::build_sorted(
                    sorted,
                    true,
                    vocab,
                    user_features,
                    &cfg.model,
                    &cfg.data,
                    &name,
                );
            }
            Err(cache::Miss::Absent) => {}
            Err(miss) => note(format!("cache {}: {miss}; rebuilding it", path.display())),
        }
    }
    let p = taobao::parse(file, taobao::BLOCK)?;
    samples::check_counts(p.user.len(), cfg.data.negatives, &name)?;
    let need = crate::memory::store_need(p.user.len(), p.vocab.user_ids.len(), true, false, cfg);
    crate::memory::check_available(vec![need])
        .map_err(|e| DataError::Other(format!("{name}: {e}")))?;
    let n_users = p.vocab.user_ids.len();
    let cols = store::Columns {
        user: p.user,
        item: p.item,
        time: p.time,
        label: None,
        true_prob: None,
    };
    let sorted = store::sort_events(cols, n_users);
    if let Some((path, Ok(key))) = &at {
        let written = cache::write(
            path,
            key,
            &p.vocab,
            &sorted.user_start,
            &sorted.item,
            &sorted.time,
        );
        if let Err(e) = written {
            note(format!("cannot write the cache {}: {e}", path.display()));
        }
    }
    samples::build_sorted(
        sorted,
        true,
        p.vocab,
        p.user_features,
        &cfg.model,
        &cfg.data,
        &name,
    )
}
