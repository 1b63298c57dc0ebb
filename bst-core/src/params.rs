//! The one table of named parameter tensors (spec section 3). It lays out a single f32
//! arena for the parameters; gradients and optimiser state reuse the same layout, so
//! optimisers are one loop and checkpoint names come from here.

use crate::config::ModelConfig;
use crate::rng::Rng;
use std::ops::Range;

/// How a tensor is initialised (PyTorch's defaults, spec section 2).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// N(0, std): embeddings (`model.emb_init_std`).
    Normal(f32),
    /// U(-bound, bound) with bound = 1/sqrt(fan_in): linear weights and biases.
    Uniform(f32),
    /// All ones: LayerNorm weights.
    Ones,
    /// All zeros: LayerNorm biases.
    Zeros,
}

/// One named tensor of the parameter arena.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    /// Checkpoint name, e.g. `blocks.0.qkv.weight`.
    pub name: String,
    /// Shape, row-major (PyTorch's).
    pub shape: Vec<usize>,
    /// First element in the arena.
    pub offset: usize,
    /// How it is initialised.
    pub init: Init,
}

impl ParamSpec {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    /// No elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Its elements' range in the arena.
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.len()
    }
}

/// Vocabulary sizes the parameter shapes depend on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VocabSizes {
    /// Rows of the item table (index 0 = padding).
    pub items: usize,
    /// Rows of the category table (index 0 = unknown).
    pub cats: usize,
    /// Rows of the stacked other-feature table.
    pub other: usize,
    /// Number of other-feature fields `F`.
    pub fields: usize,
}

/// Where each tensor of one transformer block lives in the arena.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockParams {
    /// (3d, d)
    pub qkv_w: Range<usize>,
    /// (3d)
    pub qkv_b: Range<usize>,
    /// (d, d)
    pub out_w: Range<usize>,
    /// (d)
    pub out_b: Range<usize>,
    /// (d)
    pub ln1_w: Range<usize>,
    /// (d)
    pub ln1_b: Range<usize>,
    /// (d_ff, d)
    pub ffn1_w: Range<usize>,
    /// (d_ff)
    pub ffn1_b: Range<usize>,
    /// (d, d_ff)
    pub ffn2_w: Range<usize>,
    /// (d)
    pub ffn2_b: Range<usize>,
    /// (d)
    pub ln2_w: Range<usize>,
    /// (d)
    pub ln2_b: Range<usize>,
}

/// Where each tensor lives in the arena, by role: the model indexes with this, never by name.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamIndex {
    /// (V_item, d_item)
    pub emb_item: Range<usize>,
    /// (V_cat, d_cat)
    pub emb_cat: Range<usize>,
    /// (P, d_pos)
    pub emb_pos: Range<usize>,
    /// (V_other, d_o)
    pub emb_other: Range<usize>,
    /// Per transformer block.
    pub blocks: Vec<BlockParams>,
    /// (weight (out_k, in_k), bias (out_k)) of each MLP layer; the last has out = 1.
    pub mlp: Vec<(Range<usize>, Range<usize>)>,
}

/// The table: every tensor in arena order, with its name, shape, offset and init.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamLayout {
    /// Every tensor, in arena order.
    pub specs: Vec<ParamSpec>,
    /// Elements in the arena.
    pub total: usize,
    /// The ranges by role, for the model's code.
    pub index: ParamIndex,
}

