//! mscope: pretrained networks as measuring instruments for comparing other networks,
//! run on hand-written kernels (CPU reference, WGSL through wgpu, CUDA through cudarc/NVRTC).
//!
//! The tree mirrors the data flow: `weights` and `tensor` hold data, `backend` runs the op set,
//! `models` are written once against the op set, `instruments` turn models into measurements,
//! `io` reads inputs and writes outputs, `cli` drives it all.

pub mod backend;
pub mod bench;
pub mod cli;
pub mod data;
pub mod error;
pub mod instruments;
pub mod io;
pub mod models;
pub mod random;
pub mod report;
pub mod tensor;
pub mod weights;

pub use error::{Error, Result};
