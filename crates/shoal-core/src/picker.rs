//! Piece picker: which missing pieces a child requests next, and from which parent.
//!
//! A pure function of the child's state (pieces held, pieces in flight, where the client is
//! reading) and its parents' state (their bitmaps and how many requests each is serving for
//! us). The next few pieces the client waits for go first, in order, so a streaming pull never
//! stalls on a rare piece; every other piece goes rarest first, so the swarm keeps every piece
//! alive; requests are spread over parents, least busy first, with a cap per parent. It must not
//! do I/O, keep state between calls, read a clock or talk to the scheduler: the daemon's task
//! loop calls [`pick`] whenever a request completes or a parent announces new pieces.

use crate::Bitmap;

/// Tuning of the picker. `Default` gives the values below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PickerConfig {
    /// How many missing pieces from the read position are requested first, in order, before
    /// rarest first applies. Default 4. Larger: smoother streaming to the client, less rarest
    /// first (more duplicate copies of common pieces in the swarm).
    pub urgent_window: u32,
    /// Requests in flight to one parent at most (those already running count). Default 4.
    /// Larger: more throughput from a fast parent, more waiting behind a slow one.
    pub max_in_flight_per_parent: u32,
}

impl Default for PickerConfig {
    fn default() -> Self {
        Self { urgent_window: 4, max_in_flight_per_parent: 4 }
    }
}

/// What the child knows about one parent.
#[derive(Debug, Clone, Copy)]
pub struct ParentPieces<'a> {
    /// Pieces the parent holds (from the scheduler's candidate list or the parent's own "have"
    /// updates).
    pub have: &'a Bitmap,
    /// Requests from this child to this parent that have not completed yet.
    pub in_flight: u32,
}

/// The child's state at the moment of picking.
#[derive(Debug, Clone, Copy)]
pub struct PickInput<'a> {
    /// Pieces the child holds, verified. Its length is the blob's piece count.
    pub held: &'a Bitmap,
    /// Pieces requested from some parent or from the origin and not yet arrived.
    pub in_flight: &'a Bitmap,
    /// The child's parents; a [`Pick`] names one by its index in this slice.
    pub parents: &'a [ParentPieces<'a>],
    /// The next piece the client is waiting for (its read position).
    pub read_position: u32,
    /// How many new requests to return at most.
    pub max_requests: usize,
    /// Beyond the urgent window, equally rare pieces are taken in order from this piece on
    /// (wrapping). Give each child its own (e.g. a hash of its host id) so children of one
    /// parent fetch different pieces and can trade them; the read position gives in-order.
    pub tie_offset: u32,
}

/// One request to make: piece `piece` from `parents[parent]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    /// Piece index.
    pub piece: u32,
    /// Index of the parent in [`PickInput::parents`].
    pub parent: usize,
}

/// The requests to make now, most urgent first.
///
/// Guarantees: no piece twice; never a piece held or in flight; never a piece from a parent that
/// does not hold it; no parent above [`PickerConfig::max_in_flight_per_parent`] (counting its
/// current in-flight requests); at most `max_requests` picks; and no more picks possible when
/// fewer are returned. Order: the first `urgent_window` missing pieces from the read position,
/// in order; then the rest by how few parents hold them, ties broken by distance after
/// [`PickInput::tie_offset`] (wrapping). Each piece goes to the least busy parent holding it, then
/// the one holding fewest pieces, then the lowest index.
pub fn pick(config: &PickerConfig, input: &PickInput<'_>) -> Vec<Pick> {
    let cap = config.max_in_flight_per_parent;
    let mut busy: Vec<u32> = input.parents.iter().map(|p| p.in_flight).collect();
    let mut out = Vec::new();
    if input.max_requests == 0 || busy.iter().all(|&b| b >= cap) {
        return out;
    }
    // Among equally busy holders, prefer the one holding fewer pieces: a sibling's upload is
    // otherwise idle, while the seed's is best spent on pieces nobody else has yet.
    let holdings: Vec<u32> = input.parents.iter().map(|p| p.have.count()).collect();
    for piece in order(config, input) {
        let holder = (0..input.parents.len())
            .filter(|&p| busy[p] < cap && input.parents[p].have.get(piece))
            .min_by_key(|&p| (busy[p], holdings[p], p));
        let Some(parent) = holder else { continue };
        busy[parent] += 1;
        out.push(Pick { piece, parent });
        if out.len() >= input.max_requests || busy.iter().all(|&b| b >= cap) {
            break;
        }
    }
    out
}

