//! Scrub, gc, unchanged files and group-aware placement, end to end.

use crate::common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use qsfs_backup::backends::Memory;
use qsfs_backup::ops::{self, ScrubOptions};
use qsfs_backup::pipeline::Pipeline;
use qsfs_backup::placement::Policy;
use qsfs_backup::progress::NoProgress;
use qsfs_core::Backend;

fn corrupt_one_shard(r: &Rig, object_hex: &str) -> bool {
    for d in &r.data {
        if let Some(k) = d.keys().into_iter().find(|k| k.contains(object_hex)) {
            return d.tamper(&k, |v| v[0] ^= 0xff);
        }
    }
    false
}

#[tokio::test]
async fn scrub_repairs_everything_and_resumes() {
    let r = rig(2, 1, 1024).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        r.pipeline
            .put(&format!("o{i}"), Bytes::from(random_bytes(3000, i)))
            .await
            .expect("put");
        ids.push(hex_id(&r.pipeline, &format!("o{i}")).await);
    }
    assert!(corrupt_one_shard(&r, &ids[1]));
    assert!(corrupt_one_shard(&r, &ids[3]));

    // An interrupted scrub: remember the cursors it saved.
    let mut cursors = Vec::new();
    let mut save = |c: &str| cursors.push(c.to_string());
    let opts = ScrubOptions {
        rate: Some(10 << 20),
        resume_after: None,
    };
    let rep = ops::scrub(&r.pipeline, &opts, &mut save)
        .await
        .expect("scrub");
    assert_eq!(rep.objects, 4);
    assert_eq!(rep.repairs.iter().map(|x| x.rewritten).sum::<usize>(), 2);
    assert!(rep.failures.is_empty());
    assert_eq!(cursors.len(), 4);
    let (checks, _) = ops::check(&r.pipeline, None, true).await.expect("check");
    assert!(checks.iter().all(|h| h.is_clean()));

    // Resuming after the second cursor skips two objects and scrubs the rest.
    let opts = ScrubOptions {
        rate: None,
        resume_after: Some(cursors[1].clone()),
    };
    let rep = ops::scrub(&r.pipeline, &opts, &mut |_| {})
        .await
        .expect("resume");
    assert_eq!((rep.skipped, rep.objects), (2, 2));
}

