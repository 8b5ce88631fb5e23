//! The interface every sampler offers to the sampling loop.
//!
//! Steps are addressed by their index in the schedule rather than by timestep value
//! (diffusers looks the index up from the value and keeps it as hidden state): the loop
//! knows where it is, and an explicit index cannot drift out of step with the schedule.

use tch::Tensor;

use crate::error::Result;

pub trait Scheduler {
    /// Choose `n` denoising steps; resets any state kept between steps.
    fn set_timesteps(&mut self, n: usize) -> Result<()>;

    /// The model's timestep input at each step, in sampling order (noisiest first).
    fn timesteps(&self) -> &[f32];

    /// Standard deviation of the initial latents: multiply N(0, I) noise by it.
    fn init_noise_sigma(&self) -> f64;

    /// The model input at step `step_index` for the current `sample`.
    fn scale_model_input(&self, sample: &Tensor, step_index: usize) -> Tensor;

    /// The sample after step `step_index`, given the model's output there.
    fn step(&mut self, model_output: &Tensor, step_index: usize, sample: &Tensor) -> Tensor;
}
