//! Mount qsfs from code: an embedded engine in one temporary directory, the filesystem mounted
//! on another, ordinary `std::fs` calls through the kernel, then a clean unmount, and the data
//! still there after mounting again. Needs FUSE (`/dev/fuse`, `fusermount3`) and permission to
//! mount (root, or `user_allow_other` setups).
//!
//! Run: `cargo run --example mount_in_process`

use std::sync::Arc;

use qsfs::core::Store;
use qsfs::fuse::{mount, Fs, FsConfig, MountOptions};
use qsfs::store::{Engine, EngineConfig};

fn main() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let mnt = tempfile::tempdir()?;
    let engine = Engine::open(data.path(), EngineConfig::default())?;
    let store: Arc<dyn Store> = Arc::new(engine.clone());

    let content: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    {
        let fs = Fs::open(store.clone(), FsConfig::default())?;
        let mounted = mount(fs, mnt.path(), &MountOptions::default())?;
        std::fs::create_dir(mnt.path().join("docs"))?;
        std::fs::write(mnt.path().join("docs/big.bin"), &content)?;
        std::fs::write(mnt.path().join("hello.txt"), b"hello from qsfs\n")?;
        assert_eq!(std::fs::read(mnt.path().join("docs/big.bin"))?, content);
        let mut names: Vec<String> = std::fs::read_dir(mnt.path())?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        names.sort();
        assert_eq!(names, ["docs", "hello.txt"]);
        mounted.unmount()?; // flushes and syncs everything
    }

    // Mount again over the same engine: everything is still there.
    let fs = Fs::open(store, FsConfig::default())?;
    let mounted = mount(fs, mnt.path(), &MountOptions::default())?;
    assert_eq!(
        std::fs::read(mnt.path().join("hello.txt"))?,
        b"hello from qsfs\n"
    );
    assert_eq!(std::fs::read(mnt.path().join("docs/big.bin"))?, content);
    mounted.unmount()?;
    // After unmounting, the directory is an empty local directory again.
    assert!(!mnt.path().join("hello.txt").exists());

    println!(
        "mount_in_process: ok ({} bytes written and read back through FUSE)",
        content.len()
    );
    Ok(())
}
