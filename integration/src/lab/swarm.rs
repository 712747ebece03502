//! The swarm benchmark: N client hosts fetch one blob at the same moment (or, with
//! `pull_layers`, pull one image with containerd's `ctr images pull --hosts-dir`), by each
//! scenario in turn, every link shaped to the same rate. Each scenario starts from a clean state (fresh
//! caches, fresh Shoal stores, the page cache dropped); only the origin registry stays.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};

use crate::cluster::ClusterCa;

use super::services::{self, NGINX_PORT, Node, REGISTRY_PORT, REPO, Service};
use super::{Host, Lab, Shape, Zone};
use crate::process::peak_rss_kib;

mod clients;
mod cpu;
mod outcome;
mod preheat;
mod scenario;

use clients::{drop_page_cache, reset_dir, run_clients, sha256_file};

pub use outcome::{Outcome, table};
pub use scenario::{Fault, Params, Scenario};

/// What the clients fetch.
enum Target {
    /// One blob by digest, with curl or `shoal get`.
    Blob(String),
    /// An image with containerd (ctr), through each scenario's registry endpoint.
    Image,
}

/// The lab's hosts for the swarm benchmark.
struct Hosts {
    origin: Host,
    cache: Host,
    schedulers: Vec<Host>,
    seed: Host,
    clients: Vec<Host>,
    /// The cluster CA of the `shoal` scenario.
    ca: ClusterCa,
    /// With two zones: the second one, and the first client in it (those after it too);
    /// everything else is in the first.
    zone: Option<(Zone, usize)>,
}

impl Hosts {
    /// The second zone if the `i`-th client is in it.
    fn second_zone(&self, client: usize) -> Option<&Zone> {
        let (zone, first) = self.zone.as_ref()?;
        (client >= *first).then_some(zone)
    }

    /// The zone label of the `i`-th client (`None`: the seed), with two zones.
    fn zone_of(&self, client: Option<usize>) -> Option<&'static str> {
        self.zone.as_ref()?;
        Some(match client.and_then(|i| self.second_zone(i)) {
            Some(_) => "b",
            None => "a",
        })
    }
}

/// Builds the hosts, stores the blob in the origin registry, and runs every scenario.
pub fn run(lab: &mut Lab, params: &Params) -> anyhow::Result<Vec<Outcome>> {
    ensure!(params.hosts > 0, "need at least one host");
    ensure!(params.size > 0, "size must be positive");
    ensure!(params.schedulers > 0, "need at least one scheduler");
    let shape = Some(Shape::rate(params.rate_bits_per_s));
    let mut hosts = Hosts {
        origin: lab.add_host("origin", shape)?,
        cache: lab.add_host("cache", shape)?,
        schedulers: (1..=params.schedulers)
            .map(|i| match i {
                1 => lab.add_host("scheduler", shape),
                i => lab.add_host(&format!("scheduler{i}"), shape),
            })
            .collect::<anyhow::Result<_>>()?,
        seed: lab.add_host("seed", shape)?,
        clients: Vec::new(),
        ca: ClusterCa::init(&lab.dir().join("ca")),
        zone: match params.zone_rate {
            // The second half of the clients.
            Some(rate) => Some((
                lab.add_zone("b", Shape::rate(rate))?,
                params.hosts - params.hosts / 2,
            )),
            None => None,
        },
    };
    for i in 0..params.hosts {
        let h = lab.add_host_in(&format!("h{}", i + 1), shape, hosts.second_zone(i))?;
        hosts.clients.push(h);
    }
    let hosts = hosts;
    if let Some(Fault::Loss(p)) = params.fault {
        lab.lose(&hosts.clients[0], p)?;
    }
    let root = hosts.origin.dir.join("registry");
    let size = usize::try_from(params.size).context("size")?;
    let (target, size) = match params.pull_layers {
        None => {
            let data = crate::random_bytes(size);
            (
                Target::Blob(crate::registry::store_blob(&root, REPO, &data)?),
                params.size,
            )
        }
        Some(n) => {
            ensure!(n > 0, "an image needs a layer");
            ensure!(
                params.fault != Some(Fault::CorruptPeer),
                "the corrupt-peer fault is for blob runs"
            );
            let sizes: Vec<usize> = (0..n)
                .map(|i| size / n + usize::from(i < size % n))
                .collect();
            let image = crate::registry::Image::random(&sizes);
            crate::registry::store_image(&root, REPO, "v1", &image)?;
            let total = std::iter::once(&image.config)
                .chain(&image.layers)
                .map(|b| b.len() as u64)
                .sum();
            (Target::Image, total)
        }
    };
    let params = &Params {
        size,
        ..params.clone()
    };
    let mut origin = Some(services::registry(&hosts.origin, &root, None)?);
    let mut out = Vec::new();
    for &scenario in &params.scenarios {
        if origin.is_none() {
            // The last scenario's fault stopped it.
            origin = Some(services::registry(&hosts.origin, &root, None)?);
        }
        eprintln!("lab: {} ({} hosts)", scenario.name(), params.hosts);
        let outcome = run_one(lab, scenario, params, &hosts, &target, &mut origin)
            .with_context(|| format!("scenario {}", scenario.name()))?;
        out.push(outcome);
    }
    Ok(out)
}

