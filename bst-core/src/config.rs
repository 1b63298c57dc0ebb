//! The model and training configuration (spec section 2 defaults), read from TOML and
//! validated with errors that say what is wrong and what to change.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// How the history tokens of the last block are pooled into one vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Token `T-1` (the target), `d` wide. The default, and the paper's reading.
    Target,
    /// Token `T-1` concatenated with the mean of the valid history tokens, `2d` wide.
    Mean,
    /// All `T` tokens concatenated, `T*d` wide.
    Flatten,
}

impl std::str::FromStr for Pooling {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let names = [
            ("target", Pooling::Target),
            ("mean", Pooling::Mean),
            ("flatten", Pooling::Flatten),
        ];
        by_name("pooling", s, &names)
    }
}

/// The history position feature (spec 1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Position {
    /// `1 + min(P-2, floor(log2(1 + gap_seconds)))`: the paper's time-gap feature.
    Timegap,
    /// `1 + k` for the k-th most recent history item, for data without times.
    Ordinal,
}

/// The optimiser of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    /// Adam (PyTorch defaults, betas 0.9, 0.999, eps 1e-8).
    Adam,
    /// Adagrad, the paper's (eps 1e-10).
    Adagrad,
}

impl std::str::FromStr for Optimizer {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        by_name(
            "optimizer",
            s,
            &[("adam", Optimizer::Adam), ("adagrad", Optimizer::Adagrad)],
        )
    }
}

/// The value named `s` among `names` (spelled as in a config file), for a flag; an
/// unknown name is refused with the list of known ones.
fn by_name<T: Copy>(what: &str, s: &str, names: &[(&str, T)]) -> Result<T, ConfigError> {
    if let Some(&(_, value)) = names.iter().find(|(name, _)| *name == s) {
        return Ok(value);
    }
    let known: Vec<&str> = names.iter().map(|(name, _)| *name).collect();
    Err(ConfigError::Invalid(format!(
        "unknown {what} `{s}`: use one of {}",
        known.join(", ")
    )))
}

/// Shapes and hyper-parameters of the network (spec section 2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// History length `L`; the model sees `T = L + 1` tokens.
    pub seq_len: usize,
    /// Width of the item embedding.
    pub d_item: usize,
    /// Width of the category embedding.
    pub d_cat: usize,
    /// Width of the position embedding; `d = d_item + d_cat + d_pos`.
    pub d_pos: usize,
    /// Number of position buckets `P`.
    pub pos_buckets: usize,
    /// How history positions are bucketed: time gaps or ordinal.
    pub position: Position,
    /// Attention heads `h` (must divide `d`).
    pub heads: usize,
    /// Hidden width of each block's feed-forward network.
    pub d_ff: usize,
    /// Number of transformer blocks `b` (0 gives the WDL baselines).
    pub blocks: usize,
    /// Width of each other-feature embedding `d_o`.
    pub d_other: usize,
    /// Hidden widths of the MLP head; a final `Linear(.., 1)` follows.
    pub mlp: Vec<usize>,
    /// How the last block's tokens become the MLP input.
    pub pooling: Pooling,
    /// Dropout probability on both residual branches of every block.
    pub dropout: f32,
    /// Negative slope of LeakyReLU: finite and at least 0.
    pub leaky_alpha: f32,
    /// Standard deviation of the embeddings' N(0, std) initialisation (spec section 2:
    /// 1e-4, as FuxiCTR and torch-rechub; PyTorch's `nn.Embedding` default is 1).
    pub emb_init_std: f32,
    /// L2 regularisation of the embedding tables: each update adds `emb_l2 * p` to the
    /// gradient of every table element (FuxiCTR's `embedding_regularizer`); with
    /// `train.sparse_embeddings`, of the rows a batch touches. Finite, at least 0.
    pub emb_l2: f32,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            seq_len: 20,
            d_item: 32,
            d_cat: 16,
            d_pos: 16,
            pos_buckets: 64,
            position: Position::Timegap,
            heads: 8,
            d_ff: 256,
            blocks: 1,
            d_other: 16,
            mlp: vec![1024, 512, 256],
            pooling: Pooling::Target,
            dropout: 0.2,
            leaky_alpha: 0.01,
            emb_init_std: 1e-4,
            emb_l2: 0.0,
        }
    }
}

