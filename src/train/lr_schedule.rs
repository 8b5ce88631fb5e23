//! The learning-rate schedules of diffusers' `get_scheduler`: constant, warm-up, linear and
//! cosine decay.

use crate::config::{LrSchedule, RunConfig};

/// The learning rate at optimizer step `step` (1-based), as diffusers' `get_scheduler`.
pub fn learning_rate(cfg: &RunConfig, step: u64) -> f64 {
    let t = &cfg.train;
    let s = (step - 1) as f64; // schedulers see the number of steps already taken
    let warm = t.warmup_steps as f64;
    let total = t.steps as f64;
    let factor = match t.lr_schedule {
        LrSchedule::Constant => 1.0,
        _ if s < warm => s / warm.max(1.0),
        LrSchedule::ConstantWithWarmup => 1.0,
        LrSchedule::Linear => ((total - s) / (total - warm).max(1.0)).max(0.0),
        LrSchedule::Cosine => {
            let progress = (s - warm) / (total - warm).max(1.0);
            (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
        }
    };
    t.learning_rate * factor
}
