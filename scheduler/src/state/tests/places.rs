//! Tests of pieces arriving (cut-through), of places (zones), and of views with digest deltas.

use super::*;

/// What `to`'s view says arrives at `parent`.
fn arriving_at(state: &State, to: &Host, parent: &str) -> Vec<u32> {
    parent_bits(state, to, parent, |p| &p.arriving)
}

/// `set` with `pieces` arriving.
fn arriving(mut set: PieceSet, count: u32, pieces: &[u32]) -> PieceSet {
    let bits: Bitmap = (0..count).map(|p| pieces.contains(&p)).collect();
    set.arriving = bits.as_bytes().to_vec();
    set
}

#[test]
fn a_piece_arriving_at_a_host_is_passed_on_by_it_until_it_stops_arriving() {
    let (mut state, hosts) = swarm(3, 4);
    state.merge("t", "seed", &have(4, &[0, 1]));
    let chosen = taker(&state, &hosts, 0);
    let others: Vec<&Host> = hosts[1..].iter().filter(|h| h.id != chosen.id).collect();
    // The seed's piece 0 starts arriving at the host it went to: the others take it from
    // there as it comes, not from the seed.
    state.merge("t", &chosen.id, &arriving(have(4, &[]), 4, &[0]));
    for h in &others {
        assert_eq!(arriving_at(&state, h, &chosen.id), [0]);
        assert!(offered_by(&state, h, &chosen.id).is_empty());
        assert!(!offered_by(&state, h, "seed").contains(&0));
    }
    // Stored: held, no longer arriving.
    state.merge("t", &chosen.id, &have(4, &[0]));
    for h in &others {
        assert_eq!(offered_by(&state, h, &chosen.id), [0]);
        assert!(arriving_at(&state, h, &chosen.id).is_empty());
    }
    // Piece 1 starts arriving, then fails there (the next announcement no longer names it):
    // nobody is sent to that host for it any more.
    state.merge("t", &chosen.id, &arriving(have(4, &[0]), 4, &[1]));
    assert!(
        others
            .iter()
            .any(|h| arriving_at(&state, h, &chosen.id) == [1])
    );
    state.merge("t", &chosen.id, &have(4, &[0]));
    for h in &others {
        assert!(arriving_at(&state, h, &chosen.id).is_empty());
    }
    // A host withdrawn has nothing arriving either.
    state.merge("t", &chosen.id, &arriving(have(4, &[0]), 4, &[1]));
    state.withdraw("t", &chosen.id);
    assert!(arriving_at(&state, others[0], &chosen.id).is_empty());
}

#[test]
fn nothing_arrives_before_the_length_is_known() {
    let (mut state, hosts) = unknown_length(2);
    state.merge("t", "h0", &arriving(PieceSet::default(), 4, &[0, 1]));
    assert!(state.tasks["t"].holders["h0"].arriving.count() == 0);
    assert!(arriving_at(&state, &hosts[2], "h0").is_empty());
}

/// A seed and h0, h1 in zone "a"; h2, h3 in zone "b"; all watching task "t" of 8 pieces, the
/// seed holding pieces 0..8.
fn two_zones() -> (State, Vec<Host>) {
    placed(&["a", "a", "a", "b", "b"])
}

/// A seed in zone `zones[0]` and hosts h0, h1, … in the others; all watching task "t" of 8
/// pieces, the seed holding pieces 0..8.
fn placed(zones: &[&str]) -> (State, Vec<Host>) {
    let mut state = State::default();
    let task = Task {
        id: "t".into(),
        url: "http://origin/blob".into(),
        ..Default::default()
    };
    let zone = |id: &str, seed: bool, z: &str| Host {
        labels: [("zone".to_owned(), z.to_owned())].into(),
        ..host(id, seed)
    };
    let hosts: Vec<Host> = (0..zones.len())
        .map(|i| match i {
            0 => zone("seed", true, zones[0]),
            i => zone(&format!("h{}", i - 1), false, zones[i]),
        })
        .collect();
    for h in &hosts {
        state.attach(h.clone(), mpsc::channel(1).0);
        let _ = state.watch(h, task.clone(), &have(8, &[]));
    }
    state.merge("t", "seed", &have(8, &(0..8).collect::<Vec<_>>()));
    (state, hosts)
}