impl ParamLayout {
    /// The table of a model config with vocabularies of `v`.
    pub fn new(cfg: &ModelConfig, v: VocabSizes) -> ParamLayout {
        let mut specs = Vec::new();
        let mut total = 0;
        let mut push = |name: String, shape: Vec<usize>, init: Init| -> Range<usize> {
            let spec = ParamSpec {
                name,
                shape,
                offset: total,
                init,
            };
            total += spec.len();
            let r = spec.range();
            specs.push(spec);
            r
        };
        let linear = |fan_in: usize| Init::Uniform(1.0 / (fan_in as f32).sqrt());
        let d = cfg.d();
        let emb_item = push(
            "emb.item.weight".into(),
            vec![v.items, cfg.d_item],
            Init::Normal(cfg.emb_init_std),
        );
        let emb_cat = push(
            "emb.cat.weight".into(),
            vec![v.cats, cfg.d_cat],
            Init::Normal(cfg.emb_init_std),
        );
        let emb_pos = push(
            "emb.pos.weight".into(),
            vec![cfg.pos_buckets, cfg.d_pos],
            Init::Normal(cfg.emb_init_std),
        );
        let emb_other = push(
            "emb.other.weight".into(),
            vec![v.other, cfg.d_other],
            Init::Normal(cfg.emb_init_std),
        );
        let mut blocks = Vec::new();
        for i in 0..cfg.blocks {
            let p = |t: &str| format!("blocks.{i}.{t}");
            blocks.push(BlockParams {
                qkv_w: push(p("qkv.weight"), vec![3 * d, d], linear(d)),
                qkv_b: push(p("qkv.bias"), vec![3 * d], linear(d)),
                out_w: push(p("out.weight"), vec![d, d], linear(d)),
                out_b: push(p("out.bias"), vec![d], linear(d)),
                ln1_w: push(p("ln1.weight"), vec![d], Init::Ones),
                ln1_b: push(p("ln1.bias"), vec![d], Init::Zeros),
                ffn1_w: push(p("ffn1.weight"), vec![cfg.d_ff, d], linear(d)),
                ffn1_b: push(p("ffn1.bias"), vec![cfg.d_ff], linear(d)),
                ffn2_w: push(p("ffn2.weight"), vec![d, cfg.d_ff], linear(cfg.d_ff)),
                ffn2_b: push(p("ffn2.bias"), vec![d], linear(cfg.d_ff)),
                ln2_w: push(p("ln2.weight"), vec![d], Init::Ones),
                ln2_b: push(p("ln2.bias"), vec![d], Init::Zeros),
            });
        }
        let mut mlp = Vec::new();
        let mut fan_in = cfg.pooled_width() + v.fields * cfg.d_other;
        for (k, &out) in cfg.mlp.iter().chain(&[1]).enumerate() {
            let w = push(format!("mlp.{k}.weight"), vec![out, fan_in], linear(fan_in));
            let b = push(format!("mlp.{k}.bias"), vec![out], linear(fan_in));
            mlp.push((w, b));
            fan_in = out;
        }
        let index = ParamIndex {
            emb_item,
            emb_cat,
            emb_pos,
            emb_other,
            blocks,
            mlp,
        };
        ParamLayout {
            specs,
            total,
            index,
        }
    }

    /// The four embedding tables in arena order (item, category, position, other): each
    /// one's range and row width. They come first in the arena, one after the other.
    pub fn embedding_tables(&self) -> [(Range<usize>, usize); 4] {
        std::array::from_fn(|i| {
            let s = &self.specs[i];
            debug_assert!(s.name.starts_with("emb."), "{} is not a table", s.name);
            (s.range(), s.shape[1])
        })
    }

    /// Everything after the embedding tables: the transformer blocks and the MLP, which
    /// every step updates whole.
    pub fn dense_range(&self) -> Range<usize> {
        self.index.emb_other.end..self.total
    }

    /// The tensor named `name`.
    pub fn get(&self, name: &str) -> Option<&ParamSpec> {
        self.specs.iter().find(|s| s.name == name)
    }

