//! The process-wide budget of open sealed segment files: a namespace with many segments keeps
//! only a few descriptors open, and everything stays readable, also across compaction and a
//! reopen. In a binary of its own because the budget is process-wide.

#![allow(clippy::unwrap_used)] // tests unwrap: a failure is a test failure

use qsfs_core::Store;
use qsfs_store::{Durability, Engine, EngineConfig};

/// Descriptors of this process open on files under `dir`.
fn open_under(dir: &std::path::Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|p| p.starts_with(dir))
        .count()
}

fn value(k: u32, round: u32) -> Vec<u8> {
    (0..3000u32)
        .map(|i| (i ^ k.wrapping_mul(31) ^ round) as u8)
        .collect()
}

#[test]
fn many_segments_few_descriptors_everything_readable() {
    const BUDGET: usize = 4;
    qsfs_store::set_max_open_segment_files(BUDGET);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let config = || EngineConfig {
        durability: Durability::None,
        // The smallest segments: one 3000-byte value each.
        max_segment_size: 4096,
        ..EngineConfig::default()
    };
    let e = Engine::open(&root, config()).unwrap();
    let keys = 120u32;
    for k in 0..keys {
        e.set("default", Some(&k.to_le_bytes()), &value(k, 0))
            .unwrap();
    }
    let segments = e.segments("default").unwrap().len();
    assert!(segments >= keys as usize, "{segments} segments");
    // Sealed files within the budget, plus the one being appended to (and the lock file).
    let limit = BUDGET + 2;
    assert!(open_under(&root) <= limit, "{} open", open_under(&root));
    // Read in an order that keeps missing the open set.
    for round in 0..2 {
        for k in (0..keys).rev().step_by(1 + round) {
            let got = e.get("default", &k.to_le_bytes()).unwrap().unwrap();
            assert_eq!(got.value, value(k, 0), "key {k}");
        }
        assert!(open_under(&root) <= limit, "{} open", open_under(&root));
    }
    // Overwrite half, compact (which reads and removes many sealed files), read everything.
    for k in (0..keys).step_by(2) {
        e.set("default", Some(&k.to_le_bytes()), &value(k, 1))
            .unwrap();
    }
    e.compact_with("default", 1.0).unwrap();
    let expect = |k: u32| value(k, u32::from(k % 2 == 0));
    for k in 0..keys {
        let got = e.get("default", &k.to_le_bytes()).unwrap().unwrap();
        assert_eq!(got.value, expect(k), "key {k} after compaction");
    }
    assert!(open_under(&root) <= limit, "{} open", open_under(&root));
    drop(e);
    let e = Engine::open(&root, config()).unwrap();
    assert!(
        open_under(&root) <= limit,
        "{} open after reopen",
        open_under(&root)
    );
    for k in 0..keys {
        let got = e.get("default", &k.to_le_bytes()).unwrap().unwrap();
        assert_eq!(got.value, expect(k), "key {k} after reopen");
    }
    assert!(e.verify("default").unwrap().is_empty());
}

/// Puts a saved copy back, as 0-db's `missing-data` hook does, and counts the calls.
struct PutBack {
    saved: std::path::PathBuf,
    calls: std::sync::Mutex<Vec<std::path::PathBuf>>,
}

impl qsfs_store::EngineObserver for PutBack {
    fn on_segment_missing(&self, _ns: &str, _segment: u32, path: &std::path::Path) -> bool {
        self.calls.lock().unwrap().push(path.to_path_buf());
        std::fs::copy(&self.saved, path).is_ok()
    }
}

#[test]
fn a_deleted_sealed_file_is_asked_for_when_its_descriptor_is_reopened() {
    qsfs_store::set_max_open_segment_files(4);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("engine");
    let saved = dir.path().join("saved.seg");
    let observer = std::sync::Arc::new(PutBack {
        saved: saved.clone(),
        calls: Default::default(),
    });
    let e = Engine::open(
        &root,
        EngineConfig {
            durability: Durability::None,
            max_segment_size: 4096,
            observer: Some(observer.clone()),
            ..EngineConfig::default()
        },
    )
    .unwrap();
    for k in 0..20u32 {
        e.set("default", Some(&k.to_le_bytes()), &value(k, 0))
            .unwrap();
    }
    // Key 0 is in segment 0: delete its file (after saving it), then read enough other
    // segments that its descriptor is closed.
    let seg = root.join("ns/default/0000000000.seg");
    std::fs::copy(&seg, &saved).unwrap();
    std::fs::remove_file(&seg).unwrap();
    for k in 5..20u32 {
        e.get("default", &k.to_le_bytes()).unwrap().unwrap();
    }
    assert!(observer.calls.lock().unwrap().is_empty());
    // Not put back (the copy is elsewhere for now): an error, never "no such key".
    std::fs::rename(&saved, dir.path().join("away")).unwrap();
    assert!(matches!(
        e.get("default", &0u32.to_le_bytes()),
        Err(qsfs_core::Error::Unavailable(_))
    ));
    std::fs::rename(dir.path().join("away"), &saved).unwrap();
    let got = e.get("default", &0u32.to_le_bytes()).unwrap().unwrap();
    assert_eq!(got.value, value(0, 0));
    assert_eq!(
        observer.calls.lock().unwrap().as_slice(),
        [seg.clone(), seg]
    );
}
