//! Registry notifications: the distribution registry's event envelope (`notifications.endpoints`
//! in its config) and what Harbor's P2P preheat provider sends (the same envelope), read into
//! preheat requests. Parsing only: bounded, validated, nothing looked up.
//!
//! A manifest push with a tag is preheated (by the pushed digest when the event has one);
//! blob pushes, pulls, deletes and mounts are ignored.

use serde::Deserialize;
use shoal_core::preheat::{ImageRef, Request};

/// Events one envelope may carry.
pub const MAX_EVENTS: usize = 256;

/// Why an envelope was refused.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// Not JSON, or not the envelope's shape.
    #[error("not a registry notification envelope: {0}")]
    Json(#[from] serde_json::Error),
    /// More than [`MAX_EVENTS`] events.
    #[error("{0} events in one envelope (at most {MAX_EVENTS})")]
    TooMany(usize),
    /// A push event names an invalid repository, tag, digest or registry.
    #[error("event {index}: {message}")]
    Event {
        /// The event's position in the envelope.
        index: usize,
        /// What is wrong.
        message: String,
    },
}

#[derive(Deserialize)]
struct Envelope {
    events: Vec<Event>,
}

#[derive(Deserialize)]
struct Event {
    #[serde(default)]
    action: String,
    #[serde(default)]
    target: Target,
    #[serde(default)]
    request: RequestInfo,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Target {
    #[serde(default)]
    media_type: String,
    #[serde(default)]
    digest: String,
    #[serde(default)]
    repository: String,
    #[serde(default)]
    tag: String,
    #[serde(default)]
    url: String,
}

#[derive(Default, Deserialize)]
struct RequestInfo {
    #[serde(default)]
    host: String,
}

/// What an envelope asks for: a request per pushed manifest, and how many events were ignored.
#[derive(Debug, Default)]
pub struct Pushes {
    /// Preheat requests (every platform, every site), without duplicates.
    pub requests: Vec<Request>,
    /// Events that are not manifest pushes with a tag.
    pub ignored: usize,
}

/// Reads an envelope. `registry`, when set, replaces the registry the events name (the
/// pusher's `Host`, else the host of the target's URL) — for when the daemons know the
/// registry by another name.
pub fn parse(body: &[u8], registry: Option<&str>) -> Result<Pushes, EnvelopeError> {
    let envelope: Envelope = serde_json::from_slice(body)?;
    if envelope.events.len() > MAX_EVENTS {
        return Err(EnvelopeError::TooMany(envelope.events.len()));
    }
    let mut pushes = Pushes::default();
    for (index, e) in envelope.events.iter().enumerate() {
        let t = &e.target;
        let manifest = shoal_core::media::MANIFEST_TYPES.contains(&t.media_type.as_str());
        if e.action != "push" || !manifest || t.tag.is_empty() {
            pushes.ignored += 1;
            continue;
        }
        let bad = |message: String| EnvelopeError::Event { index, message };
        let host = match registry {
            Some(r) => Some(r.to_owned()),
            None if !e.request.host.is_empty() => Some(e.request.host.clone()),
            None => url_host(&t.url),
        };
        let reference = if t.digest.is_empty() { &t.tag } else { &t.digest };
        let image = ImageRef::from_parts(host.as_deref(), &t.repository, reference).map_err(|e| bad(e.to_string()))?;
        let request = Request { image, platforms: Vec::new(), sites: Vec::new() };
        if !pushes.requests.contains(&request) {
            pushes.requests.push(request);
        }
    }
    Ok(pushes)
}

/// `host[:port]` of an `http(s)://host[:port]/…` URL.
fn url_host(url: &str) -> Option<String> {
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"))?;
    let host = rest.split('/').next()?;
    (!host.is_empty() && !host.contains('@')).then(|| host.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b";

    fn envelope(events: &str) -> Vec<u8> {
        format!(r#"{{"events":[{events}]}}"#).into_bytes()
    }

    fn push(media_type: &str, tag: &str) -> String {
        format!(
            r#"{{"id":"1","timestamp":"2024-01-01T00:00:00Z","action":"push","target":{{"mediaType":"{media_type}",
            "size":528,"digest":"{DIGEST}","length":528,"repository":"team/app","url":"http://reg.example:5000/v2/team/app/manifests/{DIGEST}",
            "tag":"{tag}"}},"request":{{"id":"r","addr":"127.0.0.1:1","host":"127.0.0.1:5000","method":"PUT","useragent":"skopeo"}},
            "actor":{{}},"source":{{"addr":"x","instanceID":"y"}}}}"#
        )
    }

    #[test]
    fn a_tagged_manifest_push_is_preheated_by_digest_and_the_rest_ignored() {
        let blob = push("application/octet-stream", "");
        let untagged = push("application/vnd.oci.image.manifest.v1+json", "");
        let tagged = push("application/vnd.oci.image.index.v1+json", "v1");
        let pull = push("application/vnd.oci.image.index.v1+json", "v1").replace("\"push\"", "\"pull\"");
        let body = envelope(&[blob, untagged, tagged.clone(), tagged, pull].join(","));
        let pushes = parse(&body, None).unwrap();
        assert_eq!(pushes.ignored, 3);
        assert_eq!(pushes.requests.len(), 1, "duplicates folded");
        assert_eq!(pushes.requests[0].image.to_string(), format!("127.0.0.1:5000/team/app@{DIGEST}"));
        let named = parse(&body, Some("local")).unwrap();
        assert_eq!(named.requests[0].image.registry.as_deref(), Some("local"));
    }

    #[test]
    fn harbors_event_without_request_takes_the_registry_from_the_url() {
        let body = envelope(&format!(
            r#"{{"id":"x","timestamp":"2024-01-01T00:00:00Z","action":"push","target":{{"mediaType":
            "application/vnd.docker.distribution.manifest.v2+json","digest":"{DIGEST}","repository":"library/app",
            "url":"https://harbor.example/v2/library/app/manifests/v2","tag":"v2"}}}}"#
        ));
        let pushes = parse(&body, None).unwrap();
        assert_eq!(pushes.requests[0].image.to_string(), format!("harbor.example/library/app@{DIGEST}"));
    }

    #[test]
    fn bad_envelopes_are_refused_with_the_reason() {
        assert!(matches!(parse(b"{", None), Err(EnvelopeError::Json(_))));
        assert!(matches!(parse(b"{\"events\":3}", None), Err(EnvelopeError::Json(_))));
        let bad_repo = push("application/vnd.oci.image.manifest.v1+json", "v1").replace("team/app", "../etc");
        assert!(matches!(parse(&envelope(&bad_repo), None), Err(EnvelopeError::Event { index: 0, .. })));
        let bad_host = push("application/vnd.oci.image.manifest.v1+json", "v1").replace("127.0.0.1:5000", "a b");
        assert!(matches!(parse(&envelope(&bad_host), None), Err(EnvelopeError::Event { .. })));
        let many = vec![push("application/octet-stream", ""); MAX_EVENTS + 1].join(",");
        assert!(matches!(parse(&envelope(&many), None), Err(EnvelopeError::TooMany(_))));
    }
}
