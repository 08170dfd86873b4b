//! Configuration: the qsfs TOML format, and 0-stor v2 config files read unchanged.
//!
//! A file is a 0-stor v2 config when it has a `minimal_shards` field; otherwise it is a qsfs
//! config (see `docs/backup.md` for a commented example). Errors never echo values: a config
//! holds keys and passwords.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::backends::{LocalDir, Memory};
use crate::crypto::{KdfParams, KeySource, SecretKey};
use crate::error::BackupError;
use crate::node::Timeouts;
use crate::pipeline::{Pipeline, Settings};
use crate::placement::Policy;
use qsfs_core::{Backend, Result};

/// Whether a 0-db namespace holds metadata (user-key mode) or shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZdbRole {
    /// Metadata backend.
    Meta,
    /// Data backend.
    Data,
}

/// Where a 0-db namespace is. The password is redacted from `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct ZdbSpec {
    /// `host:port` (IPv6 in brackets).
    pub address: String,
    /// Namespace (`default` if not given).
    pub namespace: String,
    /// Namespace password.
    pub password: Option<String>,
    /// What it is used for.
    pub role: ZdbRole,
}

impl std::fmt::Debug for ZdbSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZdbSpec")
            .field("address", &self.address)
            .field("namespace", &self.namespace)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("role", &self.role)
            .finish()
    }
}

/// Extension point for 0-db backends: the crate that owns the 0-db client (qsfs-store) provides
/// an implementation, and the CLI passes it to [`Config::open`]. Without one, a config naming a
/// `zdb://` backend fails with a clear message.
pub trait ZdbConnector: Send + Sync {
    /// Opens a backend on the namespace `spec` names.
    fn connect(&self, spec: &ZdbSpec) -> Result<Arc<dyn Backend>>;
}

/// Where an S3-compatible bucket is (`s3://bucket[/prefix]`). Whatever is not set here comes
/// from the standard AWS environment variables. The secrets are redacted from `Debug` and
/// `Display` never shows them.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Spec {
    /// Bucket name.
    #[serde(skip)]
    pub bucket: String,
    /// Key prefix inside the bucket (no leading or trailing `/`), if any.
    #[serde(skip)]
    pub prefix: Option<String>,
    /// Endpoint URL of a non-AWS service (`http://127.0.0.1:9000`).
    pub endpoint: Option<String>,
    /// Region (`us-east-1` when neither this nor the environment says).
    pub region: Option<String>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
    /// Session token of temporary credentials.
    pub session_token: Option<String>,
    /// Allow a plain-HTTP endpoint.
    pub allow_http: Option<bool>,
    /// Address the bucket as `https://bucket.host/` instead of `https://host/bucket/`.
    pub virtual_hosted_style: Option<bool>,
}

impl std::fmt::Debug for S3Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("S3Spec")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &redact(&self.secret_access_key))
            .field("session_token", &redact(&self.session_token))
            .field("allow_http", &self.allow_http)
            .field("virtual_hosted_style", &self.virtual_hosted_style)
            .finish()
    }
}

/// The backend string, which is also the backend's name in the metadata.
impl std::fmt::Display for S3Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.prefix {
            Some(p) => write!(f, "s3://{}/{p}", self.bucket),
            None => write!(f, "s3://{}", self.bucket),
        }
    }
}

impl S3Spec {
    /// Opens the bucket. One request is limited to `op_timeout` (retries included); a
    /// health probe to `health_timeout`. Fails when the program was built without the cargo
    /// feature `s3`.
    pub fn open(&self, op_timeout: Duration, health_timeout: Duration) -> Result<Arc<dyn Backend>> {
        #[cfg(feature = "s3")]
        {
            Ok(Arc::new(crate::backends::ObjectStoreBackend::s3(
                self,
                op_timeout,
                health_timeout,
            )?))
        }
        #[cfg(not(feature = "s3"))]
        {
            let _ = (op_timeout, health_timeout);
            Err(BackupError::Config(format!(
                "backend {self}: this program was built without S3 support (cargo feature `s3`)"
            ))
            .into())
        }
    }

    /// Fills the settings this spec does not set from `defaults` (the config's `[s3]` table).
    fn inherit(&mut self, defaults: &S3Spec) {
        let fill = |mine: &mut Option<String>, theirs: &Option<String>| {
            if mine.is_none() {
                mine.clone_from(theirs);
            }
        };
        fill(&mut self.endpoint, &defaults.endpoint);
        fill(&mut self.region, &defaults.region);
        fill(&mut self.access_key_id, &defaults.access_key_id);
        fill(&mut self.secret_access_key, &defaults.secret_access_key);
        fill(&mut self.session_token, &defaults.session_token);
        self.allow_http = self.allow_http.or(defaults.allow_http);
        self.virtual_hosted_style = self.virtual_hosted_style.or(defaults.virtual_hosted_style);
    }
}

