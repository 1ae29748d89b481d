//! A bounded, sharded in-memory cache (valid stored tokens, device ids) that never serves a value
//! removed by [`BoundedCache::invalidate`]: a lookup that raced with an invalidation does not
//! re-insert the stale value (per-shard generation counter).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};

use parking_lot::Mutex;

const SHARDS: usize = 16;

/// A cache key: the first 16 bytes of a SHA-256 digest. The caches hold one entry per recently
/// authenticated connection, so their tables are part of what each connection costs; 128 bits keep
/// an accidental collision out of reach (about 2^-128 for a pair of keys, 2^-88 among 2^20 entries)
/// at half the size of the whole digest and without a heap allocation per key.
pub(crate) type Key = [u8; 16];

/// The cache key of a SHA-256 digest.
pub(crate) fn key(digest: &[u8; 32]) -> Key {
    let mut k = [0u8; 16];
    k.copy_from_slice(&digest[..16]);
    k
}

struct Shard<K, V> {
    map: HashMap<K, V>,
    /// Bumped by every invalidation in this shard.
    generation: u64,
}

/// A cache of at most `capacity` entries; when a shard is full an arbitrary entry is evicted.
pub(crate) struct BoundedCache<K, V> {
    shards: Box<[Mutex<Shard<K, V>>]>,
    per_shard: usize,
    hasher: RandomState,
}

/// Ticket from [`BoundedCache::ticket`], to be handed back to [`BoundedCache::insert`].
#[derive(Clone, Copy)]
pub(crate) struct Ticket(u64);

impl<K: Hash + Eq + Clone, V: Clone> BoundedCache<K, V> {
    pub(crate) fn new(capacity: usize) -> Self {
        let per_shard = capacity.div_ceil(SHARDS).max(1);
        BoundedCache {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::new(),
                        generation: 0,
                    })
                })
                .collect(),
            per_shard,
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &K) -> &Mutex<Shard<K, V>> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        &self.shards[i]
    }

    pub(crate) fn get(&self, key: &K) -> Option<V> {
        self.shard(key).lock().map.get(key).cloned()
    }

    /// Take before reading the source of truth; pass to `insert` afterwards.
    pub(crate) fn ticket(&self, key: &K) -> Ticket {
        Ticket(self.shard(key).lock().generation)
    }

    /// Inserts unless the key's shard saw an invalidation since `ticket` was taken.
    pub(crate) fn insert(&self, key: K, value: V, ticket: Ticket) {
        let mut shard = self.shard(&key).lock();
        if shard.generation != ticket.0 {
            return;
        }
        if shard.map.len() >= self.per_shard && !shard.map.contains_key(&key) {
            if let Some(victim) = shard.map.keys().next().cloned() {
                shard.map.remove(&victim);
            }
        }
        shard.map.insert(key, value);
    }

    pub(crate) fn invalidate(&self, key: &K) {
        let mut shard = self.shard(key).lock();
        shard.generation = shard.generation.wrapping_add(1);
        shard.map.remove(key);
    }

    /// Records a change to `key` (lookups in flight will not insert) and, when it is cached,
    /// changes its value in place.
    pub(crate) fn update(&self, key: &K, f: impl FnOnce(&mut V)) {
        let mut shard = self.shard(key).lock();
        shard.generation = shard.generation.wrapping_add(1);
        if let Some(v) = shard.map.get_mut(key) {
            f(v);
        }
    }

    /// Forgets everything (lookups in flight will not insert).
    pub(crate) fn clear(&self) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            shard.generation = shard.generation.wrapping_add(1);
            shard.map.clear();
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_invalidation_wins() {
        let cache = BoundedCache::<u64, u64>::new(64);
        for i in 0..1000 {
            let t = cache.ticket(&i);
            cache.insert(i, i * 2, t);
        }
        assert!(cache.len() <= 64);
        let t = cache.ticket(&5000);
        cache.invalidate(&5000);
        cache.insert(5000, 1, t);
        assert_eq!(cache.get(&5000), None);
        let t = cache.ticket(&5000);
        cache.insert(5000, 1, t);
        assert_eq!(cache.get(&5000), Some(1));
        // An update changes a cached value and stops lookups in flight; absent keys stay absent.
        let t = cache.ticket(&6000);
        cache.update(&5000, |v| *v += 1);
        cache.update(&6000, |v| *v += 1);
        assert_eq!(cache.get(&5000), Some(2));
        assert_eq!(cache.get(&6000), None);
        cache.insert(6000, 9, t);
        assert_eq!(cache.get(&6000), None);
        cache.clear();
        assert_eq!(cache.len(), 0);
    }
}
