//! Checkpoints (spec section 3): one safetensors file of f32 tensors named and shaped as
//! the parameter table ([`ParamLayout`]) says, so `safetensors.torch.load_file` gives a
//! PyTorch `state_dict`.
//!
//! Tensors:
//! - `<name>`: every parameter of the table (`emb.item.weight`, `blocks.0.qkv.weight`, ...);
//! - `optim.adam.m.<name>`, `optim.adam.v.<name>` (Adam) or `optim.adagrad.sum.<name>`
//!   (Adagrad): the optimiser state of each parameter, same shape (latest checkpoints only);
//! - `best.<name>`: the parameters of the best epoch so far (latest checkpoints only, once
//!   an epoch has ended), so one atomic file holds everything a resumed run needs.
//!
//! Metadata (all strings; JSON where structured):
//! - `format` = `pt`, `bst.version` = `1`;
//! - `bst.config`: the model config; `bst.train_config`, `bst.data_config`: the rest of the
//!   run's config; `bst.data_source`: the data it was trained on (`synthetic`,
//!   `recbole:FOLDER`, ...);
//! - `bst.vocab`: the vocabularies (item ids, item categories, category names, user ids,
//!   and the other-feature fields with their names, sizes, offsets and tokens) as JSON,
//!   or, when that JSON is over [`VOCAB_IN_HEADER_MAX`] bytes, the string
//!   `tensor:meta.vocab`: the JSON is then the `U8` tensor `meta.vocab` (spec section 3,
//!   "Vocabularies at scale"; safetensors refuses headers over 100 MB);
//! - `bst.progress`: epoch, step within the epoch, best epoch and validation AUC so far,
//!   the per-epoch reports, the shuffling seed and a fingerprint of the training samples;
//! - `bst.optimizer` and `bst.optim_steps`: the optimiser kind and update count (with the
//!   `optim.` tensors);
//! - `bst.checksum`: a hash of every tensor's name and bytes, to catch corrupted data.
//!
//! Files are written atomically: a temporary file in the same folder, written and synced,
//! renamed over the old one, then the folder synced. A reader sees the old file or the new
//! one, never a mix, even when the writer is killed.

use crate::backend::CpuBackend;
use crate::config::{Config, DataConfig, ModelConfig, Optimizer as Kind, TrainConfig};
use crate::data::Vocab;
use crate::hash::Fnv1a;
use crate::model::Model;
use crate::optim::{OptimRef, OptimSnapshot, OptimState};
use crate::params::ParamLayout;
use crate::run_state::{BestParams, Progress, Resume, Save, Snapshot};
use safetensors::tensor::{Dtype, Metadata, SafeTensorError};
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use stream::{Bytes, Tensor};

mod stream;

/// Where checkpoints go. [`RunCheckpointer`] writes them into a run
/// folder; tests may keep them in memory.
pub trait Checkpointer {
    /// Saves `snapshot` as the checkpoint of `kind`.
    fn save(&mut self, kind: Save, snapshot: &Snapshot) -> Result<(), CheckpointError>;

    /// Whether the parameters of the best checkpoint saved last can be read back
    /// ([`Checkpointer::read_best`]) and copied into later latest checkpoints
    /// ([`BestParams::Kept`]), so the training loop keeps no copy of them in memory.
    fn keeps_best(&self) -> bool {
        false
    }

    /// The parameters of the best checkpoint saved last, of the best epoch `best_epoch`.
    fn read_best(&self, best_epoch: usize) -> Result<Vec<f32>, CheckpointError> {
        Err(CheckpointError::NoState {
            path: PathBuf::new(),
            detail: format!("keeps no best parameters (of epoch {best_epoch})"),
        })
    }
}

/// File name of the latest checkpoint in a run folder (the one to resume from).
pub const LATEST: &str = "checkpoint.safetensors";
/// File name of the best model in a run folder (the one to evaluate and serve).
pub const BEST: &str = "best.safetensors";
/// `bst.version` of the files this code writes and reads.
pub const VERSION: &str = "1";
/// The largest vocabulary JSON kept in the header as `bst.vocab`; a larger one moves into
/// the tensor [`VOCAB_TENSOR`] (spec section 3).
pub const VOCAB_IN_HEADER_MAX: usize = 1 << 20;
/// The `U8` tensor that holds a large vocabulary's JSON.
pub const VOCAB_TENSOR: &str = "meta.vocab";
/// The value of `bst.vocab` when the vocabulary is in [`VOCAB_TENSOR`].
pub const VOCAB_IN_TENSOR: &str = "tensor:meta.vocab";

/// Config keys that may differ between a checkpoint and a resumed run: they change
/// neither the model nor the steps already taken.
const MAY_CHANGE: [&str; 2] = ["train.epochs", "train.eval_batch"];

