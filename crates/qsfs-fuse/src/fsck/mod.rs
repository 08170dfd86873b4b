//! Offline consistency check of a filesystem's layout (`qsfs fsck`), with optional repair.
//!
//! [`check`] reads every record of the eight namespaces through `Store::scan`, cross-checks
//! them (dirents against inodes and listing pages, link counts against dirents, block maps
//! against stored blocks) and, with `repair`, rewrites what disagrees. Repair never deletes data
//! a name still reaches: unreachable inodes go to `/lost+found`, a stored block missing from its
//! map gets its bit back (reads see it).
//!
//! **Damaged records.** A record whose bytes fail the store's checksum (`get` answers
//! `Error::Corrupt`, naming the segment and offset) or that does not decode is one problem
//! among others: it names the namespace, the key and the store's location, and the check goes
//! on over everything else. Store errors that are not about one record (I/O, a store that is
//! down) still abort the check. What repair does with a damaged record (`salvage.rs`):
//!
//! * the store is append-only, so older versions usually survive: the newest one that reads
//!   intact and decodes is written back as the live one (found through
//!   `Store::version_before`, which reads record headers, not the damaged value; a tombstone
//!   ends the walk, as what lies before it belonged to an earlier life of the key), then
//!   reconciled like any record: a restored file's size grows to cover its stored blocks, a
//!   restored directory's tail moves past every slot in use, link counts and counts follow
//!   the dirents;
//! * with no intact version: an inode is rebuilt minimal (`salvage::rebuild`: kind from its
//!   dirents, else a directory if it has listing pages, else a file; owner and group of its
//!   directory; mode 0600, directories 0700, never setuid/setgid, because a guess wider than
//!   the lost permissions could expose a file; times now; size up to the end of its last
//!   stored block, exact unless the file ended in a hole, whose zeros are then dropped); a
//!   dirent is rebuilt from the listing page that lists its name (else it is dropped and its
//!   inode, if nothing else names it, goes to `/lost+found`); a listing page from the dirents;
//!   a block map from the stored blocks;
//! * never made up: a symlink with no intact version (its target was only in the record) is
//!   reported and left, name and record, for a human, as are xattrs with no intact version (an
//!   ACL guessed could widen access). A damaged data block is reported with its file's path and
//!   byte range and never replaced by an older version, which would be wrong data served
//!   silently: reads of those bytes return EIO.
//!
//! Restored and rebuilt inodes keep their numbers, and the superblock's high-water mark is
//! raised above every inode there is, so a later mount never hands a number out twice.
//!
//! It must run while nothing else writes the filesystem: the caller opens the store exclusively
//! (the engine's directory lock) or checks the mount lock.

use serde::{de::DeserializeOwned, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use qsfs_core::{Result, Store, Timestamp};

use crate::layout::{
    decode, decode_dirent, dirent_key, encode, encode_dirent, ino_key, is_hashed_name, pair_key,
    parse_ino_key, parse_pair_key, Body, Chunk, Dirent, Inode, Kind, LongDirent, Namespaces, Page,
    PageEntry, Superblock, Xattrs, CHUNK_BLOCKS, PAGE_SLOTS, ROOT_INO, SUPER_KEY,
};

mod salvage;

use salvage::{older_intact, read_all, Read};

/// Name of the directory under the root that unreachable inodes are re-attached to.
pub const LOST_FOUND: &[u8] = b"lost+found";

/// One inconsistency found by [`check`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// What is wrong, naming the record.
    pub description: String,
    /// True if `--repair` fixed it.
    pub repaired: bool,
    /// For a damaged record (one that fails a checksum or does not decode): how repair brings
    /// it back (brought it back, when `repaired`). `None` for every other problem.
    pub salvage: Option<Salvage>,
}

/// How [`check`] brings back a damaged record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Salvage {
    /// Its newest intact older version is written back as the live one.
    Restored,
    /// Made again from the records that agree with it (a minimal inode from its names, a page
    /// from the dirents, a dirent from its page, a block map from the stored blocks).
    Rebuilt,
}

/// What [`check`] saw and found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FsckReport {
    /// Inode records that decode.
    pub inodes: u64,
    /// Directory entry records that decode.
    pub dirents: u64,
    /// Listing pages that decode.
    pub pages: u64,
    /// Stored blocks.
    pub blocks: u64,
    /// Block-map chunks that decode.
    pub chunks: u64,
    /// Xattr records that decode.
    pub xattrs: u64,
    /// Orphan records.
    pub orphans: u64,
    /// Every problem, in the order found.
    pub problems: Vec<Problem>,
}

impl FsckReport {
    /// Problems not repaired.
    pub fn remaining(&self) -> usize {
        self.problems.iter().filter(|p| !p.repaired).count()
    }

    /// True when nothing is wrong any more (none found, or all repaired).
    pub fn is_clean(&self) -> bool {
        self.remaining() == 0
    }
}

struct Ctx {
    repair: bool,
    report: FsckReport,
}

impl Ctx {
    /// Records a problem; `fixable` says whether repair knows what to do about it.
    fn problem(&mut self, fixable: bool, description: String) -> bool {
        let repaired = fixable && self.repair;
        self.report.problems.push(Problem {
            description,
            repaired,
            salvage: None,
        });
        repaired
    }

    /// Records a damaged record that repair brings back `how`.
    fn salvage(&mut self, how: Salvage, description: String) -> bool {
        let repaired = self.problem(true, description);
        if let Some(p) = self.report.problems.last_mut() {
            p.salvage = Some(how);
        }
        repaired
    }
}

fn keys_of(store: &dyn Store, ns: &str) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.scan(ns, cursor.as_ref(), 4096, Default::default())?;
        out.extend(page.entries.into_iter().map(|m| m.key));
        match page.next {
            Some(c) => cursor = Some(c),
            None => return Ok(out),
        }
    }
}

/// A damaged record `key` of `ns` (`what`, damaged because `why`) as repair brings it back:
/// its newest intact older version, or else an empty one that a later pass fills from
/// `rebuilt_from`; with how, and the problem's text.
fn older_or_empty<T: DeserializeOwned + Default>(
    store: &dyn Store,
    (ns, key): (&str, &[u8]),
    (what, why): (&str, &str),
    repair: bool,
    rebuilt_from: &str,
) -> Result<(T, Salvage, String)> {
    Ok(
        match older_intact(store, ns, key, |v| decode::<T>(v, what).ok())? {
            Some(old) => (
                old.value,
                Salvage::Restored,
                restored(repair, what, why, old.timestamp),
            ),
            None => (
                T::default(),
                Salvage::Rebuilt,
                format!("{what}: {why} (rebuilt from {rebuilt_from})"),
            ),
        },
    )
}

