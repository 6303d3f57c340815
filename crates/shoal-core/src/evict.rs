//! Cache eviction plans: which blobs to remove to get back under the size quota, and whether a
//! new blob can get room at all.
//!
//! Least recently used first; a blob in use (being served or downloaded) is never chosen. The
//! plans are pure: the store applies them.

/// One cached blob as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate<K> {
    /// Identity of the blob.
    pub key: K,
    /// Bytes it takes on disk.
    pub size: u64,
    /// Last access, in any monotonic unit (e.g. unix milliseconds).
    pub last_access: u64,
    /// Being served or downloaded right now: must not be evicted.
    pub in_use: bool,
}

/// The limits a cache keeps at every moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of complete blobs plus reservations, at most.
    pub quota: u64,
    /// Bytes the file system keeps free, at least.
    pub min_free: u64,
}

/// What the cache holds and has promised right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Bytes reserved by downloads in progress (counted whole, written or not: the file system
    /// check errs toward not caching).
    pub reserved: u64,
    /// Bytes the file system has available to this process.
    pub free: u64,
}

/// The answer to "can a blob of this size be cached?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Room<K> {
    /// Yes, once these blobs are evicted (oldest first; possibly none).
    Fits(Vec<K>),
    /// No: even evicting every blob no one is reading leaves too little room. Nothing should
    /// be evicted; the blob is served without being cached.
    NoRoom {
        /// Bytes that could not be found.
        short: u64,
    },
}

/// Whether `size` more bytes fit under `limits`, given the complete blobs in `entries` and
/// `usage`, and which blobs to evict for them. Evicting a blob frees its size both from the
/// quota and on the file system (the blobs live on the file system that is measured).
pub fn room<K: Clone>(entries: Vec<Candidate<K>>, usage: Usage, limits: Limits, size: u64) -> Room<K> {
    let need = shortfall(&entries, usage, limits, size);
    let (evict, freed) = oldest_unpinned(entries, need);
    if freed >= need {
        Room::Fits(evict)
    } else {
        Room::NoRoom { short: need - freed }
    }
}

/// The blobs to evict, oldest first, to get back within `limits` as far as blobs no one is
/// reading allow (when pinned blobs alone break the limits, every other blob goes).
pub fn trim<K: Clone>(entries: Vec<Candidate<K>>, usage: Usage, limits: Limits) -> Vec<K> {
    let need = shortfall(&entries, usage, limits, 0);
    oldest_unpinned(entries, need).0
}

/// Bytes to free before `size` more fit: the larger of what the quota and the floor lack.
fn shortfall<K>(entries: &[Candidate<K>], usage: Usage, limits: Limits, size: u64) -> u64 {
    let complete: u64 = entries.iter().map(|e| e.size).sum();
    let over_quota = (complete + usage.reserved + size).saturating_sub(limits.quota);
    let under_floor = (usage.reserved + size + limits.min_free).saturating_sub(usage.free);
    over_quota.max(under_floor)
}

