//! A private repository in a site cut off from the origin. Three daemons know each other through
//! the DHT; before the cut, alice pulls the private image through d0 and reads its tag through
//! d1, and an anonymous client pulls the public image through d0. With the origin gone:
//! - d1, which saw the origin accept alice for `priv/app` but holds none of its blobs, serves
//!   her the blobs from d0 (sizes from the site, bytes checked against their sha256);
//! - nobody else gets a private byte from d1: anonymous, bob, a wrong password;
//! - d2, which never saw alice accepted, gives her nothing private (a member's word never
//!   grants a credential), while anyone reads the public image the site saw public through it.

use shoal_e2e::AclMode;

use super::*;

fn member(s: &Setup, bootstrap: &[String]) -> (DaemonConfig, String) {
    s.daemon_config().cluster_token(shoal_e2e::CLUSTER_TOKEN).dht(bootstrap)
}

/// GETs of every blob of `image` under `repo` by `who`, each wanting `want(bytes)`.
fn blobs(what: &str, who: Who, image: &Image, repo: &str, want: impl Fn(Vec<u8>) -> Want) -> Result<Vec<Probe>> {
    image
        .blobs()
        .iter()
        .map(|b| {
            let path = format!("{repo}/blobs/{}", b.digest);
            Ok(Probe::new(what, who, Method::GET, path, want(Setup::bytes(image, b)?)))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_repository_in_a_cut_off_site_goes_only_to_credentials_the_node_saw_accepted() -> Result<()> {
    require_tools();
    let s = Setup::start().await?;
    let (c0, dht0) = member(&s, &[]);
    let d0 = Daemon::start(c0.host_id("d0")).await?;
    let d1 = Daemon::start(member(&s, std::slice::from_ref(&dht0)).0.host_id("d1")).await?;
    let d2 = Daemon::start(member(&s, std::slice::from_ref(&dht0)).0.host_id("d2")).await?;
    let daemons = [&d0, &d1, &d2];
    let result = async {
        run_all("up, d0: pulls", &s.pulls()?, &d0.mirror_url()).await?;
        let tag = "priv/app/manifests/v1".to_owned();
        let alice_tag = Probe::new(
            "alice: priv tag",
            Who::Alice,
            Method::GET,
            tag.clone(),
            Want::Bytes(s.private.manifest.clone()),
        );
        run_all("up, d1: alice reads the tag", std::slice::from_ref(&alice_tag), &d1.mirror_url()).await?;
        let every = Duration::from_millis(200);
        let joined = wait_until(Duration::from_secs(20), every, async || {
            let mut all = true;
            for d in daemons {
                all &= d.metric("shoal_dht_members", "").await.ok().flatten().is_some_and(|n| n >= 2.0);
            }
            all
        })
        .await;
        ensure!(joined, "the three members did not all know each other within 20 s");
        s.front.set_mode(AclMode::Gone).await?;

        let (p, q) = (&s.private, &s.public);
        let mut on_d1 = vec![alice_tag];
        on_d1.extend(blobs("alice: priv blob from d0", Who::Alice, p, "priv/app", Want::Bytes)?);
        for who in [Who::Anonymous, Who::Bob, Who::WrongPassword] {
            let n = format!("{who:?}").to_lowercase();
            on_d1.push(Probe::new(&format!("{n}: priv tag"), who, Method::GET, tag.clone(), Want::Nothing));
            on_d1.extend(blobs(&format!("{n}: priv blob"), who, p, "priv/app", |_| Want::Nothing)?);
        }
        on_d1.extend(blobs("anonymous: pub blob from d0", Who::Anonymous, q, "pub/other", Want::Bytes)?);
        run_all("cut off, d1", &on_d1, &d1.mirror_url()).await?;

        let mut on_d2 = vec![Probe::new("alice: priv tag", Who::Alice, Method::GET, tag.clone(), Want::Nothing)];
        on_d2.extend(blobs("alice: priv blob", Who::Alice, p, "priv/app", |_| Want::Nothing)?);
        on_d2.push(Probe::new(
            "anonymous: pub tag",
            Who::Anonymous,
            Method::GET,
            "pub/other/manifests/v1".into(),
            Want::Bytes(q.manifest.clone()),
        ));
        on_d2.extend(blobs("anonymous: pub blob from a member", Who::Anonymous, q, "pub/other", Want::Bytes)?);
        run_all("cut off, d2", &on_d2, &d2.mirror_url()).await
    }
    .await;
    let result = with_log(result, "d1", &d1);
    with_log(result, "d2", &d2)
}