/// Why a checkpoint could not be read, written or used. Each message names the file and
/// says what to change.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading or writing the file failed.
    #[error("{}: cannot {op}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done ("read", "rename", ...).
        op: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file ends early: a write was cut short.
    #[error("{}: truncated checkpoint: {detail} (a write was cut short; use an older checkpoint)", .path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What is missing.
        detail: String,
    },
    /// The header or, by checksum, the tensor data is damaged.
    #[error("{}: corrupted checkpoint: {detail}", .path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is damaged.
        detail: String,
    },
    /// A safetensors file that bst did not write, or not safetensors at all.
    #[error("{}: not a BST checkpoint: {detail}", .path.display())]
    Foreign {
        /// The file.
        path: PathBuf,
        /// What is missing or different.
        detail: String,
    },
    /// A tensor of the parameter table is not in the file.
    #[error("{}: tensor `{name}` is missing (expected shape {expected:?})", .path.display())]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// Its shape by the file's config and vocabularies.
        expected: Vec<usize>,
    },
    /// A tensor has another shape than the file's config and vocabularies give.
    #[error(
        "{}: tensor `{name}` has shape {found:?}, expected {expected:?} (from the file's config and vocabularies)",
        .path.display()
    )]
    Shape {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// Its shape by the file's config and vocabularies.
        expected: Vec<usize>,
        /// Its shape in the file.
        found: Vec<usize>,
    },
    /// A tensor is not f32.
    #[error("{}: tensor `{name}` is {found}, expected F32", .path.display())]
    Dtype {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// Its dtype in the file.
        found: String,
    },
    /// A tensor the parameter table does not have.
    #[error("{}: unexpected tensor `{name}`: not in the parameter table of the file's config", .path.display())]
    Unexpected {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
    },
    /// The data's vocabularies or samples differ from the checkpoint's.
    #[error(
        "the checkpoint does not match the data: {0} (build the data as the checkpoint's run did)"
    )]
    DataMismatch(String),
    /// A resumed run's config differs in more than the keys that may change.
    #[error("the checkpoint does not match the config and flags: {0}")]
    ConfigMismatch(String),
    /// The file lacks the state asked for (no optimiser state in a best model).
    #[error("{}: {detail}", .path.display())]
    NoState {
        /// The file.
        path: PathBuf,
        /// What is missing and which file has it.
        detail: String,
    },
    /// The checkpoint cannot be serialised.
    #[error("cannot write checkpoint {}: {detail}", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
}

/// What a run records beside its tensors.
#[derive(Clone, Copy, Debug)]
pub struct RunInfo<'a> {
    /// The run's whole config.
    pub config: &'a Config,
    /// The vocabularies the data was built with.
    pub vocab: &'a Vocab,
    /// The data source as given on the command line (`synthetic`, `recbole:FOLDER`, ...).
    pub data_source: &'a str,
}

/// A checkpoint read back.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// The run's config (`bst.config`, `bst.train_config`, `bst.data_config`).
    pub config: Config,
    /// The vocabularies (`bst.vocab`).
    pub vocab: Vocab,
    /// The data source the run trained on (`bst.data_source`), when recorded.
    pub data_source: Option<String>,
    /// Where the run stood (`bst.progress`).
    pub progress: Progress,
    /// The parameter arena ([`Checkpoint::layout`]).
    pub params: Vec<f32>,
    /// The optimiser state: latest checkpoints only.
    pub optim: Option<OptimSnapshot>,
    /// The best epoch's parameters: latest checkpoints only, once an epoch has ended.
    pub best_params: Option<Vec<f32>>,
}

impl Checkpoint {
    /// Reads and checks a checkpoint: framing, metadata, every tensor's name, dtype and
    /// shape against the parameter table of the file's own config and vocabularies.
    /// Each tensor is read from the file into its arena: no buffer of the whole file.
    pub fn load(path: &Path) -> Result<Checkpoint, CheckpointError> {
        let file = std::fs::File::open(path).map_err(io_error("read", path))?;
        let (n, header) = read_header(path, &file)?;
        parse(path, &file, 8 + n, &header)
    }

    /// Writes this checkpoint to `path` (atomically).
    pub fn save(&self, path: &Path) -> Result<(), CheckpointError> {
        let info = RunInfo {
            config: &self.config,
            vocab: &self.vocab,
            data_source: self.data_source.as_deref().unwrap_or(""),
        };
        let snap = Snapshot {
            progress: &self.progress,
            params: &self.params,
            optim: self.optim.as_ref().map(OptimRef::from),
            best_params: self.best_params.as_deref().into(),
        };
        write(path, &info, &snap, None)
    }

    /// The parameter table of this checkpoint's config and vocabularies.
    pub fn layout(&self) -> ParamLayout {
        ParamLayout::new(&self.config.model, self.vocab.sizes())
    }

