//! qsfs-store (being written).
