//! RESP2 framing: the request parser and the reply encoder.
//!
//! 0-db accepts only arrays of bulk strings. The parser first checks that a whole frame is
//! buffered (it never allocates for a length it has only been promised: [`needed`] lets the
//! server reserve address space for a frame whose bulk length is announced, which is only
//! touched as the bytes arrive), then hands back the
//! arguments as zero-copy slices of the read buffer. Malformed input gets the original's error
//! strings (spec §1.2); the cases the original answers by hanging (a negative length, a bare
//! `\n` line ending) get an error and a close instead.

use bytes::{BufMut, Bytes, BytesMut};

/// Most elements in one request (the original's limit).
pub const MAX_ARGS: usize = 1024;
/// Largest bulk string in a request: 8 MiB, the value limit.
pub const MAX_BULK: usize = qsfs_core::MAX_VALUE_LEN;
/// Largest whole request. The original has no such limit (1024 × 8 MiB could be buffered);
/// no command needs more than one value plus small arguments, so qsfs caps a frame at one
/// value plus 1 MiB of everything else and answers `Payload too big` beyond.
pub const MAX_FRAME: usize = MAX_BULK + 1024 * 1024;
/// Longest header line (`*N` or `$N`) before the parser gives up waiting for its `\n`.
const MAX_HEADER: usize = 32;

/// A framing error: the reply to send and what to do with the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameError {
    /// The error string (sent as `-<reply>\r\n`).
    pub reply: &'static str,
    /// Bytes of the buffer the bad frame used; meaningful only when `close` is false.
    pub consumed: usize,
    /// True when the stream cannot be resynchronised: reply, then close.
    pub close: bool,
}

impl FrameError {
    fn fatal(reply: &'static str) -> Self {
        FrameError {
            reply,
            consumed: 0,
            close: true,
        }
    }
}

/// `Malformed request, array expected`.
pub const ERR_ARRAY_EXPECTED: &str = "Malformed request, array expected";
/// `Missing arguments`.
pub const ERR_MISSING_ARGS: &str = "Missing arguments";
/// `Too many arguments`.
pub const ERR_TOO_MANY_ARGS: &str = "Too many arguments";
/// `Malformed query string`.
pub const ERR_MALFORMED: &str = "Malformed query string";
/// `Payload too big`.
pub const ERR_TOO_BIG: &str = "Payload too big";

/// A complete request: its arguments (the command name first) and its size on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The bulk strings, command name first. Never empty.
    pub args: Vec<Bytes>,
    /// Bytes the frame occupied.
    pub wire_len: usize,
}

