//! The command table, 0-db's prefix lookup of command names, and the `Command` enum parsed from
//! a frame (argument counts and the generic argument errors of spec §3).

use bytes::Bytes;

use super::resp::Reply;

/// The original's command table, in its significant order (spec §2).
pub const TABLE: [&str; 37] = [
    "*", "WAIT", "MIRROR", "MASTER", "PING", "TIME", "AUTH", "HOOKS", "INDEX", "DATA", "SET",
    "SETX", "GET", "MGET", "DEL", "EXISTS", "CHECK", "SCAN", "SCANX", "RSCAN", "KSCAN", "HISTORY",
    "KEYCUR", "LENGTH", "KEYTIME", "INFO", "STOP", "DBSIZE", "NSNEW", "NSDEL", "NSLIST", "NSSET",
    "NSINFO", "NSJUMP", "SELECT", "RELOAD", "FLUSH",
];

/// Index of a table entry; WAIT matches on it (SET and SETX are different entries).
pub type CommandId = usize;

/// Finds the table entry for `name`: case-insensitive prefix match, first entry wins. With
/// `strict`, only a full (case-insensitive) name matches.
pub fn lookup(name: &[u8], strict: bool) -> Option<CommandId> {
    TABLE.iter().position(|entry| {
        let e = entry.as_bytes();
        if strict {
            e.eq_ignore_ascii_case(name) || (name.is_empty() && *entry == "*")
        } else {
            name.len() <= e.len() && e[..name.len()].eq_ignore_ascii_case(name)
        }
    })
}

/// Canonical name of a table entry.
pub fn name(id: CommandId) -> &'static str {
    TABLE.get(id).copied().unwrap_or("*")
}

/// `Unexpected arguments`.
pub const ERR_ARGS: &str = "Unexpected arguments";
/// `Invalid argument`.
pub const ERR_INVALID_ARG: &str = "Invalid argument";
/// `Invalid key`.
pub const ERR_INVALID_KEY: &str = "Invalid key";

/// A parsed request. Byte arguments are zero-copy slices of the read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Command {
    /// The `*` entry or an empty name.
    NotValid,
    Wait {
        command: Bytes,
        timeout: Option<Bytes>,
    },
    Mirror,
    Master,
    Ping,
    Time,
    /// `AUTH` with its words (1 or 2 of them).
    Auth {
        args: Vec<Bytes>,
    },
    Hooks,
    Index {
        args: Vec<Bytes>,
    },
    Data {
        args: Vec<Bytes>,
    },
    /// SET and SETX (`x`); `timestamp` present in the 4-argument (admin) form.
    Set {
        key: Bytes,
        value: Bytes,
        timestamp: Option<Bytes>,
        x: bool,
    },
    Get {
        key: Bytes,
    },
    Mget {
        keys: Vec<Bytes>,
    },
    Del {
        key: Bytes,
        timestamp: Option<Bytes>,
    },
    Exists {
        key: Bytes,
    },
    Check {
        key: Bytes,
    },
    /// SCAN, SCANX and RSCAN (`reverse`).
    Scan {
        cursor: Option<Bytes>,
        reverse: bool,
    },
    Kscan,
    History {
        key: Bytes,
        ekey: Option<Bytes>,
    },
    Keycur {
        key: Bytes,
    },
    Length {
        key: Bytes,
    },
    Keytime {
        key: Bytes,
    },
    Info,
    Stop,
    Dbsize,
    NsNew {
        name: Bytes,
    },
    NsDel {
        name: Bytes,
    },
    NsList,
    NsSet {
        name: Bytes,
        property: Bytes,
        value: Bytes,
    },
    NsInfo {
        name: Bytes,
    },
    NsJump,
    /// `SELECT ns [pw]` or `SELECT ns SECURE hash`; all words after the name.
    Select {
        name: Bytes,
        rest: Vec<Bytes>,
    },
    Reload {
        name: Bytes,
    },
    Flush,
}

