//! Real DHT nodes on loopback (ephemeral ports): the conformance suite, membership by token,
//! the first member alone, and a dead holder.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_core::Digest;

use super::{Dht, DhtConfig};
use crate::discovery::conformance::{eventually, suite};
use crate::discovery::{Discovery, Holder};

const TOKEN: &[u8] = b"cluster-token-0123456789";

fn member(i: u16) -> Holder {
    Holder { host_id: format!("dht-{i}"), addr: ([127, 0, 0, 1], 30_000 + i).into() }
}

/// A node of the cluster of `token`, joining through `bootstrap`.
async fn node(i: u16, token: &[u8], bootstrap: &[SocketAddr]) -> Dht {
    let names: Vec<String> = bootstrap.iter().map(SocketAddr::to_string).collect();
    node_at(i, token, "127.0.0.1:0".parse().unwrap(), &names).await
}

/// A node listening on `listen`, joining through bootstrap names.
async fn node_at(i: u16, token: &[u8], listen: SocketAddr, bootstrap: &[String]) -> Dht {
    let mut config = config_at(i, token, listen, bootstrap);
    config.rebootstrap = Duration::from_millis(300);
    Dht::start(config).await.unwrap()
}

/// The default configuration of node `i`.
fn config_at(i: u16, token: &[u8], listen: SocketAddr, bootstrap: &[String]) -> DhtConfig {
    DhtConfig::new(
        listen,
        [127, 0, 0, 1].into(),
        bootstrap.iter().map(|a| a.parse().unwrap()).collect(),
        token.to_vec(),
        member(i),
    )
}

/// Three members, the second and third bootstrapped from the first.
async fn cluster() -> Vec<Arc<Dht>> {
    let first = node(0, TOKEN, &[]).await;
    let seed = [first.local_addr()];
    vec![Arc::new(first), Arc::new(node(1, TOKEN, &seed).await), Arc::new(node(2, TOKEN, &seed).await)]
}

#[tokio::test]
async fn three_dht_nodes_conform() {
    let nodes: Vec<Arc<dyn Discovery>> = cluster().await.into_iter().map(|n| n as Arc<dyn Discovery>).collect();
    suite(&nodes, &[member(0), member(1), member(2)]).await;
}

#[tokio::test]
async fn a_node_without_the_token_neither_joins_nor_reads() {
    let nodes = cluster().await;
    let blob = Digest::of(b"private layer");
    nodes[0].advertise(&blob).await.unwrap();
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.local_addr()).collect();
    let stranger = node(9, b"another-token-0123456789", &addrs).await;
    let joiner = node(3, TOKEN, &addrs[..1]).await;
    eventually("the member joins", async || joiner.holders(&blob).await.unwrap().len() == 1).await;

    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!stranger.ready(), "the stranger completed no handshake");
    assert_eq!(stranger.members().len(), 1, "it knows only itself");
    assert!(stranger.holders(&blob).await.unwrap().is_empty(), "and reads no record");
    for n in &nodes {
        assert!(n.members().iter().all(|m| m.host_id != "dht-9"), "no member knows it");
    }
}

#[tokio::test]
async fn the_first_member_starts_alone_and_answers_at_once() {
    // Port 1 on loopback refuses: an unreachable bootstrap list.
    let alone = node(0, TOKEN, &["127.0.0.1:1".parse().unwrap()]).await;
    let blob = Digest::of(b"x");
    let started = Instant::now();
    alone.advertise(&blob).await.unwrap();
    assert!(alone.holders(&blob).await.unwrap().is_empty());
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    assert!(!alone.ready());
    assert_eq!(alone.members(), vec![member(0)]);

    // A member that joins later finds what it advertised while alone.
    let later = node(1, TOKEN, &[alone.local_addr()]).await;
    eventually("the later member finds the first", async || later.holders(&blob).await.unwrap() == vec![member(0)])
        .await;
}

#[tokio::test]
async fn a_dead_holder_is_not_offered() {
    let mut nodes = cluster().await;
    let blob = Digest::of(b"layer");
    eventually("all joined", async || nodes.iter().all(|n| n.members().len() == 3)).await;
    nodes[0].advertise(&blob).await.unwrap();
    nodes[1].advertise(&blob).await.unwrap();
    assert_eq!(nodes[2].holders(&blob).await.unwrap().len(), 2);
    drop(nodes.remove(0));
    let started = Instant::now();
    eventually("the dead holder is gone", async || nodes[1].holders(&blob).await.unwrap() == vec![member(1)]).await;
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    // Its connections closing kept it a member; the dials that fail since drop it.
    eventually("the dead member is forgotten", async || nodes.iter().all(|n| n.members().len() == 2)).await;
}

#[tokio::test]
async fn bootstrap_names_are_resolved_again_until_a_member_answers() {
    // A port nobody listens on yet: the joiner starts first and keeps trying the name.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let joiner = node_at(1, TOKEN, "127.0.0.1:0".parse().unwrap(), &[format!("localhost:{port}")]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!joiner.ready());
    let first = node_at(0, TOKEN, SocketAddr::from(([127, 0, 0, 1], port)), &[]).await;
    eventually("the joiner reaches the member behind the name", async || joiner.ready() && first.ready()).await;
    assert_eq!(joiner.members(), vec![member(0), member(1)]);
}

#[tokio::test]
async fn a_member_that_dialed_too_early_joins_within_seconds_not_a_rebootstrap() {
    // Daemons start in any order: this one dials its bootstrap before that listens, and its
    // next regular re-bootstrap is a minute away.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut config = config_at(1, TOKEN, "127.0.0.1:0".parse().unwrap(), &[format!("127.0.0.1:{port}")]);
    config.rebootstrap = Duration::from_secs(60);
    let joiner = Dht::start(config).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!joiner.ready());
    let mut config = config_at(0, TOKEN, SocketAddr::from(([127, 0, 0, 1], port)), &[]);
    config.rebootstrap = Duration::from_secs(60);
    let first = Dht::start(config).await.unwrap();
    let started = Instant::now();
    eventually("the early member joins", async || joiner.ready() && first.ready()).await;
    assert!(started.elapsed() < Duration::from_secs(5), "joined after {:?}", started.elapsed());
}

#[tokio::test]
async fn an_idle_connection_closing_keeps_its_member() {
    // A site cut off after a quiet spell asks the members it knew: closing an idle
    // connection must not forget them.
    let mut config = config_at(0, TOKEN, "127.0.0.1:0".parse().unwrap(), &[]);
    config.idle = Duration::from_millis(200);
    let first = Dht::start(config).await.unwrap();
    let mut config = config_at(1, TOKEN, "127.0.0.1:0".parse().unwrap(), &[first.local_addr().to_string()]);
    (config.idle, config.rebootstrap) = (Duration::from_millis(200), Duration::from_secs(60));
    let joiner = Dht::start(config).await.unwrap();
    eventually("joined", async || joiner.ready() && first.ready()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(joiner.members(), vec![member(0), member(1)]);
    assert_eq!(first.members(), vec![member(0), member(1)]);
}
