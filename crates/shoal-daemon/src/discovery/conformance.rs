//! The suite every [`Discovery`] passes: run against the in-memory version here and against
//! three real DHT nodes in `dht::tests`.

use std::sync::Arc;
use std::time::Duration;

use shoal_core::Digest;

use super::memory::MemoryNetwork;
use super::{Discovery, Holder};

/// Polls `check` until it holds, for at most 10 s; panics with `what` otherwise.
pub(crate) async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    // Generous: the whole workspace's tests share the machine's cores (seen: a 3-node DHT took
    // over 10 s to join under a full test run, 1.4 s alone).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn holders(node: &dyn Discovery, blob: &Digest) -> Vec<Holder> {
    let mut found = node.holders(blob).await.unwrap();
    found.sort();
    found
}

/// `nodes[i]` is the member `members[i]`; they have joined one cluster (not necessarily
/// converged yet).
pub(crate) async fn suite(nodes: &[Arc<dyn Discovery>], members: &[Holder]) {
    assert_eq!(nodes.len(), 3, "the suite takes three members");
    let mut sorted = members.to_vec();
    sorted.sort();
    for node in nodes {
        eventually("every member knows every other", async || node.ready() && node.members() == sorted).await;
    }
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let blob = Digest::of(b"a layer");
    assert!(holders(c.as_ref(), &blob).await.is_empty(), "nobody holds it yet");

    a.advertise(&blob).await.unwrap();
    assert_eq!(holders(b.as_ref(), &blob).await, vec![members[0].clone()]);
    assert_eq!(holders(c.as_ref(), &blob).await, vec![members[0].clone()]);
    assert!(holders(a.as_ref(), &blob).await.is_empty(), "a node never finds itself");

    b.advertise(&blob).await.unwrap();
    b.advertise(&blob).await.unwrap();
    let mut both = vec![members[0].clone(), members[1].clone()];
    both.sort();
    assert_eq!(holders(c.as_ref(), &blob).await, both, "advertising twice is one holder");

    a.withdraw(&blob).await.unwrap();
    assert_eq!(holders(c.as_ref(), &blob).await, vec![members[1].clone()], "withdrawn");
    a.withdraw(&blob).await.unwrap();
    assert!(holders(c.as_ref(), &Digest::of(b"another")).await.is_empty(), "blobs are apart");
}

fn member(i: u16) -> Holder {
    Holder { host_id: format!("node-{i}"), addr: ([127, 0, 0, 1], 20_000 + i).into() }
}

#[tokio::test]
async fn the_memory_discovery_conforms() {
    let network = MemoryNetwork::default();
    let members: Vec<Holder> = (0..3).map(member).collect();
    let nodes: Vec<Arc<dyn Discovery>> =
        members.iter().map(|m| Arc::new(network.join(m.clone())) as Arc<dyn Discovery>).collect();
    suite(&nodes, &members).await;
    network.leave("node-1");
    assert_eq!(nodes[0].members().len(), 2);
}
