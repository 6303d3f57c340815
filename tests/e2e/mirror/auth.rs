//! Origins that require authentication.

use super::*;

/// e. An origin with htpasswd auth: 401 and its challenge pass through; client credentials are
/// forwarded; a cached private blob is not served to an anonymous client; a daemon configured with
/// credentials serves clients that send none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_auth_is_passed_through_or_configured() -> Result<()> {
    require_tools();
    let registry = Registry::start_with_auth("alice", "s3cret").await?;
    let image = Image::build(50, &[4 * MB, MB])?;
    image.push(&registry, "private/app", "v1").await?;
    let daemon = Daemon::start(DaemonConfig::for_registry(&registry)).await?;
    let client = http();
    let mirror = daemon.mirror_url();
    let blob = &image.layers[0];
    let blob_url = format!("{mirror}/v2/private/app/blobs/{}", blob.digest);

    let anonymous = manifest_request(&client, Method::GET, &mirror, "private/app", "v1").send().await?;
    let challenge = anonymous.headers().get("www-authenticate").map(|v| v.to_str().unwrap_or("").to_owned());
    expect_oci_error(anonymous, 401).await?;
    let challenge = challenge.context("401 without WWW-Authenticate")?;
    ensure!(challenge.starts_with("Basic") && challenge.contains("shoal-e2e"), "challenge {challenge:?}");

    let wrong = manifest_request(&client, Method::GET, &mirror, "private/app", "v1").basic_auth("alice", Some("wrong"));
    expect_oci_error(wrong.send().await?, 401).await?;

    let authed =
        manifest_request(&client, Method::GET, &mirror, "private/app", "v1").basic_auth("alice", Some("s3cret"));
    let authed = authed.send().await?;
    ensure!(authed.status() == StatusCode::OK, "GET with credentials: {}", authed.status());
    ensure!(authed.bytes().await?.as_ref() == image.manifest.as_slice(), "wrong manifest");
    let response = client.get(&blob_url).basic_auth("alice", Some("s3cret")).send().await?;
    ensure!(response.status() == StatusCode::OK, "blob with credentials: {}", response.status());
    ensure!(sha256_body(response).await? == (blob.digest.clone(), blob.size), "wrong blob bytes");

    // The blob is cached now, but a client without credentials still may not read it.
    expect_oci_error(client.get(&blob_url).send().await?, 401).await?;

    let toml = format!(
        "[[registry]]\nname = \"{}\"\nurl = \"{}\"\nusername = \"alice\"\npassword = \"s3cret\"\n",
        registry.host(),
        registry.url()
    );
    let configured = Daemon::start(DaemonConfig::default().config_toml(&toml)).await?;
    let response = manifest_request(&client, Method::GET, &configured.mirror_url(), "private/app", "v1").send().await?;
    ensure!(response.status() == StatusCode::OK, "configured daemon, manifest: {}", response.status());
    let url = format!("{}/v2/private/app/blobs/{}", configured.mirror_url(), blob.digest);
    let got = with_log(get_blob(&client, &url).await, "configured daemon, blob", &configured)?;
    ensure!(got == (blob.digest.clone(), blob.size), "configured daemon served {got:?}");
    let mut skopeo = Skopeo::new(&registry.host(), Some(&configured.mirror_host()))?;
    let out = with_log(skopeo.pull(&format!("{}/private/app:v1", registry.host()), None).await, "skopeo", &configured)?;
    Skopeo::verify_dir(&out, &image)?;
    ensure!(registry.client_blob_gets().is_empty(), "skopeo bypassed the mirror:\n{}", registry.blob_summary());
    Ok(())
}

/// e'. skopeo logged in to the mirror's host pulls a private image through a daemon that has no
/// credentials of its own (containers/image never sends `--src-creds` to a mirror).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_logged_in_to_the_mirror_pulls_a_private_image() -> Result<()> {
    require_tools();
    let registry = Registry::start_with_auth("alice", "s3cret").await?;
    let image = Image::build(55, &[2 * MB])?;
    image.push(&registry, "private/tool", "v1").await?;
    let daemon = Daemon::start(DaemonConfig::for_registry(&registry)).await?;
    let mut skopeo = Skopeo::new(&registry.host(), Some(&daemon.mirror_host()))?;
    skopeo.login(&daemon.mirror_host(), "alice", "s3cret")?;
    let reference = format!("{}/private/tool:v1", registry.host());
    let out = with_log(skopeo.pull(&reference, None).await, "skopeo", &daemon)?;
    Skopeo::verify_dir(&out, &image)?;
    let bypassed = registry.client_blob_gets();
    ensure!(bypassed.is_empty(), "skopeo fell back to the origin:\n{}", registry.blob_summary());
    for blob in image.blobs() {
        registry.expect_served_once(&blob).await?;
    }
    Ok(())
}
