//! Instruments: pretrained models turned into measurements of other models.

pub mod align;
pub mod alpha;
pub mod cluster;
pub mod compare;
pub mod embed;
pub mod ensemble;
pub mod kernel_compare;
pub mod kglm;
pub mod layers;
pub mod lda;
pub mod metrics;
pub mod neighbours;
pub mod ntk;
pub mod pca;
pub mod project;
pub mod splits;
pub mod transformer_ntk;
pub mod transformer_project;
