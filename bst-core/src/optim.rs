//! Optimisers over the parameter arena (spec section 2): Adam and Adagrad, with their
//! state in arenas of the same layout as the parameters.

use crate::config::{Optimizer as Kind, TrainConfig};
use bst_kernels::cpu::optim::{
    AdamHyper, adagrad_update, adagrad_update_rows, adam_update, adam_update_rows,
};
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

/// The CPU optimiser: hyper-parameters, update count and state arenas.
#[derive(Clone, Debug, PartialEq)]
pub struct Optimizer {
    /// Learning rate.
    pub lr: f32,
    /// Updates taken so far (Adam's bias correction uses `t = steps + 1` for the next).
    pub steps: u64,
    /// The state arenas.
    pub state: OptimState,
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
    pub fn restore(&mut self, s: &OptimSnapshot) -> Result<(), String> {
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
        self.state = s.state.clone();
        Ok(())
    }

    /// One update of `params` from `grads` (both of the parameter layout).
    pub fn step(&mut self, params: &mut [f32], grads: &[f32]) {
        self.steps += 1;
        let all = 0..params.len();
        self.update_range(params, grads, all);
    }

    /// One sparse update: the range `dense` whole, and of each embedding table
    /// `tables[k] = (range, width)` only the rows `rows[k]` (distinct), lazily
    /// ([`adam_update_rows`], [`adagrad_update_rows`]).
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
        self.update_range(params, grads, dense);
        let (lr, t) = (self.lr, self.steps);
        for ((r, w), rows) in tables.iter().zip(rows) {
            let (p, g) = (&mut params[r.clone()], &grads[r.clone()]);
            match &mut self.state {
                OptimState::Adam { m, v } => {
                    let hp = AdamHyper {
                        lr,
                        ..AdamHyper::default()
                    };
                    let (m, v) = (&mut m[r.clone()], &mut v[r.clone()]);
                    adam_update_rows(p, m, v, g, *w, rows, hp, t);
                }
                OptimState::Adagrad { sum } => {
                    adagrad_update_rows(p, &mut sum[r.clone()], g, *w, rows, lr, ADAGRAD_EPS)
                }
            }
        }
    }

    /// The update of step `self.steps` over `range` of the arenas.
    fn update_range(&mut self, params: &mut [f32], grads: &[f32], r: Range<usize>) {
        let (p, g) = (&mut params[r.clone()], &grads[r.clone()]);
        match &mut self.state {
            OptimState::Adam { m, v } => {
                let hp = AdamHyper {
                    lr: self.lr,
                    ..AdamHyper::default()
                };
                adam_update(p, &mut m[r.clone()], &mut v[r], g, hp, self.steps);
            }
            OptimState::Adagrad { sum } => adagrad_update(p, &mut sum[r], g, self.lr, ADAGRAD_EPS),
        }
    }
}
