//! Noise schedules: the DDPM forward process used in training, and the samplers.

pub mod ddpm;
pub mod euler;
pub mod sampler;
