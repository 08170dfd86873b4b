//! Operations on files and whole repositories, as the `qsfs backup` command offers them. The
//! command-line tool only parses arguments and prints what these return.

use std::fs::{self, File};
use std::io::Write;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use futures::StreamExt;
use qsfs_core::{Error, HealthStatus, Result};
use serde::Serialize;

use crate::crypto::SecretKey;
use crate::metadata::ObjectRecord;
use crate::pipeline::{
    Attrs, GcReport, ObjectHealth, Pipeline, ProblemKind, RateLimiter, RepairReport, ShardProblem,
};
use crate::progress::Progress;
use crate::stripe;

/// The object name of a path: absolute, `.` and `..` resolved lexically (the filesystem is not
/// touched, so a path names the same object at store, retrieve and check time), UTF-8.
pub fn object_name(path: &Path) -> Result<String> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| Error::io("current directory", e))?
            .join(path)
    };
    let mut out = PathBuf::from("/");
    for c in abs.components() {
        match c {
            Component::RootDir | Component::Prefix(_) | Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
        }
    }
    out.to_str()
        .map(str::to_string)
        .ok_or_else(|| Error::InvalidArgument(format!("path {} is not UTF-8", path.display())))
}

/// What storing one object did.
#[derive(Debug, Clone, Serialize)]
pub struct StoreReport {
    /// The object name.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// Record version now current.
    pub version: u64,
    /// True if the stored copy already matched and nothing was written.
    pub unchanged: bool,
    /// True if the file's size or mtime changed while it was read: the stored copy is what
    /// was read, which may mix old and new content (store it again once it is still).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub changed_while_read: bool,
}

fn file_attrs(meta: &fs::Metadata) -> Attrs {
    use std::os::unix::fs::MetadataExt;
    Attrs {
        mtime: Some((meta.mtime(), meta.mtime_nsec() as u32)),
        mode: Some(meta.mode() & 0o7777),
    }
}

