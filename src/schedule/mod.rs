//! Noise schedules: the DDPM forward process used in training, and the samplers.

pub mod config;
pub mod ddpm;
pub mod euler;
pub mod sampler;
