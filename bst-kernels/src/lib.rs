//! BST compute kernels. `cpu` holds the plain reference of every op: it is the
//! specification that the GPU kernels are tested against. (The benchmark harness that runs
//! every kernel family at a model's shapes is `bst_benches::workload`.)
//!
//! Conventions (as in llm.c): outputs first, then inputs, then dimensions; parameter
//! gradients accumulate (`+=`), activation gradients overwrite (`=`). Every buffer's shape
//! is given in a comment, row-major.

#![warn(missing_docs)]

pub mod cpu;
pub mod gpu;
