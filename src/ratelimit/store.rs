//! A sharded map whose memory bounds itself: entries that have expired are
//! swept out as the map grows (and now and then as time passes), and a hard
//! cap evicts the entries closest to expiry. No background task is needed.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::{Mutex, MutexGuard},
};

/// Shards: enough that cores rarely meet on one lock.
const SHARDS: usize = 64;
/// A shard is never swept below this size (a sweep costs a pass over it).
const MIN_SWEEP: usize = 256;
/// Even without growth, a shard is swept this often (ns), so memory taken
/// by a burst of keys is given back while traffic goes on.
const SWEEP_PERIOD_NS: u64 = 10_000_000_000;

/// A value that becomes useless at a known time (ns on the owner's clock).
pub(crate) trait Expiring {
    /// From this time on the entry says nothing a missing entry would not.
    fn expires_at(&self) -> u64;
}

pub(crate) struct Sharded<V> {
    shards: Box<[Mutex<Shard<V>>]>,
    hasher: RandomState,
    per_shard_cap: usize,
}

pub(crate) struct Shard<V> {
    pub(crate) map: HashMap<Box<str>, V>,
    sweep_at: usize,
    next_sweep: u64,
}

impl<V: Expiring> Sharded<V> {
    /// A map holding at most about `max_keys` entries.
    pub(crate) fn new(max_keys: usize) -> Self {
        let per_shard_cap = (max_keys / SHARDS).max(1);
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    map: HashMap::new(),
                    sweep_at: MIN_SWEEP.min(per_shard_cap),
                    next_sweep: SWEEP_PERIOD_NS,
                })
            })
            .collect();
        Self {
            shards,
            hasher: RandomState::new(),
            per_shard_cap,
        }
    }

    /// Locks the shard of `key`, after housekeeping if it is due.
    pub(crate) fn shard(&self, key: &str, now: u64) -> MutexGuard<'_, Shard<V>> {
        let index = (self.hasher.hash_one(key) as usize) % self.shards.len();
        // A panic under the lock leaves at worst one stale entry behind, so
        // poisoning is ignored.
        let mut shard = self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if shard.map.len() >= shard.sweep_at || now >= shard.next_sweep {
            shard.sweep(now, self.per_shard_cap);
        }
        shard
    }

    /// Entries held (expired ones included until swept).
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|s| s.map.len()).unwrap_or(0))
            .sum()
    }
}

impl<V: Expiring> Shard<V> {
    /// Drops expired entries; if the shard is still at its cap, drops the
    /// quarter closest to expiry. Amortized O(1) per insert: the next sweep
    /// waits until the shard has doubled (or reached its cap again).
    fn sweep(&mut self, now: u64, cap: usize) {
        self.map.retain(|_, v| v.expires_at() > now);
        if self.map.len() >= cap {
            let target = cap - cap / 4;
            let mut expiries: Vec<u64> = self.map.values().map(Expiring::expires_at).collect();
            let cut = expiries.len() - target;
            let (_, threshold, _) = expiries.select_nth_unstable(cut.saturating_sub(1));
            let threshold = *threshold;
            // Exactly `cut` entries go: all that expire before the
            // threshold, and as many ties as it takes.
            let below = expiries.iter().filter(|&&e| e < threshold).count();
            let mut ties = cut.saturating_sub(below).max(1);
            self.map
                .retain(|_, v| match v.expires_at().cmp(&threshold) {
                    std::cmp::Ordering::Less => false,
                    std::cmp::Ordering::Equal if ties > 0 => {
                        ties -= 1;
                        false
                    }
                    _ => true,
                });
        }
        let floor = MIN_SWEEP.min(cap);
        self.sweep_at = (self.map.len() * 2).max(floor).min(cap);
        self.next_sweep = now.saturating_add(SWEEP_PERIOD_NS);
        if self.map.capacity() > 4 * self.sweep_at.max(16) {
            self.map.shrink_to(self.sweep_at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Until(u64);
    impl Expiring for Until {
        fn expires_at(&self) -> u64 {
            self.0
        }
    }

    #[test]
    fn expired_entries_are_swept_as_the_map_grows() {
        let map = Sharded::new(1 << 20);
        for i in 0..200_000u64 {
            // Every entry expires 10 "ns" after it is written.
            let key = i.to_string();
            map.shard(&key, i).map.insert(key.into(), Until(i + 10));
        }
        assert!(map.len() < SHARDS * MIN_SWEEP * 2, "len {}", map.len());
    }

    #[test]
    fn the_cap_holds_when_nothing_expires() {
        let map = Sharded::new(6400);
        for i in 0..100_000u64 {
            let key = i.to_string();
            map.shard(&key, 0)
                .map
                .insert(key.into(), Until(u64::MAX - i));
        }
        assert!(map.len() <= 6400, "len {}", map.len());
    }
}