/// The whole-object checksum of a local file, as `rec` would hold it if the file's bytes were
/// those stored. `key` is the record's data key: an uncompressed stripe of format 4 is checked by
/// its tag, so it is sealed again.
fn file_checksum(path: &Path, rec: &ObjectRecord, key: &SecretKey) -> Result<stripe::Sum> {
    let stripe_size = rec.stripe_size as usize;
    use std::io::Read;
    let mut f = File::open(path).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
    let mut sums = Vec::new();
    let mut buf = vec![0u8; stripe_size];
    let mut scratch = Vec::new();
    loop {
        let mut filled = 0;
        while filled < stripe_size {
            let n = f
                .read(&mut buf[filled..])
                .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        let plain = &buf[..filled];
        // Same size as the record, so the same number of stripes; more means it changed.
        let Some(st) = rec.stripes.get(sums.len()) else {
            return Ok([0; 32]);
        };
        let id = rec.stripe_id(sums.len() as u64);
        sums.push(stripe::local_plain_sum(
            plain,
            &st.meta,
            &id,
            key,
            rec.shard_hash,
            &mut scratch,
        ));
        if filled < stripe_size {
            break;
        }
    }
    Ok(stripe::object_sum(sums))
}

/// Stores one regular file under its object name. A file whose size, mtime, mode and checksum
/// match the stored copy is not stored again.
pub async fn store_file(p: &Pipeline, path: &Path, progress: &dyn Progress) -> Result<StoreReport> {
    let name = object_name(path)?;
    let meta = fs::metadata(path).map_err(|e| Error::io(format!("stat {}", path.display()), e))?;
    if !meta.is_file() {
        return Err(Error::InvalidArgument(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let attrs = file_attrs(&meta);
    if let Ok(old) = p.record(&name).await {
        let same_attrs =
            old.size == meta.len() && old.mtime == attrs.mtime && old.mode == attrs.mode;
        // A data key that does not unwrap leaves nothing to compare with: store anew.
        if let (true, Ok(key)) = (same_attrs, p.data_key(&old)) {
            let (pb, rec) = (path.to_path_buf(), old.clone());
            let sum = tokio::task::spawn_blocking(move || file_checksum(&pb, &rec, &key))
                .await
                .map_err(|e| Error::Unavailable(format!("hash task: {e}")))??;
            if sum == old.checksum {
                progress.skip(&name, old.size);
                return Ok(StoreReport {
                    name,
                    size: old.size,
                    version: old.version,
                    unchanged: true,
                    changed_while_read: false,
                });
            }
        }
    }
    let f = File::open(path).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
    progress.start(&name, Some(meta.len()));
    let rec = p.store(&name, Box::new(f), attrs, progress).await;
    progress.finish(&name);
    let rec = rec?;
    let after = fs::metadata(path).ok();
    let changed_while_read = after.is_none_or(|a| {
        a.len() != meta.len() || file_attrs(&a).mtime != attrs.mtime || a.len() != rec.size
    });
    Ok(StoreReport {
        name,
        size: rec.size,
        version: rec.version,
        unchanged: false,
        changed_while_read,
    })
}

/// Stores a file, or every regular file under a directory (recursively; symbolic links are not
/// followed). Returns one result per file: a failing file does not stop the others.
pub async fn store_path(
    p: &Pipeline,
    path: &Path,
    progress: &dyn Progress,
) -> Result<Vec<(String, Result<StoreReport>)>> {
    let meta =
        fs::symlink_metadata(path).map_err(|e| Error::io(format!("stat {}", path.display()), e))?;
    if meta.is_file() {
        let name = object_name(path)?;
        return Ok(vec![(name, store_file(p, path, progress).await)]);
    }
    if !meta.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "{} is neither a regular file nor a directory",
            path.display()
        )));
    }
    let mut files: Vec<(PathBuf, u64)> = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<_> = fs::read_dir(&dir)
            .map_err(|e| Error::io(format!("list {}", dir.display()), e))?
            .collect::<std::io::Result<_>>()
            .map_err(|e| Error::io(format!("list {}", dir.display()), e))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let ft = e
                .file_type()
                .map_err(|err| Error::io(format!("stat {}", e.path().display()), err))?;
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                let len = e.metadata().map_or(u64::MAX, |m| m.len());
                files.push((e.path(), len));
            }
        }
    }
    files.sort();
    progress.batch(files.len() as u64, sizes(files.iter().map(|(_, len)| *len)));
    // Files smaller than a stripe are stored several at a time: each costs a few round trips
    // and syncs on every backend, which one file after the other paid in full (4,000 files
    // of a few bytes over local directories: 7 ms each).
    let small = p.settings().stripe_size as u64;
    Ok(small_ones_at_once(
        &files,
        |(_, len)| *len < small,
        SMALL_FILES_AT_ONCE,
        |(f, _)| store_named(p, f, progress),
    )
    .await)
}

/// Runs `job` over `items`, results in their order: the items `is_small` says are small
/// `at_once` at a time, the others one at a time after them, so that memory stays bounded by
/// one pipeline's stripes in flight.
async fn small_ones_at_once<'a, I, T, F>(
    items: &'a [I],
    is_small: impl Fn(&I) -> bool,
    at_once: usize,
    job: impl Fn(&'a I) -> F,
) -> Vec<T>
where
    F: std::future::Future<Output = T>,
{
    let mut out: Vec<Option<T>> = items.iter().map(|_| None).collect();
    let mut done = futures::stream::iter(
        items
            .iter()
            .enumerate()
            .filter(|(_, item)| is_small(item))
            .map(|(i, item)| {
                let f = job(item);
                async move { (i, f.await) }
            }),
    )
    .buffer_unordered(at_once);
    while let Some((i, r)) = done.next().await {
        out[i] = Some(r);
    }
    drop(done);
    for (i, item) in items.iter().enumerate() {
        if !is_small(item) {
            out[i] = Some(job(item).await);
        }
    }
    out.into_iter().flatten().collect()
}

/// The bytes of files of these sizes (a size that could not be read counts as 0).
fn sizes(lens: impl Iterator<Item = u64>) -> u64 {
    lens.filter(|&l| l != u64::MAX).fold(0, u64::saturating_add)
}

/// Small files a directory store or retrieve has in flight at once (see [`store_path`] and
/// [`retrieve_tree`]).
const SMALL_FILES_AT_ONCE: usize = 8;

