//! Instruments: pretrained models turned into measurements of other models.

pub mod embed;
