//! Conformance suite for the store trait (being written).
