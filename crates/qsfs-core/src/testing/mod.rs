//! Conformance suites: one place that defines what a correct [`crate::Store`],
//! [`crate::Backend`] and [`crate::Cache`] is. Every implementation calls the suite for its trait
//! from its own tests, e.g. `qsfs_core::testing::backend::run(&my_backend).await`.
//!
//! Enabled by the `testing` feature; add it to your `[dev-dependencies]`.

pub mod backend;
pub mod cache;
pub mod store;
