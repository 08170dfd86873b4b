//! qsfs-fuse (being written).
