//! The wire formats Harbor speaks to a P2P provider, and its webhooks: Dragonfly's open API
//! (`POST/GET /oapi/v1/jobs`, Harbor ≥ 2.12), the legacy Dragonfly driver (`/preheats`, Harbor
//! ≤ 2.11), Kraken's `/registry/notifications`, and `PUSH_ARTIFACT` webhooks in the Default and
//! CloudEvents formats. Field names and types are the ones Harbor's Go code reads
//! (`reference/harbor-and-registry.md` §1–§2).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State as Ctx};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use shoal_seed::Credentials;
use url::Url;

use super::jobs::{JobState, MAX_LISTED, PreheatJob, Scope};
use super::run::{PreheatRequest, manifest_url, start};
use super::{Api, ApiError, error};

/// The cluster id Shoal reports (one scheduler cluster).
const CLUSTER_ID: u64 = 1;

pub(super) fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/oapi/v1/jobs", post(create_job).get(list_jobs))
        .route("/oapi/v1/jobs/{id}", get(get_job))
        .route("/preheats", post(create_legacy))
        .route("/preheats/{id}", get(get_legacy))
        .route("/registry/notifications", post(kraken))
        .route("/webhooks/harbor", post(webhook))
}

/// Dragonfly's `CreatePreheatJobRequest` (Harbor fills `type`, `args.{type,url,headers,scope}`
/// and `scheduler_cluster_ids`; the rest is Dragonfly's own, taken when sent).
#[derive(Deserialize)]
struct CreateJob {
    #[serde(rename = "type")]
    kind: String,
    args: Args,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct Args {
    #[serde(rename = "type")]
    kind: String,
    url: String,
    headers: Option<HashMap<String, String>>,
    username: String,
    password: String,
    platform: String,
    scope: String,
    count: Option<u32>,
    percentage: Option<u8>,
    /// Go's `time.Duration`: nanoseconds (0: the default).
    timeout: Option<u64>,
}

/// A request's registry credentials: its `Authorization` header as an issued token (Harbor's
/// 30-minute pull token), else its user and password, else none.
fn credentials(
    headers: Option<&HashMap<String, String>>,
    user: &str,
    password: &str,
) -> Result<Credentials, String> {
    let auth = headers
        .into_iter()
        .flatten()
        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"));
    if let Some((_, v)) = auth {
        let mut value: http::HeaderValue = v
            .parse()
            .map_err(|_| "headers.Authorization is not a header value".to_owned())?;
        value.set_sensitive(true);
        return Ok(Credentials::Header(value));
    }
    if !user.is_empty() {
        return Ok(Credentials::Basic {
            user: user.to_owned(),
            password: password.to_owned(),
        });
    }
    Ok(Credentials::Anonymous)
}

fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("the request body: {e}")))
}

fn parse_url(url: &str) -> Result<Url, ApiError> {
    let url: Url = url
        .parse()
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("url {url:?}: {e}")))?;
    manifest_url(&url).map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
    Ok(url)
}

impl Api {
    fn platforms_or(
        &self,
        platform: &str,
    ) -> Result<Vec<shoal_seed::registry::Platform>, ApiError> {
        if platform.is_empty() {
            return Ok(self.platforms.clone());
        }
        let p = platform
            .parse()
            .map_err(|e: String| error(StatusCode::BAD_REQUEST, format!("platform: {e}")))?;
        Ok(vec![p])
    }

    /// Preheats of `urls` with the robot account and the webhooks' scope (webhooks and Kraken
    /// notifications carry no registry token); the jobs' ids.
    fn begin_all(
        self: &Arc<Self>,
        urls: Vec<Url>,
        via: &'static str,
    ) -> Result<Vec<u64>, ApiError> {
        let allowed = |url: &Url| {
            let host = match (url.host_str(), url.port()) {
                (Some(h), Some(p)) => format!("{h}:{p}"),
                (Some(h), None) => h.to_owned(),
                (None, _) => return false,
            };
            self.webhook_registries.is_empty() || self.webhook_registries.contains(&host)
        };
        if let Some(url) = urls.iter().find(|u| !allowed(u)) {
            return Err(error(
                StatusCode::FORBIDDEN,
                format!(
                    "{} is not one of [api] webhook_registries",
                    url.host_str().unwrap_or_default()
                ),
            ));
        }
        let mut started = Vec::new();
        for url in urls {
            let job = self.begin(PreheatRequest {
                url,
                credentials: self.robot.clone(),
                scope: self.webhook_scope,
                platforms: self.platforms.clone(),
                timeout: self.timeout,
                via,
            })?;
            started.push(job.id);
        }
        Ok(started)
    }

