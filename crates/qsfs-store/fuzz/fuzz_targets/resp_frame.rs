//! Fuzzes the RESP request parser and the reply parser: arbitrary bytes, fed in arbitrary
//! pieces, must never panic, never loop, and never yield a frame beyond the limits.
//!
//! Run with `cargo fuzz run resp_frame` from `crates/qsfs-store` (nightly toolchain).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use qsfs_store::server::resp::{parse, parse_reply, MAX_ARGS, MAX_BULK, MAX_FRAME};

fuzz_target!(|data: &[u8]| {
    // The first byte decides how the input is cut into reads.
    let Some((&step, data)) = data.split_first() else { return };
    let step = usize::from(step).max(1);
    let mut buf = BytesMut::new();
    'feed: for piece in data.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            match parse(&mut buf) {
                Ok(Some(f)) => {
                    assert!(!f.args.is_empty() && f.args.len() <= MAX_ARGS);
                    assert!(f.args.iter().all(|a| a.len() <= MAX_BULK));
                    assert!(f.wire_len <= MAX_FRAME && buf.len() < before);
                }
                Ok(None) => break,
                Err(e) if e.close => break 'feed,
                Err(e) => {
                    assert!(e.consumed > 0 && e.consumed <= buf.len());
                    let _ = buf.split_to(e.consumed);
                }
            }
        }
    }
    let mut r = BytesMut::from(data);
    while let Ok(Some(_)) = parse_reply(&mut r) {}
});
