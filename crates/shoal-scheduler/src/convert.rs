//! Conversions between protobuf messages and shoal-core's scheduler types. Invalid input from
//! the network becomes a `tonic::Status`, never a panic.

use shoal_core::sched::{Candidate, Decision, FailReason, TaskStats};
use shoal_core::{Bitmap, Digest, PieceDigest, PieceLayout};
use shoal_proto::scheduler as pb;
use tonic::Status;

/// The task id (a blob digest).
pub fn task_id(s: &str) -> Result<Digest, Status> {
    s.parse().map_err(|e| Status::invalid_argument(format!("task_id: {e}")))
}

/// A layout from size and piece size, checked against the standard layout for that size.
pub fn layout(size: u64, piece_size: u64) -> Result<PieceLayout, Status> {
    let layout = PieceLayout::for_size(size);
    if layout.piece_size != piece_size {
        return Err(Status::invalid_argument(format!(
            "piece_size {piece_size} is not the layout of a {size}-byte blob"
        )));
    }
    Ok(layout)
}

/// A bitmap of `len` pieces.
pub fn bitmap(len: u32, bytes: &[u8]) -> Result<Bitmap, Status> {
    Bitmap::from_bytes(len, bytes).map_err(|e| Status::invalid_argument(format!("have: {e}")))
}

/// A 32-byte BLAKE3 piece digest.
pub fn piece_digest(bytes: &[u8]) -> Result<PieceDigest, Status> {
    PieceDigest::from_slice(bytes).ok_or_else(|| Status::invalid_argument("piece digest must be 32 bytes"))
}

/// A failure reason.
pub fn fail_reason(v: i32) -> FailReason {
    match pb::FailReason::try_from(v) {
        Ok(pb::FailReason::DigestMismatch) => FailReason::DigestMismatch,
        Ok(pb::FailReason::Timeout) => FailReason::Timeout,
        Ok(pb::FailReason::Refused) => FailReason::Refused,
        _ => FailReason::Io,
    }
}

/// A decision as a scheduler event.
pub fn decision(d: &Decision) -> pb::SchedulerEvent {
    let event = match d {
        Decision::BackToSource => pb::scheduler_event::Event::BackToSource(pb::BackToSource {
            reason: "no parent can serve this peer yet".into(),
        }),
        Decision::Parents(ps) => {
            pb::scheduler_event::Event::Parents(pb::Parents { parents: ps.iter().map(parent).collect() })
        }
    };
    pb::SchedulerEvent { event: Some(event) }
}

fn parent(c: &Candidate) -> pb::Parent {
    pb::Parent { host_id: c.host.0.clone(), peer_addr: c.addr.clone(), have: c.have.as_bytes().to_vec() }
}

/// Known piece digests of the table generation `epoch`, as a scheduler event.
pub fn digests(epoch: u32, ds: &[(u32, PieceDigest)]) -> pb::SchedulerEvent {
    let digests = ds.iter().map(|(i, d)| pb::PieceDigest { index: *i, blake3: d.as_bytes().to_vec() }).collect();
    pb::SchedulerEvent { event: Some(pb::scheduler_event::Event::PieceDigests(pb::PieceDigests { digests, epoch })) }
}

/// Task statistics.
pub fn stats(s: &TaskStats) -> pb::TaskStats {
    pb::TaskStats {
        task_id: s.task.to_string(),
        size: s.size,
        pieces: s.pieces,
        peers: s.peers,
        done_peers: s.done_peers,
        back_to_source_peers: s.back_to_source_peers,
        known_digests: s.digests_known,
    }
}