    fn begin(self: &Arc<Self>, req: PreheatRequest) -> Result<PreheatJob, ApiError> {
        start(self, req).map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
    }
}

async fn create_job(Ctx(api): Ctx<Arc<Api>>, body: Bytes) -> Result<Response, ApiError> {
    {
        let req: CreateJob = parse_json(&body)?;
        if req.kind != "preheat" {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("job type {:?}: only preheat", req.kind),
            ));
        }
        let a = req.args;
        if !matches!(a.kind.as_str(), "image" | "") {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("preheat type {:?}: only image", a.kind),
            ));
        }
        let scope = Scope::parse(&a.scope, a.count, a.percentage)
            .map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
        let credentials = credentials(a.headers.as_ref(), &a.username, &a.password)
            .map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
        let job = api.begin(PreheatRequest {
            url: parse_url(&a.url)?,
            credentials,
            scope,
            platforms: api.platforms_or(&a.platform)?,
            timeout: a
                .timeout
                .filter(|t| *t > 0)
                .map_or(api.timeout, Duration::from_nanos),
            via: "dragonfly",
        })?;
        Ok(axum::Json(v2_job(&job)).into_response())
    }
}

async fn list_jobs(Ctx(api): Ctx<Arc<Api>>) -> Result<Response, ApiError> {
    let jobs = api
        .jobs
        .list(MAX_LISTED)
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(axum::Json(jobs.iter().map(v2_job).collect::<Vec<_>>()).into_response())
}

async fn get_job(Ctx(api): Ctx<Arc<Api>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(axum::Json(v2_job(&find(&api, &id)?)).into_response())
}

fn find(api: &Api, id: &str) -> Result<PreheatJob, ApiError> {
    let n: u64 = id
        .parse()
        .map_err(|_| error(StatusCode::NOT_FOUND, format!("no job {id:?}")))?;
    match api.jobs.get(n) {
        Ok(Some(job)) => Ok(job),
        Ok(None) => Err(error(StatusCode::NOT_FOUND, format!("no job {n}"))),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

fn rfc3339(secs: u64) -> String {
    humantime_serde::re::humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs))
        .to_string()
}

/// A job as Dragonfly's manager answers it. Harbor reads `id` (an integer), the timestamps,
/// `state` (PENDING, SUCCESS or FAILURE: a group job shows nothing else) and
/// `result.job_states[].{error, results[].{success_tasks, failure_tasks}}`.
pub(crate) fn v2_job(job: &PreheatJob) -> Value {
    let state = match job.state {
        JobState::Pending | JobState::Running => "PENDING",
        JobState::Success => "SUCCESS",
        JobState::Failure => "FAILURE",
    };
    let ip = |addr: &str| {
        addr.parse::<std::net::SocketAddr>()
            .map_or_else(|_| addr.to_owned(), |a| a.ip().to_string())
    };
    let mut success = Vec::new();
    let mut failure = Vec::new();
    for blob in &job.blobs {
        for h in &blob.hosts {
            if h.held {
                success.push(json!({"url": blob.url, "hostname": h.host, "ip": ip(&h.addr)}));
            } else if !h.error.is_empty() {
                failure.push(
                    json!({"url": blob.url, "hostname": h.host, "ip": ip(&h.addr),
                                    "description": h.error}),
                );
            }
        }
    }
    let result = json!({"job_states": [{
        "error": job.error,
        "results": [{"success_tasks": success, "failure_tasks": failure,
                     "scheduler_cluster_id": CLUSTER_ID}],
    }]});
    json!({
        "id": job.id,
        "created_at": rfc3339(job.created_at),
        "updated_at": rfc3339(job.updated_at),
        "task_id": format!("group_{}", job.id),
        "type": "preheat",
        "state": state,
        "args": {"type": "image", "url": job.url, "scope": job.scope.to_string()},
        "result": result,
        "scheduler_clusters": [{"id": CLUSTER_ID}],
        // Shoal's own: where every blob stands.
        "blobs": job.blobs,
        "via": job.via,
    })
}