/// What to say of a damaged record (`what`, damaged because `why`) that has an intact older
/// version written at `when`: restored, or restorable.
fn restored(repair: bool, what: &str, why: &str, when: Timestamp) -> String {
    let when = salvage::utc(when);
    if repair {
        format!("{what} restored from its version of {when} ({why})")
    } else {
        format!("{what} is damaged ({why}); its version of {when} is intact (--repair restores it)")
    }
}

/// The superblock and whether it must be written back (restored from an older version), or
/// `None` when there is none to check against (reported).
fn superblock(
    store: &dyn Store,
    ns: &Namespaces,
    cx: &mut Ctx,
) -> Result<Option<(Superblock, bool)>> {
    let why = match store.get(&ns.sup, SUPER_KEY) {
        Ok(None) => {
            cx.problem(false, "superblock missing".into());
            return Ok(None);
        }
        Ok(Some(e)) => match decode::<Superblock>(&e.value, "superblock") {
            Ok(s) => return Ok(Some((s, false))),
            Err(e) => e.to_string(),
        },
        Err(e) if salvage::is_record_damage(&e) => e.to_string(),
        Err(e) => return Err(e),
    };
    // An older superblock may hold a lower `ino_reserved`: the check of inode numbers against
    // it, at the end, raises it above every inode there is.
    let older = older_intact(store, &ns.sup, SUPER_KEY, |v| {
        decode::<Superblock>(v, "superblock").ok()
    })?;
    let Some(old) = older else {
        cx.problem(
            false,
            format!("superblock unreadable ({why}) and no intact older version"),
        );
        return Ok(None);
    };
    let text = restored(cx.repair, "superblock", &why, old.timestamp);
    let fixed = cx.salvage(Salvage::Restored, text);
    Ok(Some((old.value, fixed)))
}

/// Reports (and with repair applies) a metadata batch a crashed mount left half applied. A
/// damaged journal record is reported and left: applying part of a batch is worse than none.
fn journal(store: &dyn Store, ns: &Namespaces, cx: &mut Ctx) -> Result<()> {
    let damaged = |e: crate::FsError, cx: &mut Ctx| -> Result<()> {
        let e = qsfs_core::Error::from(e);
        if !salvage::is_record_damage(&e) {
            return Err(e);
        }
        cx.problem(
            false,
            format!("the metadata journal of a crashed mount is unreadable: {e}"),
        );
        Ok(())
    };
    match crate::journal::pending(store, ns) {
        Ok(false) => Ok(()),
        Ok(true) => {
            if cx.problem(
                true,
                "a crashed mount left a metadata batch half applied (mounting once, or \
                 --repair, applies it)"
                    .into(),
            ) {
                if let Err(e) = crate::journal::replay(store, ns) {
                    if let Some(p) = cx.report.problems.last_mut() {
                        p.repaired = false;
                    }
                    return damaged(e, cx);
                }
            }
            Ok(())
        }
        Err(e) => damaged(e, cx),
    }
}

