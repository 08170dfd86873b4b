//! Model-based random operations: the same sequence of pwrite / truncate / punch-hole / read /
//! rename / unlink / remount runs on a qsfs mount and on a plain directory of the host disk;
//! every answer (data or errno) and the final contents must agree.

use crate::common::Fixture;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::cell::RefCell;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

#[derive(Debug, Clone)]
enum Op {
    Write {
        file: usize,
        offset: u64,
        len: usize,
        seed: u8,
    },
    Truncate {
        file: usize,
        size: u64,
    },
    Punch {
        file: usize,
        offset: u64,
        len: u64,
    },
    Read {
        file: usize,
        offset: u64,
        len: usize,
    },
    Rename {
        from: usize,
        to: usize,
    },
    Unlink {
        file: usize,
    },
    Remount,
}

const NAMES: [&str; 5] = ["a", "b", "d/c", "d/e", "f"];
const SPAN: u64 = 1 << 20;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..NAMES.len(), 0..SPAN, 1usize..300_000, any::<u8>())
            .prop_map(|(file, offset, len, seed)| Op::Write { file, offset, len, seed }),
        2 => (0..NAMES.len(), 0..SPAN + 200_000).prop_map(|(file, size)| Op::Truncate { file, size }),
        1 => (0..NAMES.len(), 0..SPAN, 1..400_000u64).prop_map(|(file, offset, len)| Op::Punch { file, offset, len }),
        3 => (0..NAMES.len(), 0..SPAN + 100_000, 1usize..400_000).prop_map(|(file, offset, len)| Op::Read { file, offset, len }),
        1 => (0..NAMES.len(), 0..NAMES.len()).prop_map(|(from, to)| Op::Rename { from, to }),
        1 => (0..NAMES.len()).prop_map(|file| Op::Unlink { file }),
        1 => Just(Op::Remount),
    ]
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) | 1)
        .collect()
}

/// Applies `op` under `root`; returns what a caller would observe.
fn apply(root: &Path, op: &Op) -> Result<Vec<u8>, i32> {
    let p = |i: usize| root.join(NAMES[i]);
    let e = |e: std::io::Error| e.raw_os_error().unwrap_or(-1);
    match op {
        Op::Write {
            file,
            offset,
            len,
            seed,
        } => {
            let f = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(p(*file))
                .map_err(e)?;
            f.write_all_at(&data(*len, *seed), *offset).map_err(e)?;
            Ok(vec![])
        }
        Op::Truncate { file, size } => {
            let f = OpenOptions::new().write(true).open(p(*file)).map_err(e)?;
            f.set_len(*size).map_err(e)?;
            Ok(vec![])
        }
        Op::Punch { file, offset, len } => {
            use nix::fcntl::{fallocate, FallocateFlags as F};
            let f = OpenOptions::new().write(true).open(p(*file)).map_err(e)?;
            fallocate(
                f.as_raw_fd(),
                F::FALLOC_FL_PUNCH_HOLE | F::FALLOC_FL_KEEP_SIZE,
                *offset as i64,
                *len as i64,
            )
            .map_err(|n| n as i32)?;
            Ok(vec![])
        }
        Op::Read { file, offset, len } => {
            let f = OpenOptions::new().read(true).open(p(*file)).map_err(e)?;
            let mut buf = vec![0u8; *len];
            let mut got = 0;
            while got < buf.len() {
                let n = f.read_at(&mut buf[got..], offset + got as u64).map_err(e)?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            buf.truncate(got);
            Ok(buf)
        }
        Op::Rename { from, to } => std::fs::rename(p(*from), p(*to)).map(|_| vec![]).map_err(e),
        Op::Unlink { file } => std::fs::remove_file(p(*file)).map(|_| vec![]).map_err(e),
        Op::Remount => Ok(vec![]),
    }
}

#[test]
fn random_operations_match_a_plain_directory() {
    let fixture = RefCell::new(Fixture::new());
    let plain_base = tempfile::tempdir_in("/var/tmp").unwrap();
    let case = RefCell::new(0u32);
    let mut runner = TestRunner::new(Config {
        cases: 24,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&proptest::collection::vec(op(), 1..40), |ops| {
            let n = {
                let mut c = case.borrow_mut();
                *c += 1;
                *c
            };
            let qroot = fixture.borrow().p(&format!("case{n}"));
            let proot = plain_base.path().join(format!("case{n}"));
            for r in [&qroot, &proot] {
                std::fs::create_dir_all(r.join("d")).unwrap();
            }
            for op in &ops {
                if let Op::Remount = op {
                    fixture.borrow_mut().remount();
                    continue;
                }
                let q = apply(&qroot, op);
                let p = apply(&proot, op);
                prop_assert_eq!(&q, &p, "{:?} differs", op);
            }
            for name in NAMES {
                let q = std::fs::read(qroot.join(name)).map_err(|e| e.raw_os_error());
                let p = std::fs::read(proot.join(name)).map_err(|e| e.raw_os_error());
                prop_assert_eq!(q, p, "final content of {}", name);
            }
            Ok(())
        })
        .unwrap();
}
