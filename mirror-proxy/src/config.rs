//! The `[proxy]` table of the daemon's config.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;
use url::Url;

/// The mirror and proxy's settings. Every field has a default.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Serve the mirror and proxy at all.
    pub enabled: bool,
    /// Where it listens. Loopback by default: a forward proxy open to the network lets anyone
    /// reach whatever this host can reach.
    pub listen: SocketAddr,
    /// Upstream for `/v2/` requests that name none (no `X-Dragonfly-Registry`, no `?ns=`):
    /// what Docker's `registry-mirrors` asks for. Docker Hub by default.
    pub default_registry: String,
    /// Upstream URL per registry host named by `?ns=` or a hijacked CONNECT, when it is not
    /// `https://<host>`: `"docker.io" = "https://registry-1.docker.io"` is built in, and
    /// `"registry.local:5000" = "http://10.0.0.7:5000"` serves a plain-HTTP registry.
    pub registries: BTreeMap<String, String>,
    /// URLs (forward-proxy mode) that become swarm tasks besides registry blobs, as dfdaemon's
    /// `proxy.rules`. Only GETs are.
    pub rules: Vec<RuleConfig>,
    /// CONNECT targets whose TLS is terminated here, so their blob GETs use the swarm.
    pub hijack: HijackConfig,
    /// Regexes matched against the `host:port` (port always given) of every upstream the proxy
    /// would reach: registries, forward-proxy URLs, CONNECT targets. Empty: any upstream.
    /// Anything else is refused with 403, so that clients cannot use the mirror to reach
    /// hosts it should not (its network, its cloud metadata service).
    pub allowed_upstreams: Vec<String>,
    /// Registries (regexes on `host:port`) whose tags are kept with the digest they last named,
    /// so that a pull by tag works while the registry is down (the tag may have moved since).
    /// Manifests by digest are kept for every registry.
    pub tags_when_down: Vec<String>,
    /// How long a successful "may this client read this repository" check is reused, per
    /// credential and repository.
    #[serde(with = "humantime_serde")]
    pub auth_cache_ttl: Duration,
    /// Time to connect to an upstream registry.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 4001)),
            default_registry: "https://index.docker.io".into(),
            registries: BTreeMap::new(),
            rules: Vec::new(),
            hijack: HijackConfig::default(),
            allowed_upstreams: Vec::new(),
            tags_when_down: Vec::new(),
            auth_cache_ttl: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// A forward-proxy URL rule.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Matched against the URL without query or fragment.
    pub regex: String,
    /// Query parameters ignored when identifying the task (replaces the default list).
    #[serde(default)]
    pub filtered_query_params: Option<Vec<String>>,
}

/// HTTPS hijack: which CONNECT targets, and the CA that signs their certificates.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HijackConfig {
    /// Regexes matched against the CONNECT target `host:port`. Others are tunnelled untouched.
    pub hosts: Vec<String>,
    /// CA certificate and key (PEM). Default: `<data_dir>/ca/ca.crt` and `ca.key`, made by
    /// `shoal ca` (or on first start with hijacked hosts).
    pub ca_cert: Option<PathBuf>,
    pub ca_key: Option<PathBuf>,
}

/// The checked form of [`ProxyConfig`]'s patterns and URLs.
#[derive(Clone, Debug)]
pub(crate) struct Compiled {
    pub default_registry: Url,
    pub registries: BTreeMap<String, Url>,
    pub rules: Vec<(Regex, Option<Vec<String>>)>,
    pub hijack: Vec<Regex>,
    pub allowed_upstreams: Vec<Regex>,
    pub tags_when_down: Vec<Regex>,
}

impl Compiled {
    /// Whether the proxy may reach `host:port` (see [`ProxyConfig::allowed_upstreams`]).
    pub(crate) fn allows(&self, host_port: &str) -> bool {
        self.allowed_upstreams.is_empty()
            || self.allowed_upstreams.iter().any(|r| r.is_match(host_port))
    }

    /// Whether the proxy may reach the upstream of `url`.
    pub(crate) fn allows_url(&self, url: &Url) -> bool {
        host_port(url).is_some_and(|hp| self.allows(&hp))
    }

    /// Whether the tags of the registry at `url` are kept for when it is down.
    pub(crate) fn keeps_tags(&self, url: &Url) -> bool {
        host_port(url).is_some_and(|hp| self.tags_when_down.iter().any(|r| r.is_match(&hp)))
    }
}

/// `host:port` of a URL, the port always given.
fn host_port(url: &Url) -> Option<String> {
    Some(format!(
        "{}:{}",
        url.host_str()?,
        url.port_or_known_default()?
    ))
}

