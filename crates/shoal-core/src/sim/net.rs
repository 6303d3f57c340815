//! The simulator's network: links of a fixed rate shared by the transfers crossing them.
//!
//! Every peer has an uplink and a downlink of the same rate. A transfer from a parent crosses
//! the parent's uplink and the child's downlink; a transfer from the origin crosses only the
//! child's downlink (the origin serves each fetching peer at the full link rate: a registry
//! behind a CDN is not the bottleneck of one peer, and with one origin copy per site there is
//! one such transfer per site). Rates are max-min fair (progressive filling): what TCP or QUIC
//! congestion control converges to on a shared bottleneck, recomputed at every step. It knows
//! nothing of pieces' meaning, children or the scheduler.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Where a transfer's bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// Another peer (its index): its uplink is shared.
    Peer(usize),
    /// The origin registry: only the receiver's downlink counts.
    Origin,
}

/// One transfer in progress.
#[derive(Debug, Clone)]
pub(super) struct Flow {
    /// The receiving peer.
    pub to: usize,
    pub from: Source,
    /// What the transfer is for, opaque here (the request id, or the origin piece).
    pub tag: u64,
    pub piece: u32,
    pub size: u64,
    /// Bytes received so far.
    pub done: f64,
    /// Bytes per second, as of the last allocation.
    pub rate: f64,
}

impl Flow {
    /// Bytes received, rounded down.
    pub fn bytes(&self) -> u64 {
        self.done as u64
    }
}

/// The transfers of a run, in slots (a finished or cancelled transfer frees its slot).
#[derive(Debug)]
pub(super) struct Net {
    peers: usize,
    /// Bytes per second of every link.
    rate: f64,
    flows: Vec<Option<Flow>>,
    free: Vec<usize>,
    // Scratch space for `allocate`, kept between steps.
    rem: Vec<f64>,
    count: Vec<u32>,
    version: Vec<u32>,
    start: Vec<usize>,
    members: Vec<usize>,
    frozen: Vec<bool>,
}

impl Net {
    pub fn new(peers: usize, rate: u64) -> Self {
        let links = 2 * peers;
        Self {
            peers,
            rate: rate as f64,
            flows: Vec::new(),
            free: Vec::new(),
            rem: vec![0.0; links],
            count: vec![0; links],
            version: vec![0; links],
            start: vec![0; links + 1],
            members: Vec::new(),
            frozen: Vec::new(),
        }
    }

    /// Starts a transfer; returns its slot.
    pub fn start(&mut self, to: usize, from: Source, tag: u64, piece: u32, size: u64) -> usize {
        let flow = Some(Flow { to, from, tag, piece, size, done: 0.0, rate: 0.0 });
        match self.free.pop() {
            Some(slot) => {
                self.flows[slot] = flow;
                slot
            }
            None => {
                self.flows.push(flow);
                self.flows.len() - 1
            }
        }
    }

    /// Ends a transfer (finished or cancelled).
    pub fn remove(&mut self, slot: usize) -> Option<Flow> {
        let flow = self.flows.get_mut(slot)?.take();
        if flow.is_some() {
            self.free.push(slot);
        }
        flow
    }

    pub fn get(&self, slot: usize) -> Option<&Flow> {
        self.flows.get(slot)?.as_ref()
    }