fn blob_path(digest: &str) -> String {
    format!("/v2/{REPO}/blobs/{digest}")
}

fn run_one(
    lab: &Lab,
    scenario: Scenario,
    params: &Params,
    hosts: &Hosts,
    target: &Target,
    origin: &mut Option<Service>,
) -> anyhow::Result<Outcome> {
    let digest = match target {
        Target::Blob(d) => d.as_str(),
        Target::Image => "",
    };
    let path = blob_path(digest);
    let outputs: Vec<PathBuf> = hosts.clients.iter().map(|h| h.dir.join("blob")).collect();
    for h in [&hosts.cache, &hosts.seed]
        .into_iter()
        .chain(&hosts.clients)
    {
        reset_dir(&h.dir)?;
    }
    drop_page_cache();
    let origin_url = format!("http://{}:{REGISTRY_PORT}", hosts.origin.ip);
    // Services of this scenario, stopped when it ends.
    let mut cache: Option<Service> = None;
    let mut schedulers: Vec<Service> = Vec::new();
    let mut seed: Option<Node> = None;
    let mut daemons: Vec<Node> = Vec::new();
    let url = match scenario {
        Scenario::Direct => format!("{origin_url}{path}"),
        Scenario::Pullthrough => {
            let root = hosts.cache.dir.join("registry");
            cache = Some(services::registry(&hosts.cache, &root, Some(&origin_url))?);
            format!("http://{}:{REGISTRY_PORT}{path}", hosts.cache.ip)
        }
        Scenario::Nginx => {
            cache = Some(services::nginx_cache(&hosts.cache, &origin_url)?);
            format!("http://{}:{NGINX_PORT}{path}", hosts.cache.ip)
        }
        s if s.is_shoal() => {
            let ca = scenario.tls().then_some(&hosts.ca);
            for h in &hosts.schedulers {
                schedulers.push(services::scheduler(h, ca)?);
            }
            let zone = |client| match hosts.zone_of(client) {
                Some(z) => format!("labels = {{ zone = {z:?} }}\n"),
                None => String::new(),
            };
            seed = Some(Node::start_with(
                &hosts.seed,
                &hosts.schedulers,
                &hosts.origin,
                true,
                ca,
                &zone(None),
            )?);
            // `shoal pull` makes the layers in the node's snapshotter.
            let extra = match (target, scenario.snapshotter()) {
                (Target::Image, true) => "[snapshotter]\nenabled = true\n",
                _ => "",
            };
            let mut swarm = scenario.swarm_settings().to_owned();
            for line in &params.swarm_settings {
                swarm += line;
                swarm.push('\n');
            }
            for (i, h) in hosts.clients.iter().enumerate() {
                let ss = &hosts.schedulers;
                let extra = format!("{swarm}{}{extra}", zone(Some(i)));
                daemons.push(Node::start_with(h, ss, &hosts.origin, false, ca, &extra)?);
            }
            format!("{origin_url}{path}")
        }
        _ => unreachable!("every scenario but Shoal's is matched above"),
    };
    // For image pulls: a containerd per client, and its hosts.toml naming this scenario's
    // registry endpoint.
    let mut containerds = Vec::new();
    if let Target::Image = target {
        for h in &hosts.clients {
            let endpoint = match scenario {
                Scenario::Direct => origin_url.clone(),
                Scenario::Pullthrough => format!("http://{}:{REGISTRY_PORT}", hosts.cache.ip),
                Scenario::Nginx => format!("http://{}:{NGINX_PORT}", hosts.cache.ip),
                _ => format!("http://{}:{}", h.ip, services::PROXY_PORT),
            };
            crate::runtimes::hosts_toml(
                &h.dir.join("hosts"),
                services::LAB_REGISTRY,
                None,
                &endpoint,
            );
            let plugin = match scenario.snapshotter() {
                true => format!(
                    "[proxy_plugins.shoal]\n  type = \"snapshot\"\n  address = {:?}\n",
                    h.dir.join("store/snapshotter.sock")
                ),
                false => String::new(),
            };
            containerds.push(crate::runtimes::Containerd::spawn_with(
                &h.dir.join("containerd"),
                &plugin,
            )?);
        }
    }
    let reference = format!("{}/{REPO}:v1", services::LAB_REGISTRY);
    let shoal_pull = |i: usize, store: &std::path::Path| {
        let h = &hosts.clients[i];
        let mut c = h.command(crate::process::shoal_bin());
        c.args(["pull", &reference, "--address"])
            .arg(&containerds[i].socket)
            .arg("--data-dir")
            .arg(store)
            .arg("--mirror")
            .arg(format!("http://{}:{}", h.ip, services::PROXY_PORT));
        c
    };
    let commands: Vec<Command> = match scenario {
        Scenario::ShoalPreheat => {
            ensure!(
                matches!(target, Target::Image),
                "shoal-preheat preheats an image: give --pull-layers"
            );
            vec![preheat::command(hosts)?]
        }
        _ => hosts
            .clients
            .iter()
            .zip(&outputs)
            .enumerate()
            .map(|(i, (h, out))| match (target, scenario) {
                (Target::Image, s) if s.snapshotter() => shoal_pull(i, &daemons[i].store),
                (Target::Image, _) => {
                    // ctr itself fetches (containerd only stores): it runs inside the host.
                    let mut c = h.command("ctr");
                    c.arg("--address")
                        .arg(&containerds[i].socket)
                        .args(["images", "pull", "--hosts-dir"])
                        .arg(h.dir.join("hosts"))
                        .arg(&reference);
                    c
                }
                (Target::Blob(_), s) if s.is_shoal() => daemons[i].get(&url, out),
                (Target::Blob(_), _) => {
                    let mut c = h.command("curl");
                    c.args(["-sSf", "-o"]).arg(out).arg(&url);
                    c
                }
            })
            .collect(),
    };
    let before = hosts.origin.counters()?;
    let schedulers_before: u64 = (hosts.schedulers.iter())
        .map(|h| h.counters().map(|c| c.tx_bytes))
        .sum::<anyhow::Result<u64>>()?;
    let zone_before = match &hosts.zone {
        Some((z, _)) => Some(lab.zone_counters(z)?),
        None => None,
    };
    let ideal = params.size as f64 * 8.0 / params.rate_bits_per_s as f64;
    let deadline = Duration::from_secs_f64(ideal * 20.0 + 60.0);
    let fault = if scenario.is_shoal() {
        params.fault
    } else {
        None
    };
    let liar = match fault {
        Some(Fault::CorruptPeer) => {
            let tls = scenario.tls();
            Some(start_liar(hosts, tls, &url, params.size)?)
        }
        _ => None,
    };
    let no_origin = fault == Some(Fault::SeedNoOrigin);
    if no_origin {
        lab.unreachable(&hosts.seed, hosts.origin.ip, true)?;
    }
    let mut killed: Option<usize> = None;
    let mut restarted: Option<usize> = None;
    let mut holed = false;
    let owner = owner(
        hosts,
        matches!(target, Target::Blob(_)).then_some(url.as_str()),
    );
    let cpu_before = cpu::Machine::now();
    let results = run_clients(commands, deadline, |finished, elapsed| {
        match fault {
            Some(Fault::SchedulerBlackhole) if !holed && elapsed.as_secs_f64() > ideal / 4.0 => {
                eprintln!("lab: dropping every packet to and from {}", owner.name);
                if let Err(e) = lab.cut(owner, true) {
                    eprintln!("lab: {e:#}");
                }
                holed = true;
            }
            Some(Fault::DaemonRestart)
                if restarted.is_none() && elapsed.as_secs_f64() > ideal / 3.0 =>
            {
                let i = rand::random_range(0..daemons.len());
                let h = &hosts.clients[i];
                eprintln!(
                    "lab: killing the daemon of {} and starting it again",
                    h.name
                );
                daemons[i].svc.child.kill9();
                restarted = Some(i);
                let ca = scenario.tls().then_some(&hosts.ca);
                match Node::start(h, &hosts.schedulers, &hosts.origin, false, ca) {
                    Ok(node) => daemons[i] = node,
                    Err(e) => eprintln!("lab: {e:#}"),
                }
                return Some((i, Some(daemons[i].get(&url, &outputs[i]))));
            }
            Some(Fault::SeedKill(f)) => {
                let sent = hosts
                    .origin
                    .counters()
                    .map_or(0, |c| c.tx_bytes - before.tx_bytes);
                if seed.is_some() && sent as f64 >= f * params.size as f64 {
                    eprintln!("lab: killing the seed ({sent} bytes sent by the origin)");
                    seed.take();
                }
            }
            Some(Fault::ParentKill) if killed.is_none() && elapsed.as_secs_f64() > ideal / 3.0 => {
                let i = rand::random_range(0..daemons.len());
                eprintln!("lab: killing the daemon of {}", hosts.clients[i].name);
                daemons[i].svc.child.kill9();
                killed = Some(i);
                return Some((i, None));
            }
            Some(Fault::OriginGone) if finished > 0 && origin.is_some() => {
                eprintln!("lab: stopping the origin");
                origin.take();
            }
            _ => {}
        }
        None
    })?;
    let cpu_after = cpu::Machine::now();
    let shoal_ticks = scenario.is_shoal().then(|| {
        let pids = schedulers
            .iter()
            .map(|s| s.child.child.id())
            .chain(seed.iter().chain(&daemons).map(|n| n.svc.child.child.id()));
        pids.map(cpu::process_ticks)
            .fold((0, 0), |(u, s), (pu, ps)| (u + pu, s + ps))
    });
    let cpu = cpu::Cpu::between(cpu_before, cpu_after, shoal_ticks);
    if holed {
        lab.cut(owner, false)?;
    }
    if no_origin {
        lab.unreachable(&hosts.seed, hosts.origin.ip, false)?;
    }
    let after = hosts.origin.counters()?;
    let schedulers_tx_bytes = (hosts.schedulers.iter())
        .map(|h| h.counters().map(|c| c.tx_bytes))
        .sum::<anyhow::Result<u64>>()?
        - schedulers_before;
    let zone_tx_bytes = match (&hosts.zone, zone_before) {
        (Some((z, _)), Some(b)) => Some(lab.zone_counters(z)?.tx_bytes - b.tx_bytes),
        _ => None,
    };
    let pull_after_preheat = match scenario {
        Scenario::ShoalPreheat => {
            let start = std::time::Instant::now();
            let out = shoal_pull(0, &daemons[0].store)
                .output()
                .context("shoal pull after the preheat")?;
            ensure!(
                out.status.success(),
                "shoal pull after the preheat: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let secs = start.elapsed().as_secs_f64();
            let sent = hosts.origin.counters()?.tx_bytes - after.tx_bytes;
            eprintln!(
                "lab: shoal pull on {} after the preheat: {secs:.2} s, {sent} bytes from the origin",
                hosts.clients[0].name
            );
            Some((secs, sent))
        }
        _ => None,
    };
    let corrupt_peer_requests = liar.map(Liar::stop).transpose()?;
    let mut host_seconds = Vec::new();
    for (i, (r, out)) in results.into_iter().zip(&outputs).enumerate() {
        if killed == Some(i) {
            continue;
        }
        let secs = r.with_context(|| format!("host {}", hosts.clients[i].name))?;
        // ctr checked every blob's digest itself.
        if let Target::Blob(digest) = target {
            let got = sha256_file(out)?;
            ensure!(
                got == *digest,
                "host {} got {got}, not {digest}",
                hosts.clients[i].name
            );
        }
        host_seconds.push(secs);
    }
    let mut by_source = BTreeMap::new();
    let (mut peak_rss, mut seed_peak_rss) = (None, None);
    if scenario.is_shoal() {
        for (i, d) in daemons.iter().enumerate() {
            if killed == Some(i) {
                continue;
            }
            for src in ["origin", "peer", "seed", "cache"] {
                *by_source.entry(src.to_owned()).or_default() +=
                    d.metric(&format!("shoal_download_bytes_total{{source=\"{src}\"}}"));
            }
        }
        let rss = |n: &Node| peak_rss_kib(n.svc.child.child.id());
        peak_rss = daemons.iter().filter_map(rss).max();
        seed_peak_rss = seed.as_ref().and_then(rss);
    }
    if let Some(i) = restarted {
        let d = &daemons[i];
        let after_restart: u64 = ["origin", "peer", "seed"]
            .iter()
            .map(|src| d.metric(&format!("shoal_download_bytes_total{{source=\"{src}\"}}")))
            .sum();
        eprintln!(
            "lab: the restarted daemon of {} fetched {after_restart} bytes after its restart \
             ({:.0} % of the blob)",
            hosts.clients[i].name,
            after_restart as f64 * 100.0 / params.size as f64
        );
    }
    drop((cache, schedulers, seed, daemons, containerds));
    for out in &outputs {
        let _ = std::fs::remove_file(out);
    }
    Ok(Outcome {
        name: scenario.name().to_owned(),
        mode: match target {
            Target::Blob(_) => "blob",
            Target::Image => "pull",
        }
        .to_owned(),
        hosts: params.hosts,
        size_bytes: params.size,
        rate_bits_per_s: params.rate_bits_per_s,
        host_seconds,
        ideal_seconds: ideal,
        origin_tx_bytes: after.tx_bytes.saturating_sub(before.tx_bytes),
        fault: fault.map(|f| format!("{f:?}")),
        daemon_bytes_by_source: by_source,
        corrupt_peer_requests,
        peak_rss_kib: peak_rss,
        seed_peak_rss_kib: seed_peak_rss,
        pull_after_preheat,
        cpu,
        zone_tx_bytes,
        schedulers_tx_bytes,
    })
}

/// A [`CorruptPeer`](crate::fakepeer::CorruptPeer) on the (otherwise idle) cache host.
struct Liar {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<anyhow::Result<u64>>,
}

/// The liar is a member of the cluster gone bad (with cluster TLS: a node's certificate).
fn start_liar(hosts: &Hosts, tls: bool, url: &str, size: u64) -> anyhow::Result<Liar> {
    let member = tls.then(|| hosts.ca.member("liar", &["node"]));
    let task = shoal_p2p::TaskId::for_url(&url.parse()?, &Default::default());
    let scheduler =
        services::scheduler_urls(std::slice::from_ref(owner(hosts, Some(url)))).remove(0);
    let ip = hosts.cache.ip.into();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let thread = hosts.cache.spawn_inside(move || async move {
        let peer = crate::fakepeer::CorruptPeer::join_at(&scheduler, member, ip, &task, size).await;
        let _ = ready_tx.send(());
        let _ = stopped.await;
        peer.requests.load(std::sync::atomic::Ordering::Relaxed)
    });
    ready
        .recv_timeout(Duration::from_secs(30))
        .context("the corrupt peer did not join the swarm")?;
    Ok(Liar { stop, thread })
}

impl Liar {
    /// Stops it; returns how many piece requests it answered.
    fn stop(self) -> anyhow::Result<u64> {
        let _ = self.stop.send(());
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the corrupt peer panicked"))?
    }
}

/// The scheduler host that owns the task of the blob at `url` (without one, as for an image's
/// several tasks: the first scheduler).
fn owner<'a>(hosts: &'a Hosts, url: Option<&str>) -> &'a Host {
    let urls = services::scheduler_urls(&hosts.schedulers);
    let index = match url.map(str::parse) {
        Some(Ok(url)) => {
            let task = shoal_p2p::TaskId::for_url(&url, &Default::default());
            (0..urls.len())
                .max_by_key(|&i| shoal_p2p::swarm::rendezvous(task.as_str(), &urls[i]))
                .unwrap_or(0)
        }
        _ => 0,
    };
    &hosts.schedulers[index]
}
