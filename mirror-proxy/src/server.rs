//! The listener: HTTP/1.1 from runtimes (mirror requests, proxy requests, CONNECT), and inside
//! a hijacked CONNECT, TLS with HTTP/2 or HTTP/1.1.
//!
//! On a plain connection, GETs and HEADs are read by [`shoal_p2p::http1`], which sends a complete
//! blob straight from the task file (a warm blob at the registry's own loopback throughput); the
//! first other request (a push, CONNECT) hands the connection to hyper. Both call the same
//! [`proxy::handle`].

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use shoal_p2p::{Downloader, http1};
use tokio::net::{TcpListener, TcpStream};
use url::Url;

use crate::access::Access;
use crate::ca::Ca;
use crate::config::ProxyConfig;
use crate::error::{Body, Error, empty};
use crate::metrics::{Kind, ProxyMetrics};
use crate::proxy::{self, Ctx};
use crate::route;

/// Streams at once on one HTTP/2 connection inside a hijacked CONNECT.
const MAX_STREAMS: u32 = 64;

/// The mirror and proxy, ready to serve.
pub struct Proxy {
    ctx: Arc<Ctx>,
}

/// Where `shoal ca` and the daemon keep the CA when the config names none.
pub fn default_ca_paths(data_dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = data_dir.join("ca");
    (dir.join("ca.crt"), dir.join("ca.key"))
}

impl Proxy {
    /// Checks the config, loads (or makes) the CA when hosts are hijacked, and registers the
    /// proxy's metrics. Downloads go through `downloader`.
    pub fn new(
        config: ProxyConfig,
        limits: shoal_p2p::net::Limits,
        data_dir: &Path,
        downloader: Arc<Downloader>,
        registry: &mut Registry,
    ) -> Result<Proxy, Error> {
        shoal_p2p::install_crypto_provider();
        let compiled = config.compile().map_err(Error::Config)?;
        let ca = if compiled.hijack.is_empty() {
            None
        } else {
            let (cert, key) = ca_paths(&config, data_dir);
            let (ca, created) = Ca::load_or_create(&cert, &key)?;
            if created {
                tracing::info!(cert = %cert.display(), "created a CA for HTTPS hijack; clients must trust it (see `shoal ca`)");
            }
            Some(ca)
        };
        // Upstreams are trusted as the origin client trusts them (system CAs plus
        // `origin.ca_certs`).
        let builder = || {
            downloader
                .origin_config()
                .client_builder()
                .map_err(|e| Error::Config(e.to_string()))
                .map(|b| {
                    // The origin's bound on silence while reading: no upstream answer (a
                    // passthrough, an access check) can hang a client's request for ever.
                    let read = downloader.origin_config().read_timeout;
                    b.connect_timeout(config.connect_timeout).read_timeout(read)
                })
        };
        let built = |r: reqwest::Result<reqwest::Client>| {
            r.map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))
        };
        // Redirects are the client's to follow, except when asking whether a client may read a
        // URL: then its answer is where the redirects end (credentials dropped across hosts).
        let client = built(
            builder()?
                .redirect(reqwest::redirect::Policy::none())
                .pool_max_idle_per_host(32)
                .build(),
        )?;
        let probe = built(
            builder()?
                .redirect(reqwest::redirect::Policy::limited(10))
                .build(),
        )?;
        Ok(Proxy {
            ctx: Arc::new(Ctx {
                access: Access::new(config.auth_cache_ttl, probe),
                manifests: crate::manifests::Manifests::new(data_dir),
                limits,
                compiled,
                downloader,
                client,
                ca,
                metrics: ProxyMetrics::register(registry),
                config,
            }),
        })
    }

    /// Binds the configured address.
    pub async fn bind(&self) -> Result<TcpListener, Error> {
        let addr = self.ctx.config.listen;
        TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })
    }

    /// Serves on `listener` until `shutdown` resolves.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let ctx = self.ctx;
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, default_registry = %ctx.compiled.default_registry, "registry mirror and proxy listening");
        }
        let server_limits = ctx.limits;
        shoal_p2p::net::accept_loop(listener, &server_limits, "proxy", shutdown, |conn| {
            let ctx = ctx.clone();
            let limits = http1::Limits {
                header_timeout: Some(ctx.limits.header_timeout),
                max_head: ctx.limits.max_header_bytes,
            };
            let simple = {
                let ctx = ctx.clone();
                move |req| proxy::handle(ctx.clone(), req, None)
            };
            // Pushes, CONNECT and whatever the simple path does not parse: hyper.
            let hyper = move |io| async move {
                let svc = {
                    let ctx = ctx.clone();
                    service_fn(move |req| entry(ctx.clone(), req))
                };
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(ctx.limits.header_timeout)
                    .max_buf_size(ctx.limits.max_header_bytes)
                    .serve_connection(TokioIo::new(io), svc)
                    .with_upgrades()
                    .await;
            };
            async move {
                let shoal_p2p::net::Conn { stream, slot } = conn;
                http1::serve(stream, limits, Some(&slot), simple, hyper).await;
            }
        })
        .await;
    }
}

