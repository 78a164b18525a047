//! The demo.

pub mod load;
pub mod run;
pub mod service;
