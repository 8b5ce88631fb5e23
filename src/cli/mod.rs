//! The command line's command groups, one module each, and the one progress bar they share.

pub mod demo;
pub mod export;
pub mod generate;
pub mod progress;
pub mod render;
pub mod score;
pub mod study;
pub mod sweep;
pub mod toy;
pub mod train;
