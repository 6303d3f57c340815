//! Cache eviction plans: which blobs to remove to get back under the size quota.
//!
//! Least recently used first; a blob in use (being served or downloaded) is never chosen. The
//! plan is pure: the store applies it.

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

/// The keys to evict, oldest first, so that the remaining total is at most `quota`; if pinned
/// blobs alone exceed the quota, every unpinned blob is evicted and the cache stays over.
pub fn plan<K: Clone>(mut entries: Vec<Candidate<K>>, quota: u64) -> Vec<K> {
    let mut total: u64 = entries.iter().map(|e| e.size).sum();
    entries.sort_by_key(|e| e.last_access);
    let mut out = Vec::new();
    for e in entries {
        if total <= quota {
            break;
        }
        if !e.in_use {
            total -= e.size;
            out.push(e.key);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    fn c(key: u32, size: u64, last_access: u64, in_use: bool) -> Candidate<u32> {
        Candidate { key, size, last_access, in_use }
    }

    #[test]
    fn evicts_oldest_unpinned_first() {
        let e = vec![c(1, 10, 5, false), c(2, 10, 1, true), c(3, 10, 2, false), c(4, 10, 9, false)];
        assert_eq!(plan(e.clone(), 40), Vec::<u32>::new());
        assert_eq!(plan(e.clone(), 25), vec![3, 1]);
        assert_eq!(plan(e, 0), vec![3, 1, 4]);
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
