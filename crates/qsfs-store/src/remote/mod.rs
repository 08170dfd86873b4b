//! Client for any 0-db server (being written).
