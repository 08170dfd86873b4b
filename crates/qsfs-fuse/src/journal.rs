//! The metadata journal: one batch of record changes becomes visible all at once.
//!
//! A batch (every dirty inode, dirent, listing page, block map, xattr record and orphan record of
//! one flush) is first written as journal parts plus a head in the `super` namespace, then
//! applied record by record, then the head and the parts are deleted. A process killed while
//! applying leaves the head behind and the next mount (or `qsfs fsck --repair`) applies the
//! batch again, so a crash never leaves half a rename, a name without its listing slot or an
//! inode nothing names. Applying is idempotent: each op is a whole-record `SET` or a `DEL`.
//!
//! This relies on the store keeping the order of completed writes across a crash of the
//! *client* (the engine writes each record with one `pwrite` and no user-space buffer; a server
//! applies one connection's commands in order). Power loss is covered by `fsync`, which syncs
//! the store after the batch.

use qsfs_core::Store;
use serde::{Deserialize, Serialize};

use crate::error::FsResult;
use crate::layout::{decode, encode, Namespaces};

/// Key of the journal head in the `super` namespace; present only while a batch is applied.
pub const JOURNAL_KEY: &[u8] = b"journal";

/// Parts are kept well under the store's largest value.
const PART_BYTES: usize = 4 << 20;

/// One record change of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalOp {
    /// Index of the namespace in [`Namespaces::all`].
    pub ns: u8,
    /// Record key.
    pub key: Vec<u8>,
    /// New value, or `None` to delete the record.
    pub value: Option<Vec<u8>>,
}

/// The journal head: the batch has this many parts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalHead {
    /// Number of parts (`journal-part` + u32 BE index).
    pub parts: u32,
}

/// Key of part `i` of the journal.
pub fn part_key(i: u32) -> Vec<u8> {
    let mut k = b"journal-part".to_vec();
    k.extend_from_slice(&i.to_be_bytes());
    k
}

fn ns_name(ns: &Namespaces, i: u8) -> FsResult<&str> {
    ns.all()
        .get(usize::from(i))
        .copied()
        .ok_or_else(|| crate::error::FsError::corrupt("journal", format!("namespace index {i}")))
}

fn ignore_missing(r: qsfs_core::Result<()>) -> FsResult<()> {
    match r {
        Ok(()) | Err(qsfs_core::Error::NotFound(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn apply(store: &dyn Store, ns: &Namespaces, ops: &[JournalOp]) -> FsResult<()> {
    for op in ops {
        let name = ns_name(ns, op.ns)?;
        match &op.value {
            Some(v) => {
                store.set(name, Some(&op.key), v)?;
            }
            None => ignore_missing(store.delete(name, &op.key))?,
        }
    }
    Ok(())
}

fn clear(store: &dyn Store, ns: &Namespaces, parts: u32) -> FsResult<()> {
    // Head first: parts without a head are never applied, so a crash in between is harmless.
    ignore_missing(store.delete(&ns.sup, JOURNAL_KEY))?;
    for i in 0..parts {
        ignore_missing(store.delete(&ns.sup, &part_key(i)))?;
    }
    Ok(())
}

/// Writes `ops` so that they take effect all together or not at all, even if the process dies
/// half way. A batch of one op needs no journal.
pub fn commit(store: &dyn Store, ns: &Namespaces, ops: &[JournalOp]) -> FsResult<()> {
    if ops.len() <= 1 {
        return apply(store, ns, ops);
    }
    let mut parts = 0u32;
    let mut start = 0;
    while start < ops.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < ops.len() && (end == start || bytes < PART_BYTES) {
            bytes += ops[end].key.len() + ops[end].value.as_ref().map_or(0, Vec::len) + 8;
            end += 1;
        }
        store.set(&ns.sup, Some(&part_key(parts)), &encode(&&ops[start..end]))?;
        parts += 1;
        start = end;
    }
    store.set(&ns.sup, Some(JOURNAL_KEY), &encode(&JournalHead { parts }))?;
    apply(store, ns, ops)?;
    clear(store, ns, parts)
}

/// True if a batch was committed but not known to be fully applied (a crashed mount).
pub fn pending(store: &dyn Store, ns: &Namespaces) -> FsResult<bool> {
    Ok(store.get(&ns.sup, JOURNAL_KEY)?.is_some())
}

/// Applies a batch left by a crashed mount, if any; returns the number of ops applied. Parts
/// without a head (a crash before the batch was committed) are deleted unapplied.
pub fn replay(store: &dyn Store, ns: &Namespaces) -> FsResult<usize> {
    let Some(head) = store.get(&ns.sup, JOURNAL_KEY)? else {
        let mut i = 0;
        while store.exists(&ns.sup, &part_key(i))? {
            ignore_missing(store.delete(&ns.sup, &part_key(i)))?;
            i += 1;
        }
        return Ok(0);
    };
    let head: JournalHead = decode(&head.value, "journal head")?;
    let mut ops = Vec::new();
    for i in 0..head.parts {
        let Some(part) = store.get(&ns.sup, &part_key(i))? else {
            return Err(crate::error::FsError::corrupt(
                "journal",
                format!("part {i} of {} is missing", head.parts),
            ));
        };
        ops.extend(decode::<Vec<JournalOp>>(
            &part.value,
            &format!("journal part {i}"),
        )?);
    }
    apply(store, ns, &ops)?;
    clear(store, ns, head.parts)?;
    Ok(ops.len())
}