    /// A fresh parameter arena, initialised from `seed`. Each tensor draws from its own
    /// stream, so adding a tensor does not change the others' initial values.
    pub fn init(&self, seed: u64) -> Vec<f32> {
        let mut arena = vec![0.0f32; self.total];
        for (k, spec) in self.specs.iter().enumerate() {
            let mut rng = Rng::new(seed).fork(k as u64 + 1);
            let dst = &mut arena[spec.range()];
            match spec.init {
                Init::Normal(std) => dst
                    .iter_mut()
                    .for_each(|x| *x = (rng.normal() * std as f64) as f32),
                Init::Uniform(bound) => dst
                    .iter_mut()
                    .for_each(|x| *x = ((2.0 * rng.uniform() - 1.0) as f32) * bound),
                Init::Ones => dst.fill(1.0),
                Init::Zeros => dst.fill(0.0),
            }
        }
        arena
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes() -> VocabSizes {
        VocabSizes {
            items: 100,
            cats: 10,
            other: 50,
            fields: 3,
        }
    }

    #[test]
    fn names_and_shapes_follow_spec_section_3() {
        let cfg = ModelConfig {
            blocks: 2,
            ..Default::default()
        };
        let l = ParamLayout::new(&cfg, sizes());
        let shape = |n: &str| {
            l.get(n)
                .unwrap_or_else(|| panic!("{n} missing"))
                .shape
                .clone()
        };
        assert_eq!(shape("emb.item.weight"), vec![100, 32]);
        assert_eq!(shape("emb.pos.weight"), vec![64, 16]);
        assert_eq!(shape("emb.other.weight"), vec![50, 16]);
        assert_eq!(shape("blocks.1.qkv.weight"), vec![192, 64]);
        assert_eq!(shape("blocks.0.ffn2.weight"), vec![64, 256]);
        assert_eq!(shape("blocks.1.ln2.bias"), vec![64]);
        assert_eq!(shape("mlp.0.weight"), vec![1024, 64 + 3 * 16]);
        assert_eq!(shape("mlp.3.weight"), vec![1, 256]);
        assert!(l.get("blocks.2.qkv.weight").is_none());
        // Tensors tile the arena without gaps.
        let mut off = 0;
        for s in &l.specs {
            assert_eq!(s.offset, off, "{}", s.name);
            off += s.len();
        }
        assert_eq!(off, l.total);
        // The tables, then the dense rest, tile the arena.
        let t = l.embedding_tables();
        assert_eq!(t[0], (0..100 * 32, 32));
        assert_eq!(t[3].1, 16);
        for k in 1..4 {
            assert_eq!(t[k].0.start, t[k - 1].0.end);
        }
        assert_eq!(l.dense_range(), t[3].0.end..l.total);
    }

    #[test]
    fn init_follows_pytorch_defaults_and_is_seeded() {
        let cfg = ModelConfig::default();
        let l = ParamLayout::new(&cfg, sizes());
        let a = l.init(1);
        assert_eq!(a, l.init(1));
        assert_ne!(a, l.init(2));
        let w = &a[l.index.mlp[1].0.clone()]; // bound 1/sqrt(1024)
        assert!(w.iter().all(|x| x.abs() <= 1.0 / 32.0));
        assert!(w.iter().any(|x| x.abs() > 0.9 / 32.0));
        assert!(a[l.index.blocks[0].ln1_w.clone()].iter().all(|&x| x == 1.0));
        let e = &a[l.index.emb_item.clone()];
        let std = (e.iter().map(|x| x * x).sum::<f32>() / e.len() as f32).sqrt();
        assert!((std / 1e-4 - 1.0).abs() < 0.05, "embedding std {std}");
    }

    #[test]
    fn embedding_init_scales_one_draw_by_emb_init_std() {
        // The same normal draws at any std: std = 1 gives the spec's earlier N(0, 1) init
        // bit for bit, and std = s gives s times it (to f32 rounding).
        let one = ModelConfig {
            emb_init_std: 1.0,
            ..ModelConfig::default()
        };
        let tiny = ModelConfig {
            emb_init_std: 1e-4,
            ..ModelConfig::default()
        };
        let (a, b) = (
            ParamLayout::new(&one, sizes()).init(7),
            ParamLayout::new(&tiny, sizes()).init(7),
        );
        let l = ParamLayout::new(&one, sizes());
        for t in l.embedding_tables() {
            for i in t.0 {
                assert!(
                    (b[i] - a[i] * 1e-4).abs() <= 1e-4 * a[i].abs() * 1e-6,
                    "{i}"
                );
            }
        }
        let dense = l.dense_range();
        assert_eq!(
            a[dense.clone()],
            b[dense],
            "only the tables depend on the std"
        );
        let var = a[l.index.emb_item.clone()]
            .iter()
            .map(|x| x * x)
            .sum::<f32>()
            / l.index.emb_item.len() as f32;
        assert!((var - 1.0).abs() < 0.1, "std 1: variance {var}");
    }
}