/// The hosts of `hosts` that `parent` offers piece `p` to (held or arriving).
fn offered_to<'a>(state: &State, hosts: &'a [Host], parent: &str, p: u32) -> Vec<&'a str> {
    hosts
        .iter()
        .filter(|h| {
            offered_by(state, h, parent).contains(&p) || arriving_at(state, h, parent).contains(&p)
        })
        .map(|h| h.id.as_str())
        .collect()
}

#[test]
fn each_piece_crosses_into_a_zone_once_and_is_passed_on_inside_it() {
    let (mut state, hosts) = two_zones();
    let (a, b) = (&hosts[1..3], &hosts[3..5]);
    for p in 0..8 {
        // The seed's new piece goes to one host of its own zone, none of the other zone
        // (whose hosts get it from the seed's zone, not from the seed's upload).
        assert_eq!(offered_to(&state, a, "seed", p).len(), 1, "piece {p}");
        assert!(offered_to(&state, b, "seed", p).is_empty(), "piece {p}");
    }
    let taker_a = taker(&state, &hosts, 0);
    // Piece 0 arrives at zone a's taker: the other host of zone a gets it from there, and
    // one host of zone b (in turn) is offered it across.
    state.merge("t", &taker_a.id, &arriving(have(8, &[]), 8, &[0]));
    let across = offered_to(&state, b, &taker_a.id, 0);
    assert_eq!(across.len(), 1, "offered across to {across:?}");
    assert_eq!(offered_to(&state, a, &taker_a.id, 0).len(), 1);
    // Once it arrives in zone b, the rest of zone b gets it there, not across again.
    let taker_b = across[0].to_owned();
    state.merge("t", &taker_b, &arriving(have(8, &[]), 8, &[0]));
    let rest_b: Vec<Host> = b.iter().filter(|h| h.id != taker_b).cloned().collect();
    assert!(offered_to(&state, &rest_b, &taker_a.id, 0).is_empty());
    assert_eq!(arriving_at(&state, &rest_b[0], &taker_b), [0]);
    // Even the seed, once complete, helps zone b only with what zone b lacks.
    state.merge("t", &taker_b, &have(8, &[0]));
    assert!(!offered_by(&state, &rest_b[0], "seed").contains(&0));
}

#[test]
fn a_piece_from_another_zone_stays_its_takers_while_the_taker_gains_pieces() {
    let (mut state, hosts) = two_zones();
    let b = &hosts[3..5];
    let taker_a = taker(&state, &hosts, 0);
    state.merge("t", &taker_a.id, &arriving(have(8, &[]), 8, &[0]));
    let across = offered_to(&state, b, &taker_a.id, 0);
    assert_eq!(across.len(), 1);
    // However long the piece waits to cross (the link between zones is the slow one), a
    // taker that keeps gaining pieces keeps it...
    state.tasks.get_mut("t").unwrap().first_held[0] = Some(Instant::now() - SEED_EXCLUSIVE * 4);
    assert_eq!(offered_to(&state, b, &taker_a.id, 0), across);
    let other = b.iter().find(|h| h.id != across[0]).unwrap();
    assert!(
        state.view("t", other).unwrap().1,
        "the view changes with time alone"
    );
    // ...and one that gained nothing for a while is helped: the rest of its zone is offered it.
    let stuck = state
        .tasks
        .get_mut("t")
        .unwrap()
        .holders
        .get_mut(across[0])
        .unwrap();
    stuck.last_gain = Some(Instant::now() - SEED_EXCLUSIVE * 2);
    assert_eq!(offered_to(&state, b, &taker_a.id, 0).len(), 2);
}

