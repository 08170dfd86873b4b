//! The integration tests of `qsfs-fuse` on real mounts, one module per subject, linked into one
//! binary: one link instead of one per file keeps CI's build short. `posix_roundtrips` stays a
//! binary of its own: it measures the CPU of every mount thread in its process.

mod common;

mod acl;
mod big_dir;
mod cache_conformance;
mod cache_flush_race;
mod crash_points;
mod fetch_race;
mod fsck;
mod model;
mod posix;
mod slow_fetch;
mod space;
mod store_down;
