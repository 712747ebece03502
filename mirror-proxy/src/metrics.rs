//! The proxy's metrics (no task ids, digests or URLs as labels).

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// What became of a request.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Kind {
    /// A registry blob served from a swarm task.
    Blob,
    /// A URL matching a proxy rule served from a swarm task.
    Rule,
    /// A manifest by tag or digest (kept for when the registry is down).
    Manifest,
    /// Sent straight to the upstream.
    Pass,
    /// A CONNECT tunnelled untouched.
    Tunnel,
    /// A CONNECT whose TLS was terminated here.
    Hijack,
}

impl EncodeLabelValue for Kind {
    fn encode(&self, enc: &mut LabelValueEncoder) -> std::fmt::Result {
        enc.write_str(match self {
            Kind::Blob => "blob",
            Kind::Rule => "rule",
            Kind::Manifest => "manifest",
            Kind::Pass => "pass",
            Kind::Tunnel => "tunnel",
            Kind::Hijack => "hijack",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: Kind,
}

#[derive(Clone, Debug, Default)]
pub struct ProxyMetrics {
    pub requests: Family<KindLabel, Counter>,
    /// Task bytes sent to clients.
    pub served_bytes: Counter,
}

impl ProxyMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = ProxyMetrics::default();
        // Every series exists from the start (at 0), for dashboards.
        use Kind::*;
        for kind in [Blob, Rule, Manifest, Pass, Tunnel, Hijack] {
            let _ = m.requests.get_or_create(&KindLabel { kind });
        }
        registry.register(
            "shoal_proxy_requests",
            "Mirror and proxy requests, by what became of them",
            m.requests.clone(),
        );
        registry.register(
            "shoal_proxy_served_bytes",
            "Bytes of swarm tasks sent to mirror and proxy clients",
            m.served_bytes.clone(),
        );
        m
    }

    pub fn request(&self, kind: Kind) {
        self.requests.get_or_create(&KindLabel { kind }).inc();
    }
}