#[test]
fn a_seed_in_a_place_of_its_own_serves_each_other_place_once() {
    // Nobody downloads where the seed is: it is each zone's source, one host per piece each.
    let (state, hosts) = placed(&["x", "a", "a", "b", "b"]);
    for p in 0..8 {
        for zone in [&hosts[1..3], &hosts[3..5]] {
            assert_eq!(offered_to(&state, zone, "seed", p).len(), 1, "piece {p}");
        }
    }
}

#[test]
fn a_host_that_stops_watching_has_nothing_arriving() {
    let (mut state, hosts) = two_zones();
    let h = &hosts[1];
    state.merge("t", &h.id, &arriving(have(8, &[]), 8, &[0]));
    assert_eq!(arriving_at(&state, &hosts[2], &h.id), [0]);
    // Its download ended (failed) with the piece still announced as arriving.
    state.merge("t", &h.id, &arriving(have(8, &[1]), 8, &[0]));
    state.unwatch("t", &h.id);
    assert!(arriving_at(&state, &hosts[2], &h.id).is_empty());
    assert_eq!(offered_by(&state, &hosts[2], &h.id), [1]);
}

#[test]
fn a_seed_alone_in_its_zone_serves_the_other_zone_itself() {
    let (mut state, hosts) = two_zones();
    // Zone a's hosts are done: nobody there downloads to pass pieces on.
    for h in &hosts[1..3] {
        state.merge("t", &h.id, &have(8, &(0..8).collect::<Vec<_>>()));
        state.unwatch("t", &h.id);
    }
    // Zone b still gets each piece into the zone once: from zone a's holders, in turn.
    for p in 0..8 {
        let takers: usize = hosts[1..3]
            .iter()
            .map(|h| offered_to(&state, &hosts[3..5], &h.id, p).len())
            .max()
            .unwrap();
        assert_eq!(takers, 1, "piece {p}");
    }
    // With them gone, the seed serves zone b, one host per piece.
    for h in &hosts[1..3] {
        state.withdraw("t", &h.id);
    }
    for p in 0..8 {
        assert_eq!(
            offered_to(&state, &hosts[3..5], "seed", p).len(),
            1,
            "piece {p}"
        );
    }
}

#[test]
fn a_stream_taking_deltas_gets_each_digest_once_and_a_whole_view_when_they_change_under_it() {
    let (mut state, hosts) = swarm(2, 4);
    let mut sent = Bitmap::default();
    state.merge("t", "seed", &have(4, &[0, 1]));
    // The first view is whole.
    let (first, _) = state.view_since("t", &hosts[1], Some(&mut sent)).unwrap();
    assert!(!first.digests_delta);
    assert_eq!(first.digests.iter().filter(|d| !d.is_empty()).count(), 2);
    // Then only what is new, and nothing when nothing is.
    let (same, _) = state.view_since("t", &hosts[1], Some(&mut sent)).unwrap();
    assert!(same.digests_delta && same.digests.is_empty() && same.new_digests.is_empty());
    state.merge("t", "seed", &have(4, &[2]));
    let (more, _) = state.view_since("t", &hosts[1], Some(&mut sent)).unwrap();
    let numbers: Vec<u32> = more.new_digests.iter().map(|d| d.number).collect();
    assert_eq!(numbers, [2]);
    assert_eq!(more.new_digests[0].blake3, vec![2u8; 32]);
    // A digest sent before that the task no longer has (a task forgotten and named again):
    // the view is whole again.
    state.tasks.get_mut("t").unwrap().digests[0] = None;
    let (again, _) = state.view_since("t", &hosts[1], Some(&mut sent)).unwrap();
    assert!(!again.digests_delta);
    assert_eq!(again.digests.len(), 4);
}
