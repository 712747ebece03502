//! Registry authentication as the distribution spec has it: a `401` with
//! `WWW-Authenticate: Bearer realm=…,service=…,scope=…` sends the client to the realm for a
//! token (with `Basic` credentials when it has them, anonymously otherwise), which is then sent
//! as `Authorization: Bearer`; a `Basic` challenge takes the credentials directly. Tokens are
//! kept in memory per scope until shortly before they expire; credentials are never logged.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::HeaderValue;
use serde::Deserialize;

use super::body::BodyError;
use crate::error::{Error, Result};

/// How the seed proves itself to a registry. `Debug` never shows a secret.
#[derive(Clone, Default)]
pub enum Credentials {
    /// No credentials: anonymous tokens, public content.
    #[default]
    Anonymous,
    /// A user (or robot) and its password, for the token endpoint or a `Basic` challenge.
    Basic { user: String, password: String },
    /// A ready `Authorization` header sent with every request, as Harbor's preheat hands one
    /// (`Bearer <pull token>`); no challenge is answered beyond it.
    Header(HeaderValue),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { user, .. } => write!(f, "Basic({user}, <redacted>)"),
            Credentials::Header(_) => f.write_str("Header(<redacted>)"),
        }
    }
}

impl Credentials {
    /// `user:password` in base64, as Docker's config file and a `Basic` header hold it.
    pub fn from_basic_token(encoded: &str) -> Option<Credentials> {
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()?;
        let (user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
        Some(Credentials::Basic {
            user: user.to_owned(),
            password: password.to_owned(),
        })
    }

    /// The `Authorization` value these credentials send as they are (none when anonymous).
    pub fn authorization(&self) -> Option<HeaderValue> {
        match self {
            Credentials::Anonymous => None,
            Credentials::Basic { .. } => self.basic(),
            Credentials::Header(h) => Some(h.clone()),
        }
    }

    fn basic(&self) -> Option<HeaderValue> {
        let Credentials::Basic { user, password } = self else {
            return None;
        };
        use base64::Engine as _;
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let mut v = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
        v.set_sensitive(true);
        Some(v)
    }
}

/// A `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

impl Challenge {
    /// Parses `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`.
    pub(crate) fn parse(value: &str) -> Option<Challenge> {
        let (scheme, params) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let mut fields = HashMap::new();
        let mut rest = params.trim();
        while !rest.is_empty() {
            let (key, after) = rest.split_once('=')?;
            let after = after.trim_start();
            let (value, tail) = match after.strip_prefix('"') {
                Some(quoted) => {
                    let end = quoted.find('"')?;
                    (&quoted[..end], &quoted[end + 1..])
                }
                None => after.split_once(',').unwrap_or((after, "")),
            };
            fields.insert(key.trim().to_ascii_lowercase(), value.to_owned());
            rest = tail.trim_start().trim_start_matches(',').trim_start();
        }
        Some(Challenge::Bearer {
            realm: fields.remove("realm")?,
            service: fields.remove("service"),
            scope: fields.remove("scope"),
        })
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// The `Authorization` headers a client earned, by scope.
#[derive(Default)]
pub(crate) struct Tokens {
    by_scope: Mutex<HashMap<String, (HeaderValue, Instant)>>,
}

/// A token answer's largest body (Harbor's are about 1 KiB).
const MAX_TOKEN_ANSWER: usize = 64 << 10;
/// A token is reused until this long before it expires.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);

impl Tokens {
    /// The header to send for `scope` now, if one is held.
    pub(crate) fn get(&self, scope: &str) -> Option<HeaderValue> {
        let held = self.by_scope.lock().expect("token cache lock");
        held.get(scope)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(v, _)| v.clone())
    }

    /// Answers `challenge` with `credentials`: the header to retry with, kept for `scope`.
    pub(crate) async fn answer(
        &self,
        http: &reqwest::Client,
        challenge: &Challenge,
        credentials: &Credentials,
        scope: &str,
        registry_tls: bool,
    ) -> Result<Option<HeaderValue>> {
        let (value, lifetime) = match challenge {
            Challenge::Basic => match credentials.basic() {
                Some(v) => (v, Duration::from_secs(3600)),
                None => return Ok(None),
            },
            Challenge::Bearer {
                realm,
                service,
                scope: asked,
            } => {
                let mut url = url::Url::parse(realm).map_err(|e| Error::Token {
                    realm: realm.clone(),
                    detail: e.to_string(),
                })?;
                // Credentials go to the realm the registry names (as every client does), but
                // never in the clear when the registry itself is reached over TLS.
                if url.scheme() != "https" && (registry_tls || url.scheme() != "http") {
                    return Err(Error::Token {
                        realm: realm.clone(),
                        detail: "a token realm must be https for an https registry".into(),
                    });
                }
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(s) = service {
                        q.append_pair("service", s);
                    }
                    if let Some(s) = asked.as_deref().or(Some(scope).filter(|s| !s.is_empty())) {
                        q.append_pair("scope", s);
                    }
                }
                fetch_token(http, realm, url, credentials).await?
            }
        };
        let until = Instant::now() + lifetime.saturating_sub(EXPIRY_MARGIN);
        let mut held = self.by_scope.lock().expect("token cache lock");
        held.insert(scope.to_owned(), (value.clone(), until));
        Ok(Some(value))
    }
}

async fn fetch_token(
    http: &reqwest::Client,
    realm: &str,
    url: url::Url,
    credentials: &Credentials,
) -> Result<(HeaderValue, Duration)> {
    let failed = |detail: String| Error::Token {
        realm: realm.to_owned(),
        detail,
    };
    let mut rb = http.get(url);
    if let Some(basic) = credentials.basic() {
        rb = rb.header(http::header::AUTHORIZATION, basic);
    }
    let resp = rb
        .send()
        .await
        .map_err(|e| failed(e.without_url().to_string()))?;
    if !resp.status().is_success() {
        return Err(failed(format!("answered {}", resp.status())));
    }
    let body = super::body::read(resp, MAX_TOKEN_ANSWER)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge => failed(format!("answer over {MAX_TOKEN_ANSWER} bytes")),
            BodyError::Transport(e) => failed(e.to_string()),
        })?;
    let answer: TokenAnswer =
        serde_json::from_slice(&body).map_err(|e| failed(format!("not a token answer: {e}")))?;
    let token = answer
        .token
        .or(answer.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| failed("no token in the answer".into()))?;
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| failed("the token is not a header value".into()))?;
    value.set_sensitive(true);
    // The spec's default lifetime is 60 s, and never less; a day at most, whatever it says.
    let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(60).clamp(60, 86_400));
    Ok((value, lifetime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_as_registries_send_them() {
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="http://127.0.0.1:5060/token",service="test-registry",scope="repository:test/app:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:5060/token".into(),
                service: Some("test-registry".into()),
                scope: Some("repository:test/app:pull".into()),
            })
        );
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="https://h/service/token", service="harbor-registry""#
            ),
            Some(Challenge::Bearer {
                realm: "https://h/service/token".into(),
                service: Some("harbor-registry".into()),
                scope: None,
            })
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="harbor""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Bearer service=\"x\""), None, "no realm");
        assert_eq!(Challenge::parse("Bearer realm=\"unterminated"), None);
        assert_eq!(Challenge::parse("Negotiate abc"), None);
    }

    #[test]
    fn credentials_never_show_their_secret() {
        let basic = Credentials::Basic {
            user: "robot$ci".into(),
            password: "s3cr3t".into(),
        };
        let header = Credentials::Header(HeaderValue::from_static("Bearer s3cr3t"));
        for c in [basic, header] {
            assert!(!format!("{c:?}").contains("s3cr3t"));
        }
    }

    proptest::proptest! {
        /// Any `WWW-Authenticate` value: no panic, no endless loop.
        #[test]
        fn any_challenge_parses_or_is_refused(v in "[ -~]{0,120}") {
            let _ = Challenge::parse(&v);
        }

        /// The challenges registries send, with any realm, service and scope.
        #[test]
        fn bearer_challenges_round_trip(
            realm in "https?://[a-z0-9.:/]{1,30}",
            service in "[a-z0-9.-]{1,20}",
            scope in "repository:[a-z0-9/]{1,20}:pull",
        ) {
            let v = format!(r#"Bearer realm="{realm}", service="{service}",scope="{scope}""#);
            proptest::prop_assert_eq!(
                Challenge::parse(&v),
                Some(Challenge::Bearer { realm, service: Some(service), scope: Some(scope) })
            );
        }
    }
}