impl Command {
    /// Parses a frame whose command name resolved to `id`. `args[0]` is the name. Errors are the
    /// replies the original gives for a bad argument list.
    pub fn parse(id: CommandId, args: &[Bytes]) -> Result<Command, Reply> {
        let n = args.len();
        let arg = |i: usize| args[i].clone();
        let exact = |want: usize| {
            if n == want {
                Ok(())
            } else {
                Err(Reply::err(ERR_ARGS))
            }
        };
        // Commands on one key: exact count, non-empty key.
        let one_key = || -> Result<Bytes, Reply> {
            exact(2)?;
            if args[1].is_empty() {
                return Err(Reply::err(ERR_INVALID_ARG));
            }
            Ok(arg(1))
        };
        Ok(match name(id) {
            "*" => Command::NotValid,
            "WAIT" => {
                if !(2..=3).contains(&n) {
                    return Err(Reply::err("Invalid arguments"));
                }
                Command::Wait {
                    command: arg(1),
                    timeout: args.get(2).cloned(),
                }
            }
            "MIRROR" => Command::Mirror,
            "MASTER" => Command::Master,
            "PING" => Command::Ping,
            "TIME" => Command::Time,
            "AUTH" => {
                if !(2..=3).contains(&n) {
                    return Err(Reply::err(ERR_ARGS));
                }
                Command::Auth {
                    args: args[1..].to_vec(),
                }
            }
            "HOOKS" => Command::Hooks,
            "INDEX" => Command::Index {
                args: args[1..].to_vec(),
            },
            "DATA" => Command::Data {
                args: args[1..].to_vec(),
            },
            c @ ("SET" | "SETX") => {
                if !(3..=4).contains(&n) {
                    return Err(Reply::err(ERR_ARGS));
                }
                Command::Set {
                    key: arg(1),
                    value: arg(2),
                    timestamp: args.get(3).cloned(),
                    x: c == "SETX",
                }
            }
            "GET" => Command::Get { key: one_key()? },
            "MGET" => {
                if n < 2 {
                    return Err(Reply::err("Invalid arguments"));
                }
                Command::Mget {
                    keys: args[1..].to_vec(),
                }
            }
            "DEL" => {
                if !(2..=3).contains(&n) {
                    return Err(Reply::err(ERR_ARGS));
                }
                if args[1].is_empty() {
                    return Err(Reply::err(ERR_INVALID_ARG));
                }
                Command::Del {
                    key: arg(1),
                    timestamp: args.get(2).cloned(),
                }
            }
            "EXISTS" => Command::Exists { key: one_key()? },
            "CHECK" => Command::Check { key: one_key()? },
            c @ ("SCAN" | "SCANX" | "RSCAN") => Command::Scan {
                cursor: args.get(1).cloned(),
                reverse: c == "RSCAN",
            },
            "KSCAN" => Command::Kscan,
            "HISTORY" => {
                if !(2..=3).contains(&n) {
                    return Err(Reply::err("Invalid arguments"));
                }
                Command::History {
                    key: arg(1),
                    ekey: args.get(2).cloned(),
                }
            }
            "KEYCUR" => Command::Keycur { key: one_key()? },
            "LENGTH" => Command::Length { key: one_key()? },
            "KEYTIME" => Command::Keytime { key: one_key()? },
            "INFO" => Command::Info,
            "STOP" => Command::Stop,
            "DBSIZE" => Command::Dbsize,
            "NSNEW" => Command::NsNew { name: one_key()? },
            "NSDEL" => Command::NsDel { name: one_key()? },
            "NSLIST" => Command::NsList,
            "NSSET" => {
                exact(4)?;
                if args[1].is_empty() || args[2].is_empty() {
                    return Err(Reply::err(ERR_INVALID_ARG));
                }
                Command::NsSet {
                    name: arg(1),
                    property: arg(2),
                    value: arg(3),
                }
            }
            "NSINFO" => Command::NsInfo { name: one_key()? },
            "NSJUMP" => Command::NsJump,
            "SELECT" => {
                if n < 2 {
                    return Err(Reply::err(ERR_ARGS));
                }
                if n > 4 {
                    return Err(Reply::err("Too many arguments"));
                }
                if args[1].is_empty() {
                    return Err(Reply::err(ERR_INVALID_ARG));
                }
                Command::Select {
                    name: arg(1),
                    rest: args[2..].to_vec(),
                }
            }
            "RELOAD" => Command::Reload { name: one_key()? },
            "FLUSH" => Command::Flush,
            _ => return Err(Reply::err("Command not supported")),
        })
    }

