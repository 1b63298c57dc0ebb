//! The Behavior Sequence Transformer (Chen et al., 2019): the model, its data and metrics.
//! The contract is `spec/bst.md` of the shared folder; every section cited here is its.

pub mod backend;
pub mod batch;
pub mod config;
pub mod data;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod params;
pub mod rng;
pub mod train;
