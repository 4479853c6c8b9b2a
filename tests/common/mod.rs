//! Helpers shared by the multi-process test suites (`mod common;` in each).

pub mod processes;
