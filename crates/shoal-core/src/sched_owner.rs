//! Which scheduler owns a task when several are configured: rendezvous (highest random weight)
//! hashing of the task id over the schedulers' URLs, the ones that answer first.
//!
//! Every daemon computes the same order from the same list, so all of them register a task
//! with the same scheduler without talking to each other; when a scheduler stops answering, only
//! the tasks it owned move (each to its own next scheduler), and they move back when it answers
//! again. Pure: liveness is an input, decided by the caller; nothing here dials or waits.

use sha2::{Digest as _, Sha256};

use crate::Digest;

/// The weight of scheduler `url` for `task`: the first 8 bytes of sha256(url ‖ task), big endian.
/// The highest weight owns the task.
pub fn weight(url: &str, task: &Digest) -> u64 {
    let hash = Sha256::new().chain_update(url.as_bytes()).chain_update(task.as_bytes()).finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    u64::from_be_bytes(first)
}

/// The order in which to try the schedulers for `task`, as indices into `urls`: the live ones by
/// falling weight, then the dead ones by falling weight (a dead one may be back before its
/// caller noticed). `live[i]` tells whether `urls[i]` answers; a missing entry counts as live.
/// Ties (equal weights: equal URLs) keep the list's order.
pub fn candidates<S: AsRef<str>>(urls: &[S], live: &[bool], task: &Digest) -> Vec<usize> {
    let is_live = |i: usize| live.get(i).copied().unwrap_or(true);
    let mut order: Vec<(bool, u64, usize)> =
        urls.iter().enumerate().map(|(i, url)| (is_live(i), weight(url.as_ref(), task), i)).collect();
    // Live before dead, then heavier first, then the earlier in the list.
    order.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
    order.into_iter().map(|(_, _, i)| i).collect()
}

/// The scheduler that owns `task` among the live ones (see [`candidates`]); `None` when `urls`
/// is empty.
pub fn owner<S: AsRef<str>>(urls: &[S], live: &[bool], task: &Digest) -> Option<usize> {
    candidates(urls, live, task).first().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    const URLS: [&str; 3] = ["http://10.0.0.1:65003", "http://10.0.0.2:65003", "http://10.0.0.3:65003"];

    fn task(n: u32) -> Digest {
        Digest::of(&n.to_be_bytes())
    }

    fn tasks() -> impl Iterator<Item = Digest> {
        (0..600).map(task)
    }

    #[test]
    fn the_same_inputs_give_the_same_order() {
        for t in tasks().take(50) {
            let order = candidates(&URLS, &[true; 3], &t);
            assert_eq!(order, candidates(&URLS, &[true; 3], &t));
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, [0, 1, 2], "every scheduler once: {order:?}");
        }
    }

    #[test]
    fn all_live_the_heaviest_owns() {
        for t in tasks().take(50) {
            let heaviest = (0..3).max_by_key(|&i| weight(URLS[i], &t)).unwrap();
            assert_eq!(owner(&URLS, &[true; 3], &t), Some(heaviest));
        }
    }

    #[test]
    fn the_order_does_not_depend_on_the_list_order() {
        let reversed: Vec<&str> = URLS.iter().rev().copied().collect();
        for t in tasks().take(50) {
            let forward: Vec<&str> = candidates(&URLS, &[true; 3], &t).iter().map(|&i| URLS[i]).collect();
            let backward: Vec<&str> = candidates(&reversed, &[true; 3], &t).iter().map(|&i| reversed[i]).collect();
            assert_eq!(forward, backward);
        }
    }

    #[test]
    fn removing_a_non_owner_moves_no_task() {
        for t in tasks() {
            let owner_url = URLS[owner(&URLS, &[true; 3], &t).unwrap()];
            for removed in URLS.iter().filter(|&&u| u != owner_url) {
                let rest: Vec<&str> = URLS.iter().copied().filter(|u| u != removed).collect();
                assert_eq!(rest[owner(&rest, &[true; 2], &t).unwrap()], owner_url);
            }
        }
    }

    #[test]
    fn a_dead_scheduler_moves_only_its_own_tasks_and_goes_last() {
        let mut moved = 0;
        for t in tasks() {
            let before = owner(&URLS, &[true; 3], &t).unwrap();
            let order = candidates(&URLS, &[true, false, true], &t);
            assert_eq!(order.last(), Some(&1), "the dead one is tried last: {order:?}");
            if before == 1 {
                moved += 1;
                // It goes where it would go if the dead one were not configured at all.
                let rest = [URLS[0], URLS[2]];
                assert_eq!(URLS[order[0]], rest[owner(&rest, &[true; 2], &t).unwrap()]);
            } else {
                assert_eq!(order[0], before, "a live scheduler's task moved");
            }
        }
        assert!(moved > 0, "scheduler 1 owned none of the tasks");
    }

    #[test]
    fn unknown_liveness_counts_as_live() {
        for t in tasks().take(50) {
            assert_eq!(candidates(&URLS, &[], &t), candidates(&URLS, &[true; 3], &t));
            assert_eq!(candidates(&URLS, &[false], &t), candidates(&URLS, &[false, true, true], &t));
        }
    }

    #[test]
    fn with_every_scheduler_dead_the_weight_order_remains() {
        for t in tasks().take(50) {
            assert_eq!(candidates(&URLS, &[false; 3], &t), candidates(&URLS, &[true; 3], &t));
        }
    }

    #[test]
    fn tasks_spread_over_the_schedulers() {
        let mut owned = [0usize; 3];
        for t in tasks() {
            owned[owner(&URLS, &[true; 3], &t).unwrap()] += 1;
        }
        // 600 tasks over 3: each ~200 (a binomial's 5 sigma is ~58).
        assert!(owned.iter().all(|&n| (140..=260).contains(&n)), "{owned:?}");
    }

    #[test]
    fn no_scheduler_no_owner() {
        assert_eq!(owner::<&str>(&[], &[], &task(1)), None);
        assert!(candidates::<&str>(&[], &[], &task(1)).is_empty());
    }
}