impl ModelConfig {
    /// Token width `d = d_item + d_cat + d_pos`.
    pub fn d(&self) -> usize {
        self.d_item + self.d_cat + self.d_pos
    }
    /// Tokens per sample, `T = L + 1` (the target is last).
    pub fn tokens(&self) -> usize {
        self.seq_len + 1
    }
    /// Width of the pooled vector.
    pub fn pooled_width(&self) -> usize {
        match self.pooling {
            Pooling::Target => self.d(),
            Pooling::Mean => 2 * self.d(),
            Pooling::Flatten => self.tokens() * self.d(),
        }
    }

    /// Refuses inconsistent shapes (zero sizes, heads not dividing `d`, ...), naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.seq_len == 0 {
            return bad("model.seq_len (L) must be at least 1".into());
        }
        if self.d_item == 0 || self.d_cat == 0 || self.d_pos == 0 || self.d_other == 0 {
            return bad("embedding widths d_item, d_cat, d_pos, d_other must be at least 1".into());
        }
        if self.pos_buckets < 2 {
            return bad("model.pos_buckets (P) must be at least 2".into());
        }
        if self.position == Position::Ordinal && self.seq_len + 1 > self.pos_buckets {
            return bad(format!(
                "ordinal positions need pos_buckets >= seq_len + 1 = {}, got {}",
                self.seq_len + 1,
                self.pos_buckets
            ));
        }
        if self.heads == 0 || !self.d().is_multiple_of(self.heads) {
            return bad(format!(
                "d = d_item + d_cat + d_pos = {} must be divisible by heads = {}",
                self.d(),
                self.heads
            ));
        }
        if self.blocks > 0 && self.d_ff == 0 {
            return bad("model.d_ff must be at least 1".into());
        }
        if self.mlp.contains(&0) {
            return bad("model.mlp widths must be at least 1".into());
        }
        // The GPU backward takes LeakyReLU's signs from its output, which has the input's
        // signs only for a slope >= 0.
        if !(self.leaky_alpha.is_finite() && self.leaky_alpha >= 0.0) {
            return bad(format!(
                "model.leaky_alpha (LeakyReLU's slope for negative inputs) must be finite and \
                 at least 0, got {}",
                self.leaky_alpha
            ));
        }
        if !(self.emb_init_std.is_finite() && self.emb_init_std >= 0.0) {
            return bad(format!(
                "model.emb_init_std (the embeddings' initial standard deviation) must be \
                 finite and at least 0, got {}",
                self.emb_init_std
            ));
        }
        if !(self.emb_l2.is_finite() && self.emb_l2 >= 0.0) {
            return bad(format!(
                "model.emb_l2 (L2 regularisation of the embeddings) must be finite and at \
                 least 0, got {}",
                self.emb_l2
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!(
                "model.dropout must be in [0, 1), got {}",
                self.dropout
            ));
        }
        Ok(())
    }
}

/// Adam's default learning rate (`train.lr`), chosen with `ADAM_EMB_LR_SCALE` by the
/// study in the README ("Model quality"): the blocks and the MLP train best slower than
/// PyTorch's 1e-3, the embedding tables, initialised at N(0, 1e-4), much faster.
pub const ADAM_LR: f32 = 5e-4;
/// Adam's default `train.emb_lr_scale`: the tables train at `ADAM_LR * 60 = 3e-2`.
pub const ADAM_EMB_LR_SCALE: f32 = 60.0;