    /// A CPU backend holding this checkpoint's parameters (for evaluation and scoring).
    pub fn cpu_backend(&self) -> CpuBackend {
        let model = Model::new(&self.config.model, self.vocab.sizes());
        CpuBackend::with_params(&self.config, model, self.params.clone())
    }

    /// Refuses data whose vocabularies differ from the checkpoint's: the same raw ids must
    /// map to the same rows of the embedding tables.
    pub fn check_vocab(&self, data: &Vocab) -> Result<(), CheckpointError> {
        match self.vocab.first_difference(data) {
            None => Ok(()),
            Some(d) => Err(CheckpointError::DataMismatch(d)),
        }
    }

    /// Refuses a requested config (file and flags) that differs from the checkpoint's in
    /// anything but `train.epochs` and `train.eval_batch`; lists every difference.
    pub fn check_config(&self, requested: &Config) -> Result<(), CheckpointError> {
        let a = serde_json::to_value(&self.config).expect("config serialises");
        let b = serde_json::to_value(requested).expect("config serialises");
        let mut diffs = Vec::new();
        json_diff("", &a, &b, &mut diffs);
        diffs.retain(|(key, _)| !MAY_CHANGE.contains(&key.as_str()));
        if diffs.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = diffs.into_iter().map(|(_, d)| d).collect();
        Err(CheckpointError::ConfigMismatch(list.join("; ")))
    }

    /// The state to continue training from. Needs the optimiser state of a latest
    /// checkpoint (`checkpoint.safetensors`, not `best.safetensors`).
    pub fn into_resume(self, path: &Path) -> Result<Resume, CheckpointError> {
        let Some(optim) = self.optim else {
            return Err(CheckpointError::NoState {
                path: path.to_path_buf(),
                detail: format!(
                    "holds no optimiser state, so training cannot resume from it \
                     (resume from a run folder's {LATEST}, not {BEST})"
                ),
            });
        };
        Ok(Resume {
            progress: self.progress,
            params: self.params,
            optim,
            best_params: self.best_params,
        })
    }
}

/// `(key, message)` for every leaf where `a` (the checkpoint) and `b` (requested) differ.
fn json_diff(
    key: &str,
    a: &serde_json::Value,
    b: &serde_json::Value,
    out: &mut Vec<(String, String)>,
) {
    use serde_json::Value::Object;
    if let (Object(ma), Object(mb)) = (a, b) {
        let keys: BTreeSet<&String> = ma.keys().chain(mb.keys()).collect();
        for k in keys {
            let null = serde_json::Value::Null;
            let sub = if key.is_empty() {
                k.clone()
            } else {
                format!("{key}.{k}")
            };
            json_diff(
                &sub,
                ma.get(k).unwrap_or(&null),
                mb.get(k).unwrap_or(&null),
                out,
            );
        }
    } else if a != b {
        out.push((
            key.to_string(),
            format!("{key} is {a} in the checkpoint but {b} in the request"),
        ));
    }
}

/// Saves checkpoints into a run folder: [`LATEST`] and [`BEST`].
pub struct RunCheckpointer<'a> {
    /// The run folder.
    pub dir: PathBuf,
    /// What every checkpoint of the run records beside its tensors.
    pub info: RunInfo<'a>,
}

impl<'a> RunCheckpointer<'a> {
    /// Saves into `dir` (created if missing when the first checkpoint is written).
    pub fn new(dir: &Path, info: RunInfo<'a>) -> RunCheckpointer<'a> {
        RunCheckpointer {
            dir: dir.to_path_buf(),
            info,
        }
    }
    /// The file of `kind` in the run folder ([`LATEST`] or [`BEST`]).
    pub fn path(&self, kind: Save) -> PathBuf {
        self.dir.join(match kind {
            Save::Latest => LATEST,
            Save::Best => BEST,
        })
    }
}

impl Checkpointer for RunCheckpointer<'_> {
    fn save(&mut self, kind: Save, snapshot: &Snapshot) -> Result<(), CheckpointError> {
        let best = self.path(Save::Best);
        write(&self.path(kind), &self.info, snapshot, Some(&best))
    }

    /// The best parameters stay in [`BEST`] only.
    fn keeps_best(&self) -> bool {
        true
    }

    /// Reads the parameters of [`BEST`] tensor by tensor into one arena (no buffer of the
    /// whole file).
    fn read_best(&self, best_epoch: usize) -> Result<Vec<f32>, CheckpointError> {
        let path = self.path(Save::Best);
        let layout = ParamLayout::new(&self.info.config.model, self.info.vocab.sizes());
        let (file, ranges) = open_kept_best(&path, &layout, Some(best_epoch))?;
        let mut params = vec![0.0f32; layout.total];
        let mut buf = Vec::new();
        for (spec, (offset, len)) in layout.specs.iter().zip(ranges) {
            let out = &mut params[spec.range()];
            let mut at = 0;
            Bytes::File {
                file: &file,
                offset,
                len,
            }
            .for_each_piece(&mut buf, |piece| {
                // Pieces are whole f32s: CHUNK is a multiple of 4.
                for (o, b) in out[at..].iter_mut().zip(piece.chunks_exact(4)) {
                    *o = f32::from_le_bytes(b.try_into().expect("4 bytes"));
                }
                at += piece.len() / 4;
                Ok(())
            })
            .map_err(io_error("read", &path))?;
        }
        Ok(params)
    }
}

