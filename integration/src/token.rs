//! A registry token server (distribution's token auth, as Harbor's `/service/token`) for tests:
//! one user, tokens signed with ES256 and carrying the signing certificate (`x5c`), which the
//! registry trusts through its `rootcertbundle`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, KeyPair};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};

pub const SERVICE: &str = "test-registry";
pub const ISSUER: &str = "test-issuer";

struct State {
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    user: String,
    password: String,
}

/// A running token server; stops when dropped.
pub struct TokenServer {
    addr: SocketAddr,
    /// The certificate bundle for the registry's `auth.token.rootcertbundle`.
    pub bundle: PathBuf,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TokenServer {
    /// Grants `user`/`password` what they ask for; anonymous clients get no access at all.
    pub async fn start(dir: &Path, user: &str, password: &str) -> anyhow::Result<TokenServer> {
        let key = KeyPair::generate()?;
        let cert = CertificateParams::new(vec!["token-signer".to_string()])?.self_signed(&key)?;
        let bundle = dir.join("token-signer.crt");
        std::fs::write(&bundle, cert.pem())?;
        let rng = ring::rand::SystemRandom::new();
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key.serialize_der(), &rng)
                .map_err(|e| anyhow::anyhow!("signing key: {e}"))?;
        let state = Arc::new(State {
            key,
            cert_der: cert.der().to_vec(),
            user: user.into(),
            password: password.into(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(answer(&st, &req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(TokenServer {
            addr,
            bundle,
            state,
            task,
        })
    }

    /// The realm: `http://127.0.0.1:<port>/token`.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// A token for `scope` (`repository:team/app:pull,push`), as the user.
    pub fn token_for(&self, scope: &str) -> String {
        sign(&self.state, &self.state.user, &[scope.to_string()])
    }
}

fn answer(st: &State, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    // containerd first tries an OAuth2 POST; a 404 makes it use GET with Basic auth.
    if req.method() != Method::GET || req.uri().path() != "/token" {
        return status(StatusCode::NOT_FOUND);
    }
    let query = req.uri().query().unwrap_or("");
    let scopes: Vec<String> = url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
        .collect();
    let user = match req.headers().get("authorization") {
        None => None,
        Some(v) => {
            let expected = format!(
                "Basic {}",
                STANDARD.encode(format!("{}:{}", st.user, st.password))
            );
            if v.as_bytes() != expected.as_bytes() {
                return status(StatusCode::UNAUTHORIZED);
            }
            Some(st.user.as_str())
        }
    };
    // Anonymous clients get a token granting nothing, as Harbor does for private projects.
    let granted = if user.is_some() { scopes } else { Vec::new() };
    let token = sign(st, user.unwrap_or(""), &granted);
    let body = serde_json::json!({
        "token": token, "access_token": token, "expires_in": 300,
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("valid response")
}

fn status(s: StatusCode) -> Response<Full<Bytes>> {
    Response::builder()
        .status(s)
        .body(Full::new(Bytes::new()))
        .expect("valid response")
}

/// A JWT for `subject` granting `scopes` (`type:name:actions`).
fn sign(st: &State, subject: &str, scopes: &[String]) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let access: Vec<serde_json::Value> = scopes
        .iter()
        .filter_map(|s| {
            let mut parts = s.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            Some(serde_json::json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
        })
        .collect();
    let header =
        serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [STANDARD.encode(&st.cert_der)]});
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": subject, "aud": SERVICE,
        "exp": now + 300, "nbf": now - 10, "iat": now,
        "jti": format!("{now}-{}", rand::random::<u64>()),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let rng = ring::rand::SystemRandom::new();
    let sig = st
        .key
        .sign(&rng, signing_input.as_bytes())
        .expect("ECDSA signing works");
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}
