//! Noise schedules: the DDPM forward process used in training, and the samplers (one file
//! each, behind the `sampler::Scheduler` trait; `sampler::SamplerKind` names them).

pub mod config;
pub mod ddim;
pub mod ddpm;
pub mod dpm_solver;
pub mod euler;
pub mod euler_ancestral;
pub mod heun;
pub mod sampler;
pub mod sigmas;
pub mod unipc;