// ---------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------

/// Little-endian bytes of f32 values: borrowed from the arena on little-endian machines,
/// so a checkpoint costs no copy of the model.
fn f32_bytes(data: &[f32]) -> Cow<'_, [u8]> {
    #[cfg(target_endian = "little")]
    return Cow::Borrowed(bytemuck::cast_slice(data));
    #[cfg(not(target_endian = "little"))]
    Cow::Owned(data.iter().flat_map(|x| x.to_le_bytes()).collect())
}

/// Writes a checkpoint of `snap` to `path`, atomically (see the module docs).
/// `kept_best` is the best checkpoint that holds the parameters of
/// [`BestParams::Kept`] (see [`RunCheckpointer`]).
pub fn write(
    path: &Path,
    info: &RunInfo,
    snap: &Snapshot,
    kept_best: Option<&Path>,
) -> Result<(), CheckpointError> {
    let layout = ParamLayout::new(&info.config.model, info.vocab.sizes());
    let fail = |detail: String| CheckpointError::Write {
        path: path.to_path_buf(),
        detail,
    };
    let mut arenas: Vec<(String, &[f32])> = vec![(String::new(), snap.params)];
    if let Some(o) = snap.optim {
        for (name, arena) in o.state.arenas() {
            arenas.push((format!("optim.{name}."), arena));
        }
    }
    let kept_file;
    let mut tensors: Vec<Tensor> = Vec::new();
    match snap.best_params {
        BestParams::None => {}
        BestParams::Here(b) => arenas.push(("best.".into(), b)),
        BestParams::Kept => {
            let best = kept_best.ok_or_else(|| {
                fail("the best parameters are kept in a best checkpoint, but none is named".into())
            })?;
            let best_epoch = snap.progress.best.map(|b| b.epoch);
            let (file, ranges) = open_kept_best(best, &layout, best_epoch)?;
            kept_file = file;
            for (spec, (offset, len)) in layout.specs.iter().zip(ranges) {
                tensors.push(Tensor {
                    name: format!("best.{}", spec.name),
                    dtype: Dtype::F32,
                    shape: spec.shape.clone(),
                    bytes: Bytes::File {
                        file: &kept_file,
                        offset,
                        len,
                    },
                });
            }
        }
    }
    for (prefix, arena) in arenas {
        if arena.len() != layout.total {
            return Err(fail(format!(
                "the `{prefix}` arena holds {} values, the model has {}",
                arena.len(),
                layout.total
            )));
        }
        for spec in &layout.specs {
            tensors.push(Tensor {
                name: format!("{prefix}{}", spec.name),
                dtype: Dtype::F32,
                shape: spec.shape.clone(),
                bytes: Bytes::Memory(f32_bytes(&arena[spec.range()])),
            });
        }
    }
    let vocab = json(info.vocab);
    let vocab = if vocab.len() > VOCAB_IN_HEADER_MAX {
        tensors.push(Tensor {
            name: VOCAB_TENSOR.into(),
            dtype: Dtype::U8,
            shape: vec![vocab.len()],
            bytes: Bytes::Memory(Cow::Owned(vocab.into_bytes())),
        });
        VOCAB_IN_TENSOR.to_string()
    } else {
        vocab
    };
    tensors.sort_by(|a, b| a.name.cmp(&b.name));

    let mut meta: HashMap<String, String> = HashMap::new();
    meta.insert("format".into(), "pt".into());
    meta.insert("bst.version".into(), VERSION.into());
    meta.insert("bst.config".into(), json(&info.config.model));
    meta.insert("bst.train_config".into(), json(&info.config.train));
    meta.insert("bst.data_config".into(), json(&info.config.data));
    meta.insert("bst.data_source".into(), info.data_source.into());
    meta.insert("bst.vocab".into(), vocab);
    meta.insert("bst.progress".into(), json(snap.progress));
    if let Some(o) = snap.optim {
        meta.insert("bst.optimizer".into(), kind_name(o.state.kind()).into());
        meta.insert("bst.optim_steps".into(), o.steps.to_string());
    }
    let sum =
        checksum(&tensors).map_err(|e| fail(format!("cannot read the best parameters: {e}")))?;
    meta.insert("bst.checksum".into(), format!("{sum:016x}"));

    let header = stream::order_and_header(&mut tensors, meta).map_err(|e| match e {
        SafeTensorError::HeaderTooLarge => fail(
            "the metadata (mostly the vocabularies) exceeds safetensors' 100 MB header limit"
                .into(),
        ),
        e => fail(e.to_string()),
    })?;
    // Streamed: the header, then each tensor's bytes, through a buffered writer into the
    // temporary file, so the file is never built in memory.
    let (tmp, dir) = temp_path(path);
    let file = std::fs::File::create(&tmp).map_err(io_error("create", &tmp))?;
    stream::write_file(file, &header, &tensors).map_err(io_error("write", &tmp))?;
    sync_and_rename(&tmp, path, &dir)
}