    /// Transfers in progress.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.flows.len() - self.free.len()
    }

    /// Every transfer in progress, with its slot.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &Flow)> {
        self.flows.iter().enumerate().filter_map(|(i, f)| f.as_ref().map(|f| (i, f)))
    }

    /// Moves every transfer on by `ms` at its current rate; returns the slots that finished,
    /// each with the time left in the step after it did (seconds).
    pub fn advance(&mut self, ms: u64) -> Vec<(usize, f64)> {
        let secs = ms as f64 / 1000.0;
        let mut finished = Vec::new();
        for (slot, flow) in self.flows.iter_mut().enumerate() {
            if let Some(f) = flow {
                let left = f.size as f64 - f.done;
                if f.rate * secs + 0.5 >= left {
                    f.done = f.size as f64;
                    let spare = if f.rate > 0.0 { (secs - left / f.rate).max(0.0) } else { 0.0 };
                    finished.push((slot, spare));
                } else {
                    f.done += f.rate * secs;
                }
            }
        }
        finished
    }

    /// Moves a transfer just started on by `secs` at `rate` (the rest of a step, at the rate of
    /// the transfer it follows on the same link); true if that finished it.
    pub fn credit(&mut self, slot: usize, rate: f64, secs: f64) -> bool {
        let Some(f) = self.flows.get_mut(slot).and_then(Option::as_mut) else { return false };
        f.rate = rate;
        f.done = (f.done + rate * secs).min(f.size as f64);
        f.done + 0.5 >= f.size as f64
    }

    fn links(&self, f: &Flow) -> (usize, Option<usize>) {
        let down = self.peers + f.to;
        match f.from {
            Source::Peer(p) => (down, Some(p)),
            Source::Origin => (down, None),
        }
    }

    /// Max-min fair rates by progressive filling: the link whose remaining capacity per
    /// unfrozen transfer is smallest saturates first, freezing its transfers at that share.
    pub fn allocate(&mut self) {
        let links = 2 * self.peers;
        self.rem.iter_mut().for_each(|r| *r = self.rate);
        self.count.iter_mut().for_each(|c| *c = 0);
        // Transfers by link, compressed rows.
        for f in self.flows.iter().flatten() {
            let (a, b) = self.links(f);
            self.count[a] += 1;
            if let Some(b) = b {
                self.count[b] += 1;
            }
        }
        self.start[0] = 0;
        for l in 0..links {
            self.start[l + 1] = self.start[l] + self.count[l] as usize;
        }
        self.members.resize(self.start[links], 0);
        let mut fill = self.start.clone();
        for (slot, f) in self.flows.iter().enumerate() {
            if let Some(f) = f {
                let (a, b) = self.links(f);
                self.members[fill[a]] = slot;
                fill[a] += 1;
                if let Some(b) = b {
                    self.members[fill[b]] = slot;
                    fill[b] += 1;
                }
            }
        }
        self.frozen.clear();
        self.frozen.resize(self.flows.len(), false);
        let mut heap = BinaryHeap::new();
        for l in 0..links {
            self.version[l] = 0;
            if self.count[l] > 0 {
                heap.push(Reverse((share_key(self.rem[l] / f64::from(self.count[l])), l, 0u32)));
            }
        }
        while let Some(Reverse((_, l, version))) = heap.pop() {
            if self.count[l] == 0 || version != self.version[l] {
                continue;
            }
            let share = (self.rem[l] / f64::from(self.count[l])).max(0.0);
            for k in self.start[l]..self.start[l + 1] {
                let slot = self.members[k];
                if self.frozen[slot] {
                    continue;
                }
                self.frozen[slot] = true;
                let Some(f) = self.flows[slot].as_mut() else { continue };
                f.rate = share;
                let (a, b) = (self.peers + f.to, if let Source::Peer(p) = f.from { Some(p) } else { None });
                let other = if a == l { b } else { Some(a) };
                if let Some(m) = other {
                    self.rem[m] -= share;
                    self.count[m] -= 1;
                    self.version[m] += 1;
                    if self.count[m] > 0 {
                        let key = share_key((self.rem[m] / f64::from(self.count[m])).max(0.0));
                        heap.push(Reverse((key, m, self.version[m])));
                    }
                }
            }
            self.count[l] = 0;
        }
    }
}

/// A non-negative share as an ordered integer (the bits of a positive f64 sort like it).
fn share_key(share: f64) -> u64 {
    share.max(0.0).to_bits()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates(net: &Net) -> Vec<f64> {
        net.iter().map(|(_, f)| f.rate).collect()
    }

    #[test]
    fn an_uplink_is_shared_and_spare_downlink_goes_unused() {
        // Peer 0 serves peers 1 and 2; peer 1 also gets a piece from the origin.
        let mut net = Net::new(3, 100);
        net.start(1, Source::Peer(0), 0, 0, 1000);
        net.start(2, Source::Peer(0), 1, 0, 1000);
        net.start(1, Source::Origin, 2, 1, 1000);
        net.allocate();
        assert_eq!(rates(&net), vec![50.0, 50.0, 50.0]);
    }

    #[test]
    fn a_flow_bottlenecked_elsewhere_leaves_its_share_to_others() {
        // Peer 0 serves 1, 2 and 3; peer 3 also downloads from 1, 2 and 4, so its downlink is
        // the bottleneck of its four transfers (90/4 each) and 1 and 2 share the rest of 0's
        // uplink (67.5/2), more than a third of it.
        let mut net = Net::new(5, 90);
        net.start(1, Source::Peer(0), 0, 0, 1000);
        net.start(2, Source::Peer(0), 1, 0, 1000);
        for (tag, from) in [(2, 0), (3, 1), (4, 2), (5, 4)] {
            net.start(3, Source::Peer(from), tag, 0, 1000);
        }
        net.allocate();
        assert_eq!(rates(&net), vec![33.75, 33.75, 22.5, 22.5, 22.5, 22.5]);
        // Peer 3 leaves: 0's uplink is split between two.
        for slot in 2..6 {
            net.remove(slot);
        }
        net.allocate();
        assert_eq!(rates(&net), vec![45.0, 45.0]);
        assert!(net.advance(1000).is_empty());
        assert_eq!(net.get(0).map(Flow::bytes), Some(45));
        // 955 bytes left at 45 per second: done 21.2 s later, 0.78 s before the end of a 22 s step.
        let finished = net.advance(22_000);
        assert_eq!(finished.len(), 2);
        assert!((finished[0].1 - (22.0 - 955.0 / 45.0)).abs() < 1e-9, "{finished:?}");
    }

    #[test]
    fn transfers_finish_at_size_over_rate() {
        let mut net = Net::new(2, 1000);
        let slot = net.start(1, Source::Peer(0), 7, 3, 500);
        net.allocate();
        assert!(net.advance(499).is_empty());
        assert_eq!(net.advance(1), vec![(slot, 0.0)]);
        assert_eq!(net.remove(slot).map(|f| (f.tag, f.piece)), Some((7, 3)));
        assert_eq!(net.len(), 0);
    }
}
