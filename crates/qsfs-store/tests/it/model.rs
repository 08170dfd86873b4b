//! Model-based test: random operations on two namespaces (one per mode), each answer compared
//! with a `BTreeMap` model, with reopen (with and without the index snapshot), seal and compact
//! mixed in and a reopen possible after every kind of operation.

#![allow(clippy::unwrap_used)] // tests unwrap: a failure is a test failure

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use qsfs_core::{Error, Mode, NamespaceProperty, ScanOrder, SetOutcome, Store, VersionId};
use qsfs_store::{Durability, Engine, EngineConfig};

#[derive(Debug, Clone)]
enum Op {
    Set {
        ns: usize,
        key: u8,
        value: Vec<u8>,
    },
    Delete {
        ns: usize,
        key: u8,
    },
    Get {
        ns: usize,
        key: u8,
    },
    Scan {
        ns: usize,
        limit: usize,
        reverse: bool,
    },
    History {
        ns: usize,
        key: u8,
    },
    Seal {
        ns: usize,
    },
    Compact {
        ns: usize,
    },
    Flush {
        ns: usize,
    },
    ForeignHistory {
        ns: usize,
        key: u8,
        other: u8,
    },
    Reopen {
        drop_index: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let ns = 0usize..2;
    prop_oneof![
        6 => (ns.clone(), 0u8..8, proptest::collection::vec(0u8..4, 0..300)).prop_map(|(ns, key, value)| Op::Set { ns, key, value }),
        2 => (ns.clone(), 0u8..8).prop_map(|(ns, key)| Op::Delete { ns, key }),
        2 => (ns.clone(), 0u8..8).prop_map(|(ns, key)| Op::Get { ns, key }),
        1 => (ns.clone(), 1usize..5, any::<bool>()).prop_map(|(ns, limit, reverse)| Op::Scan { ns, limit, reverse }),
        2 => (ns.clone(), 0u8..8).prop_map(|(ns, key)| Op::History { ns, key }),
        1 => ns.clone().prop_map(|ns| Op::Seal { ns }),
        1 => ns.clone().prop_map(|ns| Op::Compact { ns }),
        1 => ns.clone().prop_map(|ns| Op::Flush { ns }),
        1 => (ns, 0u8..8, 0u8..8).prop_map(|(ns, key, other)| Op::ForeignHistory { ns, key, other }),
        1 => any::<bool>().prop_map(|drop_index| Op::Reopen { drop_index }),
    ]
}

/// Every version of a key, oldest first; `None` is a tombstone.
type Versions = Vec<(Option<Vec<u8>>, u64)>;

#[derive(Default, Debug)]
struct ModelNs {
    keys: BTreeMap<Vec<u8>, Versions>,
    last_write: HashMap<Vec<u8>, u64>,
    /// Seq mode: ids handed out, in order (index = the model's handle).
    ids: Vec<Vec<u8>>,
    next_id: u64,
}

impl ModelNs {
    fn live(&self, key: &[u8]) -> Option<&Vec<u8>> {
        self.keys
            .get(key)
            .and_then(|v| v.last())
            .and_then(|(v, _)| v.as_ref())
    }
    fn scan_order(&self) -> Vec<Vec<u8>> {
        let mut live: Vec<(u64, Vec<u8>)> = self
            .keys
            .keys()
            .filter(|k| self.live(k).is_some())
            .map(|k| (self.last_write[k], k.clone()))
            .collect();
        live.sort();
        live.into_iter().map(|(_, k)| k).collect()
    }
}

const NAMES: [&str; 2] = ["users", "blocks"];

fn open(dir: &std::path::Path) -> Engine {
    let cfg = EngineConfig {
        durability: Durability::None,
        max_segment_size: 4096,
        ..EngineConfig::default()
    };
    Engine::open(dir, cfg).expect("open")
}

fn run(ops: Vec<Op>, reopen_after: Vec<bool>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut engine = Some(open(dir.path()));
    {
        let e = engine.as_ref().expect("engine");
        e.namespace_create(NAMES[0]).expect("create");
        e.namespace_create(NAMES[1]).expect("create");
        e.namespace_set(NAMES[1], NamespaceProperty::Mode(Mode::Seq))
            .expect("seq");
    }
    let mut model = [ModelNs::default(), ModelNs::default()];
    let mut clock = 0u64;
    for (step, (op, reopen)) in ops.into_iter().zip(reopen_after).enumerate() {
        clock += 1;
        let e = engine.as_ref().expect("engine");
        let ctx = format!("step {step}: {op:?}");
        match op {
            Op::Set { ns, key, value } => {
                let m = &mut model[ns];
                let ts = 1_000 + clock;
                if ns == 0 {
                    let k = vec![b'k', key];
                    let out = e.set_at(NAMES[0], Some(&k), &value, Some(ts)).expect("set");
                    if m.live(&k) == Some(&value) {
                        prop_assert_eq!(out, SetOutcome::Unchanged { key: k }, "{}", ctx);
                    } else {
                        prop_assert_eq!(out, SetOutcome::Written { key: k.clone() }, "{}", ctx);
                        m.keys.entry(k.clone()).or_default().push((Some(value), ts));
                        m.last_write.insert(k, clock);
                    }
                } else {
                    // Seq mode: `key` picks an existing id to update, or allocates a new one.
                    let target = m.ids.get(key as usize).cloned();
                    match target {
                        None => {
                            let out = e.set_at(NAMES[1], None, &value, Some(ts)).expect("alloc");
                            let expect = m.next_id.to_le_bytes().to_vec();
                            prop_assert_eq!(out.key(), &expect[..], "{}", ctx);
                            m.next_id += 1;
                            m.ids.push(expect.clone());
                            m.keys
                                .entry(expect.clone())
                                .or_default()
                                .push((Some(value), ts));
                            m.last_write.insert(expect, clock);
                        }
                        Some(id) => {
                            let r = e.set_at(NAMES[1], Some(&id), &value, Some(ts));
                            match m.live(&id) {
                                None => prop_assert!(
                                    matches!(r, Err(Error::InvalidArgument(_))),
                                    "{} {:?}",
                                    ctx,
                                    r
                                ),
                                Some(v) if *v == value => {
                                    prop_assert_eq!(
                                        r.expect("set"),
                                        SetOutcome::Unchanged { key: id },
                                        "{}",
                                        ctx
                                    )
                                }
                                Some(_) => {
                                    prop_assert_eq!(
                                        r.expect("set"),
                                        SetOutcome::Written { key: id.clone() },
                                        "{}",
                                        ctx
                                    );
                                    m.next_id += 1; // an update burns one id
                                    m.keys
                                        .entry(id.clone())
                                        .or_default()
                                        .push((Some(value), ts));
                                    m.last_write.insert(id, clock);
                                }
                            }
                        }
                    }
                }
            }
            Op::Delete { ns, key } => {
                let m = &mut model[ns];
                let k = if ns == 0 {
                    vec![b'k', key]
                } else {
                    m.ids.get(key as usize).cloned().unwrap_or(vec![9; 8])
                };
                let ts = 1_000 + clock;
                let r = e.delete_at(NAMES[ns], &k, Some(ts));
                if m.live(&k).is_some() {
                    prop_assert!(r.is_ok(), "{} {:?}", ctx, r);
                    m.keys.entry(k.clone()).or_default().push((None, ts));
                } else {
                    prop_assert!(matches!(r, Err(Error::NotFound(_))), "{} {:?}", ctx, r);
                }
            }
            Op::Get { ns, key } => {
                let m = &model[ns];
                let k = if ns == 0 {
                    vec![b'k', key]
                } else {
                    m.ids.get(key as usize).cloned().unwrap_or(vec![9; 8])
                };
                let got = e.get(NAMES[ns], &k).expect("get");
                prop_assert_eq!(got.as_ref().map(|g| &g.value), m.live(&k), "{}", ctx);
                if let Some(g) = got {
                    prop_assert_eq!(Some(g.timestamp), m.keys[&k].last().map(|v| v.1), "{}", ctx);
                }
            }
            Op::Scan { ns, limit, reverse } => {
                let order = if reverse {
                    ScanOrder::Reverse
                } else {
                    ScanOrder::Forward
                };
                let mut got = Vec::new();
                let mut cursor = None;
                loop {
                    let page = e
                        .scan(NAMES[ns], cursor.as_ref(), limit, order)
                        .expect("scan");
                    for m in &page.entries {
                        prop_assert_eq!(
                            Some(m.length),
                            model[ns].live(&m.key).map(|v| v.len() as u64),
                            "{}",
                            ctx
                        );
                    }
                    got.extend(page.entries.into_iter().map(|m| m.key));
                    match page.next {
                        Some(c) => cursor = Some(c),
                        None => break,
                    }
                }
                let mut expect = model[ns].scan_order();
                if reverse {
                    expect.reverse();
                }
                prop_assert_eq!(got, expect, "{}", ctx);
            }
            Op::History { ns, key } => {
                let m = &model[ns];
                let k = if ns == 0 {
                    vec![b'k', key]
                } else {
                    m.ids.get(key as usize).cloned().unwrap_or(vec![9; 8])
                };
                let versions = m.keys.get(&k).cloned().unwrap_or_default();
                match versions.last() {
                    None => prop_assert!(
                        matches!(e.history(NAMES[ns], &k, None), Err(Error::NotFound(_))),
                        "{}",
                        ctx
                    ),
                    Some((None, _)) => {
                        prop_assert!(
                            matches!(e.history(NAMES[ns], &k, None), Err(Error::NotFound(_))),
                            "{}",
                            ctx
                        )
                    }
                    Some((Some(_), _)) => {
                        let mut walked = Vec::new();
                        let mut at: Option<VersionId> = None;
                        loop {
                            let v = e.history(NAMES[ns], &k, at).expect("history");
                            walked
                                .push((if v.deleted { None } else { Some(v.value) }, v.timestamp));
                            match v.previous {
                                Some(p) => at = Some(p),
                                None => break,
                            }
                            prop_assert!(walked.len() <= versions.len(), "{} chain too long", ctx);
                        }
                        walked.reverse();
                        prop_assert_eq!(walked, versions, "{}", ctx);
                    }
                }
            }
            Op::Seal { ns } => e.rotate(NAMES[ns]).expect("rotate"),
            Op::Compact { ns } => {
                e.compact_with(NAMES[ns], 1.0).expect("compact");
            }
            Op::Flush { ns } => {
                e.flush_namespace(NAMES[ns]).expect("flush");
                let m = &mut model[ns];
                m.keys.clear();
                m.last_write.clear();
            }
            Op::ForeignHistory { ns, key, other } => {
                // A version of one key must never be served as a version of another.
                let m = &model[ns];
                let name = |k: u8| {
                    if ns == 0 {
                        Some(vec![b'k', k])
                    } else {
                        m.ids.get(k as usize).cloned()
                    }
                };
                if let (Some(a), Some(b)) = (name(key), name(other)) {
                    if a != b && m.live(&a).is_some() {
                        let live = e.history(NAMES[ns], &a, None).expect("history");
                        let mut at = Some(live);
                        let mut ids = Vec::new();
                        while let Some(v) = at {
                            ids.extend(v.previous);
                            at = v
                                .previous
                                .map(|p| e.history(NAMES[ns], &a, Some(p)).expect("walk"));
                        }
                        for id in ids {
                            let r = e.history(NAMES[ns], &b, Some(id));
                            prop_assert!(
                                matches!(
                                    r,
                                    Err(Error::InvalidArgument(_)) | Err(Error::NotFound(_))
                                ),
                                "{} {:?}",
                                ctx,
                                r
                            );
                        }
                    }
                }
            }
            Op::Reopen { drop_index } => {
                reopen_engine(&mut engine, dir.path(), drop_index);
            }
        }
        if reopen {
            reopen_engine(&mut engine, dir.path(), step % 2 == 0);
        }
        // The cheap invariants after every step.
        let e = engine.as_ref().expect("engine");
        for ns in 0..2 {
            let info = e.namespace_info(NAMES[ns]).expect("info");
            let live: Vec<&Vec<u8>> = model[ns]
                .keys
                .keys()
                .filter_map(|k| model[ns].live(k))
                .collect();
            prop_assert_eq!(info.entries, live.len() as u64, "step {} entries", step);
            prop_assert_eq!(
                info.data_bytes,
                live.iter().map(|v| v.len() as u64).sum::<u64>(),
                "step {} bytes",
                step
            );
        }
    }
    // Final full comparison, after one more reopen from the segments alone.
    reopen_engine(&mut engine, dir.path(), true);
    let e = engine.as_ref().expect("engine");
    for ns in 0..2 {
        for (k, _) in model[ns].keys.iter() {
            let got = e.get(NAMES[ns], k).expect("get").map(|g| g.value);
            prop_assert_eq!(got.as_ref(), model[ns].live(k));
        }
    }
    Ok(())
}

fn reopen_engine(engine: &mut Option<Engine>, dir: &std::path::Path, drop_index: bool) {
    drop(engine.take());
    if drop_index {
        for n in NAMES {
            let _ = std::fs::remove_file(dir.join("ns").join(n).join("index"));
        }
    }
    *engine = Some(open(dir));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_model(ops in proptest::collection::vec(op(), 1..60), seed in any::<u64>()) {
        // About one step in six is followed by a reopen, so every kind of operation is followed
        // by one in some case.
        let reopen_after: Vec<bool> = (0..ops.len()).map(|i| (seed.rotate_left(i as u32 % 64) ^ i as u64) % 6 == 0).collect();
        run(ops, reopen_after)?;
    }
}