/// Opens the best checkpoint at `path` to copy its parameters from: checks that it is a
/// whole safetensors file of the epoch `best_epoch` (its `bst.progress`) with every tensor
/// of `layout` as F32 of its shape, and returns the file and, per spec of the layout, the
/// byte range (offset in the file, length) of its tensor.
fn open_kept_best(
    path: &Path,
    layout: &ParamLayout,
    best_epoch: Option<usize>,
) -> Result<(std::fs::File, Vec<(u64, usize)>), CheckpointError> {
    let corrupt = |detail: String| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        detail: format!("as the run's best checkpoint: {detail}"),
    };
    let file = std::fs::File::open(path).map_err(io_error("open", path))?;
    let (n, header) = read_header(path, &file)?;
    if let Some(sum) = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get("bst.checksum"))
    {
        let mut all: Vec<(String, &safetensors::tensor::TensorInfo)> =
            header.tensors().into_iter().collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let tensors: Vec<Tensor> = all
            .into_iter()
            .map(|(name, t)| Tensor {
                name,
                dtype: t.dtype,
                shape: t.shape.clone(),
                bytes: Bytes::File {
                    file: &file,
                    offset: 8 + n + t.data_offsets.0 as u64,
                    len: t.data_offsets.1 - t.data_offsets.0,
                },
            })
            .collect();
        let found = format!(
            "{:016x}",
            checksum(&tensors).map_err(io_error("read", path))?
        );
        if &found != sum {
            return Err(corrupt(format!(
                "the tensor data does not match its checksum ({found}, recorded {sum})"
            )));
        }
    }
    let progress: Option<Progress> = header
        .metadata()
        .as_ref()
        .and_then(|m| serde_json::from_str(m.get("bst.progress")?).ok());
    let epoch = progress.and_then(|p| p.best).map(|b| b.epoch);
    if epoch.is_none() || epoch != best_epoch {
        return Err(corrupt(format!(
            "it holds the best epoch {epoch:?}, the run's best is epoch {best_epoch:?}"
        )));
    }
    let mut ranges = Vec::with_capacity(layout.specs.len());
    for spec in &layout.specs {
        match header.info(&spec.name) {
            Some(t) if t.dtype == Dtype::F32 && t.shape == spec.shape => {
                let (start, end) = t.data_offsets;
                ranges.push((8 + n + start as u64, end - start));
            }
            _ => {
                return Err(corrupt(format!(
                    "it has no F32 tensor `{}` of shape {:?}",
                    spec.name, spec.shape
                )));
            }
        }
    }
    Ok((file, ranges))
}

/// The temporary file beside `path` that [`write_atomic`] and [`write`] fill, and its folder.
fn temp_path(path: &Path) -> (PathBuf, PathBuf) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkpoint".into());
    // Unique per process and call, so two writers of one path never share a temporary
    // file (each renames its own; the last rename wins whole).
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    (
        dir.join(format!(".{name}.{}.{n}.tmp", std::process::id())),
        dir,
    )
}

fn io_error(op: &'static str, p: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError {
    let p = p.to_path_buf();
    move |source| CheckpointError::Io {
        path: p,
        op,
        source,
    }
}

/// Syncs the written `tmp`, renames it over `path`, then syncs the folder so the rename
/// itself is durable.
fn sync_and_rename(tmp: &Path, path: &Path, dir: &Path) -> Result<(), CheckpointError> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(io_error("sync", tmp))?;
    std::fs::rename(tmp, path).map_err(io_error("rename into place", path))?;
    #[cfg(unix)]
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("sync the folder of", path))?;
    Ok(())
}

/// Compact JSON of a metadata value.
fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("metadata serialises")
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Adam => "adam",
        Kind::Adagrad => "adagrad",
    }
}

/// A 64-bit hash of tensors' names and bytes (sorted by name): FNV-1a over 8-byte words,
/// each name and each tensor's bytes followed by its length.
fn checksum(tensors: &[Tensor]) -> std::io::Result<u64> {
    let mut h = Fnv1a::new();
    let mut buf = Vec::new();
    for t in tensors {
        h.words_le(t.name.as_bytes());
        h.word(t.name.len() as u64);
        // Pieces are whole words but for the last one.
        t.bytes.for_each_piece(&mut buf, |piece| {
            h.words_le(piece);
            Ok(())
        })?;
        h.word(t.bytes.len() as u64);
    }
    Ok(h.finish())
}

