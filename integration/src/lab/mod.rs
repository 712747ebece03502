//! The lab: many hosts on one machine.
//!
//! A [`Lab`] makes network namespaces (needs root and iproute2): one holding a bridge, and one per
//! host joined to it by a veth pair. Each host has one interface, `eth0`, with an address in
//! `10.77.0.0/16`, which exists only inside the namespaces the lab made. A host's link can be
//! shaped with `tc tbf` on both ends (the host's egress is its upload, the bridge side's egress
//! its download), queueing in Linux's default qdisc, `pfifo_fast` (three bands by the sockets'
//! priority, so a queue full of bulk uploads does not hold back a download's ACKs, as on a real
//! host), of [`Shape::queue_ms`] at the rate. Processes run inside a host with `ip netns exec`.
//!
//! Names carry the lab process's pid (`shoal-lab-<pid>-<host>`), so runs never collide and
//! [`clean_stale`] can remove what a killed run left behind. Dropping the lab (also while
//! unwinding from a panic; the `lab` command drops it on Ctrl-C) kills every process inside its
//! namespaces, by pid, and deletes the namespaces.

pub mod services;
pub mod swarm;

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, ensure};

const PREFIX: &str = "shoal-lab-";

/// How a host's link is shaped, in each direction.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub rate_bits_per_s: u64,
    /// How long the shaper's queue is, at the rate (full-sized packets).
    pub queue_ms: u32,
}

impl Shape {
    pub fn rate(rate_bits_per_s: u64) -> Shape {
        Shape {
            rate_bits_per_s,
            queue_ms: 50,
        }
    }

    /// The token bucket: 10 ms at the rate, at least 64 KiB (a GSO packet must fit).
    fn burst_bytes(&self) -> u64 {
        (self.rate_bits_per_s / 8 / 100).max(64 * 1024)
    }
}

/// One host: a network namespace with `eth0` on the lab's bridge, and a directory of its own.
#[derive(Clone, Debug)]
pub struct Host {
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
    pub dir: PathBuf,
    /// The bridge side of the host's veth pair (in the bridge namespace).
    port: String,
}

/// Bytes an interface has received and sent.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