/// [`store_file`] with the object name it stores under.
async fn store_named(
    p: &Pipeline,
    f: &Path,
    progress: &dyn Progress,
) -> (String, Result<StoreReport>) {
    let name = object_name(f).unwrap_or_else(|_| f.display().to_string());
    (name, store_file(p, f, progress).await)
}

/// Stores everything `reader` yields (e.g. standard input) as `name`.
pub async fn store_reader(
    p: &Pipeline,
    name: &str,
    reader: Box<dyn std::io::Read + Send>,
    progress: &dyn Progress,
) -> Result<StoreReport> {
    progress.start(name, None);
    let rec = p.store(name, reader, Attrs::default(), progress).await;
    progress.finish(name);
    let rec = rec?;
    Ok(StoreReport {
        name: name.to_string(),
        size: rec.size,
        version: rec.version,
        unchanged: false,
        changed_while_read: false,
    })
}

/// Options of a retrieve.
#[derive(Debug, Clone, Default)]
pub struct RetrieveOptions {
    /// Replace an existing output file.
    pub force: bool,
    /// Only these bytes.
    pub range: Option<Range<u64>>,
}

/// What a retrieve did.
#[derive(Debug, Clone, Serialize)]
pub struct RetrieveReport {
    /// The object.
    pub name: String,
    /// Bytes written.
    pub bytes: u64,
    /// Shards that could not be used (the data was still complete).
    pub problems: Vec<ShardProblem>,
    /// Shards re-created by the read-repair that follows a retrieve meeting bad shards.
    pub repaired: usize,
}

/// Retrieves every file stored under the directory `dir` (an object name, as `store` of a
/// directory made them): `dir/a/b` goes to `out/a/b`, parent directories created. One result
/// per file, in name order, each as [`retrieve_to_path`] gives it; a failing file does not stop
/// the others. A record that does not open could be one of them, so it is a failed result too:
/// a tree is never restored in part without saying so. [`Error::NotFound`] if nothing was
/// stored under `dir`.
pub async fn retrieve_tree(
    p: &Pipeline,
    dir: &str,
    out: &Path,
    opts: &RetrieveOptions,
    progress: &dyn Progress,
) -> Result<Vec<(String, Result<RetrieveReport>)>> {
    if opts.range.is_some() {
        return Err(Error::InvalidArgument(
            "a range is for one object, not a directory".into(),
        ));
    }
    let prefix = format!("{}/", dir.trim_end_matches('/'));
    let (recs, unreadable) = p.records().await?;
    let files: Vec<(String, PathBuf, u64)> = recs
        .into_iter()
        .filter_map(|r| {
            let rel = r.name.strip_prefix(&prefix)?;
            // Names are normalised absolute paths; anything else is not written outside `out`.
            let safe = Path::new(rel)
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
            safe.then(|| (r.name.clone(), out.join(rel), r.size))
        })
        .collect();
    if files.is_empty() && unreadable.is_empty() {
        return Err(Error::NotFound(format!(
            "no backup of {dir} or of anything under it"
        )));
    }
    progress.batch(files.len() as u64, sizes(files.iter().map(|f| f.2)));
    let small = p.settings().stripe_size as u64;
    let one = |(name, target, _): &(String, PathBuf, u64)| {
        let (name, target) = (name.clone(), target.clone());
        async move {
            let r = match target.parent().map(fs::create_dir_all) {
                Some(Err(e)) => Err(Error::io(format!("create {}", target.display()), e)),
                _ => retrieve_to_path(p, &name, &target, opts, progress).await,
            };
            (name, r)
        }
    };
    // Records come sorted by name, so the results are in name order after the unreadable ones.
    let mut results: Vec<(String, Result<RetrieveReport>)> = unreadable
        .into_iter()
        .map(|e| ("(a record that does not open)".to_string(), Err(e)))
        .collect();
    results.extend(
        small_ones_at_once(&files, |(.., size)| *size < small, SMALL_FILES_AT_ONCE, one).await,
    );
    Ok(results)
}

