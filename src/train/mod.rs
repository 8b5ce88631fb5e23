//! DreamBooth training of LoRA and MoSLoRA adapters on the frozen SDXL UNet (and optionally
//! on both text encoders, [`text`]).
//!
//! Epsilon prediction on the DDPM forward process, MSE loss, AdamW, gradient clipping. Prompt
//! embeddings (unless the text encoders are adapted) and VAE latents are computed once before
//! the first step. Every random draw of step `s` comes from a generator seeded with (seed, s),
//! so a run is reproducible on the CPU and a resumed run continues exactly where the
//! interrupted one would have gone.
//!
//! From the photos to the adapter file: [`dataset`] (photos to cached latents, square crops;
//! [`buckets`] for aspect-ratio buckets; [`captions`] for caption files, [`masks`] for masked loss), [`data`]
//! (prompts, class images, everything prepared once), [`batch`] (one step's draws), [`loss`]
//! (the objective and its backward pass, [`recompute`] for gradient checkpointing),
//! [`optimizer`] and [`lr_schedule`] (the update), [`trainer`] (the loop, [`checkpoint`]s,
//! [`loss_log`]), [`run`] (what a run is: its adapter kind, paths and fingerprint), and
//! [`existing`] (what an output folder already holds, and whether a run may replace it).

pub mod batch;
pub mod buckets;
pub mod captions;
pub mod checkpoint;
pub mod data;
pub mod dataset;
pub mod existing;
pub mod loss;
pub mod loss_log;
pub mod lr_schedule;
pub mod masks;
pub mod optimizer;
pub mod recompute;
pub mod run;
pub mod tensorboard;
pub mod text;
pub mod trainer;
pub mod validation;

pub use batch::{make_batch, step_seed, Batch};
pub use data::{prepare_data, prepare_data_and_text, Sampler, TrainData};
pub use loss::{loss, loss_backward, prediction_loss};
pub use lr_schedule::learning_rate;
pub use run::{is_current, model_identity, training_fingerprint, AdapterKind, RunPaths};
pub use trainer::{
    train, train_step, train_step_with, Progress, Quiet, TrainJob, TrainOutcome, INTERRUPTED,
};
