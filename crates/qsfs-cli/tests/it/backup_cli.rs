//! The real `qsfs backup` binary over LocalDir backends.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn qsfs(config: &Path, pass: &str, args: &[&str]) -> Output {
    backup_cmd(config, pass)
        .args(args)
        .output()
        .expect("run qsfs")
}

/// `qsfs backup --config CONFIG` with passphrase `pass`, quiet logs.
fn backup_cmd(config: &Path, pass: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_qsfs"));
    c.arg("backup")
        .arg("--config")
        .arg(config)
        .env("QSFS_PASSPHRASE", pass)
        .env("QSFS_LOG", "warn");
    c
}

/// A 2+2 config over four LocalDir backends and three metadata replicas under `root`, with a
/// cheap KDF; `extra` adds top-level keys.
fn write_config(root: &Path, extra: &str) -> PathBuf {
    let config = root.join("backup.toml");
    let toml = format!(
        r#"
data_shards = 2
parity_shards = 2
stripe_size = 65536
op_timeout_ms = 2000
{extra}[kdf]
memory_kib = 256
iterations = 1
parallelism = 1
[meta]
backends = ["local:meta1", "local:meta2", "local:meta3"]
[[groups]]
backends = ["local:b1", "local:b2", "local:b3", "local:b4"]
"#
    );
    std::fs::write(&config, toml).expect("write config");
    config
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
    let config = write_config(root, "");
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

/// `rebuild` says object by object what it re-created (shards, bytes, moves) and which backends
/// did not answer, in text and with `--json`; a partial repair is reported as such and exits
/// non-zero, and once the backend is back a second rebuild completes it.
#[test]
fn rebuild_reports_per_object_in_text_and_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let config = write_config(root, "down_for_ms = 100\n");
    let big: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let (a, b) = (root.join("a.bin"), root.join("b.txt"));
    std::fs::write(&a, &big).expect("write");
    std::fs::write(&b, b"a small note\n").expect("write");
    let arg = |p: &Path| p.to_str().expect("utf8").to_string();
    ok(&qsfs(&config, "pw", &["store", &arg(&a), &arg(&b)]));

    // Nothing to do: both objects clean.
    let out = ok(&qsfs(&config, "pw", &["rebuild", "--all"]));
    assert!(
        out.contains("2 object(s) checked: 2 clean, 0 repaired, 0 partial, 0 failed"),
        "{out}"
    );
    assert!(!out.contains("REPAIRED"), "{out}");

    // b1 loses everything: each object gets its shards back, one per stripe (5 + 1).
    std::fs::remove_dir_all(root.join("b1")).expect("rm b1");
    let out = ok(&qsfs(&config, "pw", &["rebuild", "--all"]));
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("REPAIRED")).collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("a.bin: 5 shard(s) re-created")),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("b.txt: 1 shard(s) re-created")),
        "{out}"
    );
    assert!(
        out.contains("2 object(s) checked: 0 clean, 2 repaired")
            && out.contains("6 shard(s) re-created"),
        "{out}"
    );

    // The same in JSON after b2 is wiped.
    std::fs::remove_dir_all(root.join("b2")).expect("rm b2");
    let o = qsfs(&config, "pw", &["rebuild", "--all", "--json"]);
    let text = ok(&o);
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["objects_checked"], 2, "{text}");
    assert_eq!(v["objects_repaired"], 2, "{text}");
    assert_eq!(v["shards_rewritten"], 6, "{text}");
    assert_eq!(v["shards_moved"], 0, "{text}");
    assert_eq!(
        v["unreachable_backends"].as_array().expect("array").len(),
        0
    );
    let objs = v["objects"].as_array().expect("objects");
    // The total is the sum of the objects' shard bytes (the content compresses well, so they
    // are small but not empty).
    let per_object: u64 = objs
        .iter()
        .map(|o| o["report"]["bytes_rewritten"].as_u64().expect("bytes"))
        .sum();
    assert!(per_object > 0, "{text}");
    assert_eq!(v["bytes_rewritten"].as_u64(), Some(per_object), "{text}");
    assert!(objs.iter().all(|o| o["status"] == "repaired"), "{text}");
    let a_obj = objs
        .iter()
        .find(|o| {
            o["report"]["name"]
                .as_str()
                .is_some_and(|n| n.ends_with("a.bin"))
        })
        .expect("a.bin in the report");
    assert_eq!(a_obj["report"]["rewritten"], 5, "{text}");
    assert_eq!(
        a_obj["report"]["problems"]
            .as_array()
            .expect("problems")
            .len(),
        5
    );

    // b3 stops answering (its directory is a file now) and b4 is wiped: b4's shards come back,
    // b3's have nowhere to go (2+2 over exactly 4 backends), so the repair is partial.
    std::fs::remove_dir_all(root.join("b3")).expect("rm b3");
    std::fs::write(root.join("b3"), b"not a directory").expect("block b3");
    std::fs::remove_dir_all(root.join("b4")).expect("rm b4");
    let o = qsfs(&config, "pw", &["rebuild", "--all", "--json"]);
    assert!(!o.status.success(), "a partial rebuild exits non-zero");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["objects_partial"], 2, "{v}");
    assert_eq!(v["shards_rewritten"], 6, "{v}");
    let unreachable = v["unreachable_backends"].as_array().expect("array");
    assert_eq!(unreachable.len(), 1, "{v}");
    assert!(unreachable[0].as_str().expect("str").ends_with("b3"), "{v}");
    assert!(v["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .all(|o| o["status"] == "partial"
            && o["error"]
                .as_str()
                .is_some_and(|e| e.contains("partial repair"))));
    let o = qsfs(&config, "pw", &["rebuild", "--all"]);
    assert!(!o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("PARTIAL") && out.contains("not verified") && out.contains("unreachable"),
        "{out}"
    );

    // b3 comes back empty: the last rebuild completes the repair.
    std::fs::remove_file(root.join("b3")).expect("unblock b3");
    std::fs::create_dir(root.join("b3")).expect("mkdir b3");
    let out = ok(&qsfs(&config, "pw", &["rebuild", "--all"]));
    assert!(
        out.contains("0 partial, 0 failed; 6 shard(s) re-created"),
        "{out}"
    );
    ok(&qsfs(&config, "pw", &["check", "--deep"]));
    ok(&qsfs(
        &config,
        "pw",
        &["retrieve", &arg(&a), "-o", &arg(&root.join("back.bin"))],
    ));
    assert_eq!(std::fs::read(root.join("back.bin")).expect("read"), big);
}

