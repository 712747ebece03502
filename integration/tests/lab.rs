//! A small lab run (3 hosts, 32 MiB, every scenario) as a correctness check: every host gets the
//! right bytes, Shoal's origin sends the blob about once, and the lab leaves nothing behind.
//! Never a time: timings are for the `lab` command and `BENCHMARKS.md`.

use shoal_integration::lab::swarm::{self, Params, Scenario};
use shoal_integration::lab::{self, Lab};

/// One lab at a time: each checks that the set of namespaces is the same after as before.
static ONE_LAB: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn small_lab_every_scenario_gets_the_right_bytes_and_leaves_nothing_behind() {
    let _one = ONE_LAB
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let before = lab::namespaces().expect("ip netns list");
    {
        let mut lab = Lab::new(None).expect("lab (needs root and iproute2)");
        let params = Params {
            hosts: 3,
            size: 32 << 20,
            rate_bits_per_s: 400_000_000,
            scenarios: Scenario::ALL.to_vec(),
            fault: None,
            pull_layers: None,
        };
        // `run` checks the sha256 of every host's copy and fails on any difference.
        let outcomes = swarm::run(&mut lab, &params).expect("lab run");
        assert_eq!(outcomes.len(), 4);
        for o in &outcomes {
            assert_eq!(o.host_seconds.len(), 3, "{}: a host is missing", o.name);
        }
        let shoal = outcomes
            .iter()
            .find(|o| o.name == "shoal")
            .expect("shoal ran");
        assert!(
            shoal.origin_ratio() <= 1.05,
            "the origin sent {:.3}× the blob to the swarm",
            shoal.origin_ratio()
        );
        let direct = outcomes
            .iter()
            .find(|o| o.name == "direct")
            .expect("direct ran");
        assert!(
            direct.origin_ratio() >= 3.0,
            "the origin's counter missed bytes: {:.3}× for 3 direct downloads",
            direct.origin_ratio()
        );
    }
    let after = lab::namespaces().expect("ip netns list");
    assert_eq!(before, after, "the lab left namespaces behind");
}

#[test]
fn small_lab_image_pulls_with_ctr_through_the_mirror_reach_the_origin_once() {
    let _one = ONE_LAB
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let before = lab::namespaces().expect("ip netns list");
    {
        let mut lab = Lab::new(None).expect("lab (needs root and iproute2)");
        let params = Params {
            hosts: 3,
            size: 24 << 20,
            rate_bits_per_s: 400_000_000,
            scenarios: vec![Scenario::Direct, Scenario::Shoal],
            fault: None,
            pull_layers: Some(3),
        };
        // ctr checks every blob's digest; a failed pull fails the run.
        let outcomes = swarm::run(&mut lab, &params).expect("lab run");
        for o in &outcomes {
            assert_eq!(o.mode, "pull");
            assert_eq!(o.host_seconds.len(), 3, "{}: a host is missing", o.name);
        }
        let ratio = |name: &str| {
            outcomes
                .iter()
                .find(|o| o.name == name)
                .map(|o| o.origin_ratio())
                .expect("scenario ran")
        };
        assert!(
            ratio("shoal") <= 1.05,
            "shoal: origin sent {:.3}×",
            ratio("shoal")
        );
        assert!(
            ratio("direct") >= 3.0,
            "direct: origin sent {:.3}×",
            ratio("direct")
        );
    }
    let after = lab::namespaces().expect("ip netns list");
    assert_eq!(before, after, "the lab left namespaces behind");
}
