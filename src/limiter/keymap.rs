//! The per-shard map from key to state.
//!
//! A `hashbrown::HashTable` of `(key, state)` so that one lookup yields both
//! the shared key (which reservations clone) and the state, and so that the
//! hot path hashes a key once: the same hash picks the shard and probes it.

use super::state::KeyState;
use hashbrown::hash_table::Entry;
use hashbrown::{DefaultHashBuilder, HashTable};
use std::hash::BuildHasher;
use std::sync::Arc;

pub(crate) struct KeyMap {
    table: HashTable<(Arc<str>, KeyState)>,
    hasher: DefaultHashBuilder,
}

impl KeyMap {
    pub(crate) fn new(hasher: DefaultHashBuilder) -> KeyMap {
        KeyMap {
            table: HashTable::new(),
            hasher,
        }
    }

    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    pub(crate) fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub(crate) fn get(&self, key: &str) -> Option<&KeyState> {
        self.table
            .find(self.hash(key), |(k, _)| &**k == key)
            .map(|(_, s)| s)
    }

    pub(crate) fn get_mut(&mut self, key: &str) -> Option<&mut KeyState> {
        let hash = self.hash(key);
        self.table
            .find_mut(hash, |(k, _)| &**k == key)
            .map(|(_, s)| s)
    }

    /// The key's state, created by `make` on first use, with the shared key.
    /// `hash` must be this map's hash of `key`.
    pub(crate) fn state_hashed(
        &mut self,
        hash: u64,
        key: &str,
        make: impl FnOnce() -> KeyState,
    ) -> (&Arc<str>, &mut KeyState) {
        let hasher = &self.hasher;
        let entry = self
            .table
            .entry(hash, |(k, _)| &**k == key, |(k, _)| hasher.hash_one(&**k));
        let pair = match entry {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => v.insert((Arc::from(key), make())).into_mut(),
        };
        (&pair.0, &mut pair.1)
    }

    pub(crate) fn state(
        &mut self,
        key: &str,
        make: impl FnOnce() -> KeyState,
    ) -> (&Arc<str>, &mut KeyState) {
        let hash = self.hash(key);
        self.state_hashed(hash, key, make)
    }

    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&Arc<str>, &mut KeyState) -> bool) {
        self.table.retain(|(k, s)| keep(k, s));
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &KeyState> {
        self.table.iter().map(|(_, s)| s)
    }

    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut KeyState> {
        self.table.iter_mut().map(|(_, s)| s)
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (&Arc<str>, &mut KeyState)> {
        self.table.iter_mut().map(|(k, s)| (&*k, s))
    }
}