/// One backend of a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendSpec {
    /// A local directory (`local:path`): where it is, and the name records know it by, which is
    /// `local:` and the path as the config wrote it (a relative path is resolved against the
    /// config's directory, but the name stays the same however the config was reached).
    Local {
        /// The directory.
        path: PathBuf,
        /// The backend's name.
        name: String,
    },
    /// A 0-db namespace (`zdb://host:port/namespace`, or a 0-stor v2 backend table).
    Zdb(ZdbSpec),
    /// An in-process memory backend (`memory:name`), for tests and demos; it forgets on exit.
    Memory(String),
    /// An S3-compatible bucket (`s3://bucket[/prefix]`).
    S3(S3Spec),
}

impl BackendSpec {
    /// The local directory `path`, named `local:` and the path.
    pub fn local(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        BackendSpec::Local {
            name: format!("local:{}", path.display()),
            path,
        }
    }

    /// Parses `local:/path`, `zdb://host:port[/namespace]` or `memory:name`. Relative local paths
    /// are taken relative to `base`.
    pub fn parse(s: &str, base: &Path, role: ZdbRole) -> Result<Self> {
        if let Some(p) = s.strip_prefix("local:") {
            let p = PathBuf::from(p);
            return Ok(BackendSpec::Local {
                path: if p.is_absolute() { p } else { base.join(p) },
                name: s.to_string(),
            });
        }
        if let Some(rest) = s.strip_prefix("zdb://") {
            let (address, namespace) = rest.split_once('/').unwrap_or((rest, "default"));
            if address.is_empty() || !address.contains(':') {
                return Err(BackupError::Config(format!(
                    "backend {s:?}: expected zdb://host:port/namespace"
                ))
                .into());
            }
            return Ok(BackendSpec::Zdb(ZdbSpec {
                address: address.into(),
                namespace: if namespace.is_empty() {
                    "default".into()
                } else {
                    namespace.into()
                },
                password: None,
                role,
            }));
        }
        if let Some(n) = s.strip_prefix("memory:") {
            return Ok(BackendSpec::Memory(n.into()));
        }
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let prefix = prefix.trim_end_matches('/');
            let bucket_ok = (3..=63).contains(&bucket.len())
                && bucket
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b));
            if !bucket_ok || (!prefix.is_empty() && qsfs_core::check_object_key(prefix).is_err()) {
                return Err(BackupError::Config(format!(
                    "backend {s:?}: expected s3://bucket[/prefix] (bucket: 3-63 of a-z 0-9 . -)"
                ))
                .into());
            }
            return Ok(BackendSpec::S3(S3Spec {
                bucket: bucket.into(),
                prefix: (!prefix.is_empty()).then(|| prefix.into()),
                ..S3Spec::default()
            }));
        }
        Err(BackupError::Config(format!(
            "backend {s:?}: expected local:/path, zdb://host:port/namespace or s3://bucket/prefix"
        ))
        .into())
    }

    fn open(
        &self,
        zdb: Option<&dyn ZdbConnector>,
        timeouts: &Timeouts,
    ) -> Result<Arc<dyn Backend>> {
        match self {
            BackendSpec::S3(spec) => spec.open(timeouts.op, timeouts.health),
            BackendSpec::Local { path, name } => Ok(Arc::new(
                LocalDir::open(path)
                    .unwrap_or_else(|e| {
                        // One unusable directory is one backend down, which redundancy is for.
                        tracing::warn!("backend {}: {e}", path.display());
                        LocalDir::unopened(path)
                    })
                    .named(name.clone()),
            )),
            BackendSpec::Memory(n) => Ok(Arc::new(Memory::new(format!("memory:{n}")))),
            BackendSpec::Zdb(spec) => match zdb {
                Some(c) => c.connect(spec),
                None => Err(BackupError::Config(format!(
                    "backend zdb://{}/{} needs a 0-db connector, and none is built into this program",
                    spec.address, spec.namespace
                ))
                .into()),
            },
        }
    }
}

/// A loaded configuration, whatever its format.
#[derive(Debug, Clone)]
pub struct Config {
    /// Pipeline settings (policy, stripes, timeouts, ...).
    pub settings: Settings,
    /// Data backends by group.
    pub groups: Vec<Vec<BackendSpec>>,
    /// Metadata backends.
    pub meta: Vec<BackendSpec>,
    /// The key a 0-stor v2 config carries (qsfs configs take a passphrase instead).
    pub key: Option<SecretKey>,
    /// 0-stor v2 `root`: files are named relative to it and must lie under it.
    pub root: Option<PathBuf>,
    /// True if read from a 0-stor v2 file.
    pub from_zstor: bool,
    /// Settings of the storage chain (`qsfs up`): local cap, segment size, ...
    pub chain: ChainSettings,
}

