//! A store that stops answering gives EIO after the timeout — never a hang and never ENOENT —
//! and the mount recovers when the store comes back.

use crate::common;

use qsfs_core::*;
use qsfs_fuse::{mount, Fs, MountOptions, TimeoutStore};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Delegates to a real engine, except that while `stalled` every call waits (like a hung
/// server) until it is released.
struct Stalling {
    stalled: AtomicBool,
}

impl common::Hooks for Stalling {
    fn before_call(&self) {
        while self.stalled.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[test]
fn stalled_store_gives_eio_within_the_timeout_then_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = common::open_engine(&tmp.path().join("engine"));
    let stalling = common::Hooked::new(
        engine,
        Stalling {
            stalled: AtomicBool::new(false),
        },
    );
    let store: Arc<dyn Store> = Arc::new(TimeoutStore::new(
        stalling.clone(),
        Duration::from_millis(500),
        4,
    ));
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();

    // Fill, then remount so nothing about the file is cached.
    let m = mount(
        Fs::open(store.clone(), common::config()).unwrap(),
        &mnt,
        &MountOptions::default(),
    )
    .unwrap();
    std::fs::write(mnt.join("file"), b"precious").unwrap();
    m.unmount().unwrap();
    let m = mount(
        Fs::open(store.clone(), common::config()).unwrap(),
        &mnt,
        &MountOptions::default(),
    )
    .unwrap();

    let mut open = std::fs::File::create(mnt.join("new")).unwrap();
    open.write_all(b"data").unwrap();

    stalling.stalled.store(true, Ordering::SeqCst);
    let start = Instant::now();
    let err = std::fs::metadata(mnt.join("file")).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EIO),
        "an outage is EIO, not ENOENT: {err}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "answered in {:?}",
        start.elapsed()
    );

    // A write into the cache succeeds, but fsync reports that nothing reached the store.
    open.write_all(b"more").unwrap();
    let err = open.sync_all().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));

    stalling.stalled.store(false, Ordering::SeqCst);
    // The stalled calls drain; then everything works again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match std::fs::read(mnt.join("file")) {
            Ok(b) => {
                assert_eq!(b, b"precious");
                break;
            }
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO));
                assert!(Instant::now() < deadline, "mount did not recover");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    std::fs::write(mnt.join("after"), b"ok").unwrap();
    open.sync_all().unwrap();
    drop(open);
    m.unmount().unwrap();
    let m = mount(
        Fs::open(store, common::config()).unwrap(),
        &mnt,
        &MountOptions::default(),
    )
    .unwrap();
    assert_eq!(std::fs::read(mnt.join("after")).unwrap(), b"ok");
    assert_eq!(
        std::fs::read(mnt.join("new")).unwrap(),
        b"datamore",
        "dirty data kept and retried"
    );
    m.unmount().unwrap();
}