fn show(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

fn hex(key: &[u8]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

fn del(store: &dyn Store, ns: &str, key: &[u8]) -> Result<()> {
    match store.delete(ns, key) {
        Ok(()) | Err(qsfs_core::Error::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Checks the filesystem called `prefix` in `store` and, if `repair`, fixes what it can.
/// Store failures are errors; inconsistencies are [`FsckReport::problems`].
pub fn check(store: &dyn Store, prefix: &str, repair: bool) -> Result<FsckReport> {
    let ns = Namespaces::new(prefix);
    let existing: HashSet<String> = store.namespace_list()?.into_iter().collect();
    let mut cx = Ctx {
        repair,
        report: FsckReport::default(),
    };
    if let Some(missing) = ns.all().iter().find(|n| !existing.contains(**n)) {
        cx.problem(
            false,
            format!("namespace {missing} does not exist: no filesystem {prefix:?} here"),
        );
        return Ok(cx.report);
    }
    let Some((mut sup, mut sup_dirty)) = superblock(store, &ns, &mut cx)? else {
        return Ok(cx.report);
    };
    let bs = u64::from(sup.block_size.max(1));
    journal(store, &ns, &mut cx)?;

    // Inodes. One that is damaged comes back from its newest intact version, else it is
    // rebuilt once the dirents are read (they say what it was); `salvaged` ones get their size
    // and directory tail from the records that hang off them. `corrupt` ones (a symlink whose
    // target is lost) are kept out of every repair, with everything that hangs off them.
    let mut inodes: BTreeMap<u64, Inode> = BTreeMap::new();
    let mut corrupt: HashSet<u64> = HashSet::new();
    let mut salvaged: BTreeSet<u64> = BTreeSet::new();
    let mut lost: Vec<(u64, String)> = Vec::new();
    // Problems of restored inodes, named once the dirents are read: (problem index, inode).
    let mut restored_at: Vec<(usize, u64)> = Vec::new();
    let mut dirty_inodes: BTreeSet<u64> = BTreeSet::new();
    for (k, r) in read_all(store, &ns.inode)? {
        let Some(ino) = parse_ino_key(&k) else {
            let fixed = cx.problem(true, format!("inode key {} is malformed", hex(&k)));
            if fixed {
                del(store, &ns.inode, &k)?;
            }
            continue;
        };
        let why = match r.decoded::<Inode>(&format!("inode {ino}")) {
            Ok(i) => {
                cx.report.inodes += 1;
                inodes.insert(ino, i);
                continue;
            }
            Err(why) => why,
        };
        let older = older_intact(store, &ns.inode, &k, |v| decode::<Inode>(v, "inode").ok())?;
        match older {
            Some(old) => {
                let what = format!("inode {ino}");
                let text = restored(repair, &what, &why, old.timestamp);
                if cx.salvage(Salvage::Restored, text) {
                    dirty_inodes.insert(ino);
                }
                restored_at.push((cx.report.problems.len() - 1, ino));
                inodes.insert(ino, old.value);
                salvaged.insert(ino);
            }
            None => lost.push((ino, why)),
        }
    }
    if !inodes.contains_key(&ROOT_INO) && !lost.iter().any(|(i, _)| *i == ROOT_INO) {
        cx.problem(false, "root inode 1 missing".into());
        return Ok(cx.report);
    }

    // Listing pages.
    let mut pages: BTreeMap<(u64, u64), Page> = BTreeMap::new();
    let mut dirty_pages: BTreeSet<(u64, u64)> = BTreeSet::new();
    let mut restored_pages: BTreeSet<(u64, u64)> = BTreeSet::new();
    for (k, r) in read_all(store, &ns.dirpage)? {
        let Some((dir, p)) = parse_pair_key(&k) else {
            if cx.problem(true, format!("listing page key {} is malformed", hex(&k))) {
                del(store, &ns.dirpage, &k)?;
            }
            continue;
        };
        let what = format!("listing page {dir}/{p}");
        let why = match r.decoded::<Page>(&what) {
            Ok(page) => {
                cx.report.pages += 1;
                pages.insert((dir, p), page);
                continue;
            }
            Err(why) => why,
        };
        // An older version, or else an empty page: either way the passes below make it list
        // exactly the dirents, which say where each name is listed.
        let (page, how, text) = older_or_empty::<Page>(
            store,
            (&ns.dirpage, &k),
            (&what, &why),
            repair,
            "the dirents",
        )?;
        // Kept also without repair, so that the rest of the check sees what repair would.
        if cx.salvage(how, text) {
            dirty_pages.insert((dir, p));
        }
        pages.insert((dir, p), page);
        restored_pages.insert((dir, p));
    }

    // Directory entries.
    let is_dir =
        |inodes: &BTreeMap<u64, Inode>, i: u64| inodes.get(&i).is_some_and(|n| n.kind == Kind::Dir);
    // (parent, name) -> dirent, valid ones only.
    let mut dirents: BTreeMap<(u64, Vec<u8>), Dirent> = BTreeMap::new();
    let mut dirty_dirents: BTreeSet<(u64, Vec<u8>)> = BTreeSet::new();
    let mut named: Vec<(Vec<u8>, u64, Vec<u8>, Dirent)> = Vec::new();
    for (k, r) in read_all(store, &ns.dirent)? {
        if k.len() <= 8 {
            if cx.problem(true, format!("dirent key {} is malformed", hex(&k))) {
                del(store, &ns.dirent, &k)?;
            }
            continue;
        }
        let parent = u64::from_be_bytes(k[..8].try_into().unwrap_or_default());
        let name = dirent_name(&pages, parent, &k, &r);
        let what = format!("dirent {parent}/{}", show(&name));
        let why = match r.dirent(&name, &what) {
            Ok(d) => {
                cx.report.dirents += 1;
                named.push((k, parent, name, d));
                continue;
            }
            Err(why) => why,
        };
        let (d, what_then) =
            match salvage_dirent(store, &ns, &pages, &restored_pages, parent, &name)? {
                Some((d, how, from)) => {
                    let done = match (how, repair) {
                        (Salvage::Restored, true) => "restored",
                        (Salvage::Rebuilt, true) => "rebuilt",
                        (Salvage::Restored, false) => "--repair restores it",
                        (Salvage::Rebuilt, false) => "--repair rebuilds it",
                    };
                    (Some((d, how)), format!("{done} from {from}"))
                }
                None if repair => (
                    None,
                    "no page lists it, no older version is intact: dropped".into(),
                ),
                None => (
                    None,
                    "no page lists it, no older version is intact: --repair drops it".into(),
                ),
            };
        let text = format!("{what}: {why} ({what_then})");
        let fixed = match d {
            Some((_, how)) => cx.salvage(how, text),
            None => cx.problem(true, text),
        };
        match d.map(|(d, _)| d) {
            Some(d) => {
                if fixed {
                    dirty_dirents.insert((parent, name.clone()));
                }
                named.push((k, parent, name, d));
            }
            // Its inode, if no other name reaches it, goes to lost+found below.
            None if fixed => del(store, &ns.dirent, &k)?,
            None => {}
        }
    }
    name_restored(&mut cx.report.problems, &restored_at, &named);
    if !lost.is_empty() {
        let mut rebuilt = Rebuilt {
            inodes: &mut inodes,
            salvaged: &mut salvaged,
            corrupt: &mut corrupt,
            dirty: &mut dirty_inodes,
        };
        rebuild_lost(&mut cx, &lost, &named, &pages, &mut rebuilt);
    }
    for (k, parent, name, d) in named {
        if corrupt.contains(&parent) || corrupt.contains(&d.ino) {
            dirents.insert((parent, name), d);
            continue;
        }
        if !is_dir(&inodes, parent) {
            if cx.problem(
                true,
                format!(
                    "dirent {parent}/{} is in inode {parent}, which is not a directory",
                    show(&name)
                ),
            ) {
                del(store, &ns.dirent, &k)?;
            }
            continue;
        }
        let Some(target) = inodes.get(&d.ino) else {
            if cx.problem(
                true,
                format!(
                    "dirent {parent}/{} points to missing inode {}",
                    show(&name),
                    d.ino
                ),
            ) {
                del(store, &ns.dirent, &k)?;
            }
            continue;
        };
        let mut d = d;
        if target.kind != d.kind
            && cx.problem(
                true,
                format!(
                    "dirent {parent}/{} says {:?} but inode {} is {:?}",
                    show(&name),
                    d.kind,
                    d.ino,
                    target.kind
                ),
            )
        {
            d.kind = target.kind;
            dirty_dirents.insert((parent, name.clone()));
        }
        dirents.insert((parent, name), d);
    }
    for &dir in &salvaged {
        if raise_tail(&mut inodes, &pages, &dirents, dir) {
            dirty_inodes.insert(dir);
        }
    }

    // Pages must list exactly the dirents, in the slot each dirent names.
    let mut stale_slots: Vec<((u64, u64), u64)> = Vec::new();
    for (&(dir, p), page) in &pages {
        for e in &page.entries {
            let ok = dirents
                .get(&(dir, e.name.clone()))
                .is_some_and(|d| d.page == p && d.slot == e.slot && d.ino == e.ino);
            if !ok && !corrupt.contains(&dir) {
                stale_slots.push(((dir, p), e.slot));
            }
        }
    }
    for ((dir, p), slot) in stale_slots {
        if cx.problem(
            true,
            format!("listing page {dir}/{p} slot {slot} has no matching dirent"),
        ) {
            if let Some(page) = pages.get_mut(&(dir, p)) {
                page.entries.retain(|e| e.slot != slot);
                dirty_pages.insert((dir, p));
            }
        }
    }
    let listed: Vec<(u64, Vec<u8>)> = dirents.keys().cloned().collect();
    for (parent, name) in listed {
        if corrupt.contains(&parent) {
            continue;
        }
        let d = dirents[&(parent, name.clone())];
        let entry = pages
            .get(&(parent, d.page))
            .and_then(|pg| pg.entries.iter().find(|e| e.slot == d.slot));
        match entry {
            Some(e) if e.name == name && e.ino == d.ino && e.kind == d.kind => {}
            Some(e) if e.name == name && e.ino == d.ino => {
                // Kind fixed in the dirent above; the page follows.
                if cx.repair {
                    if let Some(pg) = pages.get_mut(&(parent, d.page)) {
                        for e in pg.entries.iter_mut().filter(|e| e.slot == d.slot) {
                            e.kind = d.kind;
                        }
                        dirty_pages.insert((parent, d.page));
                    }
                }
            }
            _ => {
                if cx.problem(
                    true,
                    format!(
                        "dirent {parent}/{} is not listed in page {} slot {}",
                        show(&name),
                        d.page,
                        d.slot
                    ),
                ) {
                    let (page, slot) =
                        list(&mut inodes, &mut pages, &mut dirty_pages, parent, &name, d);
                    dirty_inodes.insert(parent);
                    if (page, slot) != (d.page, d.slot) {
                        let nd = Dirent { page, slot, ..d };
                        dirents.insert((parent, name.clone()), nd);
                        dirty_dirents.insert((parent, name));
                    }
                }
            }
        }
    }
    // Pages beyond a directory's tail page, and pages of what is not a directory.
    for &(dir, p) in pages.keys() {
        if corrupt.contains(&dir) {
            continue;
        }
        match inodes.get(&dir).map(|n| &n.body) {
            Some(Body::Dir { tail_page, .. }) if p <= *tail_page => {}
            Some(Body::Dir { .. }) => {
                if cx.problem(
                    true,
                    format!("listing page {dir}/{p} is beyond the directory's tail page"),
                ) {
                    let used = pages[&(dir, p)].entries.iter().map(|e| e.slot + 1).max();
                    if let Some(Body::Dir {
                        tail_page,
                        tail_used,
                        ..
                    }) = inodes.get_mut(&dir).map(|n| &mut n.body)
                    {
                        *tail_page = p;
                        *tail_used = used.unwrap_or(0);
                    }
                    dirty_inodes.insert(dir);
                }
            }
            _ => {
                if cx.problem(
                    true,
                    format!("listing page {dir}/{p} belongs to no directory"),
                ) {
                    dirty_pages.insert((dir, p));
                }
            }
        }
    }
    pages.retain(|&(dir, p), pg| {
        if inodes.get(&dir).is_some_and(|n| n.kind == Kind::Dir) || corrupt.contains(&dir) {
            true
        } else {
            pg.entries.clear();
            dirty_pages.insert((dir, p));
            true
        }
    });

    // Orphans.
    let mut orphans: BTreeSet<u64> = BTreeSet::new();
    for k in keys_of(store, &ns.orphan)? {
        cx.report.orphans += 1;
        match parse_ino_key(&k) {
            Some(ino) if inodes.contains_key(&ino) || corrupt.contains(&ino) => {
                orphans.insert(ino);
            }
            Some(ino) => {
                if cx.problem(
                    true,
                    format!("orphan record for inode {ino}, which is gone"),
                ) {
                    del(store, &ns.orphan, &k)?;
                }
            }
            None => {
                if cx.problem(true, format!("orphan key {} is malformed", hex(&k))) {
                    del(store, &ns.orphan, &k)?;
                }
            }
        }
    }
    let refs = |dirents: &BTreeMap<(u64, Vec<u8>), Dirent>| {
        let mut r: HashMap<u64, Vec<u64>> = HashMap::new();
        for ((parent, _), d) in dirents {
            r.entry(d.ino).or_default().push(*parent);
        }
        r
    };
    let named = refs(&dirents);
    for &ino in &orphans.clone() {
        if named.contains_key(&ino) {
            // Mounting would free an inode a name still reaches: drop the record instead.
            if cx.problem(
                true,
                format!("orphan record for inode {ino}, which still has a name"),
            ) {
                del(store, &ns.orphan, &ino_key(ino))?;
                orphans.remove(&ino);
            }
        }
    }

    // Reachability from the root; whatever no name reaches goes to /lost+found.
    let mut lost_found: Option<u64> = dirents
        .get(&(ROOT_INO, LOST_FOUND.to_vec()))
        .filter(|d| d.kind == Kind::Dir)
        .map(|d| d.ino);
    for _ in 0..=inodes.len() {
        let reach = reachable(&dirents);
        let unreachable: Vec<u64> = inodes
            .keys()
            .copied()
            .filter(|i| *i != ROOT_INO && !orphans.contains(i) && !reach.contains(i))
            .collect();
        let Some(&first) = unreachable.first() else {
            break;
        };
        let named = refs(&dirents);
        // An inode named only inside an unreachable directory comes back with it.
        let mut top: Vec<u64> = unreachable
            .iter()
            .copied()
            .filter(|i| !named.contains_key(i))
            .collect();
        if top.is_empty() {
            // Only cycles are left (a directory below itself): cut one's names, then attach it.
            if cx.problem(
                true,
                format!("inode {first} is in a directory cycle cut off from the root"),
            ) {
                let cut: Vec<(u64, Vec<u8>)> = dirents
                    .iter()
                    .filter(|(_, d)| d.ino == first)
                    .map(|(k, _)| k.clone())
                    .collect();
                for (parent, name) in cut {
                    if let Some(d) = dirents.remove(&(parent, name.clone())) {
                        if let Some(pg) = pages.get_mut(&(parent, d.page)) {
                            pg.entries.retain(|e| e.slot != d.slot);
                            dirty_pages.insert((parent, d.page));
                        }
                        del(store, &ns.dirent, &dirent_key(parent, &name))?;
                    }
                }
            }
            top.push(first);
        }
        for ino in top {
            if !cx.problem(true, format!("inode {ino} is not reachable from the root")) {
                continue;
            }
            let lf = match lost_found {
                Some(lf) => lf,
                None => {
                    let lf = sup.ino_reserved;
                    sup.ino_reserved += 1;
                    sup_dirty = true;
                    let mut node = Inode::new(
                        Kind::Dir,
                        0o700,
                        0,
                        0,
                        Body::Dir {
                            parent: ROOT_INO,
                            entries: 0,
                            tail_page: 0,
                            tail_used: 0,
                        },
                    );
                    node.nlink = 2;
                    inodes.insert(lf, node);
                    dirty_inodes.insert(lf);
                    let d = Dirent {
                        ino: lf,
                        kind: Kind::Dir,
                        page: 0,
                        slot: 0,
                    };
                    let (page, slot) = list(
                        &mut inodes,
                        &mut pages,
                        &mut dirty_pages,
                        ROOT_INO,
                        LOST_FOUND,
                        d,
                    );
                    dirents.insert((ROOT_INO, LOST_FOUND.to_vec()), Dirent { page, slot, ..d });
                    dirty_dirents.insert((ROOT_INO, LOST_FOUND.to_vec()));
                    dirty_inodes.insert(ROOT_INO);
                    lost_found = Some(lf);
                    lf
                }
            };
            let name = format!("#{ino}").into_bytes();
            let kind = inodes[&ino].kind;
            let d = Dirent {
                ino,
                kind,
                page: 0,
                slot: 0,
            };
            let (page, slot) = list(&mut inodes, &mut pages, &mut dirty_pages, lf, &name, d);
            dirents.insert((lf, name.clone()), Dirent { page, slot, ..d });
            dirty_dirents.insert((lf, name));
            dirty_inodes.insert(lf);
        }
        if !repair {
            break;
        }
    }

    // Link counts, entry counts and each directory's parent, from the (repaired) dirents.
    let mut links: HashMap<u64, u32> = HashMap::new();
    let mut entries: HashMap<u64, u64> = HashMap::new();
    let mut subdirs: HashMap<u64, u32> = HashMap::new();
    let mut parent_of: HashMap<u64, u64> = HashMap::new();
    for ((parent, _), d) in &dirents {
        *links.entry(d.ino).or_default() += 1;
        *entries.entry(*parent).or_default() += 1;
        if d.kind == Kind::Dir {
            *subdirs.entry(*parent).or_default() += 1;
            parent_of.insert(d.ino, *parent);
        }
    }
    for (&ino, node) in inodes.iter_mut() {
        if orphans.contains(&ino) {
            continue;
        }
        let want = match node.kind {
            Kind::Dir => 2 + subdirs.get(&ino).copied().unwrap_or(0),
            _ => links.get(&ino).copied().unwrap_or(0),
        };
        if node.nlink != want
            && cx.problem(
                true,
                format!("inode {ino} has link count {} but {want} links", node.nlink),
            )
        {
            node.nlink = want;
            dirty_inodes.insert(ino);
        }
        if let Body::Dir {
            parent, entries: n, ..
        } = &mut node.body
        {
            let want = entries.get(&ino).copied().unwrap_or(0);
            if *n != want
                && cx.problem(
                    true,
                    format!("directory {ino} counts {n} entries but has {want}"),
                )
            {
                *n = want;
                dirty_inodes.insert(ino);
            }
            let want = if ino == ROOT_INO {
                ROOT_INO
            } else {
                parent_of.get(&ino).copied().unwrap_or(*parent)
            };
            if *parent != want
                && cx.problem(
                    true,
                    format!("directory {ino} names {parent} as parent, but is in {want}"),
                )
            {
                *parent = want;
                dirty_inodes.insert(ino);
            }
        }
    }

    // Blocks. The names are final by now: a damaged block is reported by its file's path.
    let names: HashMap<u64, (u64, Vec<u8>)> = dirents
        .iter()
        .map(|((parent, name), d)| (d.ino, (*parent, name.clone())))
        .collect();
    let mut stored: HashMap<u64, BTreeSet<u64>> = HashMap::new();
    // Salvaged files: where their last stored byte ends (their size is an older or a made-up one).
    let mut data_end: BTreeMap<u64, u64> = BTreeMap::new();
    for k in keys_of(store, &ns.block)? {
        let Some((ino, index)) = parse_pair_key(&k) else {
            if cx.problem(true, format!("block key {} is malformed", hex(&k))) {
                del(store, &ns.block, &k)?;
            }
            continue;
        };
        cx.report.blocks += 1;
        if corrupt.contains(&ino) {
            continue;
        }
        if store.check(&ns.block, &k)? == Some(false) {
            let what = format!("block {ino}/{index} of {}", salvage::path_of(ino, &names));
            let size = inodes.get(&ino).map(|n| n.size);
            damaged_block(store, &ns, &mut cx, &what, (ino, index), bs, size)?;
        }
        match inodes.get(&ino) {
            Some(n) if n.kind == Kind::File && salvaged.contains(&ino) => {
                let len = store.meta(&ns.block, &k)?.map_or(0, |m| m.length.min(bs));
                let end = index.saturating_mul(bs).saturating_add(len);
                let e = data_end.entry(ino).or_default();
                *e = (*e).max(end);
                stored.entry(ino).or_default().insert(index);
            }
            Some(n) if n.kind == Kind::File => {
                if index.saturating_mul(bs) >= n.size {
                    if cx.problem(
                        true,
                        format!(
                            "block {ino}/{index} lies beyond the end of the file ({} bytes)",
                            n.size
                        ),
                    ) {
                        del(store, &ns.block, &k)?;
                    }
                    continue;
                }
                stored.entry(ino).or_default().insert(index);
            }
            _ => {
                if cx.problem(true, format!("block {ino}/{index} belongs to no file")) {
                    del(store, &ns.block, &k)?;
                }
            }
        }
    }

    for (ino, end) in data_end {
        let Some(n) = inodes.get_mut(&ino).filter(|n| n.kind == Kind::File) else {
            continue;
        };
        let done = if repair { "raised to" } else { "short of" };
        if end > n.size
            && cx.problem(
                true,
                format!(
                    "inode {ino}: size {} {done} {end}, where its last stored block ends \
                     (the exact size was lost with its record; a file that ended in a hole \
                     comes back without those trailing zeros)",
                    n.size
                ),
            )
        {
            n.size = end;
            dirty_inodes.insert(ino);
        }
    }

    // Block maps.
    let mut maps: BTreeMap<(u64, u64), Chunk> = BTreeMap::new();
    let mut dirty_maps: BTreeSet<(u64, u64)> = BTreeSet::new();
    for (k, r) in read_all(store, &ns.bmap)? {
        let Some((ino, c)) = parse_pair_key(&k) else {
            if cx.problem(true, format!("block-map key {} is malformed", hex(&k))) {
                del(store, &ns.bmap, &k)?;
            }
            continue;
        };
        if corrupt.contains(&ino) {
            continue;
        }
        if !inodes.get(&ino).is_some_and(|n| n.kind == Kind::File) {
            if cx.problem(true, format!("block map {ino}/{c} belongs to no file")) {
                del(store, &ns.bmap, &k)?;
            }
            continue;
        }
        let what = format!("block map {ino}/{c}");
        let why = match r.decoded::<Chunk>(&what) {
            Ok(chunk) => {
                cx.report.chunks += 1;
                maps.insert((ino, c), chunk);
                continue;
            }
            Err(why) => why,
        };
        // An older version, or else an empty chunk: either way the pass below makes its bits
        // say exactly which blocks are stored.
        let (chunk, how, text) = older_or_empty::<Chunk>(
            store,
            (&ns.bmap, &k),
            (&what, &why),
            repair,
            "the stored blocks",
        )?;
        if cx.salvage(how, text) {
            maps.insert((ino, c), chunk);
            dirty_maps.insert((ino, c));
        }
    }
    for (&ino, node) in inodes.iter_mut() {
        let Body::File { chunks, blocks } = &mut node.body else {
            continue;
        };
        let have = stored.remove(&ino).unwrap_or_default();
        let mut bits: BTreeSet<u64> = BTreeSet::new();
        for (&(_, c), chunk) in maps.range((ino, 0)..=(ino, u64::MAX)) {
            bits.extend(chunk.iter().map(|i| c * CHUNK_BLOCKS + i));
        }
        for &i in bits.difference(&have) {
            if cx.problem(
                true,
                format!("block map of inode {ino} marks block {i}, which is not stored"),
            ) {
                let key = (ino, i / CHUNK_BLOCKS);
                if let Some(chunk) = maps.get_mut(&key) {
                    chunk.clear(i % CHUNK_BLOCKS);
                    dirty_maps.insert(key);
                }
            }
        }
        for &i in have.difference(&bits) {
            // Reads fetch a block by key, so an unmapped block is visible data: map it.
            if cx.problem(
                true,
                format!("block {ino}/{i} is stored but not in the block map"),
            ) {
                let key = (ino, i / CHUNK_BLOCKS);
                maps.entry(key).or_default().set(i % CHUNK_BLOCKS);
                dirty_maps.insert(key);
            }
        }
        if !cx.repair {
            continue;
        }
        let want_chunks: BTreeSet<u64> = maps
            .range((ino, 0)..=(ino, u64::MAX))
            .filter(|(_, ch)| !ch.is_empty())
            .map(|(&(_, c), _)| c)
            .collect();
        let want_blocks: u64 = maps
            .range((ino, 0)..=(ino, u64::MAX))
            .map(|(_, ch)| ch.iter().count() as u64)
            .sum();
        if *chunks != want_chunks || *blocks != want_blocks {
            cx.problem(
                true,
                format!("inode {ino} lists chunks/blocks that disagree with its block map"),
            );
            *chunks = want_chunks;
            *blocks = want_blocks;
            dirty_inodes.insert(ino);
        }
    }
    if !cx.repair {
        // Without repair, compare the inode's lists with the maps as they are.
        for (&ino, node) in &inodes {
            if let Body::File { chunks, blocks } = &node.body {
                let have: BTreeSet<u64> = maps
                    .range((ino, 0)..=(ino, u64::MAX))
                    .filter(|(_, ch)| !ch.is_empty())
                    .map(|(&(_, c), _)| c)
                    .collect();
                let n: u64 = maps
                    .range((ino, 0)..=(ino, u64::MAX))
                    .map(|(_, ch)| ch.iter().count() as u64)
                    .sum();
                if *chunks != have || *blocks != n {
                    cx.problem(
                        true,
                        format!("inode {ino} lists chunks/blocks that disagree with its block map"),
                    );
                }
            }
        }
    }

    // Xattrs.
    let mut with_xattrs: HashSet<u64> = HashSet::new();
    for (k, r) in read_all(store, &ns.xattr)? {
        let Some(ino) = parse_ino_key(&k) else {
            if cx.problem(true, format!("xattr key {} is malformed", hex(&k))) {
                del(store, &ns.xattr, &k)?;
            }
            continue;
        };
        if corrupt.contains(&ino) {
            continue;
        }
        if !inodes.contains_key(&ino) {
            if cx.problem(true, format!("xattrs of inode {ino}, which is gone")) {
                del(store, &ns.xattr, &k)?;
            }
            continue;
        }
        let what = format!("xattrs of inode {ino}");
        let why = match r.decoded::<Xattrs>(&what) {
            Ok(_) => {
                cx.report.xattrs += 1;
                with_xattrs.insert(ino);
                continue;
            }
            Err(why) => why,
        };
        with_xattrs.insert(ino);
        // Xattrs cannot be rebuilt from anything else (and an ACL dropped could widen access):
        // an older version or nothing.
        let older = older_intact(store, &ns.xattr, &k, |v| {
            decode::<Xattrs>(v, &what).ok().map(|_| v.to_vec())
        })?;
        match older {
            Some(old) => {
                let text = restored(repair, &what, &why, old.timestamp);
                if cx.salvage(Salvage::Restored, text) {
                    store.set(&ns.xattr, Some(&k), &old.value)?;
                }
            }
            None => {
                cx.problem(
                    false,
                    format!("{what}: {why} (no older version is intact; left as it is)"),
                );
            }
        }
    }
    for (&ino, node) in inodes.iter_mut() {
        let has = with_xattrs.contains(&ino);
        if node.has_xattrs != has
            && cx.problem(
                true,
                format!(
                    "inode {ino} says has_xattrs={} but the record {}",
                    node.has_xattrs,
                    if has { "exists" } else { "is missing" }
                ),
            )
        {
            node.has_xattrs = has;
            dirty_inodes.insert(ino);
        }
    }

    // Inode numbers must stay below the high-water mark, or a mount could hand one out twice.
    let top = inodes
        .keys()
        .chain(corrupt.iter())
        .copied()
        .max()
        .unwrap_or(ROOT_INO);
    if top >= sup.ino_reserved
        && cx.problem(
            true,
            format!(
                "inode {top} is at or above the reserved mark {}",
                sup.ino_reserved
            ),
        )
    {
        sup.ino_reserved = top + 1;
        sup_dirty = true;
    }

    if !cx.repair {
        return Ok(cx.report);
    }
    // Write back in the filesystem's own order: blocks are done, then maps, inodes, pages,
    // dirents, superblock.
    for key in dirty_maps {
        match maps.get(&key) {
            Some(ch) if !ch.is_empty() => {
                store.set(&ns.bmap, Some(&pair_key(key.0, key.1)), &encode(ch))?;
            }
            _ => del(store, &ns.bmap, &pair_key(key.0, key.1))?,
        }
    }
    for ino in dirty_inodes {
        if let Some(n) = inodes.get(&ino) {
            store.set(&ns.inode, Some(&ino_key(ino)), &encode(n))?;
        }
    }
    for key in dirty_pages {
        match pages.get(&key) {
            Some(pg) if !pg.entries.is_empty() => {
                store.set(&ns.dirpage, Some(&pair_key(key.0, key.1)), &encode(pg))?;
            }
            _ => del(store, &ns.dirpage, &pair_key(key.0, key.1))?,
        }
    }
    for (parent, name) in dirty_dirents {
        if let Some(d) = dirents.get(&(parent, name.clone())) {
            store.set(
                &ns.dirent,
                Some(&dirent_key(parent, &name)),
                &encode_dirent(&name, d),
            )?;
        }
    }
    if sup_dirty {
        store.set(&ns.sup, Some(SUPER_KEY), &encode(&sup))?;
    }
    store.sync()?;
    Ok(cx.report)
}

/// Reports stored block `(ino, index)`, which fails its checksum, with the bytes of the file it
/// holds and where the store found the damage. It is never replaced by an older version: that
/// would be wrong data, served silently. Reads of those bytes return EIO until the file is
/// rewritten there or restored from elsewhere.
fn damaged_block(
    store: &dyn Store,
    ns: &Namespaces,
    cx: &mut Ctx,
    what: &str,
    (ino, index): (u64, u64),
    bs: u64,
    size: Option<u64>,
) -> Result<()> {
    let location = match store.get(&ns.block, &pair_key(ino, index)) {
        Err(e) if salvage::is_record_damage(&e) => e.to_string(),
        Err(e) => return Err(e),
        Ok(_) => "the store's check".into(),
    };
    let start = index.saturating_mul(bs);
    let end = start.saturating_add(bs);
    let end = size.filter(|s| (start..end).contains(s)).unwrap_or(end);
    cx.problem(
        false,
        format!(
            "{what} (bytes {start}..{end}) fails its checksum ({location}): reads of those \
             bytes return EIO; not replaced by an older version, which would be wrong data"
        ),
    );
    Ok(())
}

/// The name of the dirent under key `k`: the key's, or for a long name (the key holds its
/// hash) its record's, else that of the page entry whose name hashes to the key; the key's if
/// neither says.
fn dirent_name(pages: &BTreeMap<(u64, u64), Page>, parent: u64, k: &[u8], r: &Read) -> Vec<u8> {
    let in_key = &k[8..];
    if !is_hashed_name(in_key) {
        return in_key.to_vec();
    }
    if let Read::Value(v) = r {
        if let Ok(long) = decode::<LongDirent>(v, "dirent") {
            if dirent_key(parent, &long.name) == k {
                return long.name;
            }
        }
    }
    pages
        .range((parent, 0)..=(parent, u64::MAX))
        .flat_map(|(_, pg)| &pg.entries)
        .find(|e| dirent_key(parent, &e.name) == k)
        .map_or_else(|| in_key.to_vec(), |e| e.name.clone())
}

/// A damaged dirent's content, with where it came from: from the intact listing page that lists
/// its name (written in the same batch as the dirent, so the current state), else from its
/// newest intact older version, else from a page restored from an older version (in
/// `restored_pages`). Either older source may name an inode a rename has since replaced: the
/// passes after check it like any other dirent, and a name is worth keeping.
fn salvage_dirent(
    store: &dyn Store,
    ns: &Namespaces,
    pages: &BTreeMap<(u64, u64), Page>,
    restored_pages: &BTreeSet<(u64, u64)>,
    parent: u64,
    name: &[u8],
) -> Result<Option<(Dirent, Salvage, String)>> {
    let listed = |restored: bool| {
        pages
            .range((parent, 0)..=(parent, u64::MAX))
            .filter(|(k, _)| restored_pages.contains(*k) == restored)
            .find_map(|(&(_, page), pg)| {
                let e = pg.entries.iter().find(|e| e.name == name)?;
                let d = Dirent {
                    ino: e.ino,
                    kind: e.kind,
                    page,
                    slot: e.slot,
                };
                let from = format!("listing page {parent}/{page}");
                Some((d, Salvage::Rebuilt, from))
            })
    };
    if let Some(found) = listed(false) {
        return Ok(Some(found));
    }
    let key = dirent_key(parent, name);
    let older = older_intact(store, &ns.dirent, &key, |v| {
        decode_dirent(name, v, "dirent").ok()
    })?;
    match older {
        Some(o) => Ok(Some((
            o.value,
            Salvage::Restored,
            format!("its version of {}", salvage::utc(o.timestamp)),
        ))),
        None => Ok(listed(true)),
    }
}

/// Adds to each restored inode's problem (`restored_at`: problem index, inode) the name a dirent
/// gives it, as a rebuilt inode's says: the inodes are read before the dirents.
fn name_restored(
    problems: &mut [Problem],
    restored_at: &[(usize, u64)],
    named: &[(Vec<u8>, u64, Vec<u8>, Dirent)],
) {
    for &(i, ino) in restored_at {
        let Some((_, parent, name, _)) = named.iter().find(|(.., d)| d.ino == ino) else {
            continue;
        };
        if let Some(p) = problems.get_mut(i) {
            let head = format!("inode {ino}");
            let named = format!("{head} (named {} in directory {parent})", show(name));
            p.description = p.description.replacen(&head, &named, 1);
        }
    }
}

/// Where [`rebuild_lost`] puts what it rebuilds.
struct Rebuilt<'a> {
    inodes: &'a mut BTreeMap<u64, Inode>,
    salvaged: &'a mut BTreeSet<u64>,
    corrupt: &'a mut HashSet<u64>,
    dirty: &'a mut BTreeSet<u64>,
}

/// Rebuilds each inode of `lost` (damaged, no intact version: `(ino, why)`) from the dirents
/// that name it and the listing pages stored under it. A symlink cannot be rebuilt: it goes to
/// `corrupt`, reported unrepaired, and keeps its name and record for a human.
fn rebuild_lost(
    cx: &mut Ctx,
    lost: &[(u64, String)],
    named: &[(Vec<u8>, u64, Vec<u8>, Dirent)],
    pages: &BTreeMap<(u64, u64), Page>,
    out: &mut Rebuilt<'_>,
) {
    let mut first_name: HashMap<u64, (u64, &[u8], Kind)> = HashMap::new();
    for (_, parent, name, d) in named {
        first_name.entry(d.ino).or_insert((*parent, name, d.kind));
    }
    for (ino, why) in lost {
        let name = first_name.get(ino);
        let owner = name
            .and_then(|(p, ..)| out.inodes.get(p))
            .map_or((0, 0), |n| (n.uid, n.gid));
        let clues = salvage::Clues {
            named_as: name.map(|n| n.2),
            parent: name.map(|n| n.0),
            owner,
            has_pages: pages.range((*ino, 0)..=(*ino, u64::MAX)).next().is_some(),
        };
        let Some(node) = salvage::rebuild(*ino, &clues) else {
            let place = name
                .map(|(p, n, _)| format!(", named {} in directory {p}", show(n)))
                .unwrap_or_default();
            cx.problem(
                false,
                format!(
                    "inode {ino} (a symlink{place}) is damaged ({why}) and no older version is \
                     intact: its target is lost and fsck does not make one up; left as it is"
                ),
            );
            out.corrupt.insert(*ino);
            continue;
        };
        let place = name
            .map(|(p, n, _)| format!(" (named {} in directory {p})", show(n)))
            .unwrap_or_default();
        let text = if cx.repair {
            format!(
                "inode {ino}{place} rebuilt as a minimal {:?} inode ({why}; no older version \
                 is intact): mode {:04o}, owner {}:{} from its directory, times now, link \
                 count and size from its names and stored blocks",
                node.kind, node.perm, node.uid, node.gid
            )
        } else {
            format!(
                "inode {ino}{place} is damaged ({why}) and no older version is intact \
                 (--repair rebuilds a minimal {:?} inode)",
                node.kind
            )
        };
        if cx.salvage(Salvage::Rebuilt, text) {
            out.dirty.insert(*ino);
        }
        out.inodes.insert(*ino, node);
        out.salvaged.insert(*ino);
    }
}

/// Moves a salvaged directory's tail (where the next name is listed) past every slot its pages
/// and dirents use: an older or rebuilt inode's tail may lie behind them, and a mount would
/// then list a new name over an existing one. Returns true if it moved.
fn raise_tail(
    inodes: &mut BTreeMap<u64, Inode>,
    pages: &BTreeMap<(u64, u64), Page>,
    dirents: &BTreeMap<(u64, Vec<u8>), Dirent>,
    dir: u64,
) -> bool {
    let Some(Body::Dir {
        tail_page,
        tail_used,
        ..
    }) = inodes.get_mut(&dir).map(|n| &mut n.body)
    else {
        return false;
    };
    let mut top = (*tail_page, *tail_used);
    for (&(_, p), pg) in pages.range((dir, 0)..=(dir, u64::MAX)) {
        for e in &pg.entries {
            top = top.max((p, e.slot + 1));
        }
    }
    for (_, d) in dirents
        .range((dir, Vec::new())..)
        .take_while(|((p, _), _)| *p == dir)
    {
        top = top.max((d.page, d.slot + 1));
    }
    if top == (*tail_page, *tail_used) {
        return false;
    }
    (*tail_page, *tail_used) = top;
    true
}

/// Inodes reachable from the root through `dirents`.
fn reachable(dirents: &BTreeMap<(u64, Vec<u8>), Dirent>) -> HashSet<u64> {
    let mut children: HashMap<u64, Vec<u64>> = HashMap::new();
    for ((parent, _), d) in dirents {
        children.entry(*parent).or_default().push(d.ino);
    }
    let mut seen = HashSet::from([ROOT_INO]);
    let mut todo = vec![ROOT_INO];
    while let Some(i) = todo.pop() {
        for &c in children.get(&i).map(Vec::as_slice).unwrap_or(&[]) {
            if seen.insert(c) {
                todo.push(c);
            }
        }
    }
    seen
}

/// Lists `name` in directory `dir`: in the slot `d` names if it is free and within the
/// directory's pages, else in a new slot at the tail. Returns the (page, slot) used.
fn list(
    inodes: &mut BTreeMap<u64, Inode>,
    pages: &mut BTreeMap<(u64, u64), Page>,
    dirty_pages: &mut BTreeSet<(u64, u64)>,
    dir: u64,
    name: &[u8],
    d: Dirent,
) -> (u64, u64) {
    let Some(Body::Dir {
        tail_page,
        tail_used,
        ..
    }) = inodes.get_mut(&dir).map(|n| &mut n.body)
    else {
        return (d.page, d.slot);
    };
    let free = |pages: &BTreeMap<(u64, u64), Page>, p: u64, s: u64| {
        !pages
            .get(&(dir, p))
            .is_some_and(|pg| pg.entries.iter().any(|e| e.slot == s))
    };
    let within = d.page < *tail_page || (d.page == *tail_page && d.slot < *tail_used);
    let (page, slot) = if within && d.slot < PAGE_SLOTS && free(pages, d.page, d.slot) {
        (d.page, d.slot)
    } else {
        if *tail_used >= PAGE_SLOTS {
            *tail_page += 1;
            *tail_used = 0;
        }
        let at = (*tail_page, *tail_used);
        *tail_used += 1;
        at
    };
    let pg = pages.entry((dir, page)).or_default();
    pg.entries.push(PageEntry {
        slot,
        name: name.to_vec(),
        ino: d.ino,
        kind: d.kind,
    });
    pg.entries.sort_by_key(|e| e.slot);
    dirty_pages.insert((dir, page));
    (page, slot)
}