async fn hex_id(p: &Pipeline, name: &str) -> String {
    let rec = p.record(name).await.expect("record");
    rec.object_id.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn gc_removes_orphans_and_keeps_live_shards() {
    let r = rig(2, 1, 1024).await;
    r.pipeline
        .put("keep", Bytes::from(random_bytes(2000, 1)))
        .await
        .expect("put");
    let live: usize = r.data.iter().map(|d| d.len()).sum();
    // An orphan from a store that died before writing its record.
    r.data[0]
        .put(
            "t/d/00112233445566778899aabbccddeeff/00000000.000",
            Bytes::from_static(b"junk"),
        )
        .await
        .expect("orphan");
    // A foreign key under the prefix that is not a shard key is left alone.
    r.data[1]
        .put("t/d/not-a-shard", Bytes::from_static(b"x"))
        .await
        .expect("foreign");
    let rep = ops::gc(&r.pipeline).await.expect("gc");
    assert_eq!(rep.shards_deleted, 1);
    assert_eq!(r.data.iter().map(|d| d.len()).sum::<usize>(), live + 1);
    assert_eq!(r.pipeline.get("keep").await.expect("get").len(), 2000);
    // gc refuses to run while a record is unreadable (its shards would look orphaned).
    for meta in &r.meta {
        for k in meta.keys().into_iter().filter(|k| k.contains("/m/")) {
            meta.tamper(&k, |v| {
                let n = v.len();
                v[n - 1] ^= 1
            });
        }
    }
    assert!(ops::gc(&r.pipeline).await.is_err());
}

/// Backends reached under other names than the records hold (a relative `local:` path read
/// from another directory, `localhost` for `127.0.0.1`): gc refuses instead of taking every
/// shard for an orphan, and the objects still read under the old names.
#[tokio::test]
async fn gc_refuses_when_the_records_name_backends_the_config_lacks() {
    let r = rig(2, 1, 1024).await;
    let body = random_bytes(5000, 2);
    r.pipeline
        .put("keep", Bytes::from(body.clone()))
        .await
        .expect("put");
    let live: usize = r.data.iter().map(|d| d.len()).sum();
    let renamed: Vec<_> = r
        .data
        .iter()
        .enumerate()
        .map(|(i, d)| d.renamed(format!("elsewhere-{i}")))
        .collect();
    let other = open_over(settings(2, 1, 1024), &renamed, &r.meta, &key())
        .await
        .expect("open under other names");
    let e = ops::gc(&other).await.expect_err("gc under other names");
    assert!(e.to_string().contains("not in the config"), "{e}");
    assert_eq!(r.data.iter().map(|d| d.len()).sum::<usize>(), live);
    assert_eq!(
        r.pipeline.get("keep").await.expect("get").as_ref(),
        &body[..]
    );
    assert_eq!(ops::gc(&r.pipeline).await.expect("gc").shards_deleted, 0);
}

#[tokio::test]
async fn unchanged_files_are_not_stored_again() {
    let r = rig(2, 1, 1024).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("f.bin");
    std::fs::write(&f, random_bytes(5000, 4)).expect("write");
    let a = ops::store_file(&r.pipeline, &f, &NoProgress)
        .await
        .expect("store");
    assert!(!a.unchanged);
    let before: usize = r.data.iter().map(|d| d.len()).sum();
    let b = ops::store_file(&r.pipeline, &f, &NoProgress)
        .await
        .expect("store again");
    assert!(b.unchanged);
    assert_eq!(b.version, a.version);
    assert_eq!(r.data.iter().map(|d| d.len()).sum::<usize>(), before);
    std::fs::write(&f, random_bytes(5000, 5)).expect("rewrite");
    let c = ops::store_file(&r.pipeline, &f, &NoProgress)
        .await
        .expect("store changed");
    assert!(!c.unchanged);
    assert_eq!(c.version, a.version + 1);
    // Mode and mtime come back with the file.
    let out = dir.path().join("restored");
    ops::retrieve_to_path(&r.pipeline, &a.name, &out, &Default::default(), &NoProgress)
        .await
        .expect("retrieve");
    let (m1, m2) = (
        std::fs::metadata(&f).expect("m"),
        std::fs::metadata(&out).expect("m"),
    );
    assert_eq!(m1.modified().expect("t"), m2.modified().expect("t"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        m1.permissions().mode() & 0o7777,
        m2.permissions().mode() & 0o7777
    );
}

#[tokio::test]
async fn losing_a_whole_group_is_survivable_when_promised() {
    // 3 groups of 3; 2+4 with redundant_groups = 1 and redundant_nodes = 1.
    let mut s = settings(2, 4, 1024);
    s.policy = Policy {
        k: 2,
        m: 4,
        redundant_groups: 1,
        redundant_nodes: 1,
        max_shards_per_backend: 1,
    };
    let data: Vec<Memory> = (0..9)
        .map(|i| Memory::new(format!("g{}-{}", i / 3, i % 3)))
        .collect();
    let meta: Vec<Memory> = (0..3).map(|i| Memory::new(format!("meta{i}"))).collect();
    let groups: Vec<Vec<Arc<dyn Backend>>> = data
        .chunks(3)
        .map(|g| {
            g.iter()
                .map(|m| Arc::new(m.clone()) as Arc<dyn Backend>)
                .collect()
        })
        .collect();
    let metas = meta
        .iter()
        .map(|m| Arc::new(m.clone()) as Arc<dyn Backend>)
        .collect();
    let p = Pipeline::open(s, groups, metas, &key())
        .await
        .expect("open");
    let bytes = random_bytes(4000, 8);
    p.put("o", Bytes::from(bytes.clone())).await.expect("put");
    // Any whole group plus one backend of each other group.
    for g in 0..3 {
        for x in 0..3 {
            for y in 0..3 {
                let mut dead = vec![g * 3, g * 3 + 1, g * 3 + 2];
                let others: Vec<usize> = (0..3).filter(|&o| o != g).collect();
                dead.push(others[0] * 3 + x);
                dead.push(others[1] * 3 + y);
                for &d in &dead {
                    data[d].set_down(true);
                }
                assert_eq!(
                    p.get("o")
                        .await
                        .unwrap_or_else(|e| panic!("lost {dead:?}: {e}")),
                    bytes
                );
                for &d in &dead {
                    data[d].set_down(false);
                }
            }
        }
    }
}

#[tokio::test]
async fn changing_the_passphrase_rewraps_only_the_key() {
    let r = rig(2, 1, 1024).await;
    r.pipeline
        .put("o", Bytes::from_static(b"payload"))
        .await
        .expect("put");
    let shards_before: Vec<Vec<String>> = r.data.iter().map(|d| d.keys()).collect();
    let new = qsfs_backup::crypto::KeySource::passphrase("new passphrase");
    // Not while a metadata backend is down.
    r.meta[2].set_down(true);
    assert!(r.pipeline.change_key(&key(), &new).await.is_err());
    r.meta[2].set_down(false);
    r.pipeline.change_key(&key(), &new).await.expect("change");
    let e = open_over(settings(2, 1, 1024), &r.data, &r.meta, &key())
        .await
        .expect_err("old one");
    assert!(e.to_string().contains("wrong passphrase"), "{e}");
    let p = open_over(settings(2, 1, 1024), &r.data, &r.meta, &new)
        .await
        .expect("new one opens");
    assert_eq!(
        p.get("o").await.expect("get"),
        Bytes::from_static(b"payload")
    );
    let shards_after: Vec<Vec<String>> = r.data.iter().map(|d| d.keys()).collect();
    assert_eq!(shards_before, shards_after, "no data rewritten");
}

/// The repository header: one copy that does not parse is a damaged replica (the others
/// unlock the repository), and metadata that lost every copy while it still holds records is
/// refused, not taken for an empty place to start a new repository with whatever passphrase
/// comes (that locked the real passphrase out).
#[tokio::test]
async fn a_damaged_or_lost_header_neither_locks_out_nor_starts_a_new_repository() {
    let r = rig(2, 1, 1024).await;
    let body = random_bytes(3000, 3);
    r.pipeline
        .put("keep", Bytes::from(body.clone()))
        .await
        .expect("put");
    r.meta[0]
        .put("t/repo", Bytes::from_static(b"{ not json"))
        .await
        .expect("damage one copy");
    let p = open_over(settings(2, 1, 1024), &r.data, &r.meta, &key())
        .await
        .expect("open with one damaged copy");
    assert_eq!(p.get("keep").await.expect("get").as_ref(), &body[..]);

    for m in &r.meta {
        m.delete("t/repo").await.expect("lose the header");
    }
    let other = qsfs_backup::crypto::KeySource::passphrase("another passphrase");
    let e = open_over(settings(2, 1, 1024), &r.data, &r.meta, &other)
        .await
        .expect_err("a new repository over the records");
    assert!(e.to_string().contains("still hold records"), "{e}");
    for m in &r.meta {
        assert!(m.get("t/repo").await.is_err(), "no new header written");
    }
}

/// A file that changes while it is stored is stored as read, and the report says it changed
/// (it said nothing: a growing log came back as a snapshot of some middle state, exit 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_changing_while_it_is_stored_is_reported() {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    let r = rig(2, 1, 4096).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("log");
    // Large enough (a thousand stripes) that the store takes many of the writer's appends.
    std::fs::write(&f, random_bytes(4_000_000, 5)).expect("write");
    let still = ops::store_file(&r.pipeline, &f, &NoProgress)
        .await
        .expect("store");
    assert!(!still.changed_while_read);
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, f) = (stop.clone(), f.clone());
        std::thread::spawn(move || {
            let mut out = std::fs::OpenOptions::new()
                .append(true)
                .open(&f)
                .expect("open");
            while !stop.load(Ordering::Relaxed) {
                out.write_all(&[b'x'; 1024]).expect("append");
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(5));
    let growing = ops::store_file(&r.pipeline, &f, &NoProgress).await;
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    assert!(growing.expect("store").changed_while_read);
}

/// A retrieve to a device or a FIFO (`-o /dev/null`) writes into it, with or without
/// `force`: the node is never replaced by a file, as renaming the retrieved file over it did.
#[tokio::test]
async fn a_retrieve_into_a_device_or_fifo_writes_into_it() {
    use std::os::unix::fs::FileTypeExt;
    let r = rig(2, 1, 1024).await;
    let data = random_bytes(5000, 77);
    r.pipeline
        .put("obj", Bytes::from(data.clone()))
        .await
        .expect("put");
    let dir = tempfile::tempdir().expect("tempdir");
    let null = dir.path().join("null");
    let st = std::process::Command::new("mknod")
        .arg(&null)
        .args(["c", "1", "3"])
        .status()
        .expect("mknod");
    assert!(st.success(), "mknod needs root, as CI runs");
    for force in [false, true] {
        let opts = ops::RetrieveOptions {
            force,
            ..Default::default()
        };
        let rep = ops::retrieve_to_path(&r.pipeline, "obj", &null, &opts, &NoProgress)
            .await
            .expect("retrieve into a device");
        assert_eq!(rep.bytes, data.len() as u64);
        let ft = std::fs::symlink_metadata(&null).expect("stat").file_type();
        assert!(
            ft.is_char_device(),
            "force {force}: the device node is still there"
        );
    }
    let fifo = dir.path().join("fifo");
    let st = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(st.success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).expect("read the fifo"))
    };
    ops::retrieve_to_path(&r.pipeline, "obj", &fifo, &Default::default(), &NoProgress)
        .await
        .expect("retrieve into a fifo");
    assert_eq!(reader.join().expect("reader"), data);
    assert!(std::fs::symlink_metadata(&fifo)
        .expect("stat")
        .file_type()
        .is_fifo());
}

