//! A small in-memory Store for the tests that run before the engine is merged.

use parking_lot::Mutex;
use qsfs_core::*;
use std::collections::{BTreeMap, HashMap};

#[derive(Default)]
struct Ns {
    map: HashMap<Vec<u8>, (u64, Vec<u8>)>,
    order: BTreeMap<u64, Vec<u8>>,
}

/// In-memory store: write-ordered scans, no history.
#[derive(Default)]
pub struct MemStore {
    inner: Mutex<(u64, HashMap<String, Ns>)>,
}

impl MemStore {
    pub fn new() -> Self {
        let s = MemStore::default();
        s.inner.lock().1.insert("default".into(), Ns::default());
        s
    }
}

fn nf(ns: &str) -> Error {
    Error::NotFound(ns.to_string())
}

impl Store for MemStore {
    fn set_at(
        &self,
        ns: &str,
        key: Option<&[u8]>,
        value: &[u8],
        _t: Option<Timestamp>,
    ) -> Result<SetOutcome> {
        let key = key.ok_or_else(|| Error::InvalidArgument("no key".into()))?;
        check_key(key)?;
        check_value(value)?;
        let mut g = self.inner.lock();
        g.0 += 1;
        let seq = g.0;
        let n = g.1.get_mut(ns).ok_or_else(|| nf(ns))?;
        if let Some((old, v)) = n.map.get(key) {
            if v == value {
                return Ok(SetOutcome::Unchanged { key: key.to_vec() });
            }
            let old = *old;
            n.order.remove(&old);
        }
        n.map.insert(key.to_vec(), (seq, value.to_vec()));
        n.order.insert(seq, key.to_vec());
        Ok(SetOutcome::Written { key: key.to_vec() })
    }
    fn get(&self, ns: &str, key: &[u8]) -> Result<Option<Entry>> {
        let g = self.inner.lock();
        let n = g.1.get(ns).ok_or_else(|| nf(ns))?;
        Ok(n.map.get(key).map(|(_, v)| Entry {
            value: v.clone(),
            timestamp: 0,
        }))
    }
    fn delete_at(&self, ns: &str, key: &[u8], _t: Option<Timestamp>) -> Result<()> {
        let mut g = self.inner.lock();
        let n = g.1.get_mut(ns).ok_or_else(|| nf(ns))?;
        let (seq, _) = n.map.remove(key).ok_or_else(|| nf("key"))?;
        n.order.remove(&seq);
        Ok(())
    }
    fn meta(&self, ns: &str, key: &[u8]) -> Result<Option<KeyMeta>> {
        let g = self.inner.lock();
        let n = g.1.get(ns).ok_or_else(|| nf(ns))?;
        Ok(n.map.get(key).map(|(_, v)| KeyMeta {
            key: key.to_vec(),
            length: v.len() as u64,
            timestamp: 0,
        }))
    }
    fn check(&self, ns: &str, key: &[u8]) -> Result<Option<bool>> {
        Ok(self.meta(ns, key)?.map(|_| true))
    }
    fn scan(
        &self,
        ns: &str,
        cursor: Option<&Cursor>,
        limit: usize,
        _o: ScanOrder,
    ) -> Result<ScanPage> {
        let g = self.inner.lock();
        let n = g.1.get(ns).ok_or_else(|| nf(ns))?;
        let after = cursor
            .map(|c| u64::from_be_bytes(c.0[..8].try_into().unwrap()))
            .unwrap_or(0);
        let mut entries = Vec::new();
        let mut last = after;
        for (&seq, k) in n.order.range(after + 1..) {
            if entries.len() == limit {
                return Ok(ScanPage {
                    entries,
                    next: Some(Cursor(last.to_be_bytes().to_vec())),
                });
            }
            let v = &n.map[k].1;
            entries.push(KeyMeta {
                key: k.clone(),
                length: v.len() as u64,
                timestamp: 0,
            });
            last = seq;
        }
        Ok(ScanPage {
            entries,
            next: None,
        })
    }
    fn cursor_after(&self, ns: &str, key: &[u8]) -> Result<Cursor> {
        let g = self.inner.lock();
        let n = g.1.get(ns).ok_or_else(|| nf(ns))?;
        let (seq, _) = n.map.get(key).ok_or_else(|| nf("key"))?;
        Ok(Cursor(seq.to_be_bytes().to_vec()))
    }
    fn history(&self, _ns: &str, _key: &[u8], _at: Option<VersionId>) -> Result<Version> {
        Err(Error::Unsupported("history".into()))
    }
    fn namespace_create(&self, name: &str) -> Result<()> {
        let mut g = self.inner.lock();
        if g.1.contains_key(name) {
            return Err(Error::AlreadyExists(name.into()));
        }
        g.1.insert(name.into(), Ns::default());
        Ok(())
    }
    fn namespace_delete(&self, name: &str) -> Result<()> {
        self.inner
            .lock()
            .1
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| nf(name))
    }
    fn namespace_list(&self) -> Result<Vec<String>> {
        Ok(self.inner.lock().1.keys().cloned().collect())
    }
    fn namespace_info(&self, name: &str) -> Result<NamespaceInfo> {
        let g = self.inner.lock();
        let n = g.1.get(name).ok_or_else(|| nf(name))?;
        Ok(NamespaceInfo {
            name: name.into(),
            entries: n.map.len() as u64,
            data_bytes: n.map.values().map(|(_, v)| v.len() as u64).sum(),
            ..Default::default()
        })
    }
    fn namespace_set(&self, _name: &str, _p: NamespaceProperty) -> Result<()> {
        Err(Error::Unsupported("namespace_set".into()))
    }
    fn namespace_authenticate(&self, _name: &str, _c: Credential<'_>) -> Result<bool> {
        Ok(true)
    }
    fn flush_namespace(&self, name: &str) -> Result<()> {
        let mut g = self.inner.lock();
        *g.1.get_mut(name).ok_or_else(|| nf(name))? = Ns::default();
        Ok(())
    }
    fn sync(&self) -> Result<()> {
        Ok(())
    }
}
