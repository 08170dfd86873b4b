//! The real `qsfs backup` binary over LocalDir backends.

use std::path::Path;
use std::process::{Command, Output};

fn qsfs(config: &Path, pass: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qsfs"))
        .arg("backup")
        .arg("--config")
        .arg(config)
        .args(args)
        .env("QSFS_PASSPHRASE", pass)
        .env("QSFS_LOG", "warn")
        .output()
        .expect("run qsfs")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn store_retrieve_lose_backends_repair_delete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let config = root.join("backup.toml");
    std::fs::write(
        &config,
        r#"
data_shards = 2
parity_shards = 2
stripe_size = 65536
op_timeout_ms = 2000
[kdf]
memory_kib = 256
iterations = 1
parallelism = 1
[meta]
backends = ["local:meta1", "local:meta2", "local:meta3"]
[[groups]]
backends = ["local:b1", "local:b2", "local:b3", "local:b4"]
"#,
    )
    .expect("write config");
    let src = root.join("src");
    std::fs::create_dir_all(src.join("sub")).expect("mkdir");
    let big: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(src.join("big.bin"), &big).expect("write");
    std::fs::write(src.join("sub/note.txt"), b"a small note\n").expect("write");

    // Store a directory recursively.
    let out = ok(&qsfs(
        &config,
        "pw",
        &["store", src.to_str().expect("utf8")],
    ));
    assert!(out.contains("big.bin") && out.contains("note.txt"), "{out}");

    // List (JSON) shows both with their sizes.
    let list = ok(&qsfs(&config, "pw", &["list", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&list).expect("json");
    let objs = v["objects"].as_array().expect("objects");
    assert_eq!(objs.len(), 2, "{list}");
    assert!(
        objs.iter()
            .any(|o| o["size"] == 300_000 && o["health"] == "ok"),
        "{list}"
    );

    // Retrieve to another path.
    let target = root.join("restored.bin");
    let big_path = src.join("big.bin");
    let big_arg = big_path.to_str().expect("utf8");
    ok(&qsfs(
        &config,
        "pw",
        &["retrieve", big_arg, "-o", target.to_str().expect("utf8")],
    ));
    assert_eq!(std::fs::read(&target).expect("read"), big);

    // An existing file is not overwritten without --force.
    std::fs::write(&target, b"keep me").expect("write");
    let o = qsfs(
        &config,
        "pw",
        &["retrieve", big_arg, "-o", target.to_str().expect("utf8")],
    );
    assert!(!o.status.success());
    assert_eq!(std::fs::read(&target).expect("read"), b"keep me");
    ok(&qsfs(
        &config,
        "pw",
        &[
            "retrieve",
            big_arg,
            "-o",
            target.to_str().expect("utf8"),
            "--force",
        ],
    ));
    assert_eq!(std::fs::read(&target).expect("read"), big);

    // Wipe two of the four backends: still retrievable; read-repair restores the shards.
    std::fs::remove_dir_all(root.join("b1")).expect("rm b1");
    std::fs::remove_dir_all(root.join("b3")).expect("rm b3");
    let t2 = root.join("after-loss.bin");
    ok(&qsfs(
        &config,
        "pw",
        &["retrieve", big_arg, "-o", t2.to_str().expect("utf8")],
    ));
    assert_eq!(std::fs::read(&t2).expect("read"), big);
    let check = qsfs(&config, "pw", &["check", "--deep"]);
    // The note's shards on b1/b3 are still missing (only the retrieved object was read-repaired).
    assert!(
        !check.status.success(),
        "check must report the damaged note"
    );
    ok(&qsfs(&config, "pw", &["rebuild", "--all"]));
    ok(&qsfs(&config, "pw", &["check", "--deep"]));
    ok(&qsfs(&config, "pw", &["scrub"]));

    // Restore to the original path (without -o) after removing it.
    std::fs::remove_file(&big_path).expect("rm");
    ok(&qsfs(&config, "pw", &["retrieve", big_arg]));
    assert_eq!(std::fs::read(&big_path).expect("read"), big);

    // Stdout.
    let o = ok(&qsfs(
        &config,
        "pw",
        &[
            "retrieve",
            src.join("sub/note.txt").to_str().expect("utf8"),
            "-o",
            "-",
        ],
    ));
    assert_eq!(o, "a small note\n");

    // Wrong passphrase: a clear error, non-zero exit.
    let o = qsfs(&config, "wrong", &["list"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("wrong passphrase"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // Status, delete, gc.
    let st = ok(&qsfs(&config, "pw", &["status", "--json"]));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&st)
            .expect("json")
            .as_array()
            .expect("rows")
            .len(),
        7
    );
    ok(&qsfs(&config, "pw", &["delete", big_arg]));
    let o = qsfs(
        &config,
        "pw",
        &[
            "retrieve",
            big_arg,
            "-o",
            root.join("gone").to_str().expect("utf8"),
        ],
    );
    assert!(!o.status.success(), "deleted object cannot be retrieved");
    ok(&qsfs(&config, "pw", &["gc"]));
    let list = ok(&qsfs(&config, "pw", &["list", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&list).expect("json");
    assert_eq!(v["objects"].as_array().expect("objects").len(), 1);
}
