//! Small lab runs (3 hosts, every scenario; one blob, or one image pulled with ctr or `shoal pull`) as correctness
//! checks: every host gets the right bytes, Shoal's origin sends them about once, and the lab
//! leaves nothing behind. Never a time: timings are for the `lab` command and `BENCHMARKS.md`.

use shoal_integration::lab::swarm::{self, Outcome, Params, Scenario};
use shoal_integration::lab::{self, Lab};

/// One lab at a time: each checks that the set of namespaces is the same after as before.
static ONE_LAB: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `scenarios` on 3 hosts at 400 Mbit/s in a fresh lab (see [`run_lab`]).
fn run_small(scenarios: Vec<Scenario>, size: u64, pull_layers: Option<usize>) -> Vec<Outcome> {
    run_lab(Params {
        hosts: 3,
        size,
        rate_bits_per_s: 400_000_000,
        schedulers: 1,
        scenarios,
        fault: None,
        pull_layers,
        swarm_settings: Vec::new(),
        zone_rate: None,
    })
}

/// Runs `params` in a fresh lab; checks every host finished and the lab's namespaces are gone
/// afterwards. `run` fails on any host's wrong bytes (sha256 of each copy; ctr checks every
/// blob's digest itself).
fn run_lab(params: Params) -> Vec<Outcome> {
    let _one = ONE_LAB
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let before = lab::namespaces().expect("ip netns list");
    let outcomes = {
        let mut lab = Lab::new(None).expect("lab (needs root and iproute2)");
        swarm::run(&mut lab, &params).expect("lab run")
    };
    for o in &outcomes {
        assert_eq!(
            o.host_seconds.len(),
            params.hosts,
            "{}: a host is missing",
            o.name
        );
    }
    let after = lab::namespaces().expect("ip netns list");
    assert_eq!(before, after, "the lab left namespaces behind");
    outcomes
}

fn origin_ratio(outcomes: &[Outcome], name: &str) -> f64 {
    outcomes
        .iter()
        .find(|o| o.name == name)
        .map(Outcome::origin_ratio)
        .expect("scenario ran")
}

#[test]
fn small_lab_every_scenario_gets_the_right_bytes_and_leaves_nothing_behind() {
    let outcomes = run_small(Scenario::ALL.to_vec(), 32 << 20, None);
    assert_eq!(outcomes.len(), 4);
    let shoal = origin_ratio(&outcomes, "shoal");
    assert!(
        shoal <= 1.05,
        "the origin sent {shoal:.3}× the blob to the swarm"
    );
    let direct = origin_ratio(&outcomes, "direct");
    assert!(
        direct >= 3.0,
        "the origin's counter missed bytes: {direct:.3}× for 3 direct downloads"
    );
}

/// `shoal pull` through each host's snapshotter, and `ctr images pull` through its mirror.
#[test]
fn small_lab_image_pulls_with_shoal_pull_and_ctr_reach_the_origin_once() {
    let scenarios = vec![Scenario::Direct, Scenario::Shoal, Scenario::ShoalCtr];
    let outcomes = run_small(scenarios, 24 << 20, Some(3));
    assert!(outcomes.iter().all(|o| o.mode == "pull"));
    for name in ["shoal", "shoal-ctr"] {
        let shoal = origin_ratio(&outcomes, name);
        assert!(
            shoal <= 1.05,
            "{name}: the origin sent {shoal:.3}× the image"
        );
    }
    let direct = origin_ratio(&outcomes, "direct");
    assert!(
        direct >= 3.0,
        "direct: the origin sent {direct:.3}× the image"
    );
}

/// Two zones of 2 hosts (the seed in the first) joined by a 100 Mbit/s link: each host of the
/// second zone fetching directly brings the blob across once, Shoal's swarm about once in all.
#[test]
fn small_lab_two_zones_the_swarm_brings_each_piece_across_once() {
    let outcomes = run_lab(Params {
        hosts: 4,
        size: 32 << 20,
        rate_bits_per_s: 400_000_000,
        schedulers: 1,
        scenarios: vec![Scenario::Direct, Scenario::Shoal],
        fault: None,
        pull_layers: None,
        swarm_settings: Vec::new(),
        zone_rate: Some(100_000_000),
    });
    let copies = |name: &str| {
        let o = outcomes.iter().find(|o| o.name == name).expect("ran");
        o.zone_tx_bytes.expect("counted") as f64 / o.size_bytes as f64
    };
    // On the wire a copy is ~5 % more than the blob (Ethernet, IP, TCP, TLS headers).
    let direct = copies("direct");
    assert!(direct >= 2.0, "direct: {direct:.3} copies into zone b");
    let shoal = copies("shoal");
    assert!(shoal <= 1.25, "shoal: {shoal:.3} copies into zone b");
}
