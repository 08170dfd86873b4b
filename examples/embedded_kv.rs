//! Embedded key-value store: open an [`Engine`] in a temporary directory, create a namespace,
//! then set, get, look at history and scan, all in-process with no server.
//!
//! Run: `cargo run --example embedded_kv`

use qsfs::core::{Error, ScanOrder, Store};
use qsfs::store::{Engine, EngineConfig};

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(dir.path(), EngineConfig::default())?;

    // Namespaces keep data sets apart; `default` always exists.
    engine.namespace_create("notes")?;
    assert!(engine.namespace_list()?.contains(&"notes".to_string()));

    // Set and get. Writing the same value again writes nothing (append-only, deduplicated).
    engine.set("notes", Some(b"todo"), b"buy milk")?;
    assert!(!engine.set("notes", Some(b"todo"), b"buy milk")?.written());
    engine.set("notes", Some(b"todo"), b"buy milk and bread")?;
    let live = engine.get("notes", b"todo")?.map(|e| e.value);
    assert_eq!(live.as_deref(), Some(&b"buy milk and bread"[..]));
    // The same key in another namespace is another key.
    assert!(engine.get("default", b"todo")?.is_none());

    // History: every version stays reachable, newest first, even after a delete.
    engine.delete("notes", b"todo")?;
    assert!(engine.get("notes", b"todo")?.is_none());
    // The live version of a deleted key is gone...
    let live = engine.history("notes", b"todo", None);
    assert!(matches!(live, Err(Error::NotFound(_))), "{live:?}");
    // ...but writing it again links the new version to everything before.
    engine.set("notes", Some(b"todo"), b"nothing left")?;
    let mut versions = Vec::new();
    let mut v = engine.history("notes", b"todo", None)?;
    loop {
        versions.push((v.deleted, String::from_utf8(v.value.clone())?));
        match v.previous {
            Some(at) => v = engine.history("notes", b"todo", Some(at))?,
            None => break,
        }
    }
    let expected = [
        (false, "nothing left"),
        (true, ""),
        (false, "buy milk and bread"),
        (false, "buy milk"),
    ];
    let expected: Vec<(bool, String)> = expected.iter().map(|(d, s)| (*d, s.to_string())).collect();
    assert_eq!(versions, expected);

    // Scan: live keys in write order, a page at a time.
    for i in 0..5u8 {
        engine.set("notes", Some(format!("item-{i}").as_bytes()), &[i; 16])?;
    }
    let mut keys = Vec::new();
    let mut cursor = None;
    loop {
        let page = engine.scan("notes", cursor.as_ref(), 2, ScanOrder::Forward)?;
        keys.extend(
            page.entries
                .iter()
                .map(|m| String::from_utf8_lossy(&m.key).into_owned()),
        );
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(
        keys,
        ["todo", "item-0", "item-1", "item-2", "item-3", "item-4"]
    );

    engine.sync()?;
    println!(
        "embedded_kv: ok ({} versions, {} keys scanned)",
        versions.len(),
        keys.len()
    );
    Ok(())
}