/// Where `-o out` puts the object `name`: into `out` when it is an existing directory, under the
/// object's own file name (as `cp` does), else `out` itself.
pub fn file_target(name: &str, out: &Path) -> PathBuf {
    match Path::new(name).file_name() {
        Some(base) if out.is_dir() => out.join(base),
        _ => out.to_path_buf(),
    }
}

/// `out` opened for writing if it is a device, a FIFO or a socket (`-o /dev/null`, `-o
/// /dev/stdout`): written into, with no `--force`, since nothing is replaced. Renaming the
/// retrieved file over it, as over a regular file, would have replaced the node itself.
fn special_target(out: &Path) -> Result<Option<File>> {
    match fs::metadata(out) {
        Ok(m) if !m.is_file() && !m.is_dir() => fs::OpenOptions::new()
            .write(true)
            .open(out)
            .map(Some)
            .map_err(|e| Error::io(format!("open {}", out.display()), e)),
        _ => Ok(None),
    }
}

/// Retrieves `name` into the file `out`. The data goes to a temporary file beside `out`, is
/// verified against the whole-object checksum, synced and only then renamed into place, so a
/// failure never leaves a partial file. An existing `out` is only replaced with `force`.
pub async fn retrieve_to_path(
    p: &Pipeline,
    name: &str,
    out: &Path,
    opts: &RetrieveOptions,
    progress: &dyn Progress,
) -> Result<RetrieveReport> {
    if let Some(target) = special_target(out)? {
        progress.start(name, None);
        let r = retrieve_to_writer(p, name, Box::new(target), opts.range.clone(), progress).await;
        progress.finish(name);
        return r;
    }
    // The record first: a name that is no object (a stored directory) is `NotFound` whatever
    // `out` is, so the caller can go on to retrieve it as a tree.
    let rec = p.record(name).await?;
    if fs::metadata(out).is_ok_and(|m| m.is_dir()) {
        // Never replaced, even with force: a rename would fail, and a directory is not a file.
        return Err(Error::AlreadyExists(format!(
            "{} is a directory",
            out.display()
        )));
    }
    if !opts.force && fs::symlink_metadata(out).is_ok() {
        return Err(Error::AlreadyExists(format!(
            "{} exists (use --force to replace it)",
            out.display()
        )));
    }
    let dir = out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    let file_name = out
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("retrieved");
    let tmp = dir.join(format!(
        ".{file_name}.qsfs-partial-{:016x}",
        rand::random::<u64>()
    ));
    let result: Result<RetrieveReport> = async {
        let mut f =
            File::create(&tmp).map_err(|e| Error::io(format!("create {}", tmp.display()), e))?;
        let (bytes, problems) = match &opts.range {
            Some(r) => {
                let data = p.read_range(&rec, r.clone()).await?;
                f.write_all(&data)
                    .map_err(|e| Error::io(format!("write {}", tmp.display()), e))?;
                (data.len() as u64, Vec::new())
            }
            None => {
                let out = f.try_clone().map_err(|e| Error::io("dup", e))?;
                progress.start(name, Some(rec.size));
                let read = p.read_to(&rec, Box::new(out), progress).await;
                progress.finish(name);
                let (problems, w) = read?;
                drop(w);
                (rec.size, problems)
            }
        };
        if opts.range.is_none() {
            if let Some(mode) = rec.mode {
                use std::os::unix::fs::PermissionsExt;
                let _ = f.set_permissions(fs::Permissions::from_mode(mode));
            }
            if let Some((s, ns)) = rec.mtime {
                if s >= 0 {
                    let t = std::time::UNIX_EPOCH + std::time::Duration::new(s as u64, ns);
                    let _ = f.set_modified(t);
                }
            }
        }
        f.sync_all()
            .map_err(|e| Error::io(format!("fsync {}", tmp.display()), e))?;
        drop(f);
        if !opts.force && fs::symlink_metadata(out).is_ok() {
            return Err(Error::AlreadyExists(format!(
                "{} appeared during the retrieve",
                out.display()
            )));
        }
        fs::rename(&tmp, out)
            .map_err(|e| Error::io(format!("rename into {}", out.display()), e))?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(RetrieveReport {
            name: name.to_string(),
            bytes,
            problems,
            repaired: 0,
        })
    }
    .await;
    let mut report = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    report.repaired = read_repair(p, &rec, &report.problems).await;
    Ok(report)
}