/// Writes `bytes` to `path` so that a reader sees the old or the new file, never a mix:
/// a temporary file in the same folder, written and synced, renamed over `path`, then the
/// folder synced so the rename itself is durable.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let (tmp, dir) = temp_path(path);
    {
        let mut f = std::fs::File::create(&tmp).map_err(io_error("create", &tmp))?;
        f.write_all(bytes).map_err(io_error("write", &tmp))?;
    }
    sync_and_rename(&tmp, path, &dir)
}

// ---------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------

/// The largest header safetensors accepts.
const MAX_HEADER: u64 = stream::MAX_HEADER as u64;

/// Reads a checkpoint's metadata and tensors from `file`, whose tensor data start at
/// byte `data_start`, as `header` says.
fn parse(
    path: &Path,
    file: &std::fs::File,
    data_start: u64,
    header: &Metadata,
) -> Result<Checkpoint, CheckpointError> {
    let p = || path.to_path_buf();
    let infos = header.tensors();
    let names: BTreeSet<String> = infos.keys().cloned().collect();
    // The tensor `name`: dtype, shape and where its bytes are.
    let tensor = |name: &str| {
        infos.get(name).map(|t| Tensor {
            name: name.to_string(),
            dtype: t.dtype,
            shape: t.shape.clone(),
            bytes: Bytes::File {
                file,
                offset: data_start + t.data_offsets.0 as u64,
                len: t.data_offsets.1 - t.data_offsets.0,
            },
        })
    };
    let foreign = |detail: String| CheckpointError::Foreign { path: p(), detail };
    let empty = HashMap::new();
    let meta = header.metadata().as_ref().unwrap_or(&empty);
    if !meta.contains_key("bst.config") {
        let some: Vec<&str> = names.iter().take(4).map(String::as_str).collect();
        return Err(foreign(format!(
            "it has no `bst.config` metadata (its {} tensors start {:?})",
            names.len(),
            some
        )));
    }
    let get = |key: &str| -> Result<&str, CheckpointError> {
        meta.get(key)
            .map(String::as_str)
            .ok_or_else(|| foreign(format!("it has `bst.config` but no `{key}` metadata")))
    };
    let corrupt = |detail: String| CheckpointError::Corrupt { path: p(), detail };
    fn from_json<T: serde::de::DeserializeOwned>(
        key: &str,
        text: &str,
        corrupt: &dyn Fn(String) -> CheckpointError,
    ) -> Result<T, CheckpointError> {
        serde_json::from_str(text).map_err(|e| corrupt(format!("metadata `{key}`: {e}")))
    }
    let version = get("bst.version")?;
    if version != VERSION {
        return Err(foreign(format!(
            "bst.version is {version}; this build reads version {VERSION}"
        )));
    }
    let model: ModelConfig = from_json(
        "bst.config",
        &with_legacy_defaults(get("bst.config")?, LEGACY_MODEL_KEYS),
        &corrupt,
    )?;
    let train: TrainConfig = from_json(
        "bst.train_config",
        &with_legacy_defaults(
            &with_legacy_adam_lr(get("bst.train_config")?),
            LEGACY_TRAIN_KEYS,
        ),
        &corrupt,
    )?;
    let data: DataConfig = from_json("bst.data_config", get("bst.data_config")?, &corrupt)?;
    let vocab: Vocab = match get("bst.vocab")? {
        VOCAB_IN_TENSOR => {
            let text = vocab_tensor(tensor(VOCAB_TENSOR))
                .map_err(|d| corrupt(format!("metadata `bst.vocab`: {d}")))?;
            from_json("bst.vocab (tensor meta.vocab)", &text, &corrupt)?
        }
        text => from_json("bst.vocab", text, &corrupt)?,
    };
    let progress: Progress = from_json("bst.progress", get("bst.progress")?, &corrupt)?;
    let config = Config { model, train, data };
    config
        .validate()
        .map_err(|e| corrupt(format!("metadata `bst.config`: {e}")))?;
    check_vocab_shape(&vocab).map_err(|d| corrupt(format!("metadata `bst.vocab`: {d}")))?;
    if let Some(sum) = meta.get("bst.checksum") {
        let named: Vec<Tensor> = names.iter().filter_map(|n| tensor(n)).collect();
        let found = checksum(&named).map_err(io_error("read", path))?;
        let found = format!("{found:016x}");
        if &found != sum {
            return Err(corrupt(format!(
                "the tensor data does not match its checksum ({found}, recorded {sum}); \
                 a file rewritten by another tool must drop `bst.checksum`"
            )));
        }
    }

    let layout = ParamLayout::new(&config.model, vocab.sizes());
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut arena = |prefix: &str| -> Result<Vec<f32>, CheckpointError> {
        let mut out = vec![0.0f32; layout.total];
        for spec in &layout.specs {
            let name = format!("{prefix}{}", spec.name);
            let t = tensor(&name).ok_or_else(|| CheckpointError::MissingTensor {
                path: p(),
                name: name.clone(),
                expected: spec.shape.clone(),
            })?;
            if t.dtype != Dtype::F32 {
                return Err(CheckpointError::Dtype {
                    path: p(),
                    name,
                    found: t.dtype.to_string(),
                });
            }
            if t.shape != spec.shape {
                return Err(CheckpointError::Shape {
                    path: p(),
                    name,
                    expected: spec.shape.clone(),
                    found: t.shape,
                });
            }
            read_f32s(&t.bytes, &mut out[spec.range()]).map_err(io_error("read", path))?;
            seen.insert(name);
        }
        Ok(out)
    };
    let params = arena("")?;
    let has = |prefix: &str| names.iter().any(|n| n.starts_with(prefix));
    let optim = match meta.get("bst.optimizer").map(String::as_str) {
        None if has("optim.") => {
            return Err(corrupt(
                "it has `optim.` tensors but no `bst.optimizer` metadata".into(),
            ));
        }
        None => None,
        Some(kind) => {
            let kind: Kind = kind
                .parse()
                .map_err(|e| corrupt(format!("metadata `bst.optimizer`: {e}")))?;
            let steps: u64 = get("bst.optim_steps")?
                .parse()
                .map_err(|e| corrupt(format!("metadata `bst.optim_steps`: {e}")))?;
            let arenas = OptimState::arena_names(kind)
                .iter()
                .map(|a| arena(&format!("optim.{a}.")))
                .collect::<Result<Vec<_>, _>>()?;
            Some(OptimSnapshot {
                steps,
                state: OptimState::from_arenas(kind, arenas),
            })
        }
    };
    let best_params = if has("best.") {
        Some(arena("best.")?)
    } else {
        None
    };
    // `meta.` tensors are data, not weights (spec section 3); any other is unexpected.
    let not_seen = |n: &&String| !seen.contains(*n) && !n.starts_with("meta.");
    if let Some(name) = names.iter().find(not_seen) {
        return Err(CheckpointError::Unexpected {
            path: p(),
            name: name.clone(),
        });
    }
    Ok(Checkpoint {
        config,
        vocab,
        data_source: meta
            .get("bst.data_source")
            .filter(|s| !s.is_empty())
            .cloned(),
        progress,
        params,
        optim,
        best_params,
    })
}