fn ca_paths(config: &ProxyConfig, data_dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = default_ca_paths(data_dir);
    (
        config.hijack.ca_cert.clone().unwrap_or(cert),
        config.hijack.ca_key.clone().unwrap_or(key),
    )
}

async fn entry(
    ctx: Arc<Ctx>,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    if req.method() == Method::CONNECT {
        if proxy::head_size(&req) > ctx.limits.max_header_bytes {
            return Ok(empty(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
        }
        return Ok(connect(ctx, req).await);
    }
    Ok(proxy::handle(ctx, req, None).await)
}

/// `CONNECT host:port`: TLS terminated here for hijacked hosts, else a plain tunnel.
async fn connect(ctx: Arc<Ctx>, req: Request<Incoming>) -> Response<Body> {
    let Some(target) = req.uri().authority().map(|a| a.to_string()) else {
        return Error::BadTarget("CONNECT needs host:port".into()).into_response();
    };
    let hijack = ctx.ca.is_some() && ctx.compiled.hijack.iter().any(|r| r.is_match(&target));
    if hijack {
        let host = req.uri().host().unwrap_or_default().to_string();
        let base = match route::registry_for_host(&ctx.compiled, &target) {
            Ok(u) => u,
            Err(e) => return Error::BadTarget(e).into_response(),
        };
        ctx.metrics.request(Kind::Hijack);
        tokio::spawn(async move {
            match hyper::upgrade::on(req).await {
                Ok(upgraded) => serve_hijacked(ctx, upgraded, &host, base).await,
                Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
            }
        });
        return empty(StatusCode::OK);
    }
    // (A hijacked connection's requests are checked as they come, against the upstream they go to.)
    if !ctx.compiled.allows(&target) {
        return Error::NotAllowed(target).into_response();
    }
    ctx.metrics.request(Kind::Tunnel);
    let upstream =
        match tokio::time::timeout(ctx.config.connect_timeout, TcpStream::connect(&target)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%target, error = %e, "CONNECT target unreachable");
                return empty(StatusCode::BAD_GATEWAY);
            }
            Err(_) => return empty(StatusCode::GATEWAY_TIMEOUT),
        };
    tokio::spawn(async move {
        let mut upstream = upstream;
        if let Ok(upgraded) = hyper::upgrade::on(req).await {
            let mut client = TokioIo::new(upgraded);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        }
    });
    empty(StatusCode::OK)
}

/// Terminates the client's TLS with a certificate for `host` and serves its requests as
/// requests for `base`.
async fn serve_hijacked(ctx: Arc<Ctx>, upgraded: hyper::upgrade::Upgraded, host: &str, base: Url) {
    let Some(ca) = &ctx.ca else { return };
    let config = match ca.server_config(host) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot hijack");
            return;
        }
    };
    let accept = tokio_rustls::TlsAcceptor::from(config).accept(TokioIo::new(upgraded));
    let tls = match tokio::time::timeout(ctx.limits.header_timeout, accept).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%host, error = %e, "TLS handshake with the client failed (does it trust Shoal's CA?)");
            return;
        }
        Err(_) => return,
    };
    let svc = {
        let ctx = ctx.clone();
        service_fn(move |req| {
            let response = proxy::handle(ctx.clone(), req, Some(base.clone()));
            async move { Ok::<_, std::convert::Infallible>(response.await) }
        })
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(ctx.limits.header_timeout)
        .max_buf_size(ctx.limits.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(ctx.limits.max_header_bytes as u32)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
}