/// Lenient decimal parse with C `atoi` semantics, as the original uses: optional sign, leading
/// digits, anything after them ignored, no digits = 0. Saturates instead of overflowing.
fn atoi(s: &[u8]) -> i64 {
    let (neg, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let mut v: i64 = 0;
    for &b in digits.iter().take_while(|b| b.is_ascii_digit()) {
        v = v.saturating_mul(10).saturating_add(i64::from(b - b'0'));
    }
    if neg {
        -v
    } else {
        v
    }
}

/// Reads one header line starting at `pos` (after its type byte). Returns the number and the
/// position after `\r\n`, `Ok(None)` if the line is not complete yet.
fn header(buf: &[u8], pos: usize) -> Result<Option<(i64, usize)>, FrameError> {
    let rest = &buf[pos..];
    let window = &rest[..rest.len().min(MAX_HEADER)];
    match window.iter().position(|&b| b == b'\n') {
        Some(nl) => {
            if nl == 0 || rest[nl - 1] != b'\r' {
                return Err(FrameError::fatal(ERR_MALFORMED));
            }
            Ok(Some((atoi(&rest[..nl - 1]), pos + nl + 1)))
        }
        None if rest.len() >= MAX_HEADER => Err(FrameError::fatal(ERR_MALFORMED)),
        None => Ok(None),
    }
}

/// Where one argument lies in the buffer.
type Span = (usize, usize);

/// What the front of a buffer holds.
enum Scan {
    /// A whole frame: the argument spans and the frame length.
    Complete(Vec<Span>, usize),
    /// Not all of it yet: the frame needs at least this many bytes in all (the headers read so
    /// far and every bulk whose length they announced).
    Partial(usize),
}

/// Checks whether `buf` starts with a complete frame. `Ok(None)` = wait for more bytes. On
/// success returns the argument spans and the frame length.
pub fn check(buf: &[u8]) -> Result<Option<(Vec<Span>, usize)>, FrameError> {
    Ok(match scan(buf)? {
        Scan::Complete(spans, len) => Some((spans, len)),
        Scan::Partial(_) => None,
    })
}

/// The least length the incomplete frame at the front of `buf` is known to need (0 = no frame
/// started, or the frame is already complete or malformed). Never more than [`MAX_FRAME`]: a
/// larger announced length is an error, not a need.
///
/// The server sizes its read buffer with it once a large bulk's length is announced, so the
/// value is received straight into the buffer it ends up in instead of being copied at every
/// growth; the reservation is address space, and memory is only touched as bytes arrive.
pub fn needed(buf: &[u8]) -> usize {
    match scan(buf) {
        Ok(Scan::Partial(n)) => n,
        _ => 0,
    }
}

fn scan(buf: &[u8]) -> Result<Scan, FrameError> {
    let Some(&first) = buf.first() else {
        return Ok(Scan::Partial(0));
    };
    if first != b'*' {
        return Err(FrameError::fatal(ERR_ARRAY_EXPECTED));
    }
    let Some((count, mut pos)) = header(buf, 1)? else {
        return Ok(Scan::Partial(buf.len()));
    };
    if count <= 0 {
        // `*0`, `*abc` (atoi gives 0) and `*-1`: the original answers this and keeps going.
        return Err(FrameError {
            reply: ERR_MISSING_ARGS,
            consumed: pos,
            close: false,
        });
    }
    if count as u64 > MAX_ARGS as u64 {
        return Err(FrameError::fatal(ERR_TOO_MANY_ARGS));
    }
    let count = count as usize;
    let mut spans = Vec::with_capacity(count.min(16));
    for _ in 0..count {
        if pos >= buf.len() {
            return Ok(Scan::Partial(pos));
        }
        if buf[pos] != b'$' {
            return Err(FrameError::fatal(ERR_MALFORMED));
        }
        let Some((len, after)) = header(buf, pos + 1)? else {
            return Ok(Scan::Partial(buf.len()));
        };
        if len < 0 {
            return Err(FrameError::fatal(ERR_MALFORMED));
        }
        if len as u64 > MAX_BULK as u64 {
            return Err(FrameError::fatal(ERR_TOO_BIG));
        }
        let len = len as usize;
        let end = after + len;
        if end + 2 > MAX_FRAME {
            return Err(FrameError::fatal(ERR_TOO_BIG));
        }
        if buf.len() < end + 2 {
            return Ok(Scan::Partial(end + 2));
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(FrameError::fatal(ERR_MALFORMED));
        }
        spans.push((after, end));
        pos = end + 2;
    }
    Ok(Scan::Complete(spans, pos))
}

/// Takes one frame off the front of `buf` if a whole one is there.
pub fn parse(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    match check(buf)? {
        None => Ok(None),
        Some((spans, len)) => {
            let frame = buf.split_to(len).freeze();
            let args = spans.into_iter().map(|(a, b)| frame.slice(a..b)).collect();
            Ok(Some(Frame {
                args,
                wire_len: len,
            }))
        }
    }
}

/// A reply, as the server sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+text`
    Status(String),
    /// `-text` (0-db never prefixes `ERR`).
    Error(String),
    /// `:n`
    Int(i64),
    /// `$len\r\nbytes`
    Bulk(Bytes),
    /// `$-1` (0-db has no null array).
    Nil,
    /// `*n` then each element.
    Array(Vec<Reply>),
}

impl Reply {
    /// `+OK`.
    pub fn ok() -> Self {
        Reply::Status("OK".into())
    }

