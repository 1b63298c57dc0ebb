//! CPU reference ops, one file per op family, forward and backward side by side.
//! Plain loops, parallel over the batch with rayon where it pays; results do not depend
//! on the number of threads (work is split in fixed chunks).

pub mod activation;
pub mod attention;
pub mod dropout;
pub mod elementwise;
pub mod embedding;
pub mod layernorm;
pub mod loss;
pub mod mask;
pub mod matmul;
pub mod optim;
pub mod pooling;
pub mod reference;
pub mod target_attention;
pub mod topk;

#[cfg(test)]
pub(crate) mod gradcheck;
