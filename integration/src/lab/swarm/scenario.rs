//! What a swarm run compares (scenarios), what it breaks (faults), and its parameters.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Every host GETs the blob from the origin registry.
    Direct,
    /// Through distribution's pull-through cache on its own host.
    Pullthrough,
    /// Through nginx with `proxy_cache_lock` on its own host.
    Nginx,
    /// Scheduler and seed on their own hosts, a daemon on every client host; cluster TLS on.
    Shoal,
    /// The same with `[cluster] insecure = true`: plaintext, to measure what TLS costs.
    ShoalPlaintext,
    /// The same (TLS on) with `[swarm] cut_through = false`: a piece is passed on only once
    /// stored, to measure what cut-through relaying gives.
    ShoalStoreForward,
    /// Image pulls only: `ctr images pull` through the Shoal node's mirror (the `shoal`
    /// scenario pulls with `shoal pull` through the node's snapshotter).
    ShoalCtr,
    /// Images only: `shoal preheat --scope all_peers --wait` through the scheduler's API (its
    /// time is the one host time), then one `shoal pull` on the first host, whose origin bytes
    /// are counted.
    ShoalPreheat,
}

impl Scenario {
    pub const ALL: [Scenario; 4] = [
        Scenario::Direct,
        Scenario::Pullthrough,
        Scenario::Nginx,
        Scenario::Shoal,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Direct => "direct",
            Scenario::Pullthrough => "pullthrough",
            Scenario::Nginx => "nginx",
            Scenario::Shoal => "shoal",
            Scenario::ShoalPlaintext => "shoal-plaintext",
            Scenario::ShoalStoreForward => "shoal-store-forward",
            Scenario::ShoalCtr => "shoal-ctr",
            Scenario::ShoalPreheat => "shoal-preheat",
        }
    }

    /// Whether Shoal serves this scenario (its daemons fetch, its faults apply).
    pub fn is_shoal(self) -> bool {
        matches!(
            self,
            Scenario::Shoal
                | Scenario::ShoalPlaintext
                | Scenario::ShoalStoreForward
                | Scenario::ShoalCtr
                | Scenario::ShoalPreheat
        )
    }

    /// Whether the Shoal cluster talks TLS.
    pub fn tls(self) -> bool {
        matches!(
            self,
            Scenario::Shoal
                | Scenario::ShoalStoreForward
                | Scenario::ShoalCtr
                | Scenario::ShoalPreheat
        )
    }

    /// Whether image pulls go through the node's snapshotter (`shoal pull`).
    pub fn snapshotter(self) -> bool {
        matches!(
            self,
            Scenario::Shoal
                | Scenario::ShoalPlaintext
                | Scenario::ShoalStoreForward
                | Scenario::ShoalPreheat
        )
    }

    /// The nodes' `[swarm]` settings this scenario changes.
    pub fn swarm_settings(self) -> &'static str {
        match self {
            Scenario::ShoalStoreForward => "cut_through = false\n",
            _ => "",
        }
    }
}

impl std::str::FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Scenario::ALL
            .into_iter()
            .chain([
                Scenario::ShoalPlaintext,
                Scenario::ShoalStoreForward,
                Scenario::ShoalCtr,
                Scenario::ShoalPreheat,
            ])
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown scenario {s:?} (direct, pullthrough, nginx, shoal, shoal-plaintext, \
                     shoal-store-forward, shoal-ctr, shoal-preheat)"
                )
            })
    }
}

/// A fault injected into the `shoal` scenario.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    /// Kill the seed (SIGKILL) once the origin has sent this fraction of the blob.
    SeedKill(f64),
    /// Kill one client host's daemon (chosen at random) once the clients hold about a third of
    /// the blob; the other hosts must complete.
    ParentKill,
    /// Stop the origin registry as soon as the first host has the whole blob.
    OriginGone,
    /// Drop this percentage of the packets sent to one client host.
    Loss(f64),
    /// A peer that claims every piece and serves random bytes joins the swarm before the
    /// clients start.
    CorruptPeer,
    /// Drop every packet to and from the scheduler that owns the blob's task (not refused:
    /// lost, its switch port down) once the clients hold about a quarter of the blob.
    SchedulerBlackhole,
    /// The seed cannot reach the origin (from the start): its jobs fail at once.
    SeedNoOrigin,
    /// Kill one client host's daemon (SIGKILL, chosen at random) once the clients hold about a
    /// third of the blob, start it again and run its client again: it must resume, not start
    /// over.
    DaemonRestart,
}

impl std::str::FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, arg) = s.split_once(':').unwrap_or((s, ""));
        let num = |default: f64| -> Result<f64, String> {
            if arg.is_empty() {
                return Ok(default);
            }
            arg.trim_end_matches('%')
                .parse()
                .map_err(|_| format!("bad number in fault {s:?}"))
        };
        match name {
            "seed-kill" => Ok(Fault::SeedKill(num(0.3)?)),
            "parent-kill" => Ok(Fault::ParentKill),
            "origin-gone" => Ok(Fault::OriginGone),
            "loss" => Ok(Fault::Loss(num(1.0)?)),
            "corrupt-peer" => Ok(Fault::CorruptPeer),
            "scheduler-blackhole" => Ok(Fault::SchedulerBlackhole),
            "seed-no-origin" => Ok(Fault::SeedNoOrigin),
            "daemon-restart" => Ok(Fault::DaemonRestart),
            _ => Err(format!(
                "unknown fault {s:?} (seed-kill[:FRACTION], parent-kill, origin-gone, \
                 loss[:PERCENT], corrupt-peer, scheduler-blackhole, seed-no-origin, \
                 daemon-restart)"
            )),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Params {
    pub hosts: usize,
    pub size: u64,
    pub rate_bits_per_s: u64,
    /// Schedulers of the shoal scenario, each on its own host, sharing the tasks.
    pub schedulers: usize,
    pub scenarios: Vec<Scenario>,
    pub fault: Option<Fault>,
    /// Pull an image of this many layers (`size` in all) with ctr instead of fetching one blob.
    pub pull_layers: Option<usize>,
    /// More `[swarm]` settings of the Shoal scenarios' nodes (`key = value` lines).
    pub swarm_settings: Vec<String>,
    /// Two zones joined by a link of this rate: origin, cache, schedulers, seed and the first
    /// half of the clients in zone `a`, the second half in zone `b` (nodes labelled so).
    pub zone_rate: Option<u64>,
}
