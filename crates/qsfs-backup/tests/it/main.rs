//! The integration tests of `qsfs-backup`, one module per subject, linked into one binary: one
//! link and one copy of the pipeline's generic code instead of one per file, which keeps CI's
//! build short.

mod common;

mod failures;
mod fetch;
mod format4;
mod format5;
mod maintenance;
mod old_formats;
mod partial_repair;
mod pipeline;
mod tier;
mod zdb_round_trips;
