//! Command-line arguments: subcommands, and the overrides shared by all of them.

use crate::device::Device;
use anyhow::Context;
use bst_core::collective::ExchangePolicy;
use bst_core::config::{Config, Optimizer, Pooling};
use bst_core::data::DataSource;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "bst-train",
    version,
    about = "Train the Behavior Sequence Transformer (BST) for CTR prediction"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Where a Taobao file's parsed store is cached (a folder), or `off`. Default:
    /// $XDG_CACHE_HOME/bst, else ~/.cache/bst. A stale or damaged cache is rebuilt.
    #[arg(long, global = true, value_name = "DIR|off")]
    pub cache: Option<String>,
}

impl Cli {
    /// The cache folder `--cache` chooses (`None`: no cache).
    pub fn cache_dir(&self) -> Option<PathBuf> {
        match self.cache.as_deref() {
            Some("off") => None,
            Some(dir) => Some(PathBuf::from(dir)),
            None => bst_core::data::cache::default_dir(),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train one model (the default when no subcommand is given).
    Train(RunArgs),
    /// Train WDL, WDL(+Seq) and BST with 1, 2 and 3 blocks on the same split, and print
    /// the paper's Table 4.
    Ablate(RunArgs),
    /// Metrics (AUC, GAUC, logloss) of a checkpoint on a split of its data.
    Eval(EvalArgs),
    /// Click probabilities of the samples of a TSV file (README: "Scoring"), one per line.
    Predict(PredictArgs),
    /// The top k of candidate items for one user's history, with their probabilities.
    Rank(RankArgs),
    /// Training, inference and scoring speed, device memory and per-kernel times, as
    /// one JSON object (README: "Benchmarks").
    Bench(BenchArgs),
    /// Write a click log shaped like Taobao's UserBehavior.csv (README: "Generated click
    /// logs"), for `--data taobao:FILE`.
    GenerateTaobao(crate::generate::GenerateArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Split {
    Train,
    Valid,
    Test,
}

#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    /// A checkpoint file (a run folder's best.safetensors or checkpoint.safetensors).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The data, rebuilt with the checkpoint's config; default: the data it was trained on.
    #[arg(long)]
    pub data: Option<String>,
    #[arg(long, value_enum, default_value = "test")]
    pub split: Split,
    /// Compute device: `auto` (a hardware GPU if there is one, else the CPU), `gpu`, `cpu`.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: Device,
}

#[derive(Args, Debug, Clone)]
pub struct PredictArgs {
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// TSV: user features, history `item@unix_time ...`, target item, target unix time
    /// (README: "Scoring"). `-` reads standard input.
    #[arg(long)]
    pub input: PathBuf,
    /// Compute device: `auto` (a hardware GPU if there is one, else the CPU), `gpu`, `cpu`.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: Device,
}

#[derive(Args, Debug, Clone)]
pub struct RankArgs {
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The user's history, oldest first: `item@unix_time item@unix_time ...`.
    #[arg(long = "user-history", default_value = "")]
    pub user_history: String,
    /// The user's features: `field=value ...` or values in the checkpoint's field order.
    #[arg(long, default_value = "")]
    pub user: String,
    /// Candidate items: a file with one id per line, a comma-separated list, or `all`.
    #[arg(long)]
    pub candidates: String,
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// Unix time of the recommendation; default: the newest history time.
    #[arg(long)]
    pub time: Option<i64>,
    /// Compute device: `auto` (a hardware GPU if there is one, else the CPU), `gpu`, `cpu`.
    /// On the GPU the top k are selected on the device.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: Device,
}

impl Default for Command {
    /// `train` with every default: what `bst-train` alone runs.
    fn default() -> Self {
        Cli::parse_from(["bst-train", "train"])
            .command
            .expect("train parses")
    }
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Data: `synthetic` (the default), `recbole:FOLDER` (RecBole atomic files) or
    /// `taobao:FILE` (UserBehavior CSV). With --resume: the checkpoint's data.
    #[arg(long)]
    pub data: Option<String>,
    /// Continue the run in this folder from its checkpoint.safetensors: the optimiser
    /// state, update count and data order included. The config comes from the checkpoint;
    /// flags may only raise --epochs (others must agree with it).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// TOML config file; flags below override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where to write the run folder (config.toml, metrics.json, checkpoints, learning
    /// curve). Default: runs/<data>-<time>, or the --resume folder.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Compute device: `auto` (a hardware GPU if there is one, else the CPU), `gpu`, `cpu`.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: Device,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub batch: Option<usize>,
    #[arg(long)]
    pub lr: Option<f32>,
    /// adam or adagrad.
    #[arg(long)]
    pub optimizer: Option<Optimizer>,
    /// Update the embedding tables lazily, only the rows each batch touches (sparse Adam /
    /// Adagrad): a step's cost then does not grow with the vocabulary.
    #[arg(long = "sparse-embeddings")]
    pub sparse_embeddings: bool,
    /// L2 regularisation of the embedding tables (`model.emb_l2`).
    #[arg(long = "emb-l2")]
    pub emb_l2: Option<f32>,
    /// L2 regularisation (coupled weight decay) of the blocks and the MLP
    /// (`train.weight_decay`).
    #[arg(long = "weight-decay")]
    pub weight_decay: Option<f32>,
    /// The embedding tables' learning rate over --lr (`train.emb_lr_scale`; default: Adam
    /// 60, Adagrad 1).
    #[arg(long = "emb-lr-scale")]
    pub emb_lr_scale: Option<f32>,
    /// Learning rate factor per epoch (`train.lr_decay`): epoch e trains at
    /// lr * lr_decay^(e-1).
    #[arg(long = "lr-decay")]
    pub lr_decay: Option<f32>,
    /// Early stopping: stop when validation AUC has not improved for this many epochs
    /// (`train.patience`; 0 never stops early).
    #[arg(long)]
    pub patience: Option<usize>,
    /// Steps of an epoch (`train.epoch_steps`; 0: the whole training split), so a huge log
    /// is validated and checkpointed every so many steps.
    #[arg(long = "epoch-steps")]
    pub epoch_steps: Option<usize>,
    /// Transformer blocks (0 gives the WDL baselines).
    #[arg(long)]
    pub blocks: Option<usize>,
    #[arg(long)]
    pub heads: Option<usize>,
    /// target, mean or flatten.
    #[arg(long)]
    pub pooling: Option<Pooling>,
    /// History length L.
    #[arg(long = "seq-len")]
    pub seq_len: Option<usize>,
    /// Seed of initialisation, shuffling and dropout (and of the synthetic data).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Synthetic data: number of users.
    #[arg(long = "synthetic-users")]
    pub synthetic_users: Option<usize>,
    /// No progress bars or progress lines (for tests).
    #[arg(long)]
    pub quiet: bool,
}

impl RunArgs {
    pub fn source(&self) -> anyhow::Result<DataSource> {
        Ok(self.data.as_deref().unwrap_or("synthetic").parse()?)
    }

    /// The config file (or defaults) with the flags applied, validated.
    pub fn config(&self) -> anyhow::Result<Config> {
        self.config_over(Config::default())
    }

    /// The config file (or `base` when there is none) with the flags applied, validated.
    pub fn config_over(&self, base: Config) -> anyhow::Result<Config> {
        let mut cfg = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => base,
        };
        let m = &mut cfg.model;
        let t = &mut cfg.train;
        macro_rules! set {
            ($dst:expr, $src:expr) => {
                if let Some(v) = $src.clone() {
                    $dst = v;
                }
            };
        }
        set!(t.epochs, self.epochs);
        set!(t.batch, self.batch);
        set!(t.optimizer, self.optimizer);
        set!(m.blocks, self.blocks);
        set!(m.heads, self.heads);
        set!(m.pooling, self.pooling);
        set!(m.seq_len, self.seq_len);
        set!(m.emb_l2, self.emb_l2);
        set!(t.weight_decay, self.weight_decay);
        set!(t.patience, self.patience);
        set!(t.epoch_steps, self.epoch_steps);
        set!(t.lr_decay, self.lr_decay);
        set!(cfg.data.synthetic_users, self.synthetic_users);
        if self.lr.is_some() {
            t.lr = self.lr;
        }
        if self.emb_lr_scale.is_some() {
            t.emb_lr_scale = self.emb_lr_scale;
        }
        if self.sparse_embeddings {
            t.sparse_embeddings = true;
        }
        if let Some(seed) = self.seed {
            t.seed = seed;
            cfg.data.seed = seed;
        }
        cfg.validate().context("check the config file and flags")?;
        Ok(cfg)
    }
}

/// `bst-train bench`'s arguments (the command itself: [`crate::bench`]).
#[derive(Args, Debug, Clone)]
// `train`'s flags that do not apply here stay out of the help (and are refused).
#[command(
    mut_arg("resume", |a| a.hide(true)),
    mut_arg("out", |a| a.hide(true)),
    mut_arg("epochs", |a| a.hide(true)),
    mut_arg("quiet", |a| a.hide(true))
)]
pub struct BenchArgs {
    /// The model, data, batch, seed and device, as for `train` (--resume, --out and
    /// --epochs do not apply).
    #[command(flatten)]
    pub run: RunArgs,
    /// Training steps timed, after the warm-up.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Untimed training steps first.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// Runs of the inference and of the scoring measurement (fewer when --max-seconds
    /// runs out, at least 3).
    #[arg(long, default_value_t = 100)]
    pub runs: usize,
    /// Candidate items scored for one user.
    #[arg(long, default_value_t = bst_benches::SCORING_CANDIDATES)]
    pub candidates: usize,
    /// Samples per inference batch; default: the config's train.eval_batch.
    #[arg(long = "eval-batch")]
    pub eval_batch: Option<usize>,
    /// Timed calls per kernel (fewer when --max-seconds runs out, at least 3).
    #[arg(long = "kernel-reps", default_value_t = 20)]
    pub kernel_reps: usize,
    /// Seconds after which a repeated measurement stops repeating (the kernels share
    /// this budget).
    #[arg(long = "max-seconds", default_value_t = 5.0)]
    pub max_seconds: f64,
    /// Leave out the per-kernel timings.
    #[arg(long = "no-kernels")]
    pub no_kernels: bool,
    /// Under mpirun: how the embedding tables' gradients go between the ranks.
    #[arg(long, value_enum, default_value = "auto")]
    pub exchange: Exchange,
    /// Under mpirun: sum the blocks' and the MLP's gradients after the backward, not
    /// while it runs (what the overlap gains; the same sums).
    #[arg(long = "no-overlap")]
    pub no_overlap: bool,
}

/// `--exchange`: how the embedding tables' gradients go between ranks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Exchange {
    /// Per table and step, whichever moves fewer bytes.
    #[default]
    Auto,
    /// The whole tables (allreduce).
    Dense,
    /// The touched rows (allgather).
    Sparse,
}

impl Exchange {
    pub fn policy(self) -> ExchangePolicy {
        match self {
            Exchange::Auto => ExchangePolicy::Auto,
            Exchange::Dense => ExchangePolicy::Dense,
            Exchange::Sparse => ExchangePolicy::Sparse,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Exchange::Auto => "auto",
            Exchange::Dense => "dense",
            Exchange::Sparse => "sparse",
        }
    }
}