/// Optimisation settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Adam or Adagrad.
    pub optimizer: Optimizer,
    /// Learning rate; `None` takes the optimiser's default (Adam 1e-3, Adagrad 1e-2).
    pub lr: Option<f32>,
    /// Training batch size.
    pub batch: usize,
    /// Epochs to train.
    pub epochs: usize,
    /// Seed of initialisation, shuffling and dropout.
    pub seed: u64,
    /// Evaluation batch size (no effect on results).
    pub eval_batch: usize,
    /// Update the embedding tables lazily, only the rows a batch touches (PyTorch's
    /// `SparseAdam` and sparse Adagrad), so a step's cost does not grow with the
    /// vocabulary. Adagrad gives the same results as the dense update; Adam's moments of
    /// rows a batch does not touch do not decay (lazy Adam).
    pub sparse_embeddings: bool,
    /// L2 regularisation (PyTorch's coupled `weight_decay`) of the blocks and the MLP:
    /// each update adds `weight_decay * p` to their gradients. Finite, at least 0.
    pub weight_decay: f32,
    /// The embedding tables train at `lr * emb_lr_scale`; `None` takes the optimiser's
    /// default (Adam 60, Adagrad 1: the same rate as the rest). Finite, positive.
    pub emb_lr_scale: Option<f32>,
    /// Learning-rate schedule: epoch `e` (1-based) trains at `lr * lr_decay^(e-1)`
    /// (1: a constant rate). Finite, in (0, 1].
    pub lr_decay: f32,
    /// Early stopping: end the run when validation AUC has not improved for this many
    /// epochs in a row (0: never stop early). The best epoch is kept either way.
    pub patience: usize,
    /// Steps of an epoch: 0 trains on the whole training split each epoch; `k > 0` on
    /// the first `k` batches of the epoch's shuffled order (at most the whole split), so a
    /// log of hundreds of millions of samples is validated and checkpointed more often.
    pub epoch_steps: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            optimizer: Optimizer::Adam,
            lr: None,
            batch: 256,
            epochs: 3,
            seed: 0,
            eval_batch: 1024,
            sparse_embeddings: false,
            weight_decay: 0.0,
            lr_decay: 1.0,
            emb_lr_scale: None,
            patience: 0,
            epoch_steps: 0,
        }
    }
}

impl TrainConfig {
    /// The learning rate: `lr`, or the optimiser's default.
    pub fn lr(&self) -> f32 {
        self.lr.unwrap_or(match self.optimizer {
            Optimizer::Adam => ADAM_LR,
            Optimizer::Adagrad => 1e-2,
        })
    }

    /// The embedding tables' learning rate over `lr`: `emb_lr_scale`, or the optimiser's
    /// default.
    pub fn emb_lr_scale(&self) -> f32 {
        self.emb_lr_scale.unwrap_or(match self.optimizer {
            Optimizer::Adam => ADAM_EMB_LR_SCALE,
            Optimizer::Adagrad => 1.0,
        })
    }
    /// Training samples an epoch trains on, of a split of `n`: all of them, or
    /// `epoch_steps` batches.
    pub fn epoch_samples(&self, n: usize) -> usize {
        match self.epoch_steps {
            0 => n,
            k => n.min(k.saturating_mul(self.batch)),
        }
    }

    /// The learning rate of 1-based epoch `epoch`: `lr * lr_decay^(epoch-1)`, computed in
    /// f64 and rounded once, so every backend and a resumed run use the same f32.
    pub fn lr_at(&self, epoch: usize) -> f32 {
        let e = epoch.saturating_sub(1) as i32;
        (f64::from(self.lr()) * f64::from(self.lr_decay).powi(e)) as f32
    }