/// The vocabulary JSON of a file whose `bst.vocab` is [`VOCAB_IN_TENSOR`], from its
/// tensor [`VOCAB_TENSOR`] (`None`: the file has none).
fn vocab_tensor(t: Option<Tensor>) -> Result<String, String> {
    let t = t.ok_or_else(|| {
        format!("it is `{VOCAB_IN_TENSOR}` but the file has no tensor `{VOCAB_TENSOR}`")
    })?;
    if t.dtype != Dtype::U8 || t.shape.len() != 1 {
        return Err(format!(
            "tensor `{VOCAB_TENSOR}` is {} of shape {:?}, expected U8 of one dimension",
            t.dtype, t.shape
        ));
    }
    let mut bytes = Vec::with_capacity(t.bytes.len());
    t.bytes
        .for_each_piece(&mut Vec::new(), |piece| {
            bytes.extend_from_slice(piece);
            Ok(())
        })
        .map_err(|e| format!("tensor `{VOCAB_TENSOR}` cannot be read: {e}"))?;
    String::from_utf8(bytes).map_err(|e| format!("tensor `{VOCAB_TENSOR}` is not UTF-8: {e}"))
}

/// Fills `out` with the little-endian f32s of `bytes` (as many as `out` holds).
fn read_f32s(bytes: &Bytes, out: &mut [f32]) -> std::io::Result<()> {
    let mut at = 0;
    // Pieces are whole f32s: a file's pieces are a multiple of 8 bytes but for the last.
    bytes.for_each_piece(&mut Vec::new(), |piece| {
        for (o, b) in out[at..].iter_mut().zip(piece.chunks_exact(4)) {
            *o = f32::from_le_bytes(b.try_into().expect("4 bytes"));
        }
        at += piece.len() / 4;
        Ok(())
    })
}

