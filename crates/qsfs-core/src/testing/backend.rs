//! Conformance suite for the backend trait (being written).
