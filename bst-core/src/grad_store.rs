//! Where the CPU backend keeps its gradients (issue 12).
//!
//! The embedding tables are most of a model's parameters (at 100M Taobao rows, 4.1M
//! items x 32 of 148M), and a batch touches a few thousand of their rows. [`RowGrads`]
//! keeps the gradients of those rows only: a compact arena laid out as the model's with
//! each table cut to as many rows as a batch can touch (`slots`), then the blocks and the
//! MLP as they are. The backward scatters into slots (the batch's ids replaced by the
//! slots of their rows, [`RowGrads::prepare`]), and the optimiser takes every other row's
//! gradient as zero ([`crate::optim::Optimizer::step_rows`]), so each update is the one
//! of the full gradient arena, bit for bit, and the gradients take megabytes instead of
//! an arena as large as the parameters.
//!
//! [`GradStore::Full`] is that full arena, for a data-parallel group: its exchange sums
//! the rows of every rank's batch ([`crate::collective::GradientExchange`]).

use crate::batch::Batch;
use crate::config::ModelConfig;
use crate::model::Model;
use crate::params::{ParamLayout, VocabSizes};
use std::ops::Range;

/// The CPU backend's gradients of the last batch.
pub enum GradStore {
    /// The whole arena, of the parameters' layout.
    Full(Vec<f32>),
    /// The touched rows of the tables and the rest whole.
    Rows(Box<RowGrads>),
}

/// Gradients of the rows a batch touched (see the module docs).
pub struct RowGrads {
    /// `[item slots | category slots | position slots | other slots | blocks, MLP]`, laid
    /// out by `layout`.
    pub arena: Vec<f32>,
    /// The model's layout with each table cut to its slots.
    pub layout: ParamLayout,
    /// Per table (item, category, position, other), the rows the batch touched, sorted:
    /// slot `s` holds the gradient of row `rows[k][s]`.
    pub rows: [Vec<u32>; 4],
    /// The batch with each id replaced by its slot (what the backward scatters by).
    pub slotted: Batch,
    cfg: ModelConfig,
    /// Slots of each table (`layout`'s vocabulary sizes).
    slots: VocabSizes,
}

impl RowGrads {
    /// Gradients of `model`, with slots for batches of `batch` samples (more are made
    /// when a larger batch comes).
    pub fn new(model: &Model, batch: usize) -> RowGrads {
        let cfg = &model.cfg;
        let rows = model
            .layout
            .embedding_tables()
            .map(|(r, w)| r.len() / w.max(1));
        let (tokens, fields) = (batch * (cfg.seq_len + 1), model.dims.fields);
        let slots = VocabSizes {
            items: rows[0].min(tokens),
            cats: rows[1].min(tokens),
            other: rows[3].min(batch * fields),
            fields,
        };
        let layout = ParamLayout::new(cfg, slots);
        RowGrads {
            arena: vec![0.0; layout.total],
            layout,
            rows: Default::default(),
            slotted: Batch::default(),
            cfg: cfg.clone(),
            slots,
        }
    }

    /// Readies the store for the backward of `batch`: notes its rows, makes enough slots,
    /// zeroes the gradients and writes `slotted`.
    pub fn prepare(&mut self, batch: &Batch) {
        batch.touched_rows_into(&mut self.rows);
        let [items, cats, _, other] = self.rows.each_ref().map(Vec::len);
        let s = &mut self.slots;
        if items > s.items || cats > s.cats || other > s.other {
            (s.items, s.cats, s.other) = (items.max(s.items), cats.max(s.cats), other.max(s.other));
            self.layout = ParamLayout::new(&self.cfg, *s);
            self.arena = vec![0.0; self.layout.total];
        } else {
            self.arena.fill(0.0);
        }
        let slot = |rows: &[u32], id: u32| rows.binary_search(&id).expect("a touched row") as u32;
        let s = &mut self.slotted;
        let (b, l, f) = (batch.size, batch.seq_len, batch.fields);
        (s.size, s.seq_len, s.fields) = (b, l, f);
        let sources = [
            (&mut s.hist_item, &batch.hist_item[..b * l], 0),
            (&mut s.target_item, &batch.target_item[..b], 0),
            (&mut s.hist_cat, &batch.hist_cat[..b * l], 1),
            (&mut s.target_cat, &batch.target_cat[..b], 1),
            (&mut s.hist_pos, &batch.hist_pos[..b * l], 2),
            (&mut s.other, &batch.other[..b * f], 3),
        ];
        for (dst, src, k) in sources {
            dst.clear();
            dst.extend(src.iter().map(|&id| slot(&self.rows[k], id)));
        }
        // The target's position is row 0, which every batch touches: slot 0.
        debug_assert!(batch.size == 0 || self.rows[2].first() == Some(&0));
        s.label.clear();
        s.label.extend_from_slice(&batch.label[..b]);
    }

    /// The gradients of the touched rows of each table, `(rows[k].len(), width)`.
    pub fn table_grads(&self) -> [&[f32]; 4] {
        let tables = self.layout.embedding_tables();
        std::array::from_fn(|k| {
            let (r, w) = &tables[k];
            &self.arena[r.start..r.start + self.rows[k].len() * w]
        })
    }

    /// The gradients of the blocks and the MLP.
    pub fn dense_grads(&self) -> &[f32] {
        &self.arena[self.layout.dense_range()]
    }

    /// The full gradient arena of the parameters' `layout` (zero for untouched rows).
    pub fn to_full(&self, layout: &ParamLayout) -> Vec<f32> {
        let mut full = vec![0.0; layout.total];
        let tables = layout.embedding_tables();
        for (k, g) in self.table_grads().into_iter().enumerate() {
            let (r, w): &(Range<usize>, usize) = &tables[k];
            for (&row, g) in self.rows[k].iter().zip(g.chunks((*w).max(1))) {
                full[r.start + row as usize * w..][..*w].copy_from_slice(g);
            }
        }
        full[layout.dense_range()].copy_from_slice(self.dense_grads());
        full
    }
}

impl GradStore {
    /// The full gradient arena of the parameters' `layout` (a copy).
    pub fn to_full(&self, layout: &ParamLayout) -> Vec<f32> {
        match self {
            GradStore::Full(g) => g.clone(),
            GradStore::Rows(r) => r.to_full(layout),
        }
    }
}
