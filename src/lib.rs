//! moslora: DreamBooth LoRA and MoSLoRA adapters for Stable Diffusion XL on libtorch.

pub mod adapter;
pub mod app;
pub mod config;
pub mod demo;
pub mod error;
pub mod fsutil;
pub mod html;
pub mod hub;
pub mod image_file;
pub mod metrics;
pub mod render;
pub mod run_lock;
pub mod runtime;
pub mod schedule;
pub mod sdxl;
pub mod serve;
pub mod shipped;
pub mod study;
pub mod sweep;
pub mod toyworld;
pub mod train;
pub mod words;

pub use error::{Error, Result};
