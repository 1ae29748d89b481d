//! The group cache: `gid → Arc<Group>` snapshots (or "no such group"), bounded, sharded.
//!
//! Snapshots are immutable: a change builds a new [`Group`] and swaps the `Arc`, so a reader never
//! sees a half-applied change and nothing is mutated in place while others read it
//! (docs/compatibility.md, *Other defects*: mute changes).
//!
//! Loads race with changes. Every change bumps its shard's generation; a load takes a [`Ticket`]
//! before reading the database and its result is inserted only when no change happened in that
//! shard meanwhile, so a load that read the database before a change never re-inserts the old state.
//! Concurrent misses of one gid are coalesced: one task loads, the others wait for it.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use parking_lot::Mutex;

use super::Group;
use crate::BackendError;

const SHARDS: usize = 16;

#[derive(Clone)]
enum Slot {
    Found(Arc<Group>),
    /// Looked up and absent (or disbanded): cached too, so unknown ids do not hit the database on
    /// every message.
    Missing,
}

struct Shard {
    map: HashMap<i64, Slot>,
    generation: u64,
}

/// Returned by [`GroupCache::ticket`], handed back to [`GroupCache::insert_loaded`].
#[derive(Clone, Copy)]
pub(crate) struct Ticket(u64);

pub(crate) struct GroupCache {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    hasher: RandomState,
    /// One lock per gid being loaded, so concurrent misses load once.
    loading: Mutex<HashMap<i64, Arc<tokio::sync::Mutex<()>>>>,
}

impl GroupCache {
    pub(crate) fn new(capacity: usize) -> GroupCache {
        GroupCache {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::new(),
                        generation: 0,
                    })
                })
                .collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
            loading: Mutex::new(HashMap::new()),
        }
    }

    fn shard(&self, gid: i64) -> &Mutex<Shard> {
        &self.shards[(self.hasher.hash_one(gid) as usize) % SHARDS]
    }

    /// `Some(Some(g))` cached group, `Some(None)` cached absence, `None` not cached.
    pub(crate) fn lookup(&self, gid: i64) -> Option<Option<Arc<Group>>> {
        match self.shard(gid).lock().map.get(&gid)? {
            Slot::Found(g) => Some(Some(g.clone())),
            Slot::Missing => Some(None),
        }
    }

    /// The cached group, if cached and existing.
    pub(crate) fn cached(&self, gid: i64) -> Option<Arc<Group>> {
        self.lookup(gid).flatten()
    }

    fn ticket(&self, gid: i64) -> Ticket {
        Ticket(self.shard(gid).lock().generation)
    }

    /// Insert a loaded value unless a change hit the shard since `ticket`.
    fn insert_loaded(&self, gid: i64, value: Option<Arc<Group>>, ticket: Ticket) {
        let mut shard = self.shard(gid).lock();
        if shard.generation != ticket.0 {
            return;
        }
        Self::put(&mut shard, self.per_shard, gid, value);
    }

    fn put(shard: &mut Shard, per_shard: usize, gid: i64, value: Option<Arc<Group>>) {
        if shard.map.len() >= per_shard && !shard.map.contains_key(&gid) {
            if let Some(victim) = shard.map.keys().next().copied() {
                shard.map.remove(&victim);
            }
        }
        let slot = match value {
            Some(g) => Slot::Found(g),
            None => Slot::Missing,
        };
        shard.map.insert(gid, slot);
    }

    /// Record a change to `gid` (loads in flight will not insert) and forget its entry.
    pub(crate) fn invalidate(&self, gid: i64) {
        let mut shard = self.shard(gid).lock();
        shard.generation = shard.generation.wrapping_add(1);
        shard.map.remove(&gid);
    }

    /// Record a change to `gid` without touching its entry (loads in flight will not insert).
    pub(crate) fn bump(&self, gid: i64) {
        let mut shard = self.shard(gid).lock();
        shard.generation = shard.generation.wrapping_add(1);
    }

    /// Record a change and set the entry to `value` (`None` = the group does not exist).
    pub(crate) fn set(&self, gid: i64, value: Option<Arc<Group>>) {
        let mut shard = self.shard(gid).lock();
        shard.generation = shard.generation.wrapping_add(1);
        Self::put(&mut shard, self.per_shard, gid, value);
    }

    /// Record a change; when `gid` is cached as a group, replace its snapshot by `f(old)`.
    pub(crate) fn update(&self, gid: i64, f: impl FnOnce(&Group) -> Group) {
        let mut shard = self.shard(gid).lock();
        shard.generation = shard.generation.wrapping_add(1);
        if let Some(Slot::Found(old)) = shard.map.get(&gid) {
            let new = Arc::new(f(old));
            shard.map.insert(gid, Slot::Found(new));
        }
    }

    /// Replace the snapshot of `gid` by `new` only while it still is `old` (a snapshot loaded
    /// meanwhile is newer and stays). Records a change either way.
    pub(crate) fn replace_if_same(&self, gid: i64, old: &Arc<Group>, new: Group) {
        let mut shard = self.shard(gid).lock();
        shard.generation = shard.generation.wrapping_add(1);
        if let Some(Slot::Found(cur)) = shard.map.get(&gid) {
            if Arc::ptr_eq(cur, old) {
                shard.map.insert(gid, Slot::Found(Arc::new(new)));
            }
        }
    }

    /// Forget everything; returns `(appid, gid)` of every group that was cached.
    pub(crate) fn clear(&self) -> Vec<(i64, i64)> {
        let mut cleared = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            shard.generation = shard.generation.wrapping_add(1);
            for (gid, slot) in shard.map.drain() {
                if let Slot::Found(g) = slot {
                    cleared.push((g.appid, gid));
                }
            }
        }
        cleared
    }

    /// The group from the cache, else from `load` (coalescing concurrent misses of one gid).
    pub(crate) async fn get_or_load<F, Fut>(
        &self,
        gid: i64,
        load: F,
    ) -> Result<Option<Arc<Group>>, BackendError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<Group>, BackendError>>,
    {
        if let Some(hit) = self.lookup(gid) {
            return Ok(hit);
        }
        let lock = self
            .loading
            .lock()
            .entry(gid)
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
            .clone();
        // Removes the per-gid lock when the last interested caller is done (or cancelled).
        let _cleanup = LoadingGuard {
            cache: self,
            gid,
            lock: lock.clone(),
        };
        let _guard = lock.lock().await;
        // Whoever held the lock before may have loaded it.
        if let Some(hit) = self.lookup(gid) {
            return Ok(hit);
        }
        let ticket = self.ticket(gid);
        let group = load().await?.map(Arc::new);
        self.insert_loaded(gid, group.clone(), ticket);
        Ok(group)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map.len()).sum()
    }
}

