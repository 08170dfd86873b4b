//! POSIX ACLs: the `system.posix_acl_access` / `system.posix_acl_default` xattr format and
//! what a filesystem owes the kernel when it negotiates `FUSE_POSIX_ACL`.
//!
//! With that flag the kernel enforces ACLs itself (it reads them through getxattr and caches
//! them), but leaves three things to the filesystem, which ext4 does through
//! `posix_acl_update_mode`, `posix_acl_chmod` and `posix_acl_create`:
//! - setting an access ACL updates the mode's rwx bits, and an ACL a mode can express is not
//!   stored at all ([`update_mode`]);
//! - a chmod rewrites the stored access ACL's owner, mask (or group) and other entries
//!   ([`chmod`]);
//! - a new entry in a directory with a default ACL gets its access ACL (and, for a directory,
//!   its default ACL) from it, with the umask ignored ([`create`]).
//!
//! The functions here mirror those of the kernel's `fs/posix_acl.c` line for line, so the
//! results match ext4's.

use crate::error::{FsError, FsResult};

/// The xattr holding the access ACL.
pub const ACCESS: &[u8] = b"system.posix_acl_access";
/// The xattr holding a directory's default ACL.
pub const DEFAULT: &[u8] = b"system.posix_acl_default";

/// `POSIX_ACL_XATTR_VERSION`.
const VERSION: u32 = 2;
/// The id the format stores for entries that name nobody (`ACL_UNDEFINED_ID`).
const UNDEFINED_ID: u32 = u32::MAX;
const HEADER_LEN: usize = 4;
const ENTRY_LEN: usize = 8;

/// The tag of an ACL entry, in the order entries must appear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tag {
    /// The owner (`ACL_USER_OBJ`).
    UserObj,
    /// A named user (`ACL_USER`).
    User,
    /// The owning group (`ACL_GROUP_OBJ`).
    GroupObj,
    /// A named group (`ACL_GROUP`).
    Group,
    /// The upper bound of the group class (`ACL_MASK`).
    Mask,
    /// Everyone else (`ACL_OTHER`).
    Other,
}

impl Tag {
    fn from_raw(raw: u16) -> Option<Tag> {
        Some(match raw {
            0x01 => Tag::UserObj,
            0x02 => Tag::User,
            0x04 => Tag::GroupObj,
            0x08 => Tag::Group,
            0x10 => Tag::Mask,
            0x20 => Tag::Other,
            _ => return None,
        })
    }

    fn raw(self) -> u16 {
        match self {
            Tag::UserObj => 0x01,
            Tag::User => 0x02,
            Tag::GroupObj => 0x04,
            Tag::Group => 0x08,
            Tag::Mask => 0x10,
            Tag::Other => 0x20,
        }
    }

    fn named(self) -> bool {
        matches!(self, Tag::User | Tag::Group)
    }
}

/// One entry: a tag, rwx permission bits (0..=7) and, for named entries, a uid or gid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Whom the entry is about.
    pub tag: Tag,
    /// `r` = 4, `w` = 2, `x` = 1.
    pub perm: u16,
    /// The uid (`User`) or gid (`Group`); ignored for the other tags.
    pub id: u32,
}

/// A valid POSIX ACL: exactly one owner, owning-group and other entry, a mask if any named
/// entry exists, entries sorted by tag and named ones by id without duplicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    entries: Vec<Entry>,
}

fn invalid<T>() -> FsResult<T> {
    Err(FsError::Errno(libc::EINVAL))
}

impl Acl {
    /// Checks `entries` as the kernel's `posix_acl_valid` does.
    pub fn new(mut entries: Vec<Entry>) -> FsResult<Acl> {
        let mut seen = [0usize; 6];
        let mut last: Option<(Tag, u32)> = None;
        for e in &mut entries {
            if e.perm & !7 != 0 {
                return invalid();
            }
            if !e.tag.named() {
                e.id = UNDEFINED_ID;
            }
            let key = (e.tag, if e.tag.named() { e.id } else { 0 });
            // Sorted by tag, then (named entries) strictly by id: also rules out duplicates.
            if last.is_some_and(|l| l >= key) {
                return invalid();
            }
            last = Some(key);
            seen[e.tag as usize] += 1;
        }
        let once = |t: Tag| seen[t as usize] == 1;
        if !once(Tag::UserObj) || !once(Tag::GroupObj) || !once(Tag::Other) {
            return invalid();
        }
        let named = seen[Tag::User as usize] + seen[Tag::Group as usize];
        if named > 0 && seen[Tag::Mask as usize] == 0 {
            return invalid();
        }
        Ok(Acl { entries })
    }

