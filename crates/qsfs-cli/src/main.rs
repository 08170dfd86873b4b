//! The `qsfs` command: parses a config and wires the qsfs crates together.

fn main() {
    println!("qsfs {}", env!("CARGO_PKG_VERSION"));
}
