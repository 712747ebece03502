//! The scheduler's HTTP API (port 8080): preheat jobs, as the providers Harbor knows speak them
//! (Dragonfly's open API `/oapi/v1/jobs` and its legacy `/preheats`, Kraken's
//! `/registry/notifications`), Harbor's push webhooks, and `shoal preheat`. Every route but the
//! health checks needs a personal access token ([`Tokens`]): `Authorization: Bearer <token>`
//! (Harbor's OAUTH mode, a webhook's `auth_header`), `?access_token=<token>`, or `Basic` with the
//! token as the password.

mod console;
mod harbor;
pub mod jobs;
pub mod run;
pub mod tokens;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State as Ctx};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use shoal_seed::Credentials;

pub use jobs::{JobState, Jobs, PreheatJob, Scope};
pub use tokens::Tokens;

use crate::metrics::Metrics;
use crate::state::State;

/// The `[api]` table of the scheduler's config.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Whether the scheduler serves the HTTP API.
    pub enabled: bool,
    /// The HTTP API's address.
    pub listen: SocketAddr,
    /// Where the tokens and jobs are kept (default: `api/` in the data directory).
    pub dir: Option<PathBuf>,
    /// The platforms of an index a preheat makes present (`os/arch[/variant]`; empty: every
    /// platform), unless the request names one.
    pub platforms: Vec<String>,
    /// How long a preheat may run when its request names no timeout.
    #[serde(with = "humantime_serde")]
    pub job_timeout: Duration,
    /// PEM files of CAs trusted for registries besides the system's.
    pub ca_certs: Vec<PathBuf>,
    /// The scheme of the registry a webhook names (Harbor's `resource_url` has none).
    pub webhook_scheme: String,
    /// The scope of the preheats webhooks and Kraken notifications start.
    pub webhook_scope: String,
    /// The registry account webhooks and Kraken notifications preheat with (they carry no
    /// token): a user, such as a Harbor robot account, and a file holding its secret.
    pub robot_user: Option<String>,
    pub robot_secret_file: Option<PathBuf>,
    /// The registries (`host[:port]`) webhooks and Kraken notifications may name: the robot
    /// account's secret goes to these only. Required with a robot account; without one, empty
    /// means any (anonymous preheats of public images).
    pub webhook_registries: Vec<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            enabled: true,
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            dir: None,
            platforms: Vec::new(),
            job_timeout: Duration::from_secs(3600),
            ca_certs: Vec::new(),
            webhook_scheme: "https".into(),
            webhook_scope: "single_seed_peer".into(),
            robot_user: None,
            robot_secret_file: None,
            webhook_registries: Vec::new(),
        }
    }
}

impl ApiConfig {
    /// The API's directory: `dir`, or `api/` in the default data directory.
    pub fn dir(&self) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| shoal_p2p::api::default_data_dir().join("api"))
    }
}

/// What the API's handlers share.
pub struct Api {
    pub(crate) state: Arc<Mutex<State>>,
    pub(crate) metrics: Metrics,
    /// What hosts told of their traffic (the console shows it).
    pub(crate) traffic: Arc<crate::traffic::Traffic>,
    pub(crate) jobs: Jobs,
    tokens: Tokens,
    pub(crate) http: reqwest::Client,
    platforms: Vec<shoal_seed::registry::Platform>,
    timeout: Duration,
    webhook_scheme: String,
    webhook_scope: Scope,
    webhook_registries: Vec<String>,
    robot: Credentials,
}

