//! The Behavior Sequence Transformer (Chen et al., 2019): the model, its data and metrics.
//! The contract is `spec/bst.md` of the shared folder; every section cited here is its.

pub mod backend;
pub mod batch;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod encode;
pub mod gpu_backend;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod params;
pub mod rank;
pub mod rng;
pub mod train;
