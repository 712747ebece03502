//! One scenario's outcome, and the table the `lab` command prints.

use std::collections::BTreeMap;

use serde::Serialize;

/// One scenario's outcome (the JSON the `lab` command writes has an array of these).
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub name: String,
    /// `blob` (one blob with curl / `shoal get`) or `pull` (an image with `ctr images pull`).
    pub mode: String,
    pub hosts: usize,
    pub size_bytes: u64,
    pub rate_bits_per_s: u64,
    /// Seconds from the common start to each host having the whole blob (hosts whose client
    /// was killed by a fault are left out).
    pub host_seconds: Vec<f64>,
    pub ideal_seconds: f64,
    /// Bytes the origin host's interface sent during the scenario.
    pub origin_tx_bytes: u64,
    pub fault: Option<String>,
    /// For `shoal`: bytes the client daemons got, by source.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub daemon_bytes_by_source: BTreeMap<String, u64>,
    /// For the `corrupt-peer` fault: piece requests the corrupt peer answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub corrupt_peer_requests: Option<u64>,
    /// For `shoal`: the largest peak RSS of the client daemons.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_kib: Option<u64>,
    /// For `shoal`: the seed's peak RSS (unless a fault killed it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed_peak_rss_kib: Option<u64>,
    /// For `shoal-preheat`: the pull on the first host after the preheat, its seconds and the
    /// bytes the origin sent meanwhile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull_after_preheat: Option<(f64, u64)>,
    /// What the clients' run cost the CPU (the machine's, and the Shoal processes').
    pub cpu: super::cpu::Cpu,
    /// Bytes the scheduler hosts sent during the run (views, jobs).
    pub schedulers_tx_bytes: u64,
    /// With two zones: the bytes that crossed the link into the second zone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone_tx_bytes: Option<u64>,
}

impl Outcome {
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.host_seconds.clone();
        v.sort_by(f64::total_cmp);
        v
    }
    pub fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }
    pub fn median(&self) -> f64 {
        let v = self.sorted();
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }
    pub fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }
    pub fn origin_ratio(&self) -> f64 {
        self.origin_tx_bytes as f64 / self.size_bytes as f64
    }
}

/// The results as the `lab` command prints them.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut s = format!(
        "{:<12} {:>5} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10} {:>12}\n",
        "scenario",
        "hosts",
        "size",
        "rate",
        "min s",
        "median s",
        "max s",
        "ideal s",
        "med/ideal",
        "max/ideal",
        "origin/size"
    );
    for o in outcomes {
        s += &format!(
            "{:<12} {:>5} {:>9} {:>9} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>10.2} {:>10.2} {:>12.3}\n",
            o.name,
            o.hosts,
            format!("{}MiB", o.size_bytes >> 20),
            format!("{}mbit", o.rate_bits_per_s / 1_000_000),
            o.min(),
            o.median(),
            o.max(),
            o.ideal_seconds,
            o.median() / o.ideal_seconds,
            o.max() / o.ideal_seconds,
            o.origin_ratio(),
        );
        let delivered = o.size_bytes as f64 * o.host_seconds.len() as f64 / f64::from(1 << 30);
        s += &format!("    {}\n", o.cpu.line(delivered));
        if o.schedulers_tx_bytes > 1 << 20 {
            s += &format!(
                "    schedulers sent {:.1} MiB\n",
                o.schedulers_tx_bytes as f64 / f64::from(1 << 20)
            );
        }
        if let Some(b) = o.zone_tx_bytes {
            s += &format!(
                "    into zone b: {:.3} copies ({b} bytes)\n",
                b as f64 / o.size_bytes as f64
            );
        }
    }
    s
}
