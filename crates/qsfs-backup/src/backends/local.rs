//! A backend in a local directory.
//!
//! Layout: the key `a/b/c` is the file `ROOT/a@/b@/c`. Directories carry an `@` suffix, which
//! cannot occur in a key, so a key never collides with the directory of a longer key (`a` and
//! `a/b` can both exist) and a 255-byte key still fits a file name. Writes go to `ROOT/@tmp/`
//! first, are fsynced, renamed into place and the directory is fsynced, so a crash
//! leaves the old blob or the new one, never a torn one, and a `put` that returned survives.
//!
//! Directory fsyncs are shared by concurrent writers (group commit, `DirSync`): the shards of
//! an object all land in one directory, so the stripes a pipeline writes at once cost one
//! directory fsync per batch instead of one each.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use qsfs_core::{check_object_key, Backend, Error, Health, Result};

const SUFFIX: char = '@';
const TMP: &str = "@tmp";

/// A blob store in a directory.
#[derive(Debug, Clone)]
pub struct LocalDir {
    root: Arc<PathBuf>,
    /// The name records know it by, when not `local:` and the path.
    name: Option<Arc<str>>,
    seq: Arc<AtomicU64>,
    dir_sync: Arc<DirSync>,
}

/// Group commit of directory fsyncs.
///
/// A writer adds the directories it changed to the batch being collected and waits until a
/// batch holding them has been fsynced. One writer at a time (the leader) fsyncs a whole batch;
/// writers that arrive meanwhile collect the next one, so N concurrent renames into a directory
/// cost one or two fsyncs of it, and no writer returns before its rename is durable.
#[derive(Debug, Default)]
struct DirSync {
    state: Mutex<SyncState>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct SyncState {
    /// Directories of the batch being collected (number `collecting`).
    pending: BTreeSet<PathBuf>,
    collecting: u64,
    /// Batches below this number are finished.
    finished: u64,
    /// A leader is fsyncing batch `collecting - 1`.
    running: bool,
    /// Errors of recent batches, by batch number.
    errors: BTreeMap<u64, String>,
}

impl DirSync {
    fn sync(&self, dirs: impl IntoIterator<Item = PathBuf>) -> std::io::Result<()> {
        let mut st = self.state.lock();
        st.pending.extend(dirs);
        let mine = st.collecting;
        loop {
            if st.finished > mine {
                return match st.errors.get(&mine) {
                    Some(e) => Err(std::io::Error::other(e.clone())),
                    None => Ok(()),
                };
            }
            if !st.running {
                // Nobody is fsyncing, so batch `mine` has not started: lead it.
                let batch = std::mem::take(&mut st.pending);
                st.collecting += 1;
                st.running = true;
                drop(st);
                let mut err = None;
                for d in &batch {
                    if let Err(e) = File::open(d).and_then(|f| f.sync_all()) {
                        err.get_or_insert(format!("fsync directory {}: {e}", d.display()));
                    }
                }
                let mut st = self.state.lock();
                st.running = false;
                st.finished = mine + 1;
                if let Some(e) = &err {
                    st.errors.insert(mine, e.clone());
                }
                // Waiters of a batch read its error right after it ends; keep a margin.
                while st.errors.len() > 64 {
                    st.errors.pop_first();
                }
                drop(st);
                self.done.notify_all();
                return match err {
                    Some(e) => Err(std::io::Error::other(e)),
                    None => Ok(()),
                };
            }
            self.done.wait(&mut st);
        }
    }
}

impl LocalDir {
    /// Opens (creating if needed) the directory `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        fs::create_dir_all(root.join(TMP))
            .map_err(|e| Error::io(format!("create {}", root.display()), e))?;
        Ok(LocalDir {
            root: Arc::new(root),
            name: None,
            seq: Arc::new(AtomicU64::new(0)),
            dir_sync: Arc::new(DirSync::default()),
        })
    }

    /// A backend on `root` that touches nothing yet: while the directory cannot be used (a
    /// file in its place, an unmounted disk) every call fails and the backend reads as down,
    /// instead of the whole repository failing to open. The temp area is created on the first
    /// write that finds it missing.
    pub fn unopened(root: impl Into<PathBuf>) -> Self {
        LocalDir {
            root: Arc::new(root.into()),
            name: None,
            seq: Arc::new(AtomicU64::new(0)),
            dir_sync: Arc::new(DirSync::default()),
        }
    }

