//! Dumps every object of the local directory backends `DIR/{m1,b1,b2,b3}` as lines of
//! `backend name <TAB> key <TAB> hex value`: the fixtures of `tests/it/old_formats.rs`, made from
//! the backends a `qsfs backup store` of a given binary filled.
//!
//! ```text
//! cargo run --release -p qsfs-backup --example dump_backends -- /tmp/qsfs-fixture-v4 tests/data/format4.txt
//! ```

use std::fmt::Write;

use qsfs_backup::backends::LocalDir;
use qsfs_core::Backend;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(out)) = (args.next(), args.next()) else {
        return Err("usage: dump_backends DIR OUT".into());
    };
    let mut text = String::new();
    for sub in ["m1", "b1", "b2", "b3"] {
        let b = LocalDir::open(format!("{dir}/{sub}"))?;
        let mut keys = b.list("").await?;
        keys.sort();
        for k in keys {
            let v = b.get(&k).await?;
            writeln!(text, "{}\t{k}\t{}", b.name(), hex::encode(&v))?;
        }
    }
    std::fs::write(&out, text)?;
    Ok(())
}
