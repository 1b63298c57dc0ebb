//! Optimisers over the parameter arena (spec section 2): Adam and Adagrad, with their
//! state in arenas of the same layout as the parameters.

use crate::config::{Optimizer as Kind, TrainConfig};
use bst_kernels::cpu::optim::{AdagradHyper, AdamHyper, RowGrads, Step};
use std::ops::Range;

/// Adagrad's epsilon (PyTorch's default).
pub const ADAGRAD_EPS: f32 = 1e-10;

/// An optimiser's state arenas, each of the parameter arena's layout.
#[derive(Clone, Debug, PartialEq)]
pub enum OptimState {
    /// Adam's moments.
    Adam {
        /// First moment (PyTorch's `exp_avg`).
        m: Vec<f32>,
        /// Second moment (PyTorch's `exp_avg_sq`).
        v: Vec<f32>,
    },
    /// Adagrad's state.
    Adagrad {
        /// Sum of squared gradients (PyTorch's `sum`).
        sum: Vec<f32>,
    },
}

/// How [`Optimizer::update_tables`] updates a table from the gradients it is given.
#[derive(Clone, Copy, Debug)]
enum TableUpdate {
    /// The listed rows, from the table's full gradient.
    LazyFull,
    /// The listed rows, from their gradients alone.
    LazyListed,
    /// Every row, from the listed rows' gradients (zero for the others).
    DenseListed,
}

/// The CPU optimiser: hyper-parameters, update count and state arenas.
#[derive(Clone, Debug, PartialEq)]
pub struct Optimizer {
    /// Learning rate.
    pub lr: f32,
    /// Updates taken so far (Adam's bias correction uses `t = steps + 1` for the next).
    pub steps: u64,
    /// The state arenas.
    pub state: OptimState,
    /// L2 regularisation (coupled weight decay) of the tables and of the rest.
    pub decay: Decay,
}

/// L2 regularisation as coupled weight decay: each update takes the gradient of a
/// parameter `p` as `g + coef * p`, the gradient of `coef/2 * |p|^2` added to the loss
/// (PyTorch's `weight_decay`; FuxiCTR's `embedding_regularizer` with p = 2).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decay {
    /// The embedding tables are the arena's `0..tables_end` (they come first).
    pub tables_end: usize,
    /// Coefficient on the embedding tables (`model.emb_l2`). With sparse updates only
    /// the rows a batch touches decay (lazy, as their Adam moments).
    pub tables: f32,
    /// Coefficient on the blocks and the MLP (`train.weight_decay`).
    pub dense: f32,
    /// The tables' learning rate is the optimiser's times this (`train.emb_lr_scale`).
    pub tables_lr_scale: f32,
}

impl Default for Decay {
    fn default() -> Self {
        Decay {
            tables_end: 0,
            tables: 0.0,
            dense: 0.0,
            tables_lr_scale: 1.0,
        }
    }
}

/// What a checkpoint keeps of an optimiser: its state arenas and the number of updates
/// taken (Adam's bias correction and the dropout masks depend on it).
#[derive(Clone, Debug, PartialEq)]
pub struct OptimSnapshot {
    /// Updates taken (PyTorch's `step`).
    pub steps: u64,
    /// The state arenas.
    pub state: OptimState,
}

/// A borrowed [`OptimSnapshot`]: what a checkpoint writer reads, straight from a live
/// optimiser (no copy of its arenas) or from a snapshot.
#[derive(Clone, Copy, Debug)]
pub struct OptimRef<'a> {
    /// Updates taken.
    pub steps: u64,
    /// The state arenas.
    pub state: &'a OptimState,
}

impl<'a> From<&'a OptimSnapshot> for OptimRef<'a> {
    fn from(s: &'a OptimSnapshot) -> OptimRef<'a> {
        OptimRef {
            steps: s.steps,
            state: &s.state,
        }
    }
}

impl OptimState {
    /// The optimiser this state belongs to.
    pub fn kind(&self) -> Kind {
        match self {
            OptimState::Adam { .. } => Kind::Adam,
            OptimState::Adagrad { .. } => Kind::Adagrad,
        }
    }