impl ProxyConfig {
    /// The `[proxy]` table of a daemon config file (defaults when absent), checked.
    pub fn from_daemon_toml(text: &str) -> Result<Self, String> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        let config: ProxyConfig = match table.remove("proxy") {
            Some(t) => t
                .try_into()
                .map_err(|e: toml::de::Error| format!("[proxy]: {e}"))?,
            None => ProxyConfig::default(),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the config; the error names the bad field.
    pub fn validate(&self) -> Result<(), String> {
        self.compile().map(|_| ())
    }

    pub(crate) fn compile(&self) -> Result<Compiled, String> {
        if self.connect_timeout.is_zero() {
            return Err("proxy.connect_timeout must be greater than zero".into());
        }
        let default_registry = registry_url(&self.default_registry)
            .map_err(|e| format!("proxy.default_registry: {e}"))?;
        let mut registries = BTreeMap::new();
        registries.insert(
            "docker.io".to_string(),
            Url::parse("https://registry-1.docker.io").expect("static URL"),
        );
        for (host, url) in &self.registries {
            let url = registry_url(url).map_err(|e| format!("proxy.registries.{host:?}: {e}"))?;
            registries.insert(host.to_ascii_lowercase(), url);
        }
        let regex = |what: &str, r: &str| {
            Regex::new(r).map_err(|e| format!("{what} {r:?} is not a regex: {e}"))
        };
        let rules = self
            .rules
            .iter()
            .map(|r| {
                Ok((
                    regex("proxy.rules", &r.regex)?,
                    r.filtered_query_params.clone(),
                ))
            })
            .collect::<Result<_, String>>()?;
        let regexes = |what: &str, list: &[String]| {
            list.iter()
                .map(|h| regex(what, h))
                .collect::<Result<Vec<_>, String>>()
        };
        let hijack = regexes("proxy.hijack.hosts", &self.hijack.hosts)?;
        let allowed_upstreams = regexes("proxy.allowed_upstreams", &self.allowed_upstreams)?;
        let tags_when_down = regexes("proxy.tags_when_down", &self.tags_when_down)?;
        Ok(Compiled {
            default_registry,
            registries,
            rules,
            hijack,
            allowed_upstreams,
            tags_when_down,
        })
    }
}

/// A registry's base URL: `http(s)://host[:port]`, no path, query or credentials.
pub(crate) fn registry_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text.trim_end_matches('/')).map_err(|e| format!("{text:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("{text:?} is not an http(s) URL"));
    }
    if url.path() != "/" || url.query().is_some() || !url.username().is_empty() {
        return Err(format!(
            "{text:?}: give only scheme, host and port (no path, query or credentials)"
        ));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        let c = ProxyConfig::default().compile().unwrap();
        assert_eq!(c.default_registry.as_str(), "https://index.docker.io/");
        assert_eq!(
            c.registries["docker.io"].as_str(),
            "https://registry-1.docker.io/"
        );
    }

    #[test]
    fn the_example_config_shows_the_defaults() {
        let example = include_str!("../../packaging/daemon.toml");
        assert_eq!(
            ProxyConfig::from_daemon_toml(example).unwrap(),
            ProxyConfig::default()
        );
        assert!(ProxyConfig::from_daemon_toml("[proxy]\nlisen = \"x\"").is_err());
    }

    #[test]
    fn bad_values_are_named() {
        let c = ProxyConfig {
            default_registry: "ftp://x".into(),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().contains("default_registry"));
        let c = ProxyConfig {
            registries: [("r:5000".to_string(), "http://h/v2".to_string())].into(),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().contains("r:5000"));
        let c = ProxyConfig {
            hijack: HijackConfig {
                hosts: vec!["(".into()],
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().contains("hijack"));
    }

    #[test]
    fn allowed_upstreams_match_host_and_port() {
        let any = ProxyConfig::default().compile().unwrap();
        assert!(any.allows("169.254.169.254:80"));
        let c = ProxyConfig {
            allowed_upstreams: vec![
                r"^registry\.example:443$".into(),
                r"^.*\.docker\.io:443$".into(),
            ],
            ..Default::default()
        }
        .compile()
        .unwrap();
        let url = |u: &str| Url::parse(u).unwrap();
        assert!(c.allows_url(&url("https://registry.example/v2/")));
        assert!(c.allows_url(&url("https://registry-1.docker.io/v2/")));
        assert!(
            !c.allows_url(&url("http://registry.example/v2/")),
            "port 80"
        );
        assert!(!c.allows_url(&url("https://registry.example:8443/")));
        assert!(!c.allows("169.254.169.254:80"));
        let bad = ProxyConfig {
            allowed_upstreams: vec!["[".into()],
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("allowed_upstreams"));
    }
}