/// Least recently used blobs not in use until `need` bytes are freed (or none are left).
fn oldest_unpinned<K: Clone>(mut entries: Vec<Candidate<K>>, need: u64) -> (Vec<K>, u64) {
    entries.sort_by_key(|e| e.last_access);
    let mut freed = 0;
    let mut out = Vec::new();
    for e in entries.into_iter().filter(|e| !e.in_use) {
        if freed >= need {
            break;
        }
        freed += e.size;
        out.push(e.key);
    }
    (out, freed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    fn c(key: u32, size: u64, last_access: u64, in_use: bool) -> Candidate<u32> {
        Candidate { key, size, last_access, in_use }
    }

    fn plan(e: Vec<Candidate<u32>>, quota: u64) -> Vec<u32> {
        trim(e, Usage { reserved: 0, free: u64::MAX / 2 }, Limits { quota, min_free: 0 })
    }

    #[test]
    fn evicts_oldest_unpinned_first() {
        let e = vec![c(1, 10, 5, false), c(2, 10, 1, true), c(3, 10, 2, false), c(4, 10, 9, false)];
        assert_eq!(plan(e.clone(), 40), Vec::<u32>::new());
        assert_eq!(plan(e.clone(), 25), vec![3, 1]);
        assert_eq!(plan(e, 0), vec![3, 1, 4]);
    }

    #[test]
    fn trim_restores_the_floor_when_the_file_system_fills() {
        let e = vec![c(1, 10, 5, false), c(2, 10, 1, false)];
        let limits = Limits { quota: 1000, min_free: 50 };
        assert_eq!(trim(e.clone(), Usage { reserved: 0, free: 45 }, limits), vec![2]);
        assert_eq!(trim(e, Usage { reserved: 0, free: 60 }, limits), Vec::<u32>::new());
    }

    const GIB: u64 = 1 << 30;

    fn usage(reserved: u64, free: u64) -> Usage {
        Usage { reserved, free }
    }

    #[test]
    fn room_under_the_quota_evicts_nothing() {
        let limits = Limits { quota: 100, min_free: 10 };
        let e = vec![c(1, 30, 1, false)];
        assert_eq!(room(e, usage(20, GIB), limits, 50), Room::Fits(vec![]));
    }

    #[test]
    fn room_over_the_quota_evicts_oldest_unpinned_and_counts_reservations() {
        let limits = Limits { quota: 100, min_free: 0 };
        let e = vec![c(1, 30, 5, false), c(2, 30, 1, true), c(3, 30, 2, false)];
        // 90 complete + 20 reserved + 20 new = 130: 30 over, the oldest unpinned (3) goes.
        assert_eq!(room(e.clone(), usage(20, GIB), limits, 20), Room::Fits(vec![3]));
        // 90 + 20 + 41 = 151: 51 over, 3 and 1 go.
        assert_eq!(room(e.clone(), usage(20, GIB), limits, 41), Room::Fits(vec![3, 1]));
        // The pinned blob and the reservations leave no room for 71.
        assert_eq!(room(e, usage(20, GIB), limits, 71), Room::NoRoom { short: 21 });
    }

    #[test]
    fn room_keeps_the_free_space_floor() {
        let limits = Limits { quota: 10 * GIB, min_free: 100 };
        let e = vec![c(1, 40, 1, false), c(2, 40, 2, false)];
        // 150 free, 30 reserved, 50 new, floor 100: 30 short, one blob frees it.
        assert_eq!(room(e.clone(), usage(30, 150), limits, 50), Room::Fits(vec![1]));
        // 20 free: 160 short, the cache holds only 80.
        assert_eq!(room(e.clone(), usage(30, 20), limits, 50), Room::NoRoom { short: 80 });
        assert_eq!(room(e, usage(0, 200), limits, 100), Room::Fits(vec![]));
    }

    proptest! {
        #[test]
        fn room_never_evicts_pinned_and_a_fit_keeps_both_limits(
            items in vec((1u64..1000, 0u64..100, any::<bool>()), 0..40),
            reserved in 0u64..5000, free in 0u64..20_000, quota in 0u64..20_000, floor in 0u64..5000,
            size in 0u64..5000,
        ) {
            let e: Vec<_> = items.iter().enumerate().map(|(i, &(s, t, p))| c(i as u32, s, t, p)).collect();
            let limits = Limits { quota, min_free: floor };
            let complete: u64 = e.iter().map(|x| x.size).sum();
            match room(e.clone(), usage(reserved, free), limits, size) {
                Room::Fits(out) => {
                    prop_assert!(out.iter().all(|k| !e[*k as usize].in_use));
                    let freed: u64 = out.iter().map(|k| e[*k as usize].size).sum();
                    prop_assert!(complete - freed + reserved + size <= quota);
                    prop_assert!(free + freed >= reserved + size + floor);
                }
                Room::NoRoom { short } => {
                    let evictable: u64 = e.iter().filter(|x| !x.in_use).map(|x| x.size).sum();
                    prop_assert!(short > 0);
                    let over = (complete + reserved + size).saturating_sub(quota);
                    let under = (reserved + size + floor).saturating_sub(free);
                    prop_assert_eq!(short, over.max(under) - evictable);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn never_evicts_pinned_and_reaches_quota(
            items in vec((1u64..1000, 0u64..100, any::<bool>()), 0..50), quota in 0u64..20_000
        ) {
            let e: Vec<_> = items.iter().enumerate().map(|(i, &(s, t, p))| c(i as u32, s, t, p)).collect();
            let out = plan(e.clone(), quota);
            let evicted: u64 = out.iter().map(|k| e[*k as usize].size).sum();
            let total: u64 = e.iter().map(|x| x.size).sum();
            let pinned: u64 = e.iter().filter(|x| x.in_use).map(|x| x.size).sum();
            prop_assert!(out.iter().all(|k| !e[*k as usize].in_use));
            prop_assert!(total - evicted <= quota.max(pinned));
        }
    }
}
