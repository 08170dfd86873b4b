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
    /// The server the store is reached through, for [`Fixture::served`]; after `mount` so
    /// the mount's last flush reaches it before it stops.
    served: Option<Served>,
    pub options: MountOptions,
    store_dir: PathBuf,
    _dir: tempfile::TempDir,
}

/// A `qsfs serve` server (the server of `qsfs-store`, in this process) over an engine, on
/// 127.0.0.1 with a port of its own; stopped gracefully when dropped.
struct Served {
    addr: std::net::SocketAddr,
    rt: tokio::runtime::Runtime,
    handle: Option<qsfs_store::server::ServerHandle>,
}

impl Served {
    fn start(dir: &Path) -> Served {
        let engine: Arc<Engine> =
            Arc::new(Engine::open(dir, EngineConfig::default()).expect("server engine"));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let config = qsfs_store::server::ServerConfig {
            tcp: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
            index_root: dir.to_path_buf(),
            data_root: dir.to_path_buf(),
            ..Default::default()
        };
        let handle = rt.block_on(async move {
            qsfs_store::server::Server::bind(engine, config)
                .await
                .expect("bind")
                .spawn()
        });
        let addr = handle.local_addr.expect("a TCP address");
        Served {
            addr,
            rt,
            handle: Some(handle),
        }
    }