    /// The same backend under `name` (records know the backend by it) instead of `local:` and
    /// its path: a config names a relative directory by the words it was written with, so the
    /// name does not depend on the directory the config was read from.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(Arc::from(name.into()));
        self
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> PathBuf {
        let mut p = self.root.to_path_buf();
        let mut parts = key.split('/').peekable();
        while let Some(c) = parts.next() {
            if parts.peek().is_some() {
                p.push(format!("{c}{SUFFIX}"));
            } else {
                p.push(c);
            }
        }
        p
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&LocalDir) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(&me))
            .await
            .map_err(|e| Error::Unavailable(format!("local backend task failed: {e}")))?
    }

    fn put_sync(&self, key: &str, data: &[u8]) -> Result<()> {
        let target = self.path(key);
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self.root.join(TMP).join(format!(
            "{}-{n}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let ctx = |what: &str| format!("{what} {} in {}", key, self.root.display());
        let result = (|| {
            let mut f = match File::create(&tmp) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // The temp area is gone (directory wiped or never created): recreate it.
                    fs::create_dir_all(self.root.join(TMP))
                        .and_then(|()| File::create(&tmp))
                        .map_err(|e| Error::io(ctx("create temp for"), e))?
                }
                r => r.map_err(|e| Error::io(ctx("create temp for"), e))?,
            };
            f.write_all(data).map_err(|e| Error::io(ctx("write"), e))?;
            // Contents and length; the name is made durable by the directory fsync below.
            f.sync_data().map_err(|e| Error::io(ctx("fsync"), e))?;
            drop(f);
            let parent = target.parent().unwrap_or(&self.root).to_path_buf();
            // Directories created for this key must reach the disk too: their parents are
            // fsynced with the key's own directory.
            let mut to_sync = vec![parent.clone()];
            let mut d = parent.as_path();
            while d != self.root.as_path() && !d.exists() {
                match d.parent() {
                    Some(up) => {
                        to_sync.push(up.to_path_buf());
                        d = up;
                    }
                    None => break,
                }
            }
            // A concurrent delete may remove an emptied parent between create and rename: retry once.
            for attempt in 0..2 {
                fs::create_dir_all(&parent)
                    .map_err(|e| Error::io(ctx("create directory for"), e))?;
                match fs::rename(&tmp, &target) {
                    Ok(()) => break,
                    Err(e) if attempt == 0 && e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(Error::io(ctx("rename into place"), e)),
                }
            }
            self.dir_sync
                .sync(to_sync)
                .map_err(|e| Error::io(ctx("fsync directory of"), e))?;
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn get_range_sync(&self, key: &str, range: Option<Range<u64>>) -> Result<Bytes> {
        let path = self.path(key);
        let mut f =
            File::open(&path).map_err(|e| Error::io(format!("{}: {key}", self.name_str()), e))?;
        let len = f
            .metadata()
            .map_err(|e| Error::io(format!("stat {key}"), e))?
            .len();
        let (start, end) = match range {
            None => (0, len),
            Some(r) => {
                let s = r.start.min(len);
                (s, r.end.min(len).max(s))
            }
        };
        if start > 0 {
            f.seek(SeekFrom::Start(start))
                .map_err(|e| Error::io(format!("seek {key}"), e))?;
        }
        // Read into spare capacity: a shard-sized buffer is not zeroed first.
        let want = (end - start) as usize;
        let mut buf = Vec::with_capacity(want);
        f.take(want as u64)
            .read_to_end(&mut buf)
            .map_err(|e| Error::io(format!("read {key}"), e))?;
        if buf.len() != want {
            return Err(Error::io(
                format!("read {key}"),
                std::io::ErrorKind::UnexpectedEof.into(),
            ));
        }
        Ok(Bytes::from(buf))
    }

    fn delete_sync(&self, key: &str) -> Result<()> {
        let path = self.path(key);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(format!("delete {key}"), e)),
        }
        // Prune emptied directories up to the root; a failure only means one is not empty.
        let mut dir = path.parent().map(Path::to_path_buf);
        while let Some(d) = dir {
            if d == *self.root || fs::remove_dir(&d).is_err() {
                break;
            }
            dir = d.parent().map(Path::to_path_buf);
        }
        Ok(())
    }

    fn list_sync(&self, prefix: &str) -> Result<Vec<String>> {
        // Start the walk at the deepest directory the prefix pins down.
        let (dir_part, _) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let start = if dir_part.is_empty() {
            self.root.to_path_buf()
        } else {
            dir_part.split('/').fold(self.root.to_path_buf(), |p, c| {
                p.join(format!("{c}{SUFFIX}"))
            })
        };
        let mut out = Vec::new();
        let mut stack = vec![(start, dir_part.to_string())];
        while let Some((dir, rel)) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(format!("list {}", dir.display()), e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| Error::io(format!("list {}", dir.display()), e))?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                if rel.is_empty() && name == TMP {
                    continue;
                }
                let ft = entry.file_type().map_err(|e| Error::io("list", e))?;
                let joined = |n: &str| {
                    if rel.is_empty() {
                        n.to_string()
                    } else {
                        format!("{rel}/{n}")
                    }
                };
                if ft.is_dir() {
                    let Some(stem) = name.strip_suffix(SUFFIX) else {
                        continue;
                    };
                    let sub = joined(stem);
                    if sub.starts_with(prefix) || prefix.starts_with(&format!("{sub}/")) {
                        stack.push((entry.path(), sub));
                    }
                } else if !name.contains(SUFFIX) {
                    let key = joined(name);
                    if key.starts_with(prefix) {
                        out.push(key);
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn name_str(&self) -> String {
        match &self.name {
            Some(n) => n.to_string(),
            None => format!("local:{}", self.root.display()),
        }
    }

    /// Whether `local:PATH` names this directory: PATH is the same directory, or, relative, the
    /// end of this one's path (what a relative path read from another directory became).
    fn is_path(&self, path: &Path) -> bool {
        let Ok(mine) = std::path::absolute(&*self.root) else {
            return false;
        };
        if path.is_absolute() {
            let same = |a: &Path, b: &Path| match (fs::canonicalize(a), fs::canonicalize(b)) {
                (Ok(a), Ok(b)) => a == b,
                _ => a == b,
            };
            return same(path, &mine);
        }
        path.components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
            && mine.ends_with(path)
    }
}

#[async_trait]
impl Backend for LocalDir {
    fn name(&self) -> String {
        self.name_str()
    }

    fn answers_to(&self, name: &str) -> bool {
        name == self.name_str()
            || name
                .strip_prefix("local:")
                .is_some_and(|p| self.is_path(Path::new(p)))
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        check_object_key(key)?;
        let key = key.to_string();
        self.blocking(move |me| me.put_sync(&key, &data)).await
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        check_object_key(key)?;
        let key = key.to_string();
        self.blocking(move |me| me.get_range_sync(&key, None)).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        check_object_key(key)?;
        let key = key.to_string();
        self.blocking(move |me| me.get_range_sync(&key, Some(range)))
            .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        check_object_key(key)?;
        let key = key.to_string();
        self.blocking(move |me| me.delete_sync(&key)).await
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        Ok(self.size(key).await?.is_some())
    }

    async fn size(&self, key: &str) -> Result<Option<u64>> {
        check_object_key(key)?;
        let key = key.to_string();
        self.blocking(move |me| match fs::metadata(me.path(&key)) {
            Ok(m) => Ok(m.is_file().then_some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("stat {key}"), e)),
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let prefix = prefix.to_string();
        self.blocking(move |me| me.list_sync(&prefix)).await
    }

    async fn health(&self) -> Health {
        let start = Instant::now();
        let probe = self
            .blocking(|me| {
                // Writable and present: create and remove a probe file in the temp directory.
                let p = me
                    .root
                    .join(TMP)
                    .join(format!("probe-{}", rand::random::<u64>()));
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&p)
                    .map_err(|e| Error::io(format!("probe {}", me.root.display()), e))?;
                let _ = fs::remove_file(&p);
                let free = fs2::available_space(&*me.root).ok();
                Ok(free)
            })
            .await;
        match probe {
            Ok(free) => {
                let mut h = Health::up(start.elapsed());
                h.free_bytes = free;
                h
            }
            Err(e) => Health::down(e.detail()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = LocalDir::open(dir.path().join("b")).expect("open");
        qsfs_core::testing::backend::run(&b).await;
        // Nothing left behind in the temp area, and emptied directories are pruned.
        assert_eq!(
            fs::read_dir(dir.path().join("b").join(TMP))
                .expect("tmp")
                .count(),
            0
        );
        let left: Vec<_> = fs::read_dir(dir.path().join("b")).expect("root").collect();
        assert_eq!(left.len(), 1, "only @tmp remains: {left:?}");
    }

    #[tokio::test]
    async fn key_and_longer_key_coexist() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = LocalDir::open(dir.path()).expect("open");
        b.put("a", Bytes::from_static(b"1")).await.expect("put a");
        b.put("a/b", Bytes::from_static(b"2"))
            .await
            .expect("put a/b");
        assert_eq!(
            b.list("a").await.expect("list"),
            vec!["a".to_string(), "a/b".to_string()]
        );
        assert_eq!(b.get("a").await.expect("get"), Bytes::from_static(b"1"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_puts_share_directory_fsyncs_and_all_land() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = LocalDir::open(dir.path()).expect("open");
        let puts = (0..64).map(|i| {
            let b = b.clone();
            // Four objects' directories, created by racing writers.
            let key = format!("p/d/{}/{i:04}", i % 4);
            async move {
                b.put(&key, Bytes::from(vec![i as u8; 1000 + i]))
                    .await
                    .map(|_| key)
            }
        });
        let keys: Vec<String> = futures::future::try_join_all(puts).await.expect("puts");
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(b.get(key).await.expect("get"), vec![i as u8; 1000 + i]);
        }
        assert_eq!(b.list("p/d/").await.expect("list").len(), 64);
        let st = b.dir_sync.state.lock();
        assert!(!st.running && st.pending.is_empty() && st.errors.is_empty());
        assert!(
            st.finished >= 1 && st.finished <= 64,
            "{} batches",
            st.finished
        );
    }

    #[tokio::test]
    async fn missing_directory_is_down() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = LocalDir::open(dir.path().join("gone")).expect("open");
        fs::remove_dir_all(dir.path().join("gone")).expect("rm");
        assert_eq!(b.health().await.status, qsfs_core::HealthStatus::Down);
    }
}