    /// Refuses zero batch sizes or epochs and a learning rate that is not positive.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.batch == 0 || self.eval_batch == 0 {
            return Err(ConfigError::Invalid(
                "train.batch and train.eval_batch must be at least 1".into(),
            ));
        }
        if self.epochs == 0 {
            return Err(ConfigError::Invalid(
                "train.epochs must be at least 1".into(),
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(ConfigError::Invalid(format!(
                "train.weight_decay must be finite and at least 0, got {}",
                self.weight_decay
            )));
        }
        if !(self.emb_lr_scale() > 0.0 && self.emb_lr_scale().is_finite()) {
            return Err(ConfigError::Invalid(format!(
                "train.emb_lr_scale (the tables' learning rate over lr) must be positive and \
                 finite, got {}",
                self.emb_lr_scale()
            )));
        }
        if !(self.lr_decay > 0.0 && self.lr_decay <= 1.0) {
            return Err(ConfigError::Invalid(format!(
                "train.lr_decay (the learning rate's factor per epoch) must be in (0, 1], got {}",
                self.lr_decay
            )));
        }
        if !(self.lr() > 0.0 && self.lr().is_finite()) {
            return Err(ConfigError::Invalid(format!(
                "train.lr must be positive, got {}",
                self.lr()
            )));
        }
        Ok(())
    }
}

/// How samples are built from an interaction log (spec 1.2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Explicit feedback: label = 1 when rating >= this.
    pub rating_threshold: f32,
    /// Implicit feedback: negatives drawn per positive.
    pub negatives: usize,
    /// Item file column holding the category; `None` searches
    /// `category`, `categories`, `class`, `genre`, `genres` in that order.
    pub category_column: Option<String>,
    /// Seed of the synthetic generator and of negative sampling.
    pub seed: u64,
    /// Synthetic data: number of users.
    pub synthetic_users: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            rating_threshold: 4.0,
            negatives: 1,
            category_column: None,
            seed: 0,
            synthetic_users: 6000,
        }
    }
}

/// Everything a run needs; written to the run folder as `config.toml`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The network (`[model]`).
    pub model: ModelConfig,
    /// Optimisation (`[train]`).
    pub train: TrainConfig,
    /// Sample building (`[data]`).
    pub data: DataConfig,
}

impl Config {
    /// The defaults, on synthetic data of `users` users (benchmarks and examples).
    pub fn synthetic(users: usize) -> Config {
        Config {
            data: DataConfig {
                synthetic_users: users,
                ..Default::default()
            },
            ..Config::default()
        }
    }