    /// An error reply.
    pub fn err(s: impl Into<String>) -> Self {
        Reply::Error(s.into())
    }

    /// A bulk reply from anything byte-like.
    pub fn bulk(b: impl Into<Bytes>) -> Self {
        Reply::Bulk(b.into())
    }

    /// True for an error reply.
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    /// Appends the wire form to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Reply::Status(s) => line(out, b'+', s.as_bytes()),
            Reply::Error(s) => line(out, b'-', s.as_bytes()),
            Reply::Int(n) => line(out, b':', n.to_string().as_bytes()),
            Reply::Nil => out.put_slice(b"$-1\r\n"),
            Reply::Bulk(b) => {
                out.reserve(b.len() + 16);
                line(out, b'$', b.len().to_string().as_bytes());
                out.put_slice(b);
                out.put_slice(b"\r\n");
            }
            Reply::Array(items) => {
                line(out, b'*', items.len().to_string().as_bytes());
                for i in items {
                    i.encode(out);
                }
            }
        }
    }

    /// The wire form as a fresh buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::new();
        self.encode(&mut b);
        b.freeze()
    }
}

fn line(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_slice(body);
    out.put_slice(b"\r\n");
}

/// Bulk values at least this long are sent from their own buffer rather than copied into the
/// reply buffer.
const OWN_BUFFER: usize = 32 * 1024;

/// Replies on their way to a socket, in order: small ones encoded into one buffer, large bulk
/// values (a shard of a backup, say) kept in the buffer the engine read them into and sent with
/// a vectored write, so the server does not copy every large GET once more.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Parts ready to send, in order.
    sealed: std::collections::VecDeque<Bytes>,
    /// Encoded bytes after the last sealed part.
    cur: BytesMut,
}

impl Outbox {
    /// Appends the wire form of `r`.
    pub fn push(&mut self, r: &Reply) {
        match r {
            Reply::Bulk(b) if b.len() >= OWN_BUFFER => {
                line(&mut self.cur, b'$', b.len().to_string().as_bytes());
                self.seal();
                self.sealed.push_back(b.clone());
                self.cur.put_slice(b"\r\n");
            }
            Reply::Array(items) => {
                line(&mut self.cur, b'*', items.len().to_string().as_bytes());
                for i in items {
                    self.push(i);
                }
            }
            r => r.encode(&mut self.cur),
        }
    }

    fn seal(&mut self) {
        if !self.cur.is_empty() {
            self.sealed.push_back(self.cur.split().freeze());
        }
    }

    /// True when nothing is waiting to be sent.
    pub fn is_empty(&self) -> bool {
        self.sealed.is_empty() && self.cur.is_empty()
    }

    /// Bytes waiting to be sent.
    pub fn len(&self) -> usize {
        self.sealed.iter().map(Bytes::len).sum::<usize>() + self.cur.len()
    }

    /// The whole reply as one contiguous slice when no large value is queued (the common case:
    /// one plain `write`), else `None`.
    pub fn contiguous(&self) -> Option<&[u8]> {
        self.sealed.is_empty().then_some(&self.cur[..])
    }

    /// The parts waiting to be sent, for one vectored write (at most `max` of them).
    pub fn slices(&mut self, max: usize) -> Vec<std::io::IoSlice<'_>> {
        self.seal();
        self.sealed
            .iter()
            .take(max)
            .map(|b| std::io::IoSlice::new(b))
            .collect()
    }

    /// Drops the first `n` bytes (what a write sent).
    pub fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.sealed.front_mut() else {
                let k = n.min(self.cur.len());
                let _ = self.cur.split_to(k);
                return;
            };
            if n < front.len() {
                bytes::Buf::advance(front, n);
                return;
            }
            n -= front.len();
            self.sealed.pop_front();
        }
    }

    /// Empties the outbox after a full send, giving back a buffer grown by a large reply.
    pub fn clear(&mut self, keep: usize) {
        self.sealed.clear();
        if self.cur.capacity() > keep {
            self.cur = BytesMut::new();
        } else {
            self.cur.clear();
        }
    }
}