/// Reads and checks the header of `file`: its length field against the file's length
/// before parsing, so a cut-short file is reported as truncated rather than as a puzzling
/// parse error, then the JSON and the tensors' offsets. Returns the header's length and
/// the parsed header.
fn read_header(path: &Path, mut file: &std::fs::File) -> Result<(u64, Metadata), CheckpointError> {
    use std::io::Read;
    let truncated = |detail: String| CheckpointError::Truncated {
        path: path.to_path_buf(),
        detail,
    };
    let corrupt = |detail: String| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let len = file.metadata().map_err(io_error("read", path))?.len();
    if len < 8 {
        return Err(truncated(format!(
            "the file has {len} bytes, fewer than the 8 of the header length"
        )));
    }
    let mut n = [0u8; 8];
    file.read_exact(&mut n).map_err(io_error("read", path))?;
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER {
        return Err(corrupt(format!(
            "the header length field says {n} bytes, more than safetensors allows"
        )));
    }
    if 8 + n > len {
        return Err(truncated(format!(
            "the header needs {n} bytes but the file ends {} bytes into it",
            len - 8
        )));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header)
        .map_err(io_error("read", path))?;
    let header = std::str::from_utf8(&header)
        .map_err(|e| corrupt(format!("the header is not UTF-8: {e}")))?;
    let json: serde_json::Value = serde_json::from_str(header)
        .map_err(|e| corrupt(format!("the header is not valid JSON: {e}")))?;
    let serde_json::Value::Object(map) = &json else {
        return Err(corrupt("the header is not a JSON object".into()));
    };
    let end = map
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .filter_map(|(_, v)| v.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    let need = 8 + n + end;
    if len < need {
        return Err(truncated(format!(
            "the tensors need {need} bytes, the file holds {len}"
        )));
    }
    let header: Metadata =
        serde_json::from_value(json).map_err(|e| corrupt(format!("invalid header: {e}")))?;
    if 8 + n + header.data_len() as u64 != len {
        return Err(corrupt(format!(
            "{} bytes follow the last tensor",
            len - need
        )));
    }
    Ok((n, header))
}

/// The vocabulary is consistent with itself (field offsets tile the table; categories
/// are in range), so the layout built from it is sound.
fn check_vocab_shape(v: &Vocab) -> Result<(), String> {
    if v.item_cat.len() != v.item_ids.len() {
        return Err(format!(
            "{} item categories for {} items",
            v.item_cat.len(),
            v.item_ids.len()
        ));
    }
    if v.item_cat.iter().any(|&c| c as usize >= v.n_cats()) {
        return Err("an item category is outside the category vocabulary".into());
    }
    let mut offset = 0;
    for f in &v.fields {
        if f.offset != offset || (!f.tokens.is_empty() && f.tokens.len() != f.size) {
            return Err(format!(
                "field `{}` has an inconsistent offset or size",
                f.name
            ));
        }
        offset += f.size;
    }
    Ok(())
}

/// Keys added to `[model]` after checkpoints were first written, with the value that
/// reproduces how runs without them trained: an older checkpoint then loads (and resumes)
/// as the run it was, not with today's defaults.
const LEGACY_MODEL_KEYS: &[(&str, &str)] = &[
    // Embeddings were N(0, 1) before spec section 2 took FuxiCTR's N(0, 1e-4).
    ("emb_init_std", "1.0"),
    ("emb_l2", "0.0"),
];

/// The same for `[train]` (values as JSON text).
const LEGACY_TRAIN_KEYS: &[(&str, &str)] = &[
    ("weight_decay", "0.0"),
    ("lr_decay", "1.0"),
    ("emb_lr_scale", "1.0"),
    ("patience", "0"),
];

/// Adam's default learning rate was 1e-3 for every parameter before `train.emb_lr_scale`
/// existed: a `[train]` object without that key whose `lr` was left to the default (null
/// or absent) gets `lr = 1e-3` when its optimiser is Adam, so it resumes at the rate it
/// trained at rather than today's `ADAM_LR`. Anything else is passed on as it is.
fn with_legacy_adam_lr(json: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(serde_json::Value::Object(mut map)) => {
            let adam = map.get("optimizer").is_none_or(|o| o == "adam");
            let default_lr = map.get("lr").is_none_or(|lr| lr.is_null());
            if !map.contains_key("emb_lr_scale") && adam && default_lr {
                map.insert("lr".into(), serde_json::json!(1e-3));
            }
            serde_json::Value::Object(map).to_string()
        }
        _ => json.to_string(),
    }
}

/// `json` (an object) with each of `keys` that it lacks set to its legacy value; anything
/// that is not an object is passed on as it is, for the parser to refuse.
fn with_legacy_defaults(json: &str, keys: &[(&str, &str)]) -> String {
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(serde_json::Value::Object(mut map)) => {
            for (k, v) in keys {
                if !map.contains_key(*k) {
                    let v = serde_json::from_str(v).expect("legacy values are JSON");
                    map.insert((*k).into(), v);
                }
            }
            serde_json::Value::Object(map).to_string()
        }
        _ => json.to_string(),
    }
}