    /// True for the commands only an admin may run (spec §3); the 4-argument SET and
    /// 3-argument DEL are checked where they run.
    pub fn admin_only(&self) -> bool {
        matches!(
            self,
            Command::NsNew { .. }
                | Command::NsDel { .. }
                | Command::NsSet { .. }
                | Command::NsJump
                | Command::Reload { .. }
                | Command::Hooks
                | Command::Index { .. }
                | Command::Data { .. }
                | Command::Mirror
                | Command::Master
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> &'static str {
        name(lookup(s.as_bytes(), false).unwrap())
    }

    #[test]
    fn shortest_spellings_match_the_spec() {
        let table = [
            ("W", "WAIT"),
            ("M", "MIRROR"),
            ("MA", "MASTER"),
            ("P", "PING"),
            ("T", "TIME"),
            ("A", "AUTH"),
            ("H", "HOOKS"),
            ("I", "INDEX"),
            ("IN", "INDEX"),
            ("D", "DATA"),
            ("S", "SET"),
            ("SE", "SET"),
            ("SETX", "SETX"),
            ("G", "GET"),
            ("MG", "MGET"),
            ("DE", "DEL"),
            ("E", "EXISTS"),
            ("C", "CHECK"),
            ("SC", "SCAN"),
            ("SCANX", "SCANX"),
            ("R", "RSCAN"),
            ("K", "KSCAN"),
            ("HI", "HISTORY"),
            ("KE", "KEYCUR"),
            ("KEYT", "KEYTIME"),
            ("L", "LENGTH"),
            ("INF", "INFO"),
            ("ST", "STOP"),
            ("DB", "DBSIZE"),
            ("N", "NSNEW"),
            ("NS", "NSNEW"),
            ("NSD", "NSDEL"),
            ("NSL", "NSLIST"),
            ("NSS", "NSSET"),
            ("NSI", "NSINFO"),
            ("NSJ", "NSJUMP"),
            ("SEL", "SELECT"),
            ("RE", "RELOAD"),
            ("F", "FLUSH"),
            ("", "*"),
            ("*", "*"),
            ("get", "GET"),
            ("sEt", "SET"),
        ];
        for (short, full) in table {
            assert_eq!(id(short), full, "{short}");
        }
        assert_eq!(lookup(b"SETXX", false), None);
        assert_eq!(lookup(b"MULTI", false), None);
        assert_eq!(lookup(b"CONFIG", false), None);
    }

    #[test]
    fn strict_matching_needs_the_full_name() {
        assert_eq!(lookup(b"N", true), None);
        assert_eq!(lookup(b"nsnew", true).map(name), Some("NSNEW"));
        assert_eq!(lookup(b"", true).map(name), Some("*"));
    }

    fn parse(args: &[&str]) -> Result<Command, Reply> {
        let v: Vec<Bytes> = args
            .iter()
            .map(|a| Bytes::copy_from_slice(a.as_bytes()))
            .collect();
        Command::parse(lookup(args[0].as_bytes(), false).unwrap(), &v)
    }

    #[test]
    fn argument_errors() {
        assert_eq!(parse(&["GET"]), Err(Reply::err(ERR_ARGS)));
        assert_eq!(parse(&["GET", ""]), Err(Reply::err(ERR_INVALID_ARG)));
        assert_eq!(parse(&["SET", "k"]), Err(Reply::err(ERR_ARGS)));
        assert_eq!(
            parse(&["SET", "k", "v", "1", "2"]),
            Err(Reply::err(ERR_ARGS))
        );
        assert_eq!(parse(&["MGET"]), Err(Reply::err("Invalid arguments")));
        assert_eq!(parse(&["HISTORY"]), Err(Reply::err("Invalid arguments")));
        assert_eq!(
            parse(&["SELECT", "a", "b", "c", "d"]),
            Err(Reply::err("Too many arguments"))
        );
        assert!(matches!(
            parse(&["SETX", "k", "v"]),
            Ok(Command::Set { x: true, .. })
        ));
        assert!(matches!(
            parse(&["R"]),
            Ok(Command::Scan {
                reverse: true,
                cursor: None
            })
        ));
        assert!(matches!(parse(&["PING", "a", "b"]), Ok(Command::Ping)));
        assert!(parse(&["NSNEW", "x"]).unwrap().admin_only());
        assert!(!parse(&["NSLIST"]).unwrap().admin_only());
    }
}
