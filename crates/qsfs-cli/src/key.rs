//! Where the repository passphrase comes from. For `qsfs backup` it is `--keyfile`, then
//! `QSFS_PASSPHRASE`, then a prompt. For `qsfs up` and `qsfs recover`, which own a root
//! directory, the root's key file and a generated one come in as well:
//! `--keyfile FILE` > `QSFS_PASSPHRASE` > `ROOT/qsfs.key` > a TTY prompt (an empty answer
//! generates a key) > a generated `ROOT/qsfs.key`.

use std::io::{IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use qsfs_backup::crypto::KeySource;
use rand::RngCore;
use zeroize::Zeroizing;

/// The environment variable a script passes the passphrase in.
pub const PASSPHRASE_ENV: &str = "QSFS_PASSPHRASE";

/// The key file a root holds.
pub fn root_keyfile(root: &Path) -> PathBuf {
    root.join("qsfs.key")
}

/// Reads a key file: its content, without the trailing newline, is the passphrase.
pub fn read_keyfile(file: &Path) -> anyhow::Result<KeySource> {
    let s = Zeroizing::new(
        std::fs::read_to_string(file)
            .with_context(|| format!("reading key file {}", file.display()))?,
    );
    let s = s.trim_end_matches(['\n', '\r']);
    if s.is_empty() {
        bail!("key file {} is empty", file.display());
    }
    Ok(KeySource::passphrase(s))
}

/// The passphrase from `file`, else the environment variable `env`, else a prompt on a TTY.
pub fn read_secret(file: Option<&Path>, env: &str, prompt: &str) -> anyhow::Result<KeySource> {
    if let Some(f) = file {
        return read_keyfile(f);
    }
    if let Some(p) = env_secret(env) {
        return Ok(p);
    }
    if !std::io::stdin().is_terminal() {
        bail!("no passphrase: use --keyfile FILE or set {env}");
    }
    let p = Zeroizing::new(rpassword::prompt_password(prompt).context("reading the passphrase")?);
    Ok(KeySource::passphrase(p.as_str()))
}

fn env_secret(env: &str) -> Option<KeySource> {
    let p = Zeroizing::new(std::env::var(env).ok()?);
    (!p.is_empty()).then(|| KeySource::passphrase(p.as_str()))
}

/// What to do when no key is found anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// Generate `ROOT/qsfs.key` (a new repository: `qsfs up`).
    Generate,
    /// Fail (an existing repository needs its own key: `qsfs recover`).
    Fail,
}

/// The key of the repository a root's chain backs up to, in the order of the module docs.
pub fn root_secret(
    keyfile: Option<&Path>,
    root: &Path,
    missing: Missing,
) -> anyhow::Result<KeySource> {
    if let Some(f) = keyfile {
        return read_keyfile(f);
    }
    if let Some(p) = env_secret(PASSPHRASE_ENV) {
        return Ok(p);
    }
    let own = root_keyfile(root);
    if own.exists() {
        return read_keyfile(&own);
    }
    if std::io::stdin().is_terminal() {
        let prompt = match missing {
            Missing::Generate => "qsfs passphrase (empty: generate a key file): ",
            Missing::Fail => "qsfs passphrase: ",
        };
        let p =
            Zeroizing::new(rpassword::prompt_password(prompt).context("reading the passphrase")?);
        if !p.is_empty() {
            return Ok(KeySource::passphrase(p.as_str()));
        }
    }
    match missing {
        Missing::Generate => generate_keyfile(&own),
        Missing::Fail => bail!(
            "no key: pass --keyfile FILE, set {PASSPHRASE_ENV}, or put the key file at {}",
            own.display()
        ),
    }
}

/// Creates `path` with 32 random bytes in hex, readable by the owner only. The caller warns
/// with [`warn_generated`] once the key is known to be in use.
pub fn generate_keyfile(path: &Path) -> anyhow::Result<KeySource> {
    let mut raw = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(&mut raw[..]);
    let text = Zeroizing::new(hex::encode(&raw[..]));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // create_new: never overwrite a key another process just wrote (or an old one).
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating key file {}", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.write_all(b"\n"))
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing key file {}", path.display()))?;
    Ok(KeySource::passphrase(text.as_str()))
}

/// Tells the user, loudly, where the generated key is and that the backups are unreadable
/// without it. Never prints the key.
pub fn warn_generated(path: &Path) {
    eprintln!(
        "\n\
         ******************************************************************************\n\
         qsfs: generated a new encryption key in {}\n\
         BACK THIS FILE UP NOW, somewhere other than this machine. Your backups are\n\
         encrypted with it: without it they are unreadable, and `qsfs recover` on a\n\
         new machine needs it.\n\
         ******************************************************************************\n",
        path.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generated_key_is_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let p = root_keyfile(dir.path());
        generate_keyfile(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.trim().len(), 64);
        assert!(generate_keyfile(&p).is_err());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), text);
    }

    #[test]
    fn explicit_key_file_wins_and_empty_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k");
        std::fs::write(&f, "secret\n").unwrap();
        let k = root_secret(Some(&f), dir.path(), Missing::Fail).unwrap();
        assert!(matches!(k, KeySource::Passphrase(p) if p.as_str() == "secret"));
        std::fs::write(&f, "\n").unwrap();
        assert!(root_secret(Some(&f), dir.path(), Missing::Fail).is_err());
    }
}