/// Every wanted piece some parent holds, in the order they should be requested.
fn order(config: &PickerConfig, input: &PickInput<'_>) -> Vec<u32> {
    let n = input.held.len();
    let availability = availability(input);
    let start = input.read_position.min(n);
    // The window runs to the `urgent_window`-th piece the child lacks (in flight or not).
    let (mut window_end, mut lacking) = (start, 0);
    while window_end < n && lacking < config.urgent_window {
        lacking += u32::from(!input.held.get(window_end));
        window_end += 1;
    }
    let mut out: Vec<u32> = (start..window_end).filter(|&i| availability[i as usize] > 0).collect();
    // Sort key: availability, then distance after the tie offset (wrapping), packed in one
    // u64 (this runs on every completed request).
    let tie = if n == 0 { 0 } else { input.tie_offset % n };
    let mut rest: Vec<u64> = Vec::new();
    for (i, &count) in (0..n).zip(&availability) {
        if count > 0 && !(start..window_end).contains(&i) {
            let distance = (u64::from(i) + u64::from(n) - u64::from(tie)) % u64::from(n);
            rest.push(u64::from(count) << 32 | distance);
        }
    }
    rest.sort_unstable();
    let piece = |key: u64| ((key & 0xffff_ffff) + u64::from(tie)) % u64::from(n);
    // The result is below n, a u32.
    let piece = |key: u64| u32::try_from(piece(key)).unwrap_or(u32::MAX);
    out.extend(rest.into_iter().map(piece));
    out
}