    /// A new client, as `qsfs mount --store zdb://127.0.0.1:PORT` makes.
    fn client(&self) -> Arc<dyn qsfs_core::Store> {
        let url = format!("zdb://{}", self.addr);
        Arc::new(qsfs_store::remote::ZdbClient::from_url(&url).expect("connect"))
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = self.rt.block_on(h.shutdown());
        }
    }
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
        Self::build(options, false)
    }

    /// A filesystem whose store is a `qsfs serve` server reached over TCP by the 0-db
    /// client, as `qsfs mount --store zdb://…` runs it.
    pub fn served() -> Fixture {
        Self::build(MountOptions::default(), true)
    }

    /// [`Fixture::served`] with mount options.
    pub fn served_with(options: MountOptions) -> Fixture {
        Self::build(options, true)
    }

    fn build(options: MountOptions, remote: bool) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let mnt = dir.path().join("mnt");
        let store_dir = dir.path().join("engine");
        std::fs::create_dir(&mnt).expect("mountpoint");
        let served = remote.then(|| Served::start(&store_dir));
        let store = match &served {
            Some(s) => s.client(),
            None => open_engine(&store_dir),
        };
        let fs = Fs::open(store.clone(), config()).expect("open fs");
        let mount = mount(fs, &mnt, &options).expect("mount");
        Fixture {
            store,
            mnt,
            mount: Some(mount),
            served,
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
    /// its directory (or, over a server, connect again), then mount again.
    pub fn crash_and_remount(&mut self) {
        if let Some(m) = self.mount.take() {
            m.crash().expect("crash unmount");
        }
        self.store = match &self.served {
            Some(s) => s.client(),
            None => open_engine_again(&mut self.store, &self.store_dir),
        };
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

/// Where a check's filesystem lives: the embedded engine, or a `qsfs serve` server reached
/// over TCP by the 0-db client (`qsfs mount --store zdb://…`). Every check runs on both.
#[derive(Clone, Copy)]
pub enum On {
    Engine,
    Served,
}

impl On {
    pub fn fixture(self) -> Fixture {
        self.with(MountOptions::default())
    }

    pub fn with(self, options: MountOptions) -> Fixture {
        match self {
            On::Engine => Fixture::with(options),
            On::Served => Fixture::served_with(options),
        }
    }
}

/// One test per check and store: `MODULE::engine::NAME` and `MODULE::served::NAME`.
#[allow(unused_macros)] // posix_roundtrips includes this module without using it
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod engine {
            $(#[test]
            fn $name() {
                super::$name(super::On::Engine)
            })*
        }
        mod served {
            $(#[test]
            fn $name() {
                super::$name(super::On::Served)
            })*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use on_both;

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

/// What a test's store wrapper ([`Hooked`]) does around the calls it passes through.
pub trait Hooks: Send + Sync + 'static {
    /// Before every call except `namespace_authenticate`.
    fn before_call(&self) {}
    /// Before a write (set, delete), after [`Hooks::before_call`]; an error fails the write.
    fn before_write(&self) -> qsfs_core::Result<()> {
        Ok(())
    }
    /// Before `get` in `ns`, after [`Hooks::before_call`]; an error is the get's answer.
    fn before_get(&self, _ns: &str) -> qsfs_core::Result<()> {
        Ok(())
    }
    /// After `get` of `key` in `ns` has its answer, before the answer is returned.
    fn after_get(&self, _ns: &str, _key: &[u8]) {}
}

/// A [`qsfs_core::Store`] passing every call to `inner`, with `hooks` around them. Derefs to
/// the hooks, so a test reaches its knobs through the store it handed out.
pub struct Hooked<H> {
    pub inner: Arc<dyn qsfs_core::Store>,
    pub hooks: H,
}

impl<H: Hooks> Hooked<H> {
    pub fn new(inner: Arc<dyn qsfs_core::Store>, hooks: H) -> Arc<Hooked<H>> {
        Arc::new(Hooked { inner, hooks })
    }
}

impl<H> std::ops::Deref for Hooked<H> {
    type Target = H;
    fn deref(&self) -> &H {
        &self.hooks
    }
}

mod hooked {
    use super::{Hooked, Hooks};
    use qsfs_core::{
        Credential, Cursor, Entry, KeyMeta, NamespaceInfo, NamespaceProperty, Result, ScanOrder,
        ScanPage, SetOutcome, Store, StoreSpace, Timestamp, Version, VersionId,
    };

    impl<H: Hooks> Store for Hooked<H> {
        fn set_at(
            &self,
            ns: &str,
            key: Option<&[u8]>,
            value: &[u8],
            t: Option<Timestamp>,
        ) -> Result<SetOutcome> {
            self.hooks.before_call();
            self.hooks.before_write()?;
            self.inner.set_at(ns, key, value, t)
        }
        fn get(&self, ns: &str, key: &[u8]) -> Result<Option<Entry>> {
            self.hooks.before_call();
            self.hooks.before_get(ns)?;
            let got = self.inner.get(ns, key);
            self.hooks.after_get(ns, key);
            got
        }
        fn delete_at(&self, ns: &str, key: &[u8], t: Option<Timestamp>) -> Result<()> {
            self.hooks.before_call();
            self.hooks.before_write()?;
            self.inner.delete_at(ns, key, t)
        }
        fn meta(&self, ns: &str, key: &[u8]) -> Result<Option<KeyMeta>> {
            self.hooks.before_call();
            self.inner.meta(ns, key)
        }
        fn check(&self, ns: &str, key: &[u8]) -> Result<Option<bool>> {
            self.hooks.before_call();
            self.inner.check(ns, key)
        }
        fn scan(
            &self,
            ns: &str,
            cursor: Option<&Cursor>,
            limit: usize,
            order: ScanOrder,
        ) -> Result<ScanPage> {
            self.hooks.before_call();
            self.inner.scan(ns, cursor, limit, order)
        }
        fn cursor_after(&self, ns: &str, key: &[u8]) -> Result<Cursor> {
            self.hooks.before_call();
            self.inner.cursor_after(ns, key)
        }
        fn history(&self, ns: &str, key: &[u8], at: Option<VersionId>) -> Result<Version> {
            self.hooks.before_call();
            self.inner.history(ns, key, at)
        }
        fn namespace_create(&self, name: &str) -> Result<()> {
            self.hooks.before_call();
            self.inner.namespace_create(name)
        }
        fn namespace_delete(&self, name: &str) -> Result<()> {
            self.hooks.before_call();
            self.inner.namespace_delete(name)
        }
        fn namespace_list(&self) -> Result<Vec<String>> {
            self.hooks.before_call();
            self.inner.namespace_list()
        }
        fn namespace_info(&self, name: &str) -> Result<NamespaceInfo> {
            self.hooks.before_call();
            self.inner.namespace_info(name)
        }
        fn namespace_set(&self, name: &str, property: NamespaceProperty) -> Result<()> {
            self.hooks.before_call();
            self.inner.namespace_set(name, property)
        }
        fn namespace_authenticate(&self, name: &str, credential: Credential<'_>) -> Result<bool> {
            self.inner.namespace_authenticate(name, credential)
        }
        fn flush_namespace(&self, name: &str) -> Result<()> {
            self.hooks.before_call();
            self.inner.flush_namespace(name)
        }
        fn sync(&self) -> Result<()> {
            self.hooks.before_call();
            self.inner.sync()
        }
        fn space(&self, ns: &str) -> Result<Option<StoreSpace>> {
            self.hooks.before_call();
            self.inner.space(ns)
        }
    }
}