    /// The ACL of the three base entries a mode stands for.
    pub fn from_mode(mode: u32) -> Acl {
        let e = |tag, shift: u32| Entry {
            tag,
            perm: ((mode >> shift) & 7) as u16,
            id: UNDEFINED_ID,
        };
        Acl {
            entries: vec![e(Tag::UserObj, 6), e(Tag::GroupObj, 3), e(Tag::Other, 0)],
        }
    }

    /// The entries, in order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Parses an xattr value. `Ok(None)` is the header-only value, which the kernel reads as
    /// "no ACL".
    pub fn decode(value: &[u8]) -> FsResult<Option<Acl>> {
        if value.len() < HEADER_LEN || (value.len() - HEADER_LEN) % ENTRY_LEN != 0 {
            return invalid();
        }
        let le32 = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        if le32(&value[..HEADER_LEN]) != VERSION {
            // The kernel's answer to an unknown version (posix_acl_from_xattr).
            return Err(FsError::Errno(libc::EOPNOTSUPP));
        }
        let mut entries = Vec::with_capacity((value.len() - HEADER_LEN) / ENTRY_LEN);
        for raw in value[HEADER_LEN..].chunks_exact(ENTRY_LEN) {
            let Some(tag) = Tag::from_raw(u16::from_le_bytes([raw[0], raw[1]])) else {
                return invalid();
            };
            entries.push(Entry {
                tag,
                perm: u16::from_le_bytes([raw[2], raw[3]]),
                id: le32(&raw[4..8]),
            });
        }
        if entries.is_empty() {
            return Ok(None);
        }
        Acl::new(entries).map(Some)
    }

    /// The xattr value.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + ENTRY_LEN * self.entries.len());
        out.extend_from_slice(&VERSION.to_le_bytes());
        for e in &self.entries {
            out.extend_from_slice(&e.tag.raw().to_le_bytes());
            out.extend_from_slice(&e.perm.to_le_bytes());
            out.extend_from_slice(&e.id.to_le_bytes());
        }
        out
    }

    /// The rwx bits the ACL gives the mode (owner, mask or owning group, other), and whether
    /// the mode alone cannot express it (`posix_acl_equiv_mode`).
    pub fn mode_bits(&self) -> (u32, bool) {
        let mut mode = 0u32;
        let mut not_equiv = false;
        for e in &self.entries {
            let p = u32::from(e.perm & 7);
            match e.tag {
                Tag::UserObj => mode |= p << 6,
                Tag::GroupObj => mode |= p << 3,
                Tag::Other => mode |= p,
                Tag::Mask => {
                    mode = (mode & !0o070) | (p << 3);
                    not_equiv = true;
                }
                Tag::User | Tag::Group => not_equiv = true,
            }
        }
        (mode, not_equiv)
    }
}

/// Setting access ACL `acl` on an inode of permission bits `perm`: the new permission bits
/// (special bits kept), and the ACL to store (`None`: the mode says it all, store nothing).
pub fn update_mode(perm: u32, acl: Acl) -> (u32, Option<Acl>) {
    let (bits, not_equiv) = acl.mode_bits();
    let perm = (perm & !0o777) | bits;
    (perm, not_equiv.then_some(acl))
}

/// A chmod to `mode` rewrites the access ACL's owner, mask (or owning group) and other
/// entries (`posix_acl_chmod_masq`); named entries stay.
pub fn chmod(acl: &mut Acl, mode: u32) {
    let has_mask = acl.entries.iter().any(|e| e.tag == Tag::Mask);
    for e in &mut acl.entries {
        match e.tag {
            Tag::UserObj => e.perm = ((mode >> 6) & 7) as u16,
            Tag::Mask => e.perm = ((mode >> 3) & 7) as u16,
            Tag::GroupObj if !has_mask => e.perm = ((mode >> 3) & 7) as u16,
            Tag::Other => e.perm = (mode & 7) as u16,
            _ => {}
        }
    }
}

/// What a new inode gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// Its permission bits (with the special bits asked for).
    pub perm: u32,
    /// Its access ACL, if the mode cannot express it.
    pub access: Option<Acl>,
    /// Its default ACL (a directory under a directory with one).
    pub default: Option<Acl>,
}

