//! The integration tests of `qsfs-store`, one module per subject, linked into one binary: one
//! link instead of one per file keeps CI's build short. Three stay binaries of their own:
//! `crash` (its `main` is the crashing child too), `fd_budget` (it sets the process-wide budget of
//! open segment files) and `server_idle` (it measures the process's memory).

mod server_util;

mod basics;
mod chain;
mod conformance;
mod corruption;
mod lifecycle;
mod model;
mod remote_backend;
mod remote_damaged;
mod remote_lazy;
mod remote_store;
mod remote_verify;
mod server_concurrency;
mod server_group;
mod server_protocol;
mod server_redis_cli;