/// A directory that was stored comes back whole: nested files, small ones and one of several
/// stripes, under `-o` or at their own paths; existing files are not replaced without
/// `--force`; a deleted file does not come back; nothing stored under a path is a clear error.
#[test]
fn a_stored_directory_is_retrieved_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let config = write_config(root, "");
    let src = root.join("tree");
    std::fs::create_dir_all(src.join("a/b")).expect("mkdir");
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(src.join("a/b/big.bin"), &big).expect("write");
    for i in 0..30 {
        std::fs::write(src.join(format!("a/f{i}")), format!("file {i}\n")).expect("write");
    }
    std::fs::write(src.join("gone"), b"deleted before the retrieve").expect("write");
    let s = |p: &Path| p.to_str().expect("utf8").to_string();
    ok(&qsfs(&config, "pw", &["store", &s(&src)]));
    ok(&qsfs(&config, "pw", &["delete", &s(&src.join("gone"))]));
    std::fs::remove_file(src.join("gone")).expect("rm");

    let out = root.join("restored");
    let text = ok(&qsfs(
        &config,
        "pw",
        &["retrieve", &s(&src), "-o", &s(&out)],
    ));
    assert_eq!(
        text.lines().filter(|l| l.starts_with("retrieved")).count(),
        31,
        "{text}"
    );
    let same = Command::new("diff")
        .args(["-r", &s(&src), &s(&out)])
        .output()
        .expect("diff");
    assert!(
        same.status.success(),
        "{}",
        String::from_utf8_lossy(&same.stdout)
    );

    // Again: every file exists, none is replaced, and the command fails.
    std::fs::write(out.join("a/f0"), b"changed here").expect("write");
    let again = qsfs(&config, "pw", &["retrieve", &s(&src), "-o", &s(&out)]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert_eq!(
        std::fs::read(out.join("a/f0")).expect("read"),
        b"changed here"
    );
    ok(&qsfs(
        &config,
        "pw",
        &["retrieve", &s(&src), "-o", &s(&out), "--force"],
    ));
    assert_eq!(std::fs::read(out.join("a/f0")).expect("read"), b"file 0\n");

    // Without -o, to the paths it came from.
    std::fs::remove_dir_all(&src).expect("rm -r");
    ok(&qsfs(&config, "pw", &["retrieve", &s(&src.join("a"))]));
    assert_eq!(std::fs::read(src.join("a/b/big.bin")).expect("read"), big);
    assert!(!src.join("gone").exists());

    let none = qsfs(&config, "pw", &["retrieve", &s(&root.join("nothing"))]);
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("or of anything under it"));
    let ranged = qsfs(
        &config,
        "pw",
        &[
            "retrieve",
            &s(&src),
            "--range",
            "0..3",
            "-o",
            &s(&root.join("r")),
        ],
    );
    assert!(!ranged.status.success());
}