impl Api {
    /// Opens the job store and reads the config's files (a missing robot secret is an error
    /// now, not at the first webhook).
    pub fn open(
        config: &ApiConfig,
        state: Arc<Mutex<State>>,
        metrics: Metrics,
        traffic: Arc<crate::traffic::Traffic>,
    ) -> Result<Api, crate::Error> {
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            crate::Error::Config(format!("[api] {what}: {e}"))
        };
        let dir = config.dir();
        let jobs =
            Jobs::open(&dir).map_err(|e| bad(&format!("job store in {}", dir.display()), &e))?;
        let origin = shoal_p2p::OriginConfig {
            ca_certs: config.ca_certs.clone(),
            ..Default::default()
        };
        let http = origin
            .client_builder()
            .and_then(|b| {
                b.read_timeout(Duration::from_secs(30))
                    .build()
                    .map_err(|e| shoal_p2p::Error::Config(e.to_string()))
            })
            .map_err(|e| bad("ca_certs", &e))?;
        let platforms = config
            .platforms
            .iter()
            .map(|p| p.parse())
            .collect::<Result<_, String>>()
            .map_err(|e| bad("platforms", &e))?;
        let robot = match (&config.robot_user, &config.robot_secret_file) {
            (Some(user), Some(file)) => Credentials::Basic {
                user: user.clone(),
                password: std::fs::read_to_string(file)
                    .map_err(|e| bad(&format!("robot_secret_file {}", file.display()), &e))?
                    .trim()
                    .to_owned(),
            },
            (None, None) => Credentials::Anonymous,
            _ => {
                return Err(bad(
                    "robot_user",
                    &"robot_user and robot_secret_file go together",
                ));
            }
        };
        if matches!(robot, Credentials::Basic { .. }) && config.webhook_registries.is_empty() {
            return Err(bad(
                "webhook_registries",
                &"name the registries the robot account is for (its secret goes to these only)",
            ));
        }
        let webhook_scope = Scope::parse(&config.webhook_scope, None, None)
            .map_err(|e| bad("webhook_scope", &e))?;
        if !matches!(config.webhook_scheme.as_str(), "http" | "https") {
            return Err(bad("webhook_scheme", &"http or https"));
        }
        Ok(Api {
            state,
            metrics,
            traffic,
            jobs,
            tokens: Tokens::in_dir(&dir),
            http,
            platforms,
            timeout: config.job_timeout,
            webhook_scheme: config.webhook_scheme.clone(),
            webhook_scope,
            webhook_registries: config.webhook_registries.clone(),
            robot,
        })
    }

    /// The name of the token `token` is, if it is a valid one.
    pub(crate) async fn check_token(&self, token: String) -> Option<String> {
        let tokens = self.tokens.clone();
        tokio::task::spawn_blocking(move || tokens.check(&token))
            .await
            .ok()
            .flatten()
    }

    /// Keeps `job` as it is now.
    pub(crate) fn save(&self, job: &mut PreheatJob) {
        job.updated_at = jobs::now();
        if let Err(e) = self.jobs.put(job) {
            tracing::warn!(job = job.id, error = %e, "preheat job not saved");
        }
    }

    /// Serves the API on `listener` until `shutdown` resolves.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        tracing::info!(addr = %listener.local_addr()?, "HTTP API ready");
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }

    fn router(self: Arc<Self>) -> Router {
        use axum::routing::get;
        let open = Router::new()
            .route("/healthy", get(ok))
            .route("/_ping", get(ok))
            .route("/health", get(ok));
        let guarded = harbor::routes().layer(axum::middleware::from_fn_with_state(
            self.clone(),
            authenticate,
        ));
        open.merge(guarded)
            .merge(console::routes(self.clone()))
            .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
            .with_state(self)
    }
}

/// The largest request body (a job, a webhook) taken.
const MAX_BODY: usize = 1 << 20;

async fn ok() -> &'static str {
    "OK"
}

/// Lets a request through only with a valid personal access token.
async fn authenticate(Ctx(api): Ctx<Arc<Api>>, req: Request, next: Next) -> Response {
    let token = token_of(req.headers(), req.uri().query());
    let name = match token {
        Some(t) => api.check_token(t).await,
        None => None,
    };
    match name {
        Some(name) => {
            tracing::debug!(token = name, path = req.uri().path(), "API request");
            next.run(req).await
        }
        None => unauthorized(),
    }
}

/// The token a request carries: `Authorization: Bearer` (any case), the password of
/// `Authorization: Basic`, or `?access_token=`.
fn token_of(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, rest) = value.trim().split_once(' ')?;
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            return Some(rest.to_owned());
        }
        if scheme.eq_ignore_ascii_case("basic") {
            use base64::Engine as _;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .ok()?;
            let (_, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
            return Some(password.to_owned());
        }
        return None;
    }
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.into_owned())
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer realm=\"shoal\"")],
        axum::Json(serde_json::json!({"message": "Unauthorized"})),
    )
        .into_response()
}

/// An error answer: JSON `{"message": …}`, as Dragonfly's manager gives them.
#[derive(Debug)]
pub(crate) struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(serde_json::json!({"message": self.1}))).into_response()
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError(status, message.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_comes_as_bearer_basic_password_or_query() {
        let with = |auth: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, auth.parse().unwrap());
            token_of(&h, None)
        };
        assert_eq!(with("Bearer tok").as_deref(), Some("tok"));
        assert_eq!(with("bearer  tok ").as_deref(), Some("tok"));
        // Harbor's BASIC mode sends `<first key>:<value>`: the token must be the value.
        assert_eq!(with("Basic cGFzc3dvcmQ6dG9r").as_deref(), Some("tok"));
        assert_eq!(with("Digest tok"), None);
        assert_eq!(
            token_of(&HeaderMap::new(), Some("a=1&access_token=tok")).as_deref(),
            Some("tok")
        );
        assert_eq!(token_of(&HeaderMap::new(), None), None);
    }
}