/// Retrieves `name` (or a range of it) into a writer such as standard output. The data is
/// streamed, so on a checksum failure the bytes already written cannot be taken back: the error
/// says so and the exit status must be checked.
pub async fn retrieve_to_writer(
    p: &Pipeline,
    name: &str,
    mut out: Box<dyn Write + Send>,
    range: Option<Range<u64>>,
    progress: &dyn Progress,
) -> Result<RetrieveReport> {
    let rec = p.record(name).await?;
    if let Some(r) = range {
        let data = p.read_range(&rec, r).await?;
        out.write_all(&data).map_err(|e| Error::io("write", e))?;
        out.flush().map_err(|e| Error::io("flush", e))?;
        return Ok(RetrieveReport {
            name: name.into(),
            bytes: data.len() as u64,
            problems: Vec::new(),
            repaired: 0,
        });
    }
    let (problems, mut w) = p.read_to(&rec, out, progress).await?;
    w.flush().map_err(|e| Error::io("flush", e))?;
    let repaired = read_repair(p, &rec, &problems).await;
    Ok(RetrieveReport {
        name: name.into(),
        bytes: rec.size,
        problems,
        repaired,
    })
}

async fn read_repair(
    p: &Pipeline,
    rec: &crate::metadata::ObjectRecord,
    problems: &[ShardProblem],
) -> usize {
    if problems.iter().all(|x| x.kind == ProblemKind::Unreachable) {
        return 0;
    }
    match p.repair(rec, None).await {
        Ok(r) => r.rewritten,
        Err(e) => {
            tracing::warn!("read-repair of {} failed: {e}", rec.name);
            0
        }
    }
}

/// Checks one object or all: records readable and shards present (`deep`: read and verified).
/// Records that cannot be opened are returned as errors.
pub async fn check(
    p: &Pipeline,
    name: Option<&str>,
    deep: bool,
) -> Result<(Vec<ObjectHealth>, Vec<Error>)> {
    let (recs, problems) = match name {
        Some(n) => (vec![p.record(n).await?], Vec::new()),
        None => p.records().await?,
    };
    let mut out = Vec::new();
    for r in &recs {
        out.push(p.inspect(r, deep, None).await);
    }
    Ok((out, problems))
}

/// Re-creates missing or corrupt shards of one object or of all.
///
/// An object whose repair was only partial (some shards could not be placed or verified, see
/// [`RepairReport::is_complete`]) comes back as an error naming what remains degraded, so a
/// caller that exits non-zero on any error does so; what could be repaired is repaired first.
pub async fn rebuild(
    p: &Pipeline,
    name: Option<&str>,
) -> Result<(Vec<Result<RepairReport>>, Vec<Error>)> {
    let (recs, problems) = match name {
        Some(n) => (vec![p.record(n).await?], Vec::new()),
        None => p.records().await?,
    };
    let mut out = Vec::new();
    for r in &recs {
        out.push(
            p.repair(r, None)
                .await
                .and_then(|rep| match rep.remaining() {
                    Some(e) => Err(e.into()),
                    None => Ok(rep),
                }),
        );
    }
    Ok((out, problems))
}

/// How one object came out of a rebuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RebuildStatus {
    /// Nothing was wrong.
    Clean,
    /// Everything found was repaired.
    Repaired,
    /// Some shards could not be placed or verified: still degraded (see the report).
    Partial,
    /// The repair ended in an error (see `error`); what it re-created before is in the report.
    Failed,
}

/// One object's part in a rebuild.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectRebuild {
    /// The outcome.
    pub status: RebuildStatus,
    /// What was found and done.
    pub report: RepairReport,
    /// Why the repair stopped short (partial or failed).
    pub error: Option<String>,
}

