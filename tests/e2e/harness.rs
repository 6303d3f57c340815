//! Self-test of the harness, without Shoal: push a synthetic image to the real registry, pull it
//! with skopeo, podman and containerd straight from the registry, and count blob GETs in the
//! registry's access log.

use std::time::Duration;

use shoal_e2e::{missing_tool, Containerd, Image, Podman, Registry, Skopeo};

fn require_tools() {
    if let Some(tool) = missing_tool() {
        panic!("`{tool}` is not installed; ./scripts/test.sh installs the e2e dependencies");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_pull_straight_from_the_registry() -> anyhow::Result<()> {
    require_tools();
    let registry = Registry::start().await?;
    let image = Image::build(1, &[6 << 20, 3 << 20, 1 << 20])?;
    image.push(&registry, "e2e/direct", "v1").await?;
    let reference = format!("{}/e2e/direct:v1", registry.host());
    // Pushing does not GET blobs.
    for blob in image.blobs() {
        assert_eq!(registry.blob_get_count(&blob.digest), 0, "{}", registry.blob_summary());
    }

    let mut skopeo = Skopeo::new(&registry.host(), None)?;
    let out = skopeo.pull(&reference, None).await?;
    Skopeo::verify_dir(&out, &image)?;

    let podman = Podman::new(&registry.host(), None)?;
    podman.pull(&reference, None).await?;
    podman.verify(&reference, &image).await?;

    let containerd = Containerd::start().await?;
    let hosts = containerd.hosts_dir(&registry.host(), None)?;
    containerd.pull(&reference, &hosts, None).await?;
    containerd.verify(&reference, &image).await?;

    for layer in &image.layers {
        assert_eq!(registry.blob_get_count(&layer.digest), 3, "{}", registry.blob_summary());
        assert_eq!(registry.blob_bytes_served(&layer.digest), 3 * layer.size);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_auth_and_restart() -> anyhow::Result<()> {
    require_tools();
    let mut registry = Registry::start_with_auth("alice", "s3cret").await?;
    let image = Image::build(2, &[1 << 20])?;
    image.push(&registry, "private/app", "v1").await?;
    let http = reqwest::Client::new();
    let manifest_url = format!("{}/v2/private/app/manifests/v1", registry.url());
    let accept = "application/vnd.oci.image.manifest.v1+json";

    let anonymous = http.get(&manifest_url).header("Accept", accept).send().await?;
    assert_eq!(anonymous.status(), 401);
    let challenge = anonymous.headers().get("www-authenticate").expect("challenge");
    assert!(challenge.to_str()?.starts_with("Basic realm="), "{challenge:?}");

    let wrong = http.get(&manifest_url).basic_auth("alice", Some("nope")).send().await?;
    assert_eq!(wrong.status(), 401);
    let ok = http.get(&manifest_url).basic_auth("alice", Some("s3cret")).header("Accept", accept).send().await?;
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.bytes().await?.as_ref(), image.manifest.as_slice());

    // Origin down: connections are refused; origin back: same content.
    registry.stop();
    let down = http.get(&manifest_url).timeout(Duration::from_secs(5)).send().await;
    assert!(down.is_err(), "registry still answers after stop");
    registry.restart().await?;
    let mut skopeo = Skopeo::new(&registry.host(), None)?;
    let creds = registry.creds_arg();
    let out = skopeo.pull(&format!("{}/private/app:v1", registry.host()), creds.as_deref()).await?;
    Skopeo::verify_dir(&out, &image)?;
    assert_eq!(registry.blob_get_count(&image.layers[0].digest), 1, "{}", registry.blob_summary());
    Ok(())
}
