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
    // The settings of the other samplers' classes. A field the file lacks takes the default
    // of the class that reads it (`None` here), as diffusers' `from_config` gives it.
    #[serde(default)]
    pub use_karras_sigmas: Option<bool>,
    #[serde(default)]
    pub sigma_min: Option<f64>,
    #[serde(default)]
    pub sigma_max: Option<f64>,
    #[serde(default)]
    pub final_sigmas_type: Option<String>,
    #[serde(default)]
    pub clip_sample: Option<bool>,
    #[serde(default)]
    pub clip_sample_range: Option<f64>,
    #[serde(default)]
    pub set_alpha_to_one: Option<bool>,
    #[serde(default)]
    pub thresholding: Option<bool>,
    #[serde(default)]
    pub rescale_betas_zero_snr: Option<bool>,
    #[serde(default)]
    pub solver_order: Option<i64>,
    #[serde(default)]
    pub solver_type: Option<String>,
    #[serde(default)]
    pub lower_order_final: Option<bool>,
    #[serde(default)]
    pub euler_at_final: Option<bool>,
    #[serde(default)]
    pub predict_x0: Option<bool>,
    #[serde(default)]
    pub disable_corrector: Option<Vec<i64>>,
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
