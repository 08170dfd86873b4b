//! Runs every program in `examples/` so none of them rots. `cargo test` builds the examples of
//! the package before it runs tests, into `target/<profile>/examples/`, beside the `deps/`
//! directory holding this test binary. Each example prints its `NAME: ok` line only after its
//! own assertions passed, so exit status 0 plus that line means it did what it claims.
//!
//! Run through plain `cargo test` (or `cargo test --examples --test examples`): a bare
//! `cargo test --test examples` does not rebuild the examples and would run stale binaries.

use std::path::PathBuf;
use std::process::Command;

fn examples_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test binary");
    // target/<profile>/deps/examples-<hash> -> target/<profile>/examples
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("examples"))
        .expect("test binary lives in target/<profile>/deps")
}

fn run_example(name: &str) {
    let bin = examples_dir().join(name);
    assert!(
        bin.is_file(),
        "{} not built (cargo test builds examples; was it removed from examples/?)",
        bin.display()
    );
    let out = Command::new(&bin)
        .output()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "example {name} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let marker = format!("{name}: ok");
    assert!(
        stdout.lines().any(|l| l.starts_with(&marker)),
        "example {name} exited 0 without printing {marker:?}:\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
}

#[test]
fn embedded_kv() {
    run_example("embedded_kv");
}

#[test]
fn custom_backend() {
    run_example("custom_backend");
}

#[test]
fn backup_file() {
    run_example("backup_file");
}

#[test]
fn serve_and_query() {
    run_example("serve_and_query");
}

#[test]
fn mount_in_process() {
    run_example("mount_in_process");
}

#[test]
fn tiered_engine() {
    run_example("tiered_engine");
}