/// Settings of the storage chain, from top-level keys of either config format. Every one is
/// optional: the program that runs the chain picks the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainSettings {
    /// `local_cap`: most bytes the local engine may keep on disk before sealed, backed-up
    /// segments are evicted.
    pub local_cap: Option<u64>,
    /// `segment_size`: engine segment size in bytes.
    pub segment_size: Option<u64>,
    /// `seal_after` (seconds): a non-empty segment older than this is sealed, bounding how long
    /// a write waits before it reaches the backends.
    pub seal_after: Option<Duration>,
    /// `seal_max_after` (seconds): once the recovery index is large (over 16 MiB), a new
    /// recovery cut waits until 8 times its size of new data is uploaded, or this long.
    pub seal_max_after: Option<Duration>,
    /// `read_cache`: bytes of fetched stripes kept in memory.
    pub read_cache: Option<u64>,
    /// `metrics`: address of the Prometheus endpoint.
    pub metrics: Option<SocketAddr>,
    /// `compact_every` (seconds): how often the engine's namespaces are compacted.
    pub compact_every: Option<Duration>,
    /// `gc_every` (seconds): how often shards no record references are swept from the backends.
    pub gc_every: Option<Duration>,
    /// `history_retention` (seconds): how long compaction keeps superseded versions.
    pub history_retention: Option<Duration>,
}

/// A size in a config: an integer (bytes) or a string with a binary suffix ("64MiB", "8 MiB",
/// "1GiB", "512KiB", "64M").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Size(u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Size(n)),
            Raw::Text(t) => parse_size(&t).map(Size).map_err(serde::de::Error::custom),
        }
    }
}