/// `-o` naming an existing directory: a file goes into it under its own name, as with `cp`,
/// and a stored directory fills it without `--force` while nothing in it is replaced. A
/// directory is never replaced by a file: with `--force` this ended in "rename into DIR: Is a
/// directory", said twice, and a stored directory into an existing one asked for `--force`.
#[test]
fn an_existing_directory_as_the_target() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let config = write_config(root, "");
    let s = |p: &Path| p.to_str().expect("utf8").to_string();
    let file = root.join("notes.txt");
    std::fs::write(&file, b"some notes\n").expect("write");
    let tree = root.join("tree");
    std::fs::create_dir_all(tree.join("sub")).expect("mkdir");
    std::fs::write(tree.join("sub/a"), b"a\n").expect("write");
    ok(&qsfs(&config, "pw", &["store", &s(&file)]));
    ok(&qsfs(&config, "pw", &["store", &s(&tree)]));

    let out = root.join("out");
    std::fs::create_dir(&out).expect("mkdir");
    ok(&qsfs(
        &config,
        "pw",
        &["retrieve", &s(&file), "-o", &s(&out)],
    ));
    assert_eq!(
        std::fs::read(out.join("notes.txt")).expect("read"),
        b"some notes\n"
    );
    let again = qsfs(&config, "pw", &["retrieve", &s(&file), "-o", &s(&out)]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    ok(&qsfs(
        &config,
        "pw",
        &["retrieve", &s(&tree), "-o", &s(&out)],
    ));
    assert_eq!(std::fs::read(out.join("sub/a")).expect("read"), b"a\n");
    assert_eq!(
        std::fs::read(out.join("notes.txt")).expect("read"),
        b"some notes\n"
    );

    // Without -o the target is the file's own path: a directory there stays, with or without
    // --force, and the error says why, once.
    std::fs::remove_file(&file).expect("rm");
    std::fs::create_dir(&file).expect("mkdir");
    std::fs::write(file.join("inside"), b"kept").expect("write");
    for force in [false, true] {
        let mut args = vec!["retrieve".to_string(), s(&file)];
        if force {
            args.push("--force".into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = qsfs(&config, "pw", &args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success(), "{err}");
        assert!(err.contains("is a directory"), "{err}");
        assert_eq!(err.matches("directory").count(), 1, "{err}");
        assert_eq!(std::fs::read(file.join("inside")).expect("read"), b"kept");
    }
}

/// Standard input is stored under `--name` resolved as `retrieve` resolves its path, so the
/// same words (relative, with `..`) find it again; it was stored under the words as typed,
/// which no retrieve could name.
#[test]
fn standard_input_is_found_again_by_the_name_it_was_stored_under() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let config = write_config(root, "");
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let mut child = backup_cmd(&config, "pw")
        .args(["--quiet", "store", "-", "--name", "dumps/../db.sql"])
        .current_dir(root)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run qsfs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&body)
        .expect("feed stdin");
    ok(&child.wait_with_output().expect("store"));
    let back = backup_cmd(&config, "pw")
        .args(["--quiet", "retrieve", "db.sql", "-o", "-"])
        .current_dir(root)
        .output()
        .expect("retrieve");
    assert!(
        back.status.success(),
        "{}",
        String::from_utf8_lossy(&back.stderr)
    );
    assert!(back.stdout == body, "{} bytes back", back.stdout.len());
    let listed = ok(&qsfs(&config, "pw", &["list"]));
    let want = std::fs::canonicalize(root).expect("root").join("db.sql");
    assert!(listed.contains(want.to_str().expect("utf-8")), "{listed}");
}