/// Harbor's `PreheatImage`, which the legacy driver posts as it is.
#[derive(Deserialize)]
struct PreheatImage {
    #[serde(rename = "type", default)]
    kind: String,
    url: String,
    #[serde(default)]
    headers: Option<HashMap<String, String>>,
    #[serde(default)]
    digest: String,
    #[serde(default)]
    extra_attrs: Option<HashMap<String, Value>>,
}

async fn create_legacy(Ctx(api): Ctx<Arc<Api>>, body: Bytes) -> Result<Response, ApiError> {
    {
        let req: PreheatImage = parse_json(&body)?;
        if !matches!(req.kind.as_str(), "image" | "") {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("preheat type {:?}: only image", req.kind),
            ));
        }
        let url = parse_url(&req.url)?;
        let shown = shoal_p2p::origin::display_url(&url);
        let scope = req
            .extra_attrs
            .as_ref()
            .and_then(|a| a.get("scope"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let scope =
            Scope::parse(scope, None, None).map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
        // The same image asked again: its job running now, or, for the same digest (a tag
        // may have moved), its preheat still held: 208, "already preheated", which the legacy
        // driver takes as success.
        let jobs = api
            .jobs
            .list(MAX_LISTED)
            .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let same = |j: &&PreheatJob| j.url == shown && j.scope == scope;
        if let Some(old) = jobs.iter().filter(same).find(|j| !j.state.done()) {
            return Ok(axum::Json(json!({"ID": old.id.to_string()})).into_response());
        }
        if let Some(old) = jobs.iter().filter(same).find(|j| {
            j.state == JobState::Success && !req.digest.is_empty() && j.image_digest == req.digest
        }) && still_held(&api, old)
        {
            let answer = axum::Json(json!({"ID": old.id.to_string()}));
            return Ok((StatusCode::ALREADY_REPORTED, answer).into_response());
        }
        let credentials = credentials(req.headers.as_ref(), "", "")
            .map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
        let job = api.begin(PreheatRequest {
            url,
            credentials,
            scope,
            platforms: api.platforms.clone(),
            timeout: api.timeout,
            via: "dragonfly-legacy",
        })?;
        Ok(axum::Json(json!({"ID": job.id.to_string()})).into_response())
    }
}

/// Whether every blob a finished preheat made present is still held by a host it was for.
fn still_held(api: &Api, job: &PreheatJob) -> bool {
    let state = crate::state::lock(&api.state);
    let now = std::time::Instant::now();
    job.blobs.iter().filter(|b| !b.index).all(|b| {
        let hosts: Vec<String> = b
            .hosts
            .iter()
            .filter(|h| h.held)
            .map(|h| h.host.clone())
            .collect();
        state
            .presence(&b.digest, &hosts, now)
            .is_some_and(|p| !p.whole.is_empty())
    })
}

async fn get_legacy(Ctx(api): Ctx<Arc<Api>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let job = find(&api, &id)?;
    let status = match job.state {
        JobState::Pending => "WAITING",
        JobState::Running => "RUNNING",
        JobState::Success => "SUCCESS",
        JobState::Failure => "FAILED",
    };
    let finish = if job.state.done() {
        rfc3339(job.updated_at)
    } else {
        String::new()
    };
    Ok(axum::Json(json!({
        "ID": job.id.to_string(),
        "startTime": rfc3339(job.created_at),
        "finishTime": finish,
        "errorMsg": job.error,
        "Status": status,
    }))
    .into_response())
}

/// Kraken's notification: Go's field names (matched in any case by Go, so both are taken).
#[derive(Deserialize)]
struct Notification {
    #[serde(alias = "events")]
    #[serde(rename = "Events", default)]
    events: Vec<Event>,
}

#[derive(Deserialize)]
struct Event {
    #[serde(rename = "Action", alias = "action", default)]
    action: String,
    #[serde(rename = "Target", alias = "target")]
    target: Option<Target>,
}

#[derive(Deserialize)]
struct Target {
    #[serde(
        rename = "MediaType",
        alias = "mediaType",
        alias = "mediatype",
        default
    )]
    media_type: String,
    #[serde(rename = "Url", alias = "url", alias = "URL", default)]
    url: String,
}