/// Parses "4096", "64MiB", "8 MiB", "1GiB", "512KiB", "64M", "2k" (binary units: K = 1024).
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("size {text:?}: expected a number of bytes, e.g. 64MiB"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => {
            return Err(format!(
                "size {text:?}: unknown unit (use KiB, MiB, GiB or TiB)"
            ))
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// The chain keys as they appear in a file (shared by both formats).
#[derive(Deserialize, Default)]
struct ChainKeys {
    local_cap: Option<Size>,
    segment_size: Option<Size>,
    seal_after: Option<u64>,
    seal_max_after: Option<u64>,
    read_cache: Option<Size>,
    metrics: Option<String>,
    compact_every: Option<u64>,
    gc_every: Option<u64>,
    history_retention: Option<u64>,
}

impl ChainKeys {
    fn settings(self) -> Result<ChainSettings> {
        let metrics = match self.metrics {
            Some(m) => Some(m.parse::<SocketAddr>().map_err(|_| {
                BackupError::Config(format!(
                    "metrics {m:?}: expected a socket address such as 127.0.0.1:9100"
                ))
            })?),
            None => None,
        };
        for (name, v) in [
            ("seal_after", self.seal_after),
            ("seal_max_after", self.seal_max_after),
            ("compact_every", self.compact_every),
            ("gc_every", self.gc_every),
        ] {
            if v == Some(0) {
                return Err(
                    BackupError::Config(format!("{name} must be at least 1 second")).into(),
                );
            }
        }
        Ok(ChainSettings {
            local_cap: self.local_cap.map(|s| s.0),
            segment_size: self.segment_size.map(|s| s.0),
            seal_after: self.seal_after.map(Duration::from_secs),
            seal_max_after: self.seal_max_after.map(Duration::from_secs),
            read_cache: self.read_cache.map(|s| s.0),
            metrics,
            compact_every: self.compact_every.map(Duration::from_secs),
            gc_every: self.gc_every.map(Duration::from_secs),
            history_retention: self.history_retention.map(Duration::from_secs),
        })
    }
}

/// Names of the chain keys, removed before the format-specific parse.
const CHAIN_KEYS: [&str; 9] = [
    "local_cap",
    "segment_size",
    "seal_after",
    "seal_max_after",
    "read_cache",
    "metrics",
    "compact_every",
    "gc_every",
    "history_retention",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QsfsFile {
    data_shards: usize,
    parity_shards: usize,
    #[serde(default)]
    redundant_groups: usize,
    #[serde(default)]
    redundant_nodes: usize,
    #[serde(default = "one")]
    max_shards_per_backend: usize,
    prefix: Option<String>,
    stripe_size: Option<usize>,
    compression_level: Option<i32>,
    parallel_stripes: Option<usize>,
    verify_writes: Option<bool>,
    op_timeout_ms: Option<u64>,
    health_timeout_ms: Option<u64>,
    down_for_ms: Option<u64>,
    meta_write_quorum: Option<usize>,
    kdf: Option<KdfParams>,
    /// Settings shared by every `s3://` backend.
    s3: Option<S3Spec>,
    meta: QsfsMeta,
    groups: Vec<QsfsGroup>,
}

fn one() -> usize {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QsfsMeta {
    backends: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QsfsGroup {
    backends: Vec<String>,
}

/// 0-stor v2 config, field for field (§3 of the spec).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Fields of the daemon that qsfs accepts but does not act on.
struct ZstorFile {
    minimal_shards: usize,
    expected_shards: usize,
    redundant_groups: usize,
    redundant_nodes: usize,
    root: Option<PathBuf>,
    socket: Option<PathBuf>,
    pid_file: Option<PathBuf>,
    zdb_data_dir_path: Option<PathBuf>,
    max_zdb_data_dir_size: Option<u64>,
    zdbfs_mountpoint: Option<PathBuf>,
    prometheus_port: Option<u16>,
    encryption: ZstorEncryption,
    compression: ZstorCompression,
    meta: ZstorMeta,
    #[serde(default)]
    groups: Vec<ZstorGroup>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ZstorEncryption {
    algorithm: String,
    key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ZstorCompression {
    algorithm: String,
}

#[derive(Deserialize)]
struct ZstorMeta {
    #[serde(rename = "type")]
    kind: String,
    config: ZstorMetaConfig,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct ZstorMetaConfig {
    prefix: String,
    encryption: ZstorEncryption,
    backends: Vec<ZstorBackend>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ZstorGroup {
    backends: Vec<ZstorBackend>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ZstorBackend {
    address: String,
    namespace: Option<String>,
    password: Option<String>,
}

impl ZstorBackend {
    fn spec(self, role: ZdbRole) -> BackendSpec {
        BackendSpec::Zdb(ZdbSpec {
            address: self.address,
            namespace: self.namespace.unwrap_or_else(|| "default".into()),
            password: self.password,
            role,
        })
    }
}

/// Describes a TOML error by line and column only; the message itself may quote a secret value.
fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> BackupError {
    let where_ = match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            let line_text = text.lines().nth(line - 1).unwrap_or("");
            let secret = ["key", "password", "secret", "token"]
                .iter()
                .any(|w| line_text.to_ascii_lowercase().contains(w));
            let msg = if secret {
                "invalid value (not shown: this line holds a secret)".to_string()
            } else {
                e.message().to_string()
            };
            format!("line {line}: {msg}")
        }
        None => e.message().to_string(),
    };
    BackupError::Config(format!("{}: {where_}", path.display()))
}

impl Config {
    /// Reads a config file of either format.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| qsfs_core::Error::io(format!("read config {}", path.display()), e))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Config::parse(&text, path, &base)
    }

    /// Parses config text; `path` only names it in errors, `base` resolves relative paths.
    pub fn parse(text: &str, path: &Path, base: &Path) -> Result<Config> {
        let value: toml::Table = toml::from_str(text).map_err(|e| toml_error(path, text, &e))?;
        let chain_table: toml::Table = value
            .iter()
            .filter(|(k, _)| CHAIN_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let chain: ChainKeys = chain_table.try_into().map_err(|e: toml::de::Error| {
            BackupError::Config(format!("{}: {}", path.display(), e.message()))
        })?;
        let chain = chain.settings()?;
        // The format structs refuse unknown keys; the chain keys are read above, so the text
        // is parsed again without them (spans in errors then still point into the file).
        let rest = strip_top_level_keys(text, &CHAIN_KEYS);
        let mut config = if value.contains_key("minimal_shards") {
            let z: ZstorFile = toml::from_str(&rest).map_err(|e| toml_error(path, &rest, &e))?;
            Config::from_zstor(z)?
        } else {
            let q: QsfsFile = toml::from_str(&rest).map_err(|e| toml_error(path, &rest, &e))?;
            Config::from_qsfs(q, base)?
        };
        config.chain = chain;
        Ok(config)
    }

    /// The qsfs config `qsfs up` writes when it is given none: four local directory backends
    /// under `root/backends/node0..3`, two data and two parity shards per stripe, the metadata
    /// replicated on the same four directories (metadata and shard keys never collide).
    pub fn default_local_toml(root: &Path) -> String {
        let dirs: Vec<String> = (0..4)
            .map(|i| {
                let p = root.join("backends").join(format!("node{i}"));
                toml::Value::String(format!("local:{}", p.display())).to_string()
            })
            .collect();
        format!(
            "# qsfs configuration, written by `qsfs up`.\n\
             # Four local directory backends, 2 data + 2 parity shards per stripe: any two of\n\
             # them may be lost. Replace them with zdb://host:port/namespace backends on other\n\
             # machines to survive the loss of this one.\n\
             data_shards = 2\n\
             parity_shards = 2\n\
             \n\
             # Storage chain (sizes in bytes or with a KiB/MiB/GiB suffix):\n\
             # local_cap = \"10GiB\"     # evict backed-up segments beyond this\n\
             # segment_size = \"64MiB\"\n\
             # seal_after = 60          # seconds before recent writes are sealed and uploaded\n\
             # seal_max_after = 900     # the same once the index is large (over 16 MiB)\n\
             # read_cache = \"64MiB\"\n\
             # metrics = \"127.0.0.1:9109\"\n\
             # compact_every = 60       # seconds between compactions of the engine\n\
             # gc_every = 600           # seconds between sweeps of unreferenced shards\n\
             # history_retention = 60   # seconds compaction keeps superseded versions\n\
             \n\
             [meta]\n\
             backends = [{}]\n\
             \n\
             [[groups]]\n\
             backends = [{}]\n",
            dirs.join(", "),
            dirs.join(", ")
        )
    }

    fn from_qsfs(q: QsfsFile, base: &Path) -> Result<Config> {
        let mut s = Settings {
            policy: Policy {
                k: q.data_shards,
                m: q.parity_shards,
                redundant_groups: q.redundant_groups,
                redundant_nodes: q.redundant_nodes,
                max_shards_per_backend: q.max_shards_per_backend,
            },
            ..Settings::default()
        };
        if let Some(p) = q.prefix {
            s.prefix = p;
        }
        if let Some(v) = q.stripe_size {
            s.stripe_size = v;
        }
        if let Some(v) = q.compression_level {
            s.compression_level = v;
        }
        if let Some(v) = q.parallel_stripes {
            s.parallel_stripes = v.max(1);
        }
        if let Some(v) = q.verify_writes {
            s.verify_writes = v;
        }
        s.timeouts = timeouts(q.op_timeout_ms, q.health_timeout_ms, q.down_for_ms);
        s.meta_write_quorum = q.meta_write_quorum;
        if let Some(k) = q.kdf {
            s.kdf = k;
        }
        s.policy.validate()?;
        let groups = q
            .groups
            .iter()
            .map(|g| {
                g.backends
                    .iter()
                    .map(|b| BackendSpec::parse(b, base, ZdbRole::Data))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        let meta = q
            .meta
            .backends
            .iter()
            .map(|b| BackendSpec::parse(b, base, ZdbRole::Meta))
            .collect::<Result<Vec<_>>>()?;
        let mut groups = groups;
        let mut meta = meta;
        if let Some(defaults) = &q.s3 {
            for b in groups.iter_mut().flatten().chain(meta.iter_mut()) {
                if let BackendSpec::S3(spec) = b {
                    spec.inherit(defaults);
                }
            }
        }
        Config::checked(Config {
            settings: s,
            groups,
            meta,
            key: None,
            root: None,
            from_zstor: false,
            chain: ChainSettings::default(),
        })
    }

    fn from_zstor(z: ZstorFile) -> Result<Config> {
        if !z.encryption.algorithm.eq_ignore_ascii_case("aes") {
            return Err(BackupError::Config(format!(
                "encryption algorithm {:?}: only AES is known",
                z.encryption.algorithm
            ))
            .into());
        }
        if !z.compression.algorithm.eq_ignore_ascii_case("snappy") {
            return Err(BackupError::Config(format!(
                "compression algorithm {:?}: only snappy is known",
                z.compression.algorithm
            ))
            .into());
        }
        if z.meta.kind != "zdb" {
            return Err(BackupError::Config(format!(
                "meta type {:?}: only zdb is known",
                z.meta.kind
            ))
            .into());
        }
        if z.minimal_shards > z.expected_shards {
            return Err(BackupError::Config(format!(
                "minimal_shards ({}) is larger than expected_shards ({})",
                z.minimal_shards, z.expected_shards
            ))
            .into());
        }
        let key = SecretKey::from_hex(&z.encryption.key)?;
        let s = Settings {
            policy: Policy {
                k: z.minimal_shards,
                m: z.expected_shards - z.minimal_shards,
                redundant_groups: z.redundant_groups,
                redundant_nodes: z.redundant_nodes,
                max_shards_per_backend: 1,
            },
            prefix: z.meta.config.prefix.clone(),
            ..Settings::default()
        };
        s.policy.validate()?;
        let groups = z
            .groups
            .into_iter()
            .map(|g| {
                g.backends
                    .into_iter()
                    .map(|b| b.spec(ZdbRole::Data))
                    .collect()
            })
            .collect();
        let meta = z
            .meta
            .config
            .backends
            .into_iter()
            .map(|b| b.spec(ZdbRole::Meta))
            .collect();
        Config::checked(Config {
            settings: s,
            groups,
            meta,
            key: Some(key),
            root: z.root,
            from_zstor: true,
            chain: ChainSettings::default(),
        })
    }

    fn checked(c: Config) -> Result<Config> {
        let total: usize = c.groups.iter().map(Vec::len).sum();
        let p = &c.settings.policy;
        if total * p.max_shards_per_backend < p.k + p.m {
            return Err(BackupError::Config(format!(
                "{} data backends cannot hold {} shards per stripe (k = {}, m = {})",
                total,
                p.k + p.m,
                p.k,
                p.m
            ))
            .into());
        }
        if c.meta.is_empty() {
            return Err(BackupError::Config("no metadata backends".into()).into());
        }
        // Failure domains are counted by host: warn when one host carries several backends.
        let mut hosts = std::collections::HashMap::new();
        for b in c.groups.iter().flatten() {
            if let BackendSpec::Zdb(z) = b {
                let host = z
                    .address
                    .rsplit_once(':')
                    .map(|(h, _)| h.to_string())
                    .unwrap_or_default();
                *hosts.entry(host).or_insert(0usize) += 1;
            }
        }
        for (h, n) in hosts {
            if n > 1 {
                tracing::warn!("host {h} carries {n} data backends: losing it loses all of them");
            }
        }
        let probe: Vec<Vec<usize>> = {
            let mut next = 0;
            c.groups
                .iter()
                .map(|g| {
                    let v: Vec<usize> = (next..next + g.len()).collect();
                    next += g.len();
                    v
                })
                .collect()
        };
        crate::placement::place(p, &probe, 0)?;
        Ok(c)
    }

    /// The object name of a local path: [`crate::ops::object_name`], made relative to `root`
    /// when one is configured (paths outside `root` are refused, naming it).
    pub fn object_name(&self, path: &Path) -> Result<String> {
        let name = crate::ops::object_name(path)?;
        match &self.root {
            None => Ok(name),
            Some(root) => {
                let root = crate::ops::object_name(root)?;
                if root == "/" {
                    return Ok(name);
                }
                match name.strip_prefix(&root) {
                    Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                        Ok(if rest.is_empty() {
                            "/".into()
                        } else {
                            rest.into()
                        })
                    }
                    _ => Err(qsfs_core::Error::InvalidArgument(format!(
                        "{name} is outside the configured root {root}"
                    ))),
                }
            }
        }
    }

    /// Where an object name is restored by default: the name itself, under `root` if set.
    pub fn local_path(&self, name: &str) -> PathBuf {
        match &self.root {
            Some(root) => root.join(name.trim_start_matches('/')),
            None => PathBuf::from(name),
        }
    }

    /// Opens the backends and the pipeline. `passphrase` is used unless the config carries its
    /// own key (0-stor v2).
    pub async fn open(
        &self,
        passphrase: Option<KeySource>,
        zdb: Option<&dyn ZdbConnector>,
    ) -> Result<Pipeline> {
        let key = match (&self.key, passphrase) {
            (Some(k), _) => KeySource::Raw(k.clone()),
            (None, Some(p)) => p,
            (None, None) => {
                return Err(BackupError::Config(
                    "a passphrase or key file is needed to open this repository".into(),
                )
                .into())
            }
        };
        let groups = self
            .groups
            .iter()
            .map(|g| {
                g.iter()
                    .map(|b| b.open(zdb, &self.settings.timeouts))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        let meta = self
            .meta
            .iter()
            .map(|b| b.open(zdb, &self.settings.timeouts))
            .collect::<Result<Vec<_>>>()?;
        Pipeline::open(self.settings.clone(), groups, meta, &key).await
    }
}

/// `text` without the top-level `key = value` lines of `keys` (those before the first table
/// header). Values of the chain keys are single-line scalars, so removing their lines is exact;
/// other lines keep their numbers, for error messages.
fn strip_top_level_keys(text: &str, keys: &[&str]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut top = true;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with('[') {
            top = false;
        }
        let is_key = top
            && keys.iter().any(|k| {
                t.strip_prefix(k)
                    .is_some_and(|r| r.trim_start().starts_with('='))
            });
        if !is_key {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

fn timeouts(op: Option<u64>, health: Option<u64>, down: Option<u64>) -> Timeouts {
    let d = Timeouts::default();
    Timeouts {
        op: op.map(Duration::from_millis).unwrap_or(d.op),
        health: health.map(Duration::from_millis).unwrap_or(d.health),
        down_for: down.map(Duration::from_millis).unwrap_or(d.down_for),
        health_ttl: d.health_ttl,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZSTOR: &str = r#"
minimal_shards = 2
expected_shards = 4
redundant_groups = 0
redundant_nodes = 0
root = "/"
socket = "/var/run/zstor.sock"
zdb_data_dir_path = "/srv/qsfs/data/zdbfs-data"
max_zdb_data_dir_size = 2560
prometheus_port = 9100

[encryption]
algorithm = "AES"
key = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"

[compression]
algorithm = "snappy"

[meta]
type = "zdb"

[meta.config]
prefix = "someprefix"

[meta.config.encryption]
algorithm = "AES"
key = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"

[[meta.config.backends]]
address = "10.0.0.1:9900"
namespace = "meta1"
password = "secret"

[[meta.config.backends]]
address = "10.0.0.2:9900"
namespace = "meta2"
password = "secret"

[[groups]]
[[groups.backends]]
address = "10.0.0.1:9900"
namespace = "data1"
password = "secret"

[[groups.backends]]
address = "10.0.0.2:9900"
namespace = "data2"

[[groups.backends]]
address = "[2a02:1802:5e::dead:beef]:9900"
namespace = "data3"

[[groups.backends]]
address = "10.0.0.4:9900"
"#;

    #[test]
    fn reads_a_zstor_config_unchanged() {
        let c = Config::parse(ZSTOR, Path::new("zstor.toml"), Path::new("/")).expect("parse");
        assert!(c.from_zstor);
        assert_eq!((c.settings.policy.k, c.settings.policy.m), (2, 2));
        assert_eq!(c.settings.prefix, "someprefix");
        assert_eq!(c.meta.len(), 2);
        assert_eq!(c.groups[0].len(), 4);
        match &c.groups[0][3] {
            BackendSpec::Zdb(z) => assert_eq!(z.namespace, "default"),
            other => panic!("{other:?}"),
        }
        assert_eq!(c.key.as_ref().expect("key").expose()[1], 1);
        assert!(
            !format!("{c:?}").contains("secret"),
            "Debug must not show passwords"
        );
        assert!(
            !format!("{c:?}").contains("0a0b0c"),
            "Debug must not show keys"
        );
    }

    #[test]
    fn zstor_crashing_configs_are_refused_clearly() {
        let m0 = ZSTOR.replace("expected_shards = 4", "expected_shards = 2");
        let e = Config::parse(&m0, Path::new("z"), Path::new("/")).expect_err("m = 0");
        assert!(e.to_string().contains("parity"), "{e}");
        let inv = ZSTOR.replace("minimal_shards = 2", "minimal_shards = 5");
        let e = Config::parse(&inv, Path::new("z"), Path::new("/")).expect_err("k > n");
        assert!(e.to_string().contains("larger than expected_shards"), "{e}");
        let few = ZSTOR.replace("expected_shards = 4", "expected_shards = 6");
        assert!(Config::parse(&few, Path::new("z"), Path::new("/")).is_err());
        let unknown = ZSTOR.replace(
            "prometheus_port = 9100",
            "prometheus_port = 9100\nbogus = 1",
        );
        assert!(Config::parse(&unknown, Path::new("z"), Path::new("/")).is_err());
    }

    #[test]
    fn errors_do_not_echo_secrets() {
        let bad = ZSTOR.replace(
            "key = \"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\"\n\n[compression]",
            "key = 12345678\n\n[compression]",
        );
        let e = Config::parse(&bad, Path::new("z"), Path::new("/")).expect_err("bad key type");
        assert!(!e.to_string().contains("12345678"), "{e}");
        let short = ZSTOR.replacen(
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
            "abcdef",
            1,
        );
        let e = Config::parse(&short, Path::new("z"), Path::new("/")).expect_err("short key");
        assert!(!e.to_string().contains("abcdef"), "{e}");
    }

    #[test]
    fn qsfs_config_with_relative_dirs() {
        let text = r#"
data_shards = 2
parity_shards = 1
stripe_size = 65536
[meta]
backends = ["local:m1", "local:/abs/m2", "zdb://10.0.0.1:9900/meta"]
[[groups]]
backends = ["local:b1", "local:b2"]
[[groups]]
backends = ["local:b3"]
"#;
        let c = Config::parse(text, Path::new("c.toml"), Path::new("/etc/qsfs")).expect("parse");
        assert_eq!(
            c.meta[0],
            BackendSpec::Local {
                path: "/etc/qsfs/m1".into(),
                name: "local:m1".into()
            }
        );
        assert_eq!(c.meta[1], BackendSpec::local("/abs/m2"));
        assert!(
            matches!(&c.meta[2], BackendSpec::Zdb(z) if z.namespace == "meta" && z.role == ZdbRole::Meta)
        );
        assert_eq!(c.settings.stripe_size, 65536);
        assert!(!c.settings.verify_writes, "off unless asked");
        let verifying = text.replace("stripe_size = 65536", "verify_writes = true");
        let v = Config::parse(&verifying, Path::new("c"), Path::new("/")).expect("parse");
        assert!(v.settings.verify_writes);
        let impossible = text.replace(
            "parity_shards = 1",
            "parity_shards = 1\nredundant_groups = 2",
        );
        assert!(Config::parse(&impossible, Path::new("c"), Path::new("/")).is_err());
    }

    #[test]
    fn s3_backends_with_shared_settings() {
        let text = r#"
data_shards = 2
parity_shards = 1
[s3]
endpoint = "http://127.0.0.1:9000"
region = "eu-1"
access_key_id = "AKIDEXAMPLE"
secret_access_key = "very-secret-value"
allow_http = true
[meta]
backends = ["s3://qsfs-meta"]
[[groups]]
backends = ["s3://qsfs-data/node/a/", "s3://qsfs-data/node/b", "local:d"]
"#;
        let c = Config::parse(text, Path::new("c.toml"), Path::new("/")).expect("parse");
        let BackendSpec::S3(meta) = &c.meta[0] else {
            panic!("not s3: {:?}", c.meta[0]);
        };
        assert_eq!(
            (meta.bucket.as_str(), meta.prefix.as_deref()),
            ("qsfs-meta", None)
        );
        assert_eq!(meta.to_string(), "s3://qsfs-meta");
        let BackendSpec::S3(a) = &c.groups[0][0] else {
            panic!("not s3");
        };
        assert_eq!(a.to_string(), "s3://qsfs-data/node/a");
        assert_eq!(a.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(a.secret_access_key.as_deref(), Some("very-secret-value"));
        assert_eq!(a.allow_http, Some(true));
        let debug = format!("{c:?}");
        assert!(!debug.contains("very-secret-value"), "{debug}");
        for bad in [
            "s3://",
            "s3://Upper",
            "s3://ab",
            "s3://bucket//x",
            "s3://bucket/a/../b",
        ] {
            assert!(
                BackendSpec::parse(bad, Path::new("/"), ZdbRole::Data).is_err(),
                "{bad}"
            );
        }
        // A bad value on a secret's line is reported by line only.
        let bad = text.replace("\"very-secret-value\"", "very-secret-value");
        let e = Config::parse(&bad, Path::new("c"), Path::new("/")).expect_err("bad toml");
        assert!(!e.to_string().contains("very-secret"), "{e}");
        let unknown = text.replace("allow_http", "alow_http");
        assert!(Config::parse(&unknown, Path::new("c"), Path::new("/")).is_err());
    }

    #[cfg(not(feature = "s3"))]
    #[tokio::test]
    async fn s3_needs_the_feature() {
        let spec = S3Spec {
            bucket: "qsfs".into(),
            ..S3Spec::default()
        };
        let e = spec
            .open(Duration::from_secs(1), Duration::from_secs(1))
            .expect_err("no s3 support");
        assert!(e.to_string().contains("feature `s3`"), "{e}");
    }

    #[test]
    fn root_confines_names() {
        let mut c = Config::parse(ZSTOR, Path::new("z"), Path::new("/")).expect("parse");
        c.root = Some("/srv/data".into());
        assert_eq!(
            c.object_name(Path::new("/srv/data/x/y")).expect("inside"),
            "/x/y"
        );
        let e = c
            .object_name(Path::new("/srv/database"))
            .expect_err("outside");
        assert!(e.to_string().contains("/srv/data"));
        assert_eq!(c.local_path("/x/y"), PathBuf::from("/srv/data/x/y"));
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        for (text, want) in [
            ("4096", 4096),
            ("64MiB", 64 << 20),
            ("8 MiB", 8 << 20),
            ("1GiB", 1 << 30),
            ("512KiB", 512 << 10),
            ("64M", 64 << 20),
            ("2k", 2048),
        ] {
            assert_eq!(parse_size(text), Ok(want), "{text}");
        }
        for bad in ["", "MiB", "12 parsecs", "-1", "99999999999999999999GiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn chain_keys_in_a_qsfs_config() {
        let text = r#"
local_cap = "64MiB"
segment_size = 8388608
seal_after = 30
seal_max_after = 600
read_cache = "8 MiB"
metrics = "127.0.0.1:9100"
compact_every = 5
data_shards = 1
parity_shards = 1
[meta]
backends = ["local:m"]
[[groups]]
backends = ["local:d1", "local:d2"]
"#;
        let c = Config::parse(text, Path::new("t.toml"), Path::new("/b")).expect("parse");
        assert_eq!(
            c.chain,
            ChainSettings {
                local_cap: Some(64 << 20),
                segment_size: Some(8 << 20),
                seal_after: Some(Duration::from_secs(30)),
                seal_max_after: Some(Duration::from_secs(600)),
                read_cache: Some(8 << 20),
                metrics: Some("127.0.0.1:9100".parse().expect("addr")),
                compact_every: Some(Duration::from_secs(5)),
                gc_every: None,
                history_retention: None,
            }
        );
        let bad = text.replace("\"64MiB\"", "\"64 furlongs\"");
        assert!(Config::parse(&bad, Path::new("t.toml"), Path::new("/b")).is_err());
        let bad = text.replace("127.0.0.1:9100", "localhost");
        assert!(Config::parse(&bad, Path::new("t.toml"), Path::new("/b")).is_err());
        // An unknown key is still refused, and its line number is still right.
        let bad = text.replace("read_cache", "raed_cache");
        let e = Config::parse(&bad, Path::new("t.toml"), Path::new("/b")).expect_err("typo");
        assert!(e.to_string().contains("line 6"), "{e}");
    }

    #[test]
    fn chain_keys_in_a_zstor_config() {
        let c = Config::parse(
            &format!("local_cap = \"1GiB\"\n{ZSTOR}"),
            Path::new("z.toml"),
            Path::new("/"),
        )
        .expect("parse");
        assert!(c.from_zstor);
        assert_eq!(c.chain.local_cap, Some(1 << 30));
        let plain = Config::parse(ZSTOR, Path::new("z.toml"), Path::new("/")).expect("parse");
        assert_eq!(plain.chain, ChainSettings::default());
    }

    #[test]
    fn default_local_config_is_accepted() {
        let root = Path::new("/home/u/.threefold");
        let text = Config::default_local_toml(root);
        let c =
            Config::parse(&text, Path::new("qsfs.toml"), Path::new("/elsewhere")).expect("parse");
        let dirs: Vec<BackendSpec> = (0..4)
            .map(|i| BackendSpec::local(root.join(format!("backends/node{i}"))))
            .collect();
        assert_eq!(c.groups, vec![dirs.clone()]);
        assert_eq!(c.meta, dirs);
        assert_eq!((c.settings.policy.k, c.settings.policy.m), (2, 2));
        assert_eq!(c.chain, ChainSettings::default());
    }
}
