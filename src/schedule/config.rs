//! `scheduler/scheduler_config.json`: the noise schedule a model was trained with, as its
//! download ships it. The schedules read it; the model folder only finds the file.

use serde::{Deserialize, Serialize};

/// `scheduler/scheduler_config.json` (the fields SDXL's samplers use).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SchedulerConfig {
    #[serde(default = "default_train_steps")]
    pub num_train_timesteps: i64,
    #[serde(default = "default_beta_start")]
    pub beta_start: f64,
    #[serde(default = "default_beta_end")]
    pub beta_end: f64,
    #[serde(default = "default_beta_schedule")]
    pub beta_schedule: String,
    #[serde(default = "default_prediction")]
    pub prediction_type: String,
    #[serde(default = "default_spacing")]
    pub timestep_spacing: String,
    #[serde(default)]
    pub steps_offset: i64,
}

fn default_train_steps() -> i64 {
    1000
}
fn default_beta_start() -> f64 {
    0.00085
}
fn default_beta_end() -> f64 {
    0.012
}
fn default_beta_schedule() -> String {
    "scaled_linear".into()
}
fn default_prediction() -> String {
    "epsilon".into()
}
fn default_spacing() -> String {
    "leading".into()
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("all fields have defaults")
    }
}