    /// The state arenas by checkpoint name: `("adam.m", m)`, `("adam.v", v)` or
    /// `("adagrad.sum", sum)`.
    pub fn arenas(&self) -> Vec<(&'static str, &[f32])> {
        match self {
            OptimState::Adam { m, v } => vec![("adam.m", m), ("adam.v", v)],
            OptimState::Adagrad { sum } => vec![("adagrad.sum", sum)],
        }
    }

    /// The arena names of an optimiser kind, in the order of [`OptimState::arenas`].
    pub fn arena_names(kind: Kind) -> &'static [&'static str] {
        match kind {
            Kind::Adam => &["adam.m", "adam.v"],
            Kind::Adagrad => &["adagrad.sum"],
        }
    }

    /// The state of `kind` from its arenas, in the order of [`OptimState::arena_names`].
    pub fn from_arenas(kind: Kind, mut arenas: Vec<Vec<f32>>) -> OptimState {
        assert_eq!(arenas.len(), OptimState::arena_names(kind).len());
        match kind {
            Kind::Adam => {
                let v = arenas.pop().expect("two arenas");
                let m = arenas.pop().expect("two arenas");
                OptimState::Adam { m, v }
            }
            Kind::Adagrad => OptimState::Adagrad {
                sum: arenas.pop().expect("one arena"),
            },
        }
    }

    /// Length of each arena (the number of parameters).
    pub fn len(&self) -> usize {
        self.arenas()[0].1.len()
    }

    /// No values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Optimizer {
    /// A fresh optimiser (zero state, no steps) for `n_params` parameters.
    pub fn new(cfg: &TrainConfig, n_params: usize) -> Optimizer {
        let state = match cfg.optimizer {
            Kind::Adam => OptimState::Adam {
                m: vec![0.0; n_params],
                v: vec![0.0; n_params],
            },
            Kind::Adagrad => OptimState::Adagrad {
                sum: vec![0.0; n_params],
            },
        };
        Optimizer {
            lr: cfg.lr(),
            steps: 0,
            state,
            decay: Decay::default(),
        }
    }

    /// The same optimiser with L2 regularisation `decay`.
    pub fn with_decay(mut self, decay: Decay) -> Optimizer {
        self.decay = decay;
        self
    }

    /// The state as a checkpoint writer reads it, borrowed.
    pub fn as_ref(&self) -> OptimRef<'_> {
        OptimRef {
            steps: self.steps,
            state: &self.state,
        }
    }

    /// A copy of the state and step count, for a checkpoint.
    pub fn snapshot(&self) -> OptimSnapshot {
        OptimSnapshot {
            steps: self.steps,
            state: self.state.clone(),
        }
    }

    /// Restores a snapshot; it must be of the same optimiser and arena size.
    pub fn restore(&mut self, s: OptimSnapshot) -> Result<(), String> {
        if s.state.kind() != self.state.kind() {
            return Err(format!(
                "the optimiser state is {:?}'s but this run uses {:?}",
                s.state.kind(),
                self.state.kind()
            ));
        }
        if s.state.len() != self.state.len() {
            return Err(format!(
                "the optimiser state holds {} values for {} parameters",
                s.state.len(),
                self.state.len()
            ));
        }
        self.steps = s.steps;
        self.state = s.state;
        Ok(())
    }

    /// One update of `params` from `grads` (both of the parameter layout).
    pub fn step(&mut self, params: &mut [f32], grads: &[f32]) {
        self.steps += 1;
        let Decay {
            tables_end, tables, ..
        } = self.decay;
        let (lr, scale) = (self.lr, self.decay.tables_lr_scale);
        self.update_range(params, grads, 0..tables_end, lr * scale, tables);
        self.update_range(
            params,
            grads,
            tables_end..params.len(),
            lr,
            self.decay.dense,
        );
    }

    /// One sparse update: the range `dense` whole, and of each embedding table
    /// `tables[k] = (range, width)` only the rows `rows[k]` (distinct), lazily
    /// ([`Step::update_rows`]).
    pub fn step_sparse(
        &mut self,
        params: &mut [f32],
        grads: &[f32],
        dense: Range<usize>,
        tables: &[(Range<usize>, usize)],
        rows: &[Vec<u32>],
    ) {
        assert_eq!(tables.len(), rows.len(), "one row list per table");
        self.steps += 1;
        self.update_range(params, grads, dense, self.lr, self.decay.dense);
        let g: Vec<&[f32]> = tables.iter().map(|(r, _)| &grads[r.clone()]).collect();
        self.update_tables(params, tables, rows, &g, TableUpdate::LazyFull);
    }

    /// One update from gradients kept by rows ([`crate::grad_store`]): the range `dense`
    /// of the arena whole, from `dense_grads` (its `dense.len()` gradients), and each
    /// embedding table `tables[k] = (range, width)` from `table_grads[k]`, whose row `j`
    /// is the gradient of row `rows[k][j]` (sorted, distinct), every other row's being
    /// zero. `lazy`: only the listed rows, as [`Optimizer::step_sparse`] with the full
    /// arena; otherwise every row, as [`Optimizer::step`] with it, bit for bit.
    #[allow(clippy::too_many_arguments)]
    pub fn step_rows(
        &mut self,
        params: &mut [f32],
        dense: Range<usize>,
        dense_grads: &[f32],
        tables: &[(Range<usize>, usize)],
        rows: &[Vec<u32>],
        table_grads: &[&[f32]],
        lazy: bool,
    ) {
        assert_eq!(tables.len(), rows.len(), "one row list per table");
        assert_eq!(
            tables.len(),
            table_grads.len(),
            "one gradient list per table"
        );
        self.steps += 1;
        let p = &mut params[dense.clone()];
        self.update_at(p, dense_grads, dense, self.lr, self.decay.dense);
        let how = match lazy {
            true => TableUpdate::LazyListed,
            false => TableUpdate::DenseListed,
        };
        self.update_tables(params, tables, rows, table_grads, how);
    }

    /// The update of step `self.steps` of each table `tables[k]` from `grads[k]` and its
    /// rows `rows[k]` as `how` says, with the tables' learning rate and L2 coefficient.
    fn update_tables(
        &mut self,
        params: &mut [f32],
        tables: &[(Range<usize>, usize)],
        rows: &[Vec<u32>],
        grads: &[&[f32]],
        how: TableUpdate,
    ) {
        let lr = self.lr * self.decay.tables_lr_scale;
        let weight_decay = self.decay.tables;
        for (((r, w), rows), &g) in tables.iter().zip(rows).zip(grads) {
            let p = &mut params[r.clone()];
            let step = self.step_at(r.clone(), lr, weight_decay);
            match how {
                TableUpdate::LazyFull => step.update_rows(p, RowGrads::Full(g), *w, rows),
                TableUpdate::LazyListed => step.update_rows(p, RowGrads::Listed(g), *w, rows),
                TableUpdate::DenseListed => step.update_table(p, g, *w, rows),
            }
        }
    }

    /// The update of step `self.steps` over `range` of the arenas, with L2 coefficient
    /// `weight_decay`.
    fn update_range(
        &mut self,
        params: &mut [f32],
        grads: &[f32],
        r: Range<usize>,
        lr: f32,
        weight_decay: f32,
    ) {
        self.update_at(
            &mut params[r.clone()],
            &grads[r.clone()],
            r,
            lr,
            weight_decay,
        );
    }

    /// [`Optimizer::update_range`] of the parameters `p` (the arena's range `r`) with
    /// their gradients `g`.
    fn update_at(&mut self, p: &mut [f32], g: &[f32], r: Range<usize>, lr: f32, weight_decay: f32) {
        self.step_at(r, lr, weight_decay).update(p, g);
    }

    /// Step `self.steps` of the state over the arena's range `r`, with learning rate `lr`
    /// and L2 coefficient `weight_decay`.
    fn step_at(&mut self, r: Range<usize>, lr: f32, weight_decay: f32) -> Step<'_> {
        match &mut self.state {
            OptimState::Adam { m, v } => {
                let hp = AdamHyper {
                    lr,
                    weight_decay,
                    ..AdamHyper::default()
                };
                Step::adam(&mut m[r.clone()], &mut v[r], hp, self.steps)
            }
            OptimState::Adagrad { sum } => {
                let hp = AdagradHyper {
                    lr,
                    eps: ADAGRAD_EPS,
                    weight_decay,
                };
                Step::adagrad(&mut sum[r], hp)
            }
        }
    }
}