/// A new inode asked with permission bits `perm` and `umask` in a directory whose default ACL
/// is `parent_default` (`posix_acl_create`): without one, the umask applies; with one, it
/// does not, and the default ACL masked by `perm` becomes the access ACL. Symlinks take
/// neither.
pub fn create(perm: u32, umask: u32, is_dir: bool, parent_default: Option<&Acl>) -> Created {
    let Some(default) = parent_default else {
        return Created {
            perm: perm & !(umask & 0o777),
            access: None,
            default: None,
        };
    };
    let mut acl = default.clone();
    let mut mode = perm & 0o777;
    let mut not_equiv = false;
    // posix_acl_create_masq, which narrows the ACL and the mode by each other.
    for e in &mut acl.entries {
        match e.tag {
            Tag::UserObj => {
                e.perm &= ((mode >> 6) & 7) as u16;
                mode &= (u32::from(e.perm) << 6) | !0o700;
            }
            Tag::Other => {
                e.perm &= (mode & 7) as u16;
                mode &= u32::from(e.perm) | !0o007;
            }
            Tag::User | Tag::Group | Tag::Mask => not_equiv = true,
            Tag::GroupObj => {}
        }
    }
    let has_mask = acl.entries.iter().any(|e| e.tag == Tag::Mask);
    for e in &mut acl.entries {
        if (has_mask && e.tag == Tag::Mask) || (!has_mask && e.tag == Tag::GroupObj) {
            e.perm &= ((mode >> 3) & 7) as u16;
            mode &= (u32::from(e.perm) << 3) | !0o070;
        }
    }
    Created {
        perm: (perm & !0o777) | mode,
        access: not_equiv.then_some(acl),
        default: is_dir.then(|| default.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn e(tag: Tag, perm: u16, id: u32) -> Entry {
        Entry { tag, perm, id }
    }

    fn base(u: u16, g: u16, o: u16) -> Vec<Entry> {
        vec![
            e(Tag::UserObj, u, 0),
            e(Tag::GroupObj, g, 0),
            e(Tag::Other, o, 0),
        ]
    }

    fn with_named() -> Acl {
        Acl::new(vec![
            e(Tag::UserObj, 7, 0),
            e(Tag::User, 6, 1000),
            e(Tag::GroupObj, 5, 0),
            e(Tag::Group, 4, 50),
            e(Tag::Mask, 7, 0),
            e(Tag::Other, 0, 0),
        ])
        .unwrap()
    }

    fn errno_of<T: std::fmt::Debug>(r: FsResult<T>) -> i32 {
        match r {
            Err(FsError::Errno(n)) => n,
            other => panic!("expected an errno, got {other:?}"),
        }
    }

    #[test]
    fn invalid_acls_are_refused() {
        let mut no_mask = base(7, 5, 0);
        no_mask.insert(1, e(Tag::User, 7, 1));
        let mut dup_user = with_named().entries;
        dup_user.insert(2, e(Tag::User, 1, 1000));
        let mut unsorted = base(7, 5, 0);
        unsorted.swap(0, 1);
        let mut two_others = base(7, 5, 0);
        two_others.push(e(Tag::Other, 1, 0));
        let bad: Vec<Vec<Entry>> = vec![
            base(7, 5, 0)[1..].to_vec(),                      // no USER_OBJ
            vec![e(Tag::UserObj, 7, 0), e(Tag::Other, 0, 0)], // no GROUP_OBJ
            base(7, 5, 0)[..2].to_vec(),                      // no OTHER
            no_mask,
            dup_user,
            unsorted,
            two_others,
            base(8, 5, 0), // perm beyond rwx
        ];
        for entries in bad {
            assert_eq!(
                errno_of(Acl::new(entries.clone())),
                libc::EINVAL,
                "{entries:?}"
            );
        }
        assert!(Acl::new(base(7, 5, 0)).is_ok());
    }

    #[test]
    fn malformed_values_are_refused() {
        let good = with_named().encode();
        assert_eq!(errno_of(Acl::decode(&good[..good.len() - 1])), libc::EINVAL);
        assert_eq!(errno_of(Acl::decode(&[2, 0])), libc::EINVAL);
        let mut v1 = good.clone();
        v1[0] = 1;
        assert_eq!(errno_of(Acl::decode(&v1)), libc::EOPNOTSUPP);
        let mut bad_tag = good.clone();
        bad_tag[4] = 0x40;
        assert_eq!(errno_of(Acl::decode(&bad_tag)), libc::EINVAL);
        assert_eq!(Acl::decode(&2u32.to_le_bytes()).unwrap(), None);
        assert_eq!(Acl::decode(&good).unwrap(), Some(with_named()));
    }

    #[test]
    fn setting_an_acl_moves_the_mode() {
        // Named entries: stored, group bits come from the mask.
        let (perm, stored) = update_mode(0o2000 | 0o644, with_named());
        assert_eq!(perm, 0o2000 | 0o770);
        assert_eq!(stored, Some(with_named()));
        // Three base entries: only the mode changes.
        let (perm, stored) = update_mode(0o644, Acl::new(base(6, 4, 1)).unwrap());
        assert_eq!((perm, stored), (0o641, None));
    }

    #[test]
    fn chmod_rewrites_mask_not_group() {
        let mut acl = with_named();
        chmod(&mut acl, 0o640);
        let perms: Vec<u16> = acl.entries().iter().map(|e| e.perm).collect();
        assert_eq!(perms, vec![6, 6, 5, 4, 4, 0]);
        let mut plain = Acl::new(base(7, 7, 7)).unwrap();
        chmod(&mut plain, 0o751);
        assert_eq!(plain, Acl::from_mode(0o751));
    }

    #[test]
    fn creation_follows_posix_acl_create() {
        let none = create(0o666, 0o022, false, None);
        assert_eq!((none.perm, none.access, none.default), (0o644, None, None));
        let d = with_named();
        // A file asked 0666: the umask is ignored, the mask takes the group bits asked.
        let f = create(0o666, 0o077, false, Some(&d));
        assert_eq!(f.perm, 0o660);
        let perms: Vec<u16> = f
            .access
            .as_ref()
            .unwrap()
            .entries()
            .iter()
            .map(|e| e.perm)
            .collect();
        assert_eq!(perms, vec![6, 6, 5, 4, 6, 0]);
        assert_eq!(f.default, None);
        let sub = create(0o2777, 0o077, true, Some(&d));
        assert_eq!(sub.perm, 0o2770);
        assert_eq!(sub.default, Some(d));
        // A default ACL of base entries only: mode only.
        let plain = Acl::new(base(7, 5, 0)).unwrap();
        let f = create(0o666, 0o022, false, Some(&plain));
        assert_eq!((f.perm, f.access), (0o640, None));
    }

    fn arb_acl() -> impl Strategy<Value = Acl> {
        (
            0u16..8,
            0u16..8,
            0u16..8,
            proptest::option::of(0u16..8),
            proptest::collection::btree_map(0u32..100_000, 0u16..8, 0..4),
            proptest::collection::btree_map(0u32..100_000, 0u16..8, 0..4),
        )
            .prop_map(|(u, g, o, mask, users, groups)| {
                let mut v = vec![e(Tag::UserObj, u, 0)];
                v.extend(users.iter().map(|(id, p)| e(Tag::User, *p, *id)));
                v.push(e(Tag::GroupObj, g, 0));
                v.extend(groups.iter().map(|(id, p)| e(Tag::Group, *p, *id)));
                let named = !users.is_empty() || !groups.is_empty();
                if let Some(m) = mask.or(named.then_some(7)) {
                    v.push(e(Tag::Mask, m, 0));
                }
                v.push(e(Tag::Other, o, 0));
                Acl::new(v).unwrap()
            })
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(acl in arb_acl()) {
            prop_assert_eq!(Acl::decode(&acl.encode()).unwrap(), Some(acl));
        }

        #[test]
        fn mode_follows_acl_and_chmod(acl in arb_acl(), special in 0u32..8, new in 0u32..0o1000) {
            let (perm, stored) = update_mode(special << 9, acl.clone());
            prop_assert_eq!(perm >> 9, special);
            let owner = acl.entries().iter().find(|e| e.tag == Tag::UserObj).unwrap().perm;
            prop_assert_eq!((perm >> 6) & 7, u32::from(owner));
            let named = acl.entries().iter().any(|e| e.tag.named() || e.tag == Tag::Mask);
            prop_assert_eq!(stored.is_some(), named);
            if stored.is_none() {
                prop_assert_eq!(Acl::from_mode(perm), acl.clone());
            }
            let mut changed = acl.clone();
            chmod(&mut changed, new);
            prop_assert_eq!(changed.mode_bits().0, new);
            prop_assert!(Acl::new(changed.entries().to_vec()).is_ok());
        }

        #[test]
        fn created_mode_matches_created_acl(acl in arb_acl(), perm in 0u32..0o10000, dir: bool) {
            let c = create(perm, 0o777, dir, Some(&acl));
            prop_assert_eq!(c.perm & !0o777, perm & !0o777);
            prop_assert_eq!(c.perm & 0o777 & !perm, 0, "never more than asked");
            let effective = c.access.clone().unwrap_or_else(|| Acl::from_mode(c.perm));
            prop_assert_eq!(effective.mode_bits().0, c.perm & 0o777);
            prop_assert_eq!(c.default.is_some(), dir);
        }
    }
}