/// Local directories stored to under the names older versions gave them (`local:` and the path
/// the config was reached by: absolute from `-c /etc/qsfs/c.toml`, relative and prefixed from
/// `-c dir/c.toml`) are found again under the names a config gives now (its own words, here
/// `local:bN`): reads, repair and gc work, and gc deletes nothing the records need.
#[tokio::test]
async fn local_directories_are_found_under_the_names_older_versions_gave_them() {
    use qsfs_backup::backends::LocalDir;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg_dir = dir.path().join("dir");
    let path = |i: usize| cfg_dir.join(format!("b{i}"));
    let old_name = |i: usize| {
        if i % 2 == 0 {
            format!("local:{}", path(i).display())
        } else {
            format!("local:dir/b{i}")
        }
    };
    let meta: Vec<Arc<dyn Backend>> = vec![Arc::new(Memory::new("meta"))];
    let secret = key();
    let open = |named: &dyn Fn(usize) -> String| {
        let group: Vec<Arc<dyn Backend>> = (0..3)
            .map(|i| {
                Arc::new(LocalDir::open(path(i)).expect("open").named(named(i))) as Arc<dyn Backend>
            })
            .collect();
        Pipeline::open(settings(2, 1, 1024), vec![group], meta.clone(), &secret)
    };
    let body = random_bytes(5000, 9);
    let before = open(&old_name).await.expect("open under the old names");
    before
        .put("kept", Bytes::from(body.clone()))
        .await
        .expect("put");
    // An orphan shard (a store that failed half-way), for gc to find.
    let orphan = format!("t/d/{}/00000000.000", "ab".repeat(16));
    LocalDir::open(path(1))
        .expect("open")
        .put(&orphan, Bytes::from_static(b"orphan"))
        .await
        .expect("put orphan");

    let now = open(&|i| format!("local:b{i}"))
        .await
        .expect("open under new names");
    assert_eq!(now.get("kept").await.expect("get").as_ref(), &body[..]);
    // A shard lost on the relative-named directory is repaired from the others.
    fn files(d: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(d).expect("list").filter_map(|e| e.ok()) {
            match e.file_type() {
                Ok(t) if t.is_dir() => files(&e.path(), out),
                Ok(t) if t.is_file() => out.push(e.path()),
                _ => {}
            }
        }
    }
    let mut on_b1 = Vec::new();
    files(&path(1), &mut on_b1);
    let lost = on_b1
        .iter()
        .find(|p| {
            let p = p.to_string_lossy();
            p.contains("/d@/") && !p.contains(&"ab".repeat(16))
        })
        .expect("a shard on b1");
    std::fs::remove_file(lost).expect("rm");
    let rec = now.record("kept").await.expect("record");
    let report = now.repair(&rec, None).await.expect("repair");
    assert_eq!((report.rewritten, report.moved), (1, 0), "{report:?}");
    let gc = ops::gc(&now).await.expect("gc");
    assert_eq!(gc.shards_deleted, 1, "only the orphan goes: {gc:?}");
    assert_eq!(
        now.get("kept").await.expect("get after gc").as_ref(),
        &body[..]
    );
    // Nothing that is not the same directory answers to an old name.
    let stranger = LocalDir::open(dir.path().join("elsewhere/b1")).expect("open");
    assert!(!stranger.answers_to(&old_name(1)));
    assert!(!stranger.answers_to(&old_name(0)));
    assert!(LocalDir::open(path(1))
        .expect("open")
        .answers_to(&old_name(1)));
}