/// Per piece, how many parents hold it; 0 for pieces held or in flight (not wanted).
/// Works a byte (8 pieces) at a time: it runs on every completed request.
fn availability(input: &PickInput<'_>) -> Vec<u32> {
    let n = input.held.len() as usize;
    let (held, in_flight) = (input.held.as_bytes(), input.in_flight.as_bytes());
    let wanted: Vec<u8> = (0..n.div_ceil(8))
        .map(|b| {
            let tail = if b == n / 8 { (1u8 << (n % 8)) - 1 } else { 0xff };
            !held[b] & !in_flight.get(b).copied().unwrap_or(0) & tail
        })
        .collect();
    let mut availability = vec![0u32; n];
    for parent in input.parents {
        for (b, (&have, &want)) in parent.have.as_bytes().iter().zip(&wanted).enumerate() {
            let mut bits = have & want;
            while bits != 0 {
                availability[b * 8 + bits.trailing_zeros() as usize] += 1;
                bits &= bits - 1;
            }
        }
    }
    availability
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    fn bitmap(len: u32, set: &[u32]) -> Bitmap {
        let mut b = Bitmap::new(len);
        for &i in set {
            b.set(i);
        }
        b
    }

    fn full(len: u32) -> Bitmap {
        bitmap(len, &(0..len).collect::<Vec<_>>())
    }

    fn run(
        config: PickerConfig,
        held: &Bitmap,
        in_flight: &Bitmap,
        parents: &[(Bitmap, u32)],
        read_position: u32,
        max_requests: usize,
    ) -> Vec<Pick> {
        let views: Vec<ParentPieces<'_>> =
            parents.iter().map(|(have, in_flight)| ParentPieces { have, in_flight: *in_flight }).collect();
        pick(
            &config,
            &PickInput {
                held,
                in_flight,
                parents: &views,
                read_position,
                max_requests,
                tie_offset: read_position.min(held.len()),
            },
        )
    }

    fn pieces(picks: &[Pick]) -> Vec<u32> {
        picks.iter().map(|p| p.piece).collect()
    }

    #[test]
    fn urgent_window_first_then_rarest() {
        let config = PickerConfig { urgent_window: 2, max_in_flight_per_parent: 100 };
        // Pieces 8 and 9 are held by one parent only; everything by the other two.
        let parents = [(full(10), 0), (full(10), 0), (bitmap(10, &[0, 1, 2, 3, 4, 5, 6, 7]), 0)];
        let held = bitmap(10, &[3]);
        let none = Bitmap::new(10);
        let got = run(config, &held, &none, &parents, 3, 10);
        // Window from the read position 3: the next two missing pieces are 4 and 5; then the
        // rare pieces 8, 9; then the rest by distance after the read position: 6, 7, 0, 1, 2.
        assert_eq!(pieces(&got), vec![4, 5, 8, 9, 6, 7, 0, 1, 2]);
    }

    #[test]
    fn spreads_over_parents_and_caps_them() {
        let config = PickerConfig { urgent_window: 0, max_in_flight_per_parent: 2 };
        let parents = [(full(8), 1), (full(8), 0), (full(8), 0)];
        let none = Bitmap::new(8);
        let got = run(config, &none, &none, &parents, 0, 100);
        let per_parent = |p| got.iter().filter(|x| x.parent == p).count();
        assert_eq!((per_parent(0), per_parent(1), per_parent(2)), (1, 2, 2));
        // The least busy parent is served first: parent 1 (0 in flight, lowest index).
        assert_eq!(got[0].parent, 1);
    }

    #[test]
    fn skips_held_in_flight_and_unavailable_pieces() {
        let config = PickerConfig::default();
        let parents = [(bitmap(6, &[0, 1, 2, 3]), 0)];
        let got = run(config, &bitmap(6, &[0]), &bitmap(6, &[1]), &parents, 0, 10);
        assert_eq!(pieces(&got), vec![2, 3]);
        assert!(run(config, &full(6), &Bitmap::new(6), &parents, 0, 10).is_empty());
        assert!(run(config, &Bitmap::new(6), &Bitmap::new(6), &[], 0, 10).is_empty());
    }

    #[test]
    fn read_position_past_the_end_and_zero_requests() {
        let config = PickerConfig::default();
        let parents = [(full(4), 0)];
        let none = Bitmap::new(4);
        assert_eq!(pieces(&run(config, &none, &none, &parents, 99, 2)), vec![0, 1]);
        assert!(run(config, &none, &none, &parents, 0, 0).is_empty());
        let empty = Bitmap::new(0);
        assert!(run(config, &empty, &empty, &[(empty.clone(), 0)], 0, 4).is_empty());
    }

    fn arb_bitmap(len: u32) -> impl Strategy<Value = Bitmap> {
        vec(any::<bool>(), len as usize).prop_map(move |bits| {
            let mut b = Bitmap::new(len);
            for (i, on) in bits.into_iter().enumerate() {
                if on {
                    b.set(i as u32);
                }
            }
            b
        })
    }

    prop_compose! {
        fn arb_case()(len in 0u32..60)(
            held in arb_bitmap(len),
            in_flight in arb_bitmap(len),
            parents in vec((arb_bitmap(len), 0u32..5), 0..6),
            read_position in 0..len + 3,
            max_requests in 0usize..20,
            urgent_window in 0u32..6,
            cap in 0u32..5,
        ) -> (PickerConfig, Bitmap, Bitmap, Vec<(Bitmap, u32)>, u32, usize) {
            let config = PickerConfig { urgent_window, max_in_flight_per_parent: cap };
            (config, held, in_flight, parents, read_position, max_requests)
        }
    }

    proptest! {
        #[test]
        fn picks_are_valid_and_maximal(case in arb_case()) {
            let (config, held, in_flight, parents, read_position, max_requests) = case;
            let got = run(config, &held, &in_flight, &parents, read_position, max_requests);
            let cap = config.max_in_flight_per_parent;
            prop_assert!(got.len() <= max_requests);
            let mut seen = std::collections::BTreeSet::new();
            let mut busy: Vec<u32> = parents.iter().map(|p| p.1).collect();
            for p in &got {
                prop_assert!(seen.insert(p.piece), "piece {} twice", p.piece);
                prop_assert!(!held.get(p.piece) && !in_flight.get(p.piece));
                prop_assert!(parents[p.parent].0.get(p.piece));
                prop_assert!(busy[p.parent] < cap, "parent {} over its cap", p.parent);
                busy[p.parent] += 1;
            }
            if got.len() < max_requests {
                // Nothing assignable is left.
                for i in 0..held.len() {
                    if held.get(i) || in_flight.get(i) || seen.contains(&i) {
                        continue;
                    }
                    for (j, (have, _)) in parents.iter().enumerate() {
                        prop_assert!(!(have.get(i) && busy[j] < cap), "piece {i} left on {j}");
                    }
                }
            }
        }

        #[test]
        fn next_piece_for_the_reader_comes_first(case in arb_case()) {
            let (mut config, held, in_flight, parents, read_position, max_requests) = case;
            config.urgent_window = config.urgent_window.max(1);
            let got = run(config, &held, &in_flight, &parents, read_position, max_requests);
            // The first missing piece at/after the read position, if requestable, is picked first.
            let next = (read_position.min(held.len())..held.len()).find(|&i| !held.get(i));
            if let Some(next) = next {
                let requestable = !in_flight.get(next)
                    && parents.iter().any(|(have, b)| have.get(next) && *b < config.max_in_flight_per_parent);
                if requestable && max_requests > 0 {
                    prop_assert_eq!(got.first().map(|p| p.piece), Some(next));
                }
            }
        }

        #[test]
        fn beyond_the_window_rarer_pieces_come_first(
            len in 1u32..60,
            seed in vec(arb_bitmap(60), 1..6),
        ) {
            // Unlimited capacity and no urgent window: availability never decreases along picks.
            let config = PickerConfig { urgent_window: 0, max_in_flight_per_parent: u32::MAX };
            let parents: Vec<(Bitmap, u32)> = seed
                .iter()
                .map(|b| (bitmap(len, &b.missing().filter(|&i| i < len).collect::<Vec<_>>()), 0))
                .collect();
            let none = Bitmap::new(len);
            let got = run(config, &none, &none, &parents, 0, usize::MAX);
            let avail = |i: u32| parents.iter().filter(|(h, _)| h.get(i)).count();
            for w in got.windows(2) {
                prop_assert!(avail(w[0].piece) <= avail(w[1].piece));
            }
        }
    }
}