async fn kraken(Ctx(api): Ctx<Arc<Api>>, body: Bytes) -> Result<Response, ApiError> {
    let n: Notification = parse_json(&body)?;
    // Kraken preheats pushed manifests; other pushes (blobs) are not images.
    let urls = n
        .events
        .into_iter()
        .filter(|e| e.action == "push")
        .filter_map(|e| e.target)
        .filter(|t| t.media_type.contains("manifest") || t.media_type.contains("index"))
        .map(|t| parse_url(&t.url))
        .collect::<Result<Vec<_>, _>>()?;
    let started = api.begin_all(urls, "kraken")?;
    Ok(axum::Json(json!({"jobs": started})).into_response())
}

/// A Harbor webhook, in either format: Default (`type`, `event_data`) or CloudEvents
/// (`specversion`, `type`, `data`).
#[derive(Deserialize)]
struct Webhook {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    event_data: Option<EventData>,
    #[serde(default)]
    data: Option<EventData>,
}

#[derive(Deserialize)]
struct EventData {
    #[serde(default)]
    resources: Vec<Resource>,
    repository: Repository,
}

#[derive(Deserialize)]
struct Resource {
    #[serde(default)]
    digest: String,
    #[serde(default)]
    tag: String,
    resource_url: String,
}

#[derive(Deserialize)]
struct Repository {
    repo_full_name: String,
}

async fn webhook(Ctx(api): Ctx<Arc<Api>>, body: Bytes) -> Result<Response, ApiError> {
    let hook: Webhook = parse_json(&body)?;
    if !matches!(
        hook.kind.as_str(),
        "PUSH_ARTIFACT" | "harbor.artifact.pushed"
    ) {
        return Ok(axum::Json(json!({"ignored": hook.kind})).into_response());
    }
    let data = hook.event_data.or(hook.data).ok_or_else(|| {
        error(
            StatusCode::BAD_REQUEST,
            "a push event without event_data (or data)",
        )
    })?;
    let urls = data
        .resources
        .iter()
        .map(|r| webhook_manifest_url(&api.webhook_scheme, &data.repository.repo_full_name, r))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
    let started = api.begin_all(urls, "webhook")?;
    Ok(axum::Json(json!({"jobs": started})).into_response())
}

/// The manifest URL a pushed resource names: the registry host from `resource_url` (which has
/// no scheme), the repository, and the digest (else the tag).
fn webhook_manifest_url(scheme: &str, repository: &str, r: &Resource) -> Result<Url, String> {
    let host = r
        .resource_url
        .split_once('/')
        .map(|(h, _)| h)
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("resource_url {:?} names no registry", r.resource_url))?;
    let reference = match (r.digest.as_str(), r.tag.as_str()) {
        (d, _) if d.starts_with("sha256:") => d,
        (_, t) if !t.is_empty() => t,
        _ => return Err("a resource with neither digest nor tag".into()),
    };
    let url: Url = format!("{scheme}://{host}/v2/{repository}/manifests/{reference}")
        .parse()
        .map_err(|e| format!("resource_url {:?}: {e}", r.resource_url))?;
    manifest_url(&url)?;
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pushed_resource_names_its_manifest_by_digest() {
        let r = Resource {
            digest: format!("sha256:{}", "a".repeat(64)),
            tag: "1.25".into(),
            resource_url: "harbor.example.com/library/nginx:1.25".into(),
        };
        let url = webhook_manifest_url("https", "library/nginx", &r).unwrap();
        assert_eq!(
            url.as_str(),
            format!(
                "https://harbor.example.com/v2/library/nginx/manifests/{}",
                r.digest
            )
        );
        let by_tag = Resource {
            digest: String::new(),
            ..r
        };
        let url = webhook_manifest_url("http", "library/nginx", &by_tag).unwrap();
        assert_eq!(
            url.as_str(),
            "http://harbor.example.com/v2/library/nginx/manifests/1.25"
        );
        let nowhere = Resource {
            resource_url: "nginx".into(),
            ..by_tag
        };
        assert!(webhook_manifest_url("https", "library/nginx", &nowhere).is_err());
    }
}