/// Encodes a request (an array of bulk strings), as a client sends it.
pub fn encode_request<A: AsRef<[u8]>>(args: &[A], out: &mut BytesMut) {
    line(out, b'*', args.len().to_string().as_bytes());
    for a in args {
        let a = a.as_ref();
        out.reserve(a.len() + 16);
        line(out, b'$', a.len().to_string().as_bytes());
        out.put_slice(a);
        out.put_slice(b"\r\n");
    }
}

/// Errors of the reply parser (client side).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// The bytes are not a RESP2 reply.
    #[error("malformed reply: {0}")]
    Malformed(&'static str),
    /// A length or nesting beyond what a 0-db server can send.
    #[error("reply too large")]
    TooLarge,
}

/// Most nested arrays in a reply (HOOKS and SCAN use two levels).
const MAX_REPLY_DEPTH: usize = 8;

/// Parses one reply off the front of `buf` (client side). `Ok(None)` = incomplete.
pub fn parse_reply(buf: &mut BytesMut) -> Result<Option<Reply>, ReplyError> {
    let mut pos = 0;
    match reply_at(buf, &mut pos, 0)? {
        None => Ok(None),
        Some(r) => {
            let _ = buf.split_to(pos);
            Ok(Some(r))
        }
    }
}

fn reply_line(buf: &[u8], pos: usize) -> Result<Option<(&[u8], usize)>, ReplyError> {
    let rest = &buf[pos..];
    match rest.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some((&rest[..i], pos + i + 2))),
        None if rest.len() > 64 * 1024 => Err(ReplyError::Malformed("line too long")),
        None => Ok(None),
    }
}