/// What a rebuild did, object by object and in total.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RebuildReport {
    /// Objects checked (deep).
    pub objects_checked: usize,
    /// Objects that needed nothing.
    pub objects_clean: usize,
    /// Objects fully repaired.
    pub objects_repaired: usize,
    /// Objects left degraded.
    pub objects_partial: usize,
    /// Objects whose repair failed.
    pub objects_failed: usize,
    /// Shards re-created.
    pub shards_rewritten: usize,
    /// Of those, shards written to another backend than before.
    pub shards_moved: usize,
    /// Bytes of the shards re-created.
    pub bytes_rewritten: u64,
    /// Metadata replicas written back.
    pub metadata_replicas: usize,
    /// Backends that did not answer during the rebuild, sorted.
    pub unreachable_backends: Vec<String>,
    /// Records that could not be opened (their objects were not checked).
    pub unreadable_records: Vec<String>,
    /// Every object checked, in name order.
    pub objects: Vec<ObjectRebuild>,
}

impl RebuildReport {
    /// True when every object is clean or fully repaired and every record could be read.
    pub fn is_complete(&self) -> bool {
        self.objects_partial == 0 && self.objects_failed == 0 && self.unreadable_records.is_empty()
    }
}

/// Re-creates missing or corrupt shards of one object or of all, and reports object by object
/// what was checked, re-created (shards, bytes, moves), left degraded and unreachable. One
/// object's failure does not stop the others.
pub async fn rebuild_report(p: &Pipeline, name: Option<&str>) -> Result<RebuildReport> {
    let (recs, problems) = match name {
        Some(n) => (vec![p.record(n).await?], Vec::new()),
        None => p.records().await?,
    };
    let mut out = RebuildReport {
        unreadable_records: problems.iter().map(|e| e.to_string()).collect(),
        ..Default::default()
    };
    let mut unreachable = std::collections::BTreeSet::new();
    for r in &recs {
        let (report, err) = p.repair_detailed(r, None).await;
        let (status, err) = match (err, report.remaining()) {
            (Some(e), _) => (RebuildStatus::Failed, Some(e.to_string())),
            (None, Some(partial)) => (RebuildStatus::Partial, Some(partial.to_string())),
            (None, None) if report.problems.is_empty() && report.metadata_replicas == 0 => {
                (RebuildStatus::Clean, None)
            }
            (None, None) => (RebuildStatus::Repaired, None),
        };
        out.objects_checked += 1;
        match status {
            RebuildStatus::Clean => out.objects_clean += 1,
            RebuildStatus::Repaired => out.objects_repaired += 1,
            RebuildStatus::Partial => out.objects_partial += 1,
            RebuildStatus::Failed => out.objects_failed += 1,
        }
        out.shards_rewritten += report.rewritten;
        out.shards_moved += report.moved;
        out.bytes_rewritten += report.bytes_rewritten;
        out.metadata_replicas += report.metadata_replicas;
        unreachable.extend(report.unreachable_backends.iter().cloned());
        out.objects.push(ObjectRebuild {
            status,
            report,
            error: err,
        });
    }
    out.unreachable_backends = unreachable.into_iter().collect();
    Ok(out)
}

/// Options of a scrub.
#[derive(Debug, Clone, Default)]
pub struct ScrubOptions {
    /// Average read rate limit in bytes per second.
    pub rate: Option<u64>,
    /// Resume after this cursor (from a previous, interrupted scrub).
    pub resume_after: Option<String>,
}

/// What a scrub did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScrubReport {
    /// Objects verified.
    pub objects: usize,
    /// Objects skipped because a previous run already did them.
    pub skipped: usize,
    /// Repairs that re-created shards.
    pub repairs: Vec<RepairReport>,
    /// Objects that could not be repaired, or only partly, with the reason.
    pub failures: Vec<(String, String)>,
    /// Records that could not be opened.
    pub unreadable_records: Vec<String>,
}

