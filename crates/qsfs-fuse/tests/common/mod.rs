//! Shared helpers of the qsfs-fuse integration tests.
#![allow(dead_code)]

pub mod mem_store;

use std::sync::Arc;

/// A fresh store for one test.
pub fn store() -> Arc<dyn qsfs_core::Store> {
    Arc::new(mem_store::MemStore::new())
}

use qsfs_fuse::{mount, Fs, FsConfig, Mount, MountOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A filesystem mounted on a temporary directory over a store; unmounted when dropped.
pub struct Fixture {
    pub store: Arc<dyn qsfs_core::Store>,
    pub mnt: PathBuf,
    pub mount: Option<Mount>,
    pub options: MountOptions,
    _dir: tempfile::TempDir,
}

pub fn config() -> FsConfig {
    FsConfig {
        flush_after: Duration::from_secs(60),
        ..FsConfig::default()
    }
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture::with(store(), MountOptions::default())
    }

    pub fn with(store: Arc<dyn qsfs_core::Store>, options: MountOptions) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mountpoint");
        let fs = Fs::open(store.clone(), config()).expect("open fs");
        let mount = mount(fs, &mnt, &options).expect("mount");
        Fixture {
            store,
            mnt,
            mount: Some(mount),
            options,
            _dir: dir,
        }
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Clean unmount and mount again over the same store.
    pub fn remount(&mut self) {
        if let Some(m) = self.mount.take() {
            m.unmount().expect("unmount");
        }
        let fs = Fs::open(self.store.clone(), config()).expect("reopen fs");
        self.mount = Some(mount(fs, &self.mnt, &self.options).expect("remount"));
    }

    /// Unmount as if the process died (nothing flushed), then mount again.
    pub fn crash_and_remount(&mut self) {
        if let Some(m) = self.mount.take() {
            m.crash().expect("crash unmount");
        }
        let fs = Fs::open(self.store.clone(), config()).expect("reopen fs after crash");
        self.mount = Some(mount(fs, &self.mnt, &self.options).expect("remount"));
    }

    pub fn fs<T>(&self, f: impl FnOnce(&mut Fs) -> T) -> T {
        self.mount.as_ref().expect("mounted").handle().with(f)
    }

    /// Live keys in one of the filesystem's namespaces.
    pub fn live_keys(&self, role: &str) -> u64 {
        self.store
            .namespace_info(&format!("qsfs-{role}"))
            .expect("info")
            .entries
    }
}

pub fn is_mounted(p: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let p = p.to_string_lossy();
    mounts.lines().any(|l| l.split(' ').nth(4) == Some(&*p))
}