/// A config with relative `local:` paths means the same backends however it is reached (`-c
/// dir/backup.toml` from above, `-c backup.toml` from inside): they are named by the config's
/// own words. Named by the path the config was reached by, the shards stored one way were
/// "not in the config" the other way, and gc had to refuse.
#[test]
fn a_config_reached_by_another_path_names_the_same_backends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let top = dir.path();
    let inner = top.join("dir");
    std::fs::create_dir(&inner).expect("mkdir");
    write_config(&inner, "");
    let file = top.join("data.bin");
    let body: Vec<u8> = (0..150_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&file, &body).expect("write");
    let run = |cwd: &Path, config: &str, args: &[&str]| {
        backup_cmd(Path::new(config), "pw")
            .current_dir(cwd)
            .args(args)
            .output()
            .expect("run qsfs")
    };
    let name = file.to_str().expect("utf8");
    ok(&run(top, "dir/backup.toml", &["store", name]));
    let out = top.join("out.bin");
    let out_s = out.to_str().expect("utf8");
    ok(&run(
        &inner,
        "backup.toml",
        &["retrieve", name, "-o", out_s],
    ));
    assert_eq!(std::fs::read(&out).expect("read"), body);
    let gc = ok(&run(&inner, "backup.toml", &["gc"]));
    assert!(gc.contains("0 shard"), "{gc}");
    std::fs::remove_file(&out).expect("rm");
    ok(&run(
        top,
        "dir/backup.toml",
        &["retrieve", name, "-o", out_s],
    ));
    assert_eq!(std::fs::read(&out).expect("read"), body);
}

/// A retrieve that reads around lost backends names each missing shard once: the pipeline
/// returns the problems and the command prints them (the pipeline also logged them at warn
/// level, so each came twice).
#[test]
fn a_retrieve_names_each_missing_shard_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let config = write_config(root, "");
    let file = root.join("data.bin");
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(&file, &body).expect("write");
    let name = file.to_str().expect("utf8");
    ok(&qsfs(&config, "pw", &["store", name]));
    // Two of four: every stripe must be read from what is left.
    std::fs::remove_dir_all(root.join("b1")).expect("rm b1");
    std::fs::remove_dir_all(root.join("b2")).expect("rm b2");
    let out = root.join("out.bin");
    let o = qsfs(
        &config,
        "pw",
        &["retrieve", name, "-o", out.to_str().expect("utf8")],
    );
    ok(&o);
    assert_eq!(std::fs::read(&out).expect("read"), body);
    let err = String::from_utf8_lossy(&o.stderr);
    // Each problem's words ("stripe S shard J on local:b1: Missing"), wherever they stand.
    let said: Vec<&str> = err
        .lines()
        .filter_map(|l| l.find("stripe ").map(|at| &l[at..]))
        .filter(|l| l.contains("Missing"))
        .collect();
    assert!(!said.is_empty(), "no missing shard named: {err}");
    let mut once = said.clone();
    once.sort_unstable();
    once.dedup();
    assert_eq!(once.len(), said.len(), "{err}");
}
