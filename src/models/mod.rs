//! Models written once against the backend op set, and what a model directory says about them.

pub mod bert;
pub mod mlp;
pub mod sentence;
pub mod tokenize;
pub mod train;
