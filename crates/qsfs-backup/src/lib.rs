//! qsfs-backup (being written).