/// Deep-checks and repairs every object, in a fixed order. After each object `save_cursor` is
/// called with a cursor; passing the last one back as `resume_after` continues an interrupted
/// scrub where it stopped.
pub async fn scrub(
    p: &Pipeline,
    opts: &ScrubOptions,
    save_cursor: &mut (dyn FnMut(&str) + Send),
) -> Result<ScrubReport> {
    let (recs, problems) = p.records_by_hash().await?;
    let limiter = opts.rate.map(RateLimiter::new);
    let mut report = ScrubReport {
        unreadable_records: problems.iter().map(|e| e.to_string()).collect(),
        ..Default::default()
    };
    for (cursor, rec) in recs {
        if opts
            .resume_after
            .as_deref()
            .is_some_and(|after| cursor.as_str() <= after)
        {
            report.skipped += 1;
            continue;
        }
        match p.repair(&rec, limiter.as_ref()).await {
            Ok(r) => {
                if let Some(e) = r.remaining() {
                    report.failures.push((rec.name.clone(), e.to_string()));
                }
                if r.rewritten > 0 || r.metadata_replicas > 0 {
                    report.repairs.push(r);
                }
            }
            Err(e) => report.failures.push((rec.name.clone(), e.to_string())),
        }
        report.objects += 1;
        save_cursor(&cursor);
    }
    Ok(report)
}

/// One line of `list`.
#[derive(Debug, Clone, Serialize)]
pub struct ListEntry {
    /// Object name.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// Record version.
    pub version: u64,
    /// Seconds since the epoch when stored.
    pub stored_at: u64,
    /// Data shards.
    pub k: u16,
    /// Parity shards.
    pub m: u16,
    /// Stripes.
    pub stripes: usize,
    /// Bytes held on backends.
    pub stored_bytes: u64,
    /// `ok`, `degraded` (some shard unreachable or missing, still readable) or `lost`.
    pub health: String,
}

/// Every stored object with a quick (presence) health check.
pub async fn list(p: &Pipeline) -> Result<(Vec<ListEntry>, Vec<Error>)> {
    let (recs, problems) = p.records().await?;
    let mut out = Vec::new();
    for r in recs {
        let h = p.inspect(&r, false, None).await;
        let health = if h.is_clean() {
            "ok"
        } else if h.margin >= 0 {
            "degraded"
        } else {
            "lost"
        };
        out.push(ListEntry {
            stored_bytes: r.stored_bytes(),
            name: r.name,
            size: r.size,
            version: r.version,
            stored_at: r.stored_at,
            k: r.k,
            m: r.m,
            stripes: r.stripes.len(),
            health: health.into(),
        });
    }
    Ok((out, problems))
}

/// One backend in `status`.
#[derive(Debug, Clone, Serialize)]
pub struct BackendStatus {
    /// Name.
    pub name: String,
    /// `data` or `meta`.
    pub role: String,
    /// Placement group (data backends).
    pub group: Option<usize>,
    /// `up`, `degraded` or `down`.
    pub status: String,
    /// Probe latency in milliseconds.
    pub latency_ms: f64,
    /// Bytes used, if known.
    pub used_bytes: Option<u64>,
    /// Bytes free, if known.
    pub free_bytes: Option<u64>,
    /// Why it is not up.
    pub detail: String,
}

/// Probes every backend.
pub async fn status(p: &Pipeline) -> Vec<BackendStatus> {
    let (data, meta) = p.refresh_health(true).await;
    let row = |name: &str, role: &str, group: Option<usize>, h: &qsfs_core::Health| BackendStatus {
        name: name.to_string(),
        role: role.into(),
        group,
        status: match h.status {
            HealthStatus::Up => "up",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Down => "down",
        }
        .into(),
        latency_ms: h.latency.as_secs_f64() * 1000.0,
        used_bytes: h.used_bytes,
        free_bytes: h.free_bytes,
        detail: h.detail.clone(),
    };
    let mut out: Vec<BackendStatus> = p
        .nodes()
        .iter()
        .zip(&data)
        .map(|(n, h)| row(&n.name, "data", Some(n.group), h))
        .collect();
    out.extend(
        p.meta_nodes()
            .iter()
            .zip(&meta)
            .map(|(n, h)| row(&n.name, "meta", None, h)),
    );
    out
}

/// Deletes an object (its record becomes a deletion marker; shards are removed).
pub async fn delete(p: &Pipeline, name: &str) -> Result<()> {
    p.delete_object(name).await
}

/// Removes superseded and orphaned shards and old record versions.
pub async fn gc(p: &Pipeline) -> Result<GcReport> {
    p.gc().await
}
