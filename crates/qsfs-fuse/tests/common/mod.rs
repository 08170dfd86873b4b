//! Shared helpers of the qsfs-fuse integration tests.
#![allow(dead_code)]

use qsfs_store::{Engine, EngineConfig};
use std::sync::Arc;

/// The embedded engine over `dir`.
pub fn open_engine(dir: &Path) -> Arc<dyn qsfs_core::Store> {
    Arc::new(Engine::open(dir, EngineConfig::default()).expect("open engine"))
}

/// A fresh engine in a temporary directory.
pub fn engine() -> (Arc<dyn qsfs_core::Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    (open_engine(dir.path()), dir)
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
    store_dir: PathBuf,
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
        Fixture::with(MountOptions::default())
    }

    pub fn with(options: MountOptions) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let mnt = dir.path().join("mnt");
        let store_dir = dir.path().join("engine");
        std::fs::create_dir(&mnt).expect("mountpoint");
        let store = open_engine(&store_dir);
        let fs = Fs::open(store.clone(), config()).expect("open fs");
        let mount = mount(fs, &mnt, &options).expect("mount");
        Fixture {
            store,
            mnt,
            mount: Some(mount),
            options,
            store_dir,
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

    /// Unmount as if the process died (nothing flushed), close and re-open the engine from
    /// its directory, then mount again.
    pub fn crash_and_remount(&mut self) {
        if let Some(m) = self.mount.take() {
            m.crash().expect("crash unmount");
        }
        self.store = open_engine_again(&mut self.store, &self.store_dir);
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

fn open_engine_again(
    store: &mut Arc<dyn qsfs_core::Store>,
    dir: &Path,
) -> Arc<dyn qsfs_core::Store> {
    // Drop our reference first: the engine's directory lock is released with the last one.
    let placeholder: Arc<dyn qsfs_core::Store> = Arc::new(
        Engine::open(dir.with_extension("tmp"), EngineConfig::default())
            .expect("placeholder engine"),
    );
    let old = std::mem::replace(store, placeholder);
    assert_eq!(Arc::strong_count(&old), 1, "someone still holds the engine");
    drop(old);
    open_engine(dir)
}