struct LoadingGuard<'a> {
    cache: &'a GroupCache,
    gid: i64,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for LoadingGuard<'_> {
    fn drop(&mut self) {
        let mut loading = self.cache.loading.lock();
        // References: the map's, this guard's, and the caller's own clone.
        if Arc::strong_count(&self.lock) <= 3 {
            if let Some(current) = loading.get(&self.gid) {
                if Arc::ptr_eq(current, &self.lock) {
                    loading.remove(&self.gid);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(gid: i64, name: &str) -> Group {
        Group {
            appid: 1,
            gid,
            name: name.to_owned(),
            master: 1,
            super_group: false,
            members: HashMap::new(),
        }
    }

    #[tokio::test]
    async fn bounded_and_changes_win_over_loads() {
        let cache = GroupCache::new(32);
        for gid in 1..200 {
            let g = cache
                .get_or_load(gid, || async move { Ok(Some(group(gid, "a"))) })
                .await
                .expect("load");
            assert_eq!(g.map(|g| g.gid), Some(gid));
        }
        assert!(cache.len() <= 32);

        // A load that read the database before a change does not insert its stale result.
        let ticket = cache.ticket(500);
        cache.set(500, Some(Arc::new(group(500, "new"))));
        cache.insert_loaded(500, Some(Arc::new(group(500, "old"))), ticket);
        assert_eq!(
            cache.cached(500).map(|g| g.name.clone()),
            Some("new".into())
        );

        // Absence is cached; an invalidation forgets it.
        let none = cache
            .get_or_load(600, || async { Ok(None) })
            .await
            .expect("load");
        assert!(none.is_none());
        let cached = cache
            .get_or_load(600, || async { Ok(Some(group(600, "x"))) })
            .await
            .expect("hit");
        assert!(cached.is_none(), "absence served from the cache");
        cache.invalidate(600);
        let loaded = cache
            .get_or_load(600, || async { Ok(Some(group(600, "x"))) })
            .await
            .expect("load");
        assert!(loaded.is_some());

        // replace_if_same keeps a newer snapshot.
        let old = cache.cached(600).expect("cached");
        cache.set(600, Some(Arc::new(group(600, "newer"))));
        cache.replace_if_same(600, &old, group(600, "derived"));
        assert_eq!(
            cache.cached(600).map(|g| g.name.clone()),
            Some("newer".into())
        );
        let cur = cache.cached(600).expect("cached");
        cache.replace_if_same(600, &cur, group(600, "derived"));
        assert_eq!(
            cache.cached(600).map(|g| g.name.clone()),
            Some("derived".into())
        );

        let cleared = cache.clear();
        assert!(cleared.contains(&(1, 600)));
        assert_eq!(cache.len(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_load_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let cache = Arc::new(GroupCache::new(64));
        let loads = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let cache = cache.clone();
                let loads = loads.clone();
                tokio::spawn(async move {
                    cache
                        .get_or_load(7, || async move {
                            loads.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            Ok(Some(group(7, "once")))
                        })
                        .await
                        .expect("load")
                        .expect("found")
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.expect("task").name, "once");
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert!(
            cache.loading.lock().is_empty(),
            "per-gid locks are cleaned up"
        );
    }
}
