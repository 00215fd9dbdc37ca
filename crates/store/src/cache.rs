//! Small in-process caches of rows that are read on every request and change rarely (access
//! tokens, rooms, which users have pushers), and the rule that keeps them exact.
//!
//! The rule: every store method that changes a cached row invalidates the cache after its write
//! (whether or not the write succeeded), and a reader only fills the cache if no invalidation
//! happened since it started its read. Without the second half, a read that ran just before a
//! logout committed could put the deleted token back after the logout cleared the cache.
//!
//! Exact while this process is the only one writing the database, which is what Myelin runs
//! today (rooms already rely on it: their writers queue on in-process locks). Several processes
//! over one database will need a cross-process invalidation signal here.

use std::{collections::HashMap, hash::Hash, sync::Mutex};

/// A bounded map whose invalidations carry a generation number (see the module docs).
#[derive(Debug)]
pub(crate) struct Cache<K, V> {
    inner: Mutex<Inner<K, V>>,
    capacity: usize,
}

#[derive(Debug)]
struct Inner<K, V> {
    generation: u64,
    map: HashMap<K, V>,
}

/// Where a reader started: pass it back to [`Cache::fill`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Generation(u64);

impl<K: Hash + Eq, V: Clone> Cache<K, V> {
    /// A cache that forgets everything once it holds `capacity` entries (the rows are cheap to
    /// read again; an LRU would cost more than it saves).
    pub(crate) fn new(capacity: usize) -> Self {
        Cache {
            inner: Mutex::new(Inner {
                generation: 0,
                map: HashMap::new(),
            }),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K, V>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached value, or the generation to fill it at after reading the database.
    pub(crate) fn get<Q>(&self, key: &Q) -> Result<V, Generation>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let inner = self.lock();
        match inner.map.get(key) {
            Some(value) => Ok(value.clone()),
            None => Err(Generation(inner.generation)),
        }
    }

    /// Stores what a reader read, unless the cache was invalidated since it started.
    pub(crate) fn fill(&self, started: Generation, key: K, value: V) {
        let mut inner = self.lock();
        if inner.generation != started.0 {
            return;
        }
        if inner.map.len() >= self.capacity {
            inner.map.clear();
        }
        inner.map.insert(key, value);
    }

    /// Forgets everything; readers that started before do not fill.
    pub(crate) fn invalidate(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.map.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_that_started_before_an_invalidation_does_not_fill() {
        let cache: Cache<String, u32> = Cache::new(10);
        let Err(started) = cache.get("a") else {
            panic!("empty cache")
        };
        cache.invalidate();
        cache.fill(started, "a".to_owned(), 1);
        assert!(cache.get("a").is_err(), "the stale read was not kept");

        let Err(started) = cache.get("a") else {
            panic!("still empty")
        };
        cache.fill(started, "a".to_owned(), 2);
        assert_eq!(cache.get("a"), Ok(2));
        cache.invalidate();
        assert!(cache.get("a").is_err(), "invalidation forgets");
    }

    #[test]
    fn a_full_cache_starts_over() {
        let cache: Cache<u32, u32> = Cache::new(2);
        for key in 0..3 {
            let started = cache.get(&key).unwrap_err();
            cache.fill(started, key, key);
        }
        assert!(cache.get(&0).is_err() && cache.get(&1).is_err());
        assert_eq!(cache.get(&2), Ok(2));
    }
}
