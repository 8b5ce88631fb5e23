//! Stable Diffusion XL, shaped like diffusers so that code and checkpoint names read alike.

pub mod attention;
pub mod clip;
pub mod clip_model;
pub mod config;
pub mod convert;
pub mod embeddings;
pub mod encoders;
pub mod image_processing;
pub mod init_model;
pub mod model_dir;
pub mod model_folder;
pub mod nn;
pub mod pipeline;
pub mod resnet;
pub mod safetensors_header;
pub mod sgm_names;
pub mod single_file;
pub mod tokenizer;
pub mod unet;
pub mod unet_blocks;
pub mod unet_segments;
pub mod vae;
pub mod vit;
pub mod weights;
