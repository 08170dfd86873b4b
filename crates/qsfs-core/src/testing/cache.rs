//! Conformance suite for the cache trait (being written).