    /// Parses TOML (every key optional) and validates.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        Ok(cfg)
    }

    /// Reads, parses and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Io(format!("{}: {e}", path.display())))?;
        Config::from_toml_str(&text).map_err(|e| match e {
            ConfigError::Parse(m) => ConfigError::Parse(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// The config as TOML, every key written (readable by [`Config::from_toml_str`]).
    pub fn to_toml_string(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }

    /// Validates every table.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.model.validate()?;
        self.train.validate()
    }
}

/// A config that cannot be read or used; each message names the key or file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value out of range or inconsistent with another.
    #[error("invalid config: {0}")]
    Invalid(String),
    /// Not TOML, or an unknown key.
    #[error("cannot parse config {0}")]
    Parse(String),
    /// The file cannot be read.
    #[error("cannot read config {0}")]
    Io(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error of a config file `text` that must be refused.
    fn toml_error(text: &str) -> String {
        Config::from_toml_str(text).unwrap_err().to_string()
    }

    #[test]
    fn defaults_follow_the_spec() {
        let c = Config::default();
        assert_eq!(c.model.d(), 64);
        assert_eq!(c.model.tokens(), 21);
        assert_eq!(c.model.heads, 8);
        assert_eq!(c.train.batch, 256);
        // Adam's rates are the README study's, not the spec's 1e-3 (section 5's protocol).
        assert_eq!(c.train.lr(), ADAM_LR);
        assert_eq!(c.model.emb_init_std, 1e-4);
        c.validate().unwrap();
    }

    #[test]
    fn heads_must_divide_d() {
        let mut c = Config::default();
        c.model.heads = 5;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("divisible by heads = 5"), "{e}");
    }

    #[test]
    fn a_negative_or_nan_leaky_slope_is_refused() {
        for alpha in [-0.01, f32::NAN, f32::INFINITY] {
            let mut c = Config::default();
            c.model.leaky_alpha = alpha;
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("leaky_alpha"), "{alpha}: {e}");
        }
        let mut c = Config::default();
        c.model.leaky_alpha = 0.0;
        c.validate().unwrap();
    }

    #[test]
    fn negative_or_non_finite_init_and_regularisation_are_refused() {
        for bad in [-1e-3, f32::NAN, f32::INFINITY] {
            let mut c = Config::default();
            c.model.emb_init_std = bad;
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("model.emb_init_std"), "{bad}: {e}");
            let mut c = Config::default();
            c.model.emb_l2 = bad;
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("model.emb_l2"), "{bad}: {e}");
            let mut c = Config::default();
            c.train.weight_decay = bad;
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("train.weight_decay"), "{bad}: {e}");
        }
        let e = toml_error("[train]\npatience = -1\n");
        assert!(e.contains("patience"), "{e}");
        let c = Config::from_toml_str(
            "[model]\nemb_init_std = 1.0\nemb_l2 = 0\n[train]\nweight_decay = 0\npatience = 2\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!((c.model.emb_init_std, c.train.patience), (1.0, 2));
    }

    #[test]
    fn the_learning_rate_decays_per_epoch_and_the_factor_is_checked() {
        let mut t = TrainConfig {
            lr: Some(1e-3),
            ..TrainConfig::default()
        };
        assert_eq!((t.lr_at(1), t.lr_at(3)), (1e-3, 1e-3));
        t.lr_decay = 0.5;
        assert_eq!((t.lr_at(1), t.lr_at(2), t.lr_at(3)), (1e-3, 5e-4, 2.5e-4));
        for bad in [0.0, -0.5, 1.5, f32::NAN] {
            t.lr_decay = bad;
            let e = t.validate().unwrap_err().to_string();
            assert!(e.contains("train.lr_decay"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_tables_learning_rate_defaults_per_optimiser_and_is_checked() {
        let mut t = TrainConfig::default();
        assert_eq!((t.lr(), t.emb_lr_scale()), (ADAM_LR, ADAM_EMB_LR_SCALE));
        t.optimizer = Optimizer::Adagrad;
        assert_eq!((t.lr(), t.emb_lr_scale()), (1e-2, 1.0));
        let c = Config::from_toml_str("[train]\nemb_lr_scale = 3\n").unwrap();
        assert_eq!(c.train.emb_lr_scale(), 3.0);
        for bad in [0.0, -1.0, f32::INFINITY, f32::NAN] {
            t.emb_lr_scale = Some(bad);
            let e = t.validate().unwrap_err().to_string();
            assert!(e.contains("train.emb_lr_scale"), "{bad}: {e}");
        }
    }

    #[test]
    fn zero_history_is_refused() {
        let mut c = Config::default();
        c.model.seq_len = 0;
        assert!(c.validate().unwrap_err().to_string().contains("seq_len"));
    }

    #[test]
    fn unknown_pooling_is_refused_in_toml_and_flags() {
        let e = toml_error("[model]\npooling = \"max\"\n");
        assert!(e.contains("unknown variant `max`"), "{e}");
        let e = "max".parse::<Pooling>().unwrap_err().to_string();
        assert!(e.contains("target, mean, flatten"), "{e}");
    }

    #[test]
    fn toml_round_trip_and_partial_files() {
        let c = Config::from_toml_str("[model]\nblocks = 2\n[train]\noptimizer = \"adagrad\"\n")
            .unwrap();
        assert_eq!(c.model.blocks, 2);
        assert_eq!(c.model.heads, 8);
        assert_eq!(c.train.lr(), 1e-2);
        let back = Config::from_toml_str(&c.to_toml_string()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = toml_error("[model]\nhedas = 2\n");
        assert!(e.contains("hedas"), "{e}");
    }
}
