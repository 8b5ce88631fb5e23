//! The command line's command groups, one module each (the rest still lives in main.rs).

pub mod toy;