fn reply_at(buf: &[u8], pos: &mut usize, depth: usize) -> Result<Option<Reply>, ReplyError> {
    if depth > MAX_REPLY_DEPTH {
        return Err(ReplyError::TooLarge);
    }
    let Some(&tag) = buf.get(*pos) else {
        return Ok(None);
    };
    let Some((body, after)) = reply_line(buf, *pos + 1)? else {
        return Ok(None);
    };
    let text = || String::from_utf8_lossy(body).into_owned();
    let num = || -> Result<i64, ReplyError> {
        std::str::from_utf8(body)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(ReplyError::Malformed("bad number"))
    };
    match tag {
        b'+' => {
            *pos = after;
            Ok(Some(Reply::Status(text())))
        }
        b'-' => {
            *pos = after;
            Ok(Some(Reply::Error(text())))
        }
        b':' => {
            let n = num()?;
            *pos = after;
            Ok(Some(Reply::Int(n)))
        }
        b'$' => {
            let n = num()?;
            if n < 0 {
                *pos = after;
                return Ok(Some(Reply::Nil));
            }
            let n = n as usize;
            if n > MAX_FRAME {
                return Err(ReplyError::TooLarge);
            }
            if buf.len() < after + n + 2 {
                return Ok(None);
            }
            if &buf[after + n..after + n + 2] != b"\r\n" {
                return Err(ReplyError::Malformed("bulk not terminated"));
            }
            *pos = after + n + 2;
            Ok(Some(Reply::Bulk(Bytes::copy_from_slice(
                &buf[after..after + n],
            ))))
        }
        b'*' => {
            let n = num()?;
            if n < 0 {
                *pos = after;
                return Ok(Some(Reply::Nil));
            }
            if n as u64 > 1 << 20 {
                return Err(ReplyError::TooLarge);
            }
            let mut p = after;
            let mut items = Vec::with_capacity((n as usize).min(1024));
            for _ in 0..n {
                match reply_at(buf, &mut p, depth + 1)? {
                    Some(r) => items.push(r),
                    None => return Ok(None),
                }
            }
            *pos = p;
            Ok(Some(Reply::Array(items)))
        }
        _ => Err(ReplyError::Malformed("unknown reply type")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn req(args: &[&[u8]]) -> BytesMut {
        let mut b = BytesMut::new();
        encode_request(args, &mut b);
        b
    }

    #[test]
    fn parses_a_request_and_leaves_the_next() {
        let mut b = req(&[b"SET", b"k", b"v"]);
        b.extend_from_slice(b"*1\r\n$4\r\nPI");
        let f = parse(&mut b).unwrap().unwrap();
        assert_eq!(
            f.args,
            vec![Bytes::from("SET"), Bytes::from("k"), Bytes::from("v")]
        );
        assert_eq!(&b[..], b"*1\r\n$4\r\nPI");
        assert_eq!(parse(&mut b).unwrap(), None);
        b.extend_from_slice(b"NG\r\n");
        assert_eq!(
            parse(&mut b).unwrap().unwrap().args,
            vec![Bytes::from("PING")]
        );
        assert!(b.is_empty());
    }

    #[test]
    fn every_split_point_parses_the_same() {
        let whole = req(&[b"SET", b"key", &[7u8; 300]]);
        for cut in 0..whole.len() {
            let mut b = BytesMut::from(&whole[..cut]);
            assert_eq!(parse(&mut b).unwrap(), None, "cut {cut}");
            b.extend_from_slice(&whole[cut..]);
            let f = parse(&mut b).unwrap().unwrap();
            assert_eq!(f.args.len(), 3);
            assert_eq!(f.args[2].len(), 300);
        }
    }

    fn err_of(input: &[u8]) -> FrameError {
        let mut b = BytesMut::from(input);
        parse(&mut b).unwrap_err()
    }

    #[test]
    fn malformed_frames_get_the_original_replies() {
        assert_eq!(err_of(b"PING\r\n").reply, ERR_ARRAY_EXPECTED);
        assert!(err_of(b"PING\r\n").close);
        let e = err_of(b"*0\r\n");
        assert_eq!((e.reply, e.consumed, e.close), (ERR_MISSING_ARGS, 4, false));
        assert_eq!(err_of(b"*abc\r\n").reply, ERR_MISSING_ARGS);
        assert_eq!(err_of(b"*1025\r\n").reply, ERR_TOO_MANY_ARGS);
        assert_eq!(err_of(b"*2\r\n*1\r\n$1\r\na\r\n").reply, ERR_MALFORMED);
        assert_eq!(err_of(b"*1\r\n:1\r\n").reply, ERR_MALFORMED);
        assert_eq!(err_of(b"*1\r\n$8388609\r\n").reply, ERR_TOO_BIG);
        assert_eq!(err_of(b"*1\r\n$-1\r\n").reply, ERR_MALFORMED);
        assert_eq!(err_of(b"*1\n$4\nPING\n").reply, ERR_MALFORMED);
        assert_eq!(err_of(b"*1\r\n$4\r\nPINGxx").reply, ERR_MALFORMED);
        assert_eq!(
            err_of(b"*1\r\n$999999999999999999999999\r\n").reply,
            ERR_TOO_BIG
        );
        assert_eq!(
            err_of(b"*100000000000000000000000\r\n").reply,
            ERR_TOO_MANY_ARGS
        );
        assert_eq!(err_of(&[b'*'; 40]).reply, ERR_MALFORMED);
    }

    #[test]
    fn garbage_bulk_length_is_zero_like_the_original() {
        let mut b = BytesMut::from(&b"*1\r\n$abc\r\n\r\n"[..]);
        assert_eq!(parse(&mut b).unwrap().unwrap().args, vec![Bytes::new()]);
    }

    #[test]
    fn exactly_eight_mib_is_accepted_and_frames_are_capped() {
        let big = vec![1u8; MAX_BULK];
        let mut b = req(&[b"SET".as_slice(), b"k", &big]);
        assert_eq!(parse(&mut b).unwrap().unwrap().args[2].len(), MAX_BULK);
        let many: Vec<&[u8]> = vec![&big[..600_000]; 16];
        assert_eq!(err_of(&req(&many)).reply, ERR_TOO_BIG);
    }

    #[test]
    fn max_args_is_accepted() {
        let args: Vec<&[u8]> = vec![b"x"; MAX_ARGS];
        let mut b = req(&args);
        assert_eq!(parse(&mut b).unwrap().unwrap().args.len(), MAX_ARGS);
    }

    #[test]
    fn replies_encode_and_parse_back() {
        let r = Reply::Array(vec![
            Reply::bulk(&b"abc"[..]),
            Reply::Nil,
            Reply::Int(-3),
            Reply::Array(vec![Reply::ok(), Reply::err("Key not found")]),
            Reply::bulk(Bytes::new()),
        ]);
        let wire = r.to_bytes();
        assert_eq!(&wire[..16], b"*5\r\n$3\r\nabc\r\n$-1");
        for cut in 0..wire.len() {
            let mut b = BytesMut::from(&wire[..cut]);
            assert_eq!(parse_reply(&mut b).unwrap(), None);
        }
        let mut b = BytesMut::from(&wire[..]);
        assert_eq!(parse_reply(&mut b).unwrap(), Some(r));
        assert!(b.is_empty());
    }

    #[test]
    fn needed_is_the_announced_frame_and_nothing_for_bad_lengths() {
        assert_eq!(needed(b""), 0);
        assert_eq!(needed(b"*2\r\n$3\r\nSET\r\n$10\r\nab"), 18 + 10 + 2);
        assert_eq!(needed(b"*1\r\n$1\r\nx\r\n"), 0, "complete");
        assert_eq!(needed(b"*1\r\n$-1\r\n"), 0);
        assert_eq!(needed(b"*1\r\n$8388609\r\n"), 0);
        let max = format!("*1\r\n${MAX_BULK}\r\n");
        assert_eq!(needed(max.as_bytes()), max.len() + MAX_BULK + 2);
        // One full value plus a second that would take the frame past MAX_FRAME.
        let over = format!("*3\r\n$3\r\nSET\r\n${MAX_BULK}\r\n");
        let mut b = over.into_bytes();
        b.resize(b.len() + MAX_BULK, b'v');
        b.extend_from_slice(format!("\r\n${}\r\n", 2 << 20).as_bytes());
        assert_eq!(needed(&b), 0);
        assert_eq!(err_of(&b).reply, ERR_TOO_BIG);
    }

    fn reply_strategy() -> impl Strategy<Value = Reply> {
        let leaf = prop_oneof![
            Just(Reply::ok()),
            (-5i64..5).prop_map(Reply::Int),
            Just(Reply::Nil),
            // Around the own-buffer threshold, on both sides.
            ((OWN_BUFFER - 2)..(OWN_BUFFER + 2), any::<u8>())
                .prop_map(|(n, b)| Reply::bulk(vec![b; n])),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Reply::bulk),
        ];
        leaf.prop_recursive(2, 8, 4, |inner| {
            proptest::collection::vec(inner, 0..4).prop_map(Reply::Array)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Arbitrary bytes: no panic, a bounded answer, and any frame found lies inside the input.
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut b = BytesMut::from(&data[..]);
            let mut rounds = 0;
            loop {
                rounds += 1;
                prop_assert!(rounds <= data.len() + 1, "parser made no progress");
                match parse(&mut b) {
                    Ok(Some(f)) => {
                        prop_assert!(!f.args.is_empty() && f.args.len() <= MAX_ARGS);
                        prop_assert!(f.args.iter().all(|a| a.len() <= MAX_BULK));
                    }
                    Ok(None) => break,
                    Err(e) if e.close => break,
                    Err(e) => {
                        prop_assert!(e.consumed > 0 && e.consumed <= b.len());
                        let _ = b.split_to(e.consumed);
                    }
                }
            }
            let mut r = BytesMut::from(&data[..]);
            let _ = parse_reply(&mut r);
        }

        /// Valid requests round-trip whatever their content, and split anywhere.
        #[test]
        fn requests_round_trip(args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..8), cut in 0usize..600) {
            let mut wire = BytesMut::new();
            encode_request(&args, &mut wire);
            let cut = cut.min(wire.len());
            let mut b = BytesMut::from(&wire[..cut]);
            if cut < wire.len() {
                prop_assert_eq!(parse(&mut b).unwrap(), None);
            }
            b.extend_from_slice(&wire[cut..]);
            let f = parse(&mut b).unwrap().unwrap();
            let got: Vec<Vec<u8>> = f.args.iter().map(|a| a.to_vec()).collect();
            prop_assert_eq!(got, args);
        }

        /// At every split point, `needed` is exactly the end of the bulk whose header has
        /// arrived (or what is there when none has), 0 once the frame is whole, never more
        /// than the frame.
        #[test]
        fn needed_at_every_split_is_exact(args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..6), cut in any::<proptest::sample::Index>()) {
            let mut wire = BytesMut::new();
            encode_request(&args, &mut wire);
            // Where each bulk's data starts and where its frame part ends (after `\r\n`).
            let mut bulks = Vec::new();
            let mut pos = format!("*{}\r\n", args.len()).len();
            for a in &args {
                let start = pos + format!("${}\r\n", a.len()).len();
                bulks.push((start, start + a.len() + 2));
                pos = start + a.len() + 2;
            }
            prop_assert_eq!(pos, wire.len());
            let cut = cut.index(wire.len() + 1);
            let expect = if cut == wire.len() {
                0
            } else {
                bulks.iter().filter(|(start, _)| *start <= cut).map(|&(_, end)| end).next_back().map_or(cut, |end| end.max(cut))
            };
            prop_assert_eq!(needed(&wire[..cut]), expect, "cut {}", cut);
            prop_assert!(needed(&wire[..cut]) <= wire.len());
        }

        /// Announced lengths around the limits: a need only for a frame that fits, an error for
        /// the rest, and the need is the announced frame to the byte.
        #[test]
        fn needed_for_announced_lengths(len in prop_oneof![-3i64..3, (MAX_BULK as i64 - 3)..(MAX_BULK as i64 + 3), any::<i64>()], prefix in 0usize..64) {
            let mut b = format!("*2\r\n${prefix}\r\n").into_bytes();
            b.resize(b.len() + prefix, b'k');
            b.extend_from_slice(b"\r\n");
            let head = format!("${len}\r\n");
            b.extend_from_slice(head.as_bytes());
            let n = needed(&b);
            let fits = len >= 0 && len as u64 <= MAX_BULK as u64 && b.len() + len as usize + 2 <= MAX_FRAME;
            if fits {
                prop_assert_eq!(n, b.len() + len as usize + 2);
                prop_assert!(n <= MAX_FRAME);
            } else {
                prop_assert_eq!(n, 0);
                prop_assert!(check(&b).is_err());
            }
        }

        /// Arbitrary bytes never make `needed` exceed a frame.
        #[test]
        fn needed_is_bounded(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            prop_assert!(needed(&data) <= MAX_FRAME);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Whatever the replies and however the socket splits the writes, the bytes sent are
        /// exactly the replies' wire forms, in order.
        #[test]
        fn outbox_sends_the_replies_exactly_under_partial_writes(
            replies in proptest::collection::vec(reply_strategy(), 1..6),
            writes in proptest::collection::vec(prop_oneof![1usize..16, 1000usize..70_000], 1..64),
            max in 1usize..4,
        ) {
            let mut want = BytesMut::new();
            let mut out = Outbox::default();
            for r in &replies {
                r.encode(&mut want);
                out.push(r);
            }
            prop_assert_eq!(out.len(), want.len());
            if let Some(c) = out.contiguous() {
                prop_assert_eq!(c, &want[..]);
            }
            let mut sent = Vec::new();
            let mut w = writes.iter().cycle();
            while !out.is_empty() {
                let mut budget = *w.next().unwrap_or(&1);
                let mut n = 0;
                for s in out.slices(max) {
                    let k = budget.min(s.len());
                    sent.extend_from_slice(&s[..k]);
                    n += k;
                    budget -= k;
                    if budget == 0 {
                        break;
                    }
                }
                prop_assert!(n > 0);
                out.advance(n);
            }
            prop_assert_eq!(&sent[..], &want[..]);
            out.clear(4096);
            prop_assert!(out.is_empty());
            prop_assert_eq!(out.len(), 0);
        }
    }
}