impl Host {
    /// `program` to be run inside this host.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns]).arg(program);
        cmd
    }

    /// The byte counters of the host's `eth0`.
    pub fn counters(&self) -> anyhow::Result<Counters> {
        link_counters(&self.ns, "eth0")
    }

    /// Runs `f`'s future on a new thread that has entered this host's network namespace, on a
    /// single-threaded runtime: every socket the future opens is the host's. For fakes of our own
    /// services that live in the lab process.
    pub fn spawn_inside<F, Fut>(&self, f: F) -> std::thread::JoinHandle<anyhow::Result<Fut::Output>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future,
        Fut::Output: Send + 'static,
    {
        let path = format!("/run/netns/{}", self.ns);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).with_context(|| path.clone())?;
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("entering {path}"))?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            Ok(rt.block_on(f()))
        })
    }

    /// A GET with curl from inside this host; the body on a 2xx answer.
    pub fn http_get(&self, url: &str) -> anyhow::Result<String> {
        let out = self
            .command("curl")
            .args(["-sSf", "--max-time", "10", url])
            .output()
            .context("curl")?;
        ensure!(
            out.status.success(),
            "GET {url} from {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// A set of hosts on one bridge; everything it made is removed when it is dropped.
pub struct Lab {
    run: String,
    bridge_ns: String,
    hosts: Vec<Host>,
    dir: PathBuf,
    keep_dir: bool,
}

/// Runs `ip` with `args`; its stdout, or an error with its stderr.
fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (install iproute2)")?;
    ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn tc(ns: &str, dev: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev])
        .args(args)
        .output()
        .context("running tc (install iproute2)")?;
    ensure!(
        out.status.success(),
        "tc qdisc replace dev {dev} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Shapes `dev`'s egress in `ns`: `tbf` at the rate, queueing in `pfifo_fast` (see the
/// [module docs](self)).
fn shape_dev(ns: &str, dev: &str, shape: Shape) -> anyhow::Result<()> {
    let rate = format!("{}bit", shape.rate_bits_per_s);
    let burst = shape.burst_bytes().to_string();
    let latency = format!("{}ms", shape.queue_ms);
    let args = [
        "root", "handle", "1:", "tbf", "rate", &rate, "burst", &burst, "latency", &latency,
    ];
    let packets = (shape.rate_bits_per_s / 8 * u64::from(shape.queue_ms) / 1000 / 1514).max(16);
    // pfifo_fast takes its length from the device when it is made.
    ip(&[
        "-n",
        ns,
        "link",
        "set",
        dev,
        "txqueuelen",
        &packets.to_string(),
    ])?;
    tc(ns, dev, &args)?;
    tc(ns, dev, &["parent", "1:1", "handle", "10:", "pfifo_fast"])
}

/// The byte counters of `dev` in `ns`.
fn link_counters(ns: &str, dev: &str) -> anyhow::Result<Counters> {
    let out = ip(&["-n", ns, "-j", "-s", "link", "show", "dev", dev])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("ip -j output")?;
    let stats = &v[0]["stats64"];
    let get = |dir: &str| {
        stats[dir]["bytes"]
            .as_u64()
            .with_context(|| format!("no {dir} bytes in {out}"))
    };
    Ok(Counters {
        rx_bytes: get("rx")?,
        tx_bytes: get("tx")?,
    })
}

/// A second place in the lab (see [`Lab::add_zone`]).
#[derive(Clone, Debug)]
pub struct Zone {
    pub name: String,
    bridge: String,
    /// The lab bridge's end of the zone's link.
    link: String,
}

impl Lab {
    /// An empty lab with its bridge; host directories go under `dir` (a new temporary directory
    /// under /var/tmp when `None`, removed with the lab).
    pub fn new(dir: Option<&Path>) -> anyhow::Result<Lab> {
        ensure!(
            nix::unistd::geteuid().is_root(),
            "the lab makes network namespaces and needs root"
        );
        clean_stale()?;
        let run = format!("{PREFIX}{}", std::process::id());
        let (dir, keep_dir) = match dir {
            Some(d) => (d.to_path_buf(), true),
            None => (
                tempfile::Builder::new()
                    .prefix("shoal-lab-")
                    .tempdir_in("/var/tmp")
                    .context("lab directory")?
                    .keep(),
                false,
            ),
        };
        std::fs::create_dir_all(&dir).context("lab directory")?;
        let bridge_ns = format!("{run}-bridge");
        let lab = Lab {
            run,
            bridge_ns: bridge_ns.clone(),
            hosts: Vec::new(),
            dir,
            keep_dir,
        };
        ip(&["netns", "add", &bridge_ns])?;
        ip(&[
            "-n", &bridge_ns, "link", "add", "name", "br0", "type", "bridge",
        ])?;
        ip(&["-n", &bridge_ns, "link", "set", "br0", "up"])?;
        Ok(lab)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The lab's directory if it is a temporary one (removed with the lab).
    pub fn temporary_dir(&self) -> Option<&Path> {
        (!self.keep_dir).then_some(self.dir.as_path())
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Adds a host named `name` (letters, digits, `-`; unique in the lab), its link shaped to
    /// `shape` in both directions if given.
    pub fn add_host(&mut self, name: &str, shape: Option<Shape>) -> anyhow::Result<Host> {
        self.add_host_in(name, shape, None)
    }

    /// A second place (a zone, a data center): a bridge of its own, joined to the lab's bridge
    /// by one link shaped to `shape` in both directions. Its hosts reach every other host
    /// (one subnet), those of the lab's bridge only through that link.
    pub fn add_zone(&mut self, name: &str, shape: Shape) -> anyhow::Result<Zone> {
        ensure!(
            !name.is_empty() && name.len() <= 8 && name.chars().all(|c| c.is_ascii_alphanumeric()),
            "bad zone name {name:?}"
        );
        let br = self.bridge_ns.as_str();
        let zone = Zone {
            name: name.to_owned(),
            bridge: format!("br-{name}"),
            link: format!("zl-{name}"),
        };
        let far = format!("zr-{name}");
        ip(&[
            "-n",
            br,
            "link",
            "add",
            "name",
            &zone.bridge,
            "type",
            "bridge",
        ])?;
        ip(&["-n", br, "link", "set", &zone.bridge, "up"])?;
        ip(&[
            "-n", br, "link", "add", "name", &zone.link, "type", "veth", "peer", "name", &far,
        ])?;
        ip(&["-n", br, "link", "set", &zone.link, "master", "br0", "up"])?;
        ip(&["-n", br, "link", "set", &far, "master", &zone.bridge, "up"])?;
        for dev in [zone.link.as_str(), far.as_str()] {
            shape_dev(br, dev, shape)?;
        }
        Ok(zone)
    }

    /// What crossed `zone`'s link: `tx_bytes` into the zone, `rx_bytes` out of it.
    pub fn zone_counters(&self, zone: &Zone) -> anyhow::Result<Counters> {
        link_counters(&self.bridge_ns, &zone.link)
    }

    /// [`add_host`](Self::add_host) on `zone`'s bridge (the lab's own when `None`).
    pub fn add_host_in(
        &mut self,
        name: &str,
        shape: Option<Shape>,
        zone: Option<&Zone>,
    ) -> anyhow::Result<Host> {
        ensure!(
            !name.is_empty()
                && name.len() <= 24
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "bad host name {name:?}"
        );
        ensure!(
            self.hosts.iter().all(|h| h.name != name),
            "host {name} exists"
        );
        let i = self.hosts.len();
        ensure!(i < 250 * 250, "too many hosts");
        let ns = format!("{}-{name}", self.run);
        let port = format!("p{i}");
        let ip_addr = Ipv4Addr::new(10, 77, (i / 250) as u8, (i % 250 + 1) as u8);
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir).context("host directory")?;
        ip(&["netns", "add", &ns])?;
        // Recorded before it is complete, so a failure below still deletes it.
        let host = Host {
            name: name.to_owned(),
            ns: ns.clone(),
            ip: ip_addr,
            dir,
            port: port.clone(),
        };
        self.hosts.push(host.clone());
        let br = self.bridge_ns.as_str();
        ip(&[
            "-n", br, "link", "add", "name", &port, "type", "veth", "peer", "name", "eth0",
            "netns", &ns,
        ])?;
        let bridge = zone.map_or("br0", |z| z.bridge.as_str());
        ip(&["-n", br, "link", "set", &port, "master", bridge, "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ip_addr}/16"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        if let Some(shape) = shape {
            self.shape(&host, shape)?;
        }
        Ok(host)
    }

    /// Shapes `host`'s link: `tbf` on the host's `eth0` (its upload) and on the bridge's side
    /// (its download), each queueing in `pfifo_fast` (see the [module docs](self)).
    pub fn shape(&self, host: &Host, shape: Shape) -> anyhow::Result<()> {
        for (ns, dev) in [(&host.ns, "eth0"), (&self.bridge_ns, host.port.as_str())] {
            shape_dev(ns, dev, shape)?;
        }
        Ok(())
    }

    /// Makes `to` unreachable from `host` (a blackhole route: its connects fail at once, as
    /// with a route or a certificate the host lacks), or reachable again.
    pub fn unreachable(&self, host: &Host, to: Ipv4Addr, on: bool) -> anyhow::Result<()> {
        let verb = if on { "add" } else { "del" };
        let dest = format!("{to}/32");
        ip(&["-n", &host.ns, "route", verb, "blackhole", &dest]).map(|_| ())
    }

    /// Cuts `host` off the bridge (`true`: every packet to and from it is dropped, not
    /// refused, as behind a dead switch port) or joins it again.
    pub fn cut(&self, host: &Host, cut: bool) -> anyhow::Result<()> {
        let state = if cut { "down" } else { "up" };
        ip(&["-n", &self.bridge_ns, "link", "set", &host.port, state]).map(|_| ())
    }

    /// Drops `percent` of the packets sent to `host`, at random: `netem loss` under the shaper on
    /// the bridge side of its link (which must be shaped). Needs the kernel's `sch_netem`.
    pub fn lose(&self, host: &Host, percent: f64) -> anyhow::Result<()> {
        ensure!(
            (0.0..100.0).contains(&percent),
            "loss {percent}% out of range"
        );
        let loss = format!("{percent}%");
        tc(
            &self.bridge_ns,
            &host.port,
            &["parent", "1:1", "netem", "loss", &loss],
        )
        .map_err(|e| {
            anyhow::anyhow!(
                "packet loss on {}: {e:#} (needs a shaped link and the kernel's sch_netem)",
                host.name
            )
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let mut names: Vec<String> = self.hosts.iter().map(|h| h.ns.clone()).collect();
        names.push(self.bridge_ns.clone());
        for ns in &names {
            remove_ns(ns);
        }
        if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Kills every process in `ns` (by pid, SIGKILL) and deletes it.
fn remove_ns(ns: &str) {
    for _ in 0..50 {
        let pids = ip(&["netns", "pids", ns]).unwrap_or_default();
        let pids: Vec<i32> = pids
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if let Err(e) = ip(&["netns", "del", ns]) {
        eprintln!("lab: could not delete namespace {ns}: {e:#}");
    }
}

/// Removes every namespace (and the processes in it) of this process's labs: for a Ctrl-C
/// handler, while the lab itself is held by a thread that cannot be stopped.
pub fn remove_all_of_this_run() {
    let mine = format!("{PREFIX}{}-", std::process::id());
    for ns in namespaces().unwrap_or_default() {
        if ns.starts_with(&mine) {
            remove_ns(&ns);
        }
    }
}

/// The lab namespaces on this machine (`ip netns list`).
pub fn namespaces() -> anyhow::Result<Vec<String>> {
    Ok(ip(&["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(PREFIX))
        .map(str::to_owned)
        .collect())
}

/// Whether process `pid` runs (a zombie, dead but not yet reaped, does not).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the command name, which is in parentheses and may hold spaces.
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
    })
}

/// Removes the namespaces (and their processes) of lab runs whose process is gone.
pub fn clean_stale() -> anyhow::Result<usize> {
    let mut removed = 0;
    for ns in namespaces()? {
        let pid = ns[PREFIX.len()..]
            .split('-')
            .next()
            .and_then(|p| p.parse::<i32>().ok());
        let alive = pid.is_some_and(running);
        if !alive {
            remove_ns(&ns);
            removed += 1;
        }
    }
    Ok(removed)
}
