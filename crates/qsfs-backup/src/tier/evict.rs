//! Keeping the engine's local bytes under the cap, and slowing writers while it is exceeded.

use super::Shared;

/// Evicts confirmed segments until the engine is under the cap (or nothing more can go).
pub(crate) fn enforce(_shared: &Shared) {}

/// Blocks a writer while the disk is over the cap and the worker is making progress.
pub(crate) fn throttle(_shared: &Shared) {}
