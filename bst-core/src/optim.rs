//! Optimisers over the parameter arena (spec section 2): Adam and Adagrad, with their
//! state in arenas of the same layout as the parameters.

use crate::config::{Optimizer as Kind, TrainConfig};
use bst_kernels::cpu::optim::{AdamHyper, adagrad_update, adam_update};

/// Adagrad's epsilon (PyTorch's default).
pub const ADAGRAD_EPS: f32 = 1e-10;

#[derive(Clone, Debug, PartialEq)]
pub enum OptimState {
    Adam { m: Vec<f32>, v: Vec<f32> },
    Adagrad { sum: Vec<f32> },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Optimizer {
    pub lr: f32,
    /// Updates taken so far (Adam's bias correction uses `t = steps + 1` for the next).
    pub steps: u64,
    pub state: OptimState,
}

impl Optimizer {
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

    pub fn step(&mut self, params: &mut [f32], grads: &[f32]) {
        self.steps += 1;
        match &mut self.state {
            OptimState::Adam { m, v } => {
                let hp = AdamHyper {
                    lr: self.lr,
                    ..AdamHyper::default()
                };
                adam_update(params, m, v, grads, hp, self.steps);
            }
            OptimState::Adagrad { sum } => adagrad_update(params, sum, grads, self.lr, ADAGRAD_EPS),
        }
    }
}
