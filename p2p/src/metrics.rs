//! The node's Prometheus metrics. Labels never carry task ids or digests.

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Where downloaded bytes came from.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Source {
    Origin = 0,
    /// Another daemon.
    Peer = 1,
    /// A seed peer.
    Seed = 2,
    Cache = 3,
}

/// Bytes by where they came from: one download's, or a pull's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BySource {
    pub origin: u64,
    pub peer: u64,
    pub seed: u64,
    pub cache: u64,
}

impl BySource {
    pub fn total(&self) -> u64 {
        self.origin + self.peer + self.seed + self.cache
    }
}

impl From<BySource> for crate::proto::Traffic {
    fn from(b: BySource) -> Self {
        crate::proto::Traffic {
            origin: b.origin,
            peer: b.peer,
            seed: b.seed,
            cache: b.cache,
        }
    }
}

impl EncodeLabelValue for Source {
    fn encode(&self, enc: &mut LabelValueEncoder) -> std::fmt::Result {
        enc.write_str(match self {
            Source::Origin => "origin",
            Source::Peer => "peer",
            Source::Seed => "seed",
            Source::Cache => "cache",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: Source,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Error,
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, enc: &mut LabelValueEncoder) -> std::fmt::Result {
        enc.write_str(match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: Outcome,
}

/// Download-side metrics, cheap to clone (counters are shared).
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// Bytes received for tasks, by source (origin bytes include retried pieces).
    pub download_bytes: Family<SourceLabel, Counter>,
    /// Download requests finished, by outcome.
    pub downloads: Family<OutcomeLabel, Counter>,
    /// Downloads in progress.
    pub active_downloads: Gauge,
    /// Piece bytes sent to other peers.
    pub upload_bytes: Counter,
    /// Pieces the upload server began sending while they were still arriving here.
    pub relayed_pieces: Counter,
}

impl Metrics {
    /// Metrics registered under `shoal_` in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics::default();
        // Every series exists from the start (at 0): a dashboard's rates and ratios see a new
        // node before its first download.
        for source in [Source::Origin, Source::Peer, Source::Seed, Source::Cache] {
            let _ = m.download_bytes.get_or_create(&SourceLabel { source });
        }
        for outcome in [Outcome::Ok, Outcome::Error] {
            let _ = m.downloads.get_or_create(&OutcomeLabel { outcome });
        }
        registry.register(
            "shoal_download_bytes",
            "Bytes received for tasks, by source",
            m.download_bytes.clone(),
        );
        registry.register(
            "shoal_downloads",
            "Download requests finished, by outcome",
            m.downloads.clone(),
        );
        registry.register(
            "shoal_upload_bytes",
            "Piece bytes sent to other peers",
            m.upload_bytes.clone(),
        );
        registry.register(
            "shoal_relayed_pieces",
            "Pieces sent to other peers while still arriving here (cut-through)",
            m.relayed_pieces.clone(),
        );
        registry.register(
            "shoal_active_downloads",
            "Downloads in progress",
            m.active_downloads.clone(),
        );
        m
    }

    pub fn bytes(&self, source: Source, n: u64) {
        self.download_bytes
            .get_or_create(&SourceLabel { source })
            .inc_by(n);
    }

    /// Everything received so far, by source.
    pub fn received(&self) -> BySource {
        BySource {
            origin: self.bytes_from(Source::Origin),
            peer: self.bytes_from(Source::Peer),
            seed: self.bytes_from(Source::Seed),
            cache: self.bytes_from(Source::Cache),
        }
    }

    pub fn bytes_from(&self, source: Source) -> u64 {
        self.download_bytes
            .get_or_create(&SourceLabel { source })
            .get()
    }
}
