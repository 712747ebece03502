//! Tests of `state`.

use super::*;
use crate::task::{FAILURE_TTL, SEED_EXCLUSIVE};
use shoal_p2p::proto::{Parent, PieceDigest, Source};

mod places;

/// Small tasks have pieces of the minimum length.
const PIECE: u64 = shoal_p2p::piece::MIN_PIECE_LENGTH;

fn host(id: &str, seed: bool) -> Host {
    Host {
        id: id.into(),
        upload_addr: format!("{id}:4000"),
        seed,
        ..Default::default()
    }
}

/// A piece set of `pieces` out of `count`, with their digests.
fn have(count: u32, pieces: &[u32]) -> PieceSet {
    let bitmap: Bitmap = (0..count).map(|p| pieces.contains(&p)).collect();
    PieceSet {
        length_known: true,
        content_length: u64::from(count) * PIECE,
        bitmap: bitmap.as_bytes().to_vec(),
        digests: pieces
            .iter()
            .map(|&p| PieceDigest {
                number: p,
                blake3: vec![p as u8; 32],
            })
            .collect(),
        sources: vec![source("http://origin", true)],
        arriving: Vec::new(),
    }
}

fn source(upstream: &str, anonymous: bool) -> Source {
    Source {
        upstream: upstream.into(),
        anonymous,
    }
}

/// A state with a seed and `n` downloading hosts watching task "t" of `count` pieces.
fn swarm(n: usize, count: u32) -> (State, Vec<Host>) {
    watched(n, &have(count, &[]))
}

/// Like [`swarm`], with nobody having told the task's length yet.
fn unknown_length(n: usize) -> (State, Vec<Host>) {
    watched(n, &PieceSet::default())
}

/// A seed and `n` hosts watching task "t", each registering with `set`.
fn watched(n: usize, set: &PieceSet) -> (State, Vec<Host>) {
    let mut state = State::default();
    let task = Task {
        id: "t".into(),
        url: "http://origin/blob".into(),
        ..Default::default()
    };
    let mut hosts = vec![host("seed", true)];
    hosts.extend((0..n).map(|i| host(&format!("h{i}"), false)));
    for h in &hosts {
        state.attach(h.clone(), mpsc::channel(1).0);
        let _ = state.watch(h, task.clone(), set);
    }
    (state, hosts)
}

/// The pieces `to`'s view says `parent` gives (`bits` of its entry: held, or arriving).
fn parent_bits(state: &State, to: &Host, parent: &str, bits: fn(&Parent) -> &[u8]) -> Vec<u32> {
    let (view, _) = state.view("t", to).unwrap();
    let n = view.digests.len() as u32;
    view.parents
        .iter()
        .find(|p| p.host_id == parent)
        .map(|p| Bitmap::from_bytes(bits(p), n).ones().collect())
        .unwrap_or_default()
}

fn offered_by(state: &State, to: &Host, parent: &str) -> Vec<u32> {
    parent_bits(state, to, parent, |p| &p.bitmap)
}

/// The host (of `hosts`, the seed first) the seed offers its new piece `p` to.
fn taker(state: &State, hosts: &[Host], p: u32) -> Host {
    hosts[1..]
        .iter()
        .find(|h| offered_by(state, h, "seed").contains(&p))
        .unwrap()
        .clone()
}

#[test]
fn a_new_piece_of_the_seed_is_offered_to_one_host_only() {
    let (mut state, hosts) = swarm(5, 16);
    state.merge("t", "seed", &have(16, &(0..8).collect::<Vec<_>>()));
    for p in 0..8 {
        let takers = hosts[1..]
            .iter()
            .filter(|h| offered_by(&state, h, "seed").contains(&p))
            .count();
        assert_eq!(takers, 1, "piece {p} offered to {takers} hosts");
    }
    // New pieces go round the hosts: each is offered as many as the next, give or take one.
    let shares: Vec<usize> = hosts[1..]
        .iter()
        .map(|h| offered_by(&state, h, "seed").len())
        .collect();
    let (lo, hi) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
    assert!(
        *lo > 0 && hi - lo <= 1,
        "shares of the seed's pieces: {shares:?}"
    );
    let busy = shares.iter().filter(|&&n| n > 0).count();
    assert!(state.view("t", &hosts[1]).unwrap().1 || busy < 5);
}

#[test]
fn once_a_host_holds_a_piece_the_others_get_it_from_that_host() {
    let (mut state, hosts) = swarm(3, 4);
    state.merge("t", "seed", &have(4, &[0, 1]));
    let chosen = taker(&state, &hosts, 0);
    state.merge("t", &chosen.id, &have(4, &[0]));
    for h in hosts[1..].iter().filter(|h| h.id != chosen.id) {
        assert!(offered_by(&state, h, &chosen.id).contains(&0));
        assert!(
            !offered_by(&state, h, "seed").contains(&0),
            "the seed still fetching should keep its upload for new pieces"
        );
    }
    // A complete seed helps with every piece.
    state.merge("t", "seed", &have(4, &[0, 1, 2, 3]));
    let other = hosts[1..].iter().find(|h| h.id != chosen.id).unwrap();
    assert!(offered_by(&state, other, "seed").contains(&0));
}

#[test]
fn a_piece_nobody_else_got_is_offered_to_twice_as_many_hosts_each_while_then_to_everyone() {
    let (mut state, hosts) = swarm(6, 4);
    state.merge("t", "seed", &have(4, &[0]));
    let offered = |state: &State| {
        hosts[1..]
            .iter()
            .filter(|h| offered_by(state, h, "seed") == vec![0])
            .count()
    };
    for (held, hosts) in [(0, 1), (1, 2), (2, 4), (3, 6)] {
        let entry = state.tasks.get_mut("t").unwrap();
        entry.first_held[0] = Some(Instant::now() - SEED_EXCLUSIVE * held);
        assert_eq!(offered(&state), hosts, "after {held} x SEED_EXCLUSIVE");
    }
}

#[test]
fn a_host_is_never_its_own_parent_and_a_struck_host_is_offered_to_nobody() {
    let (mut state, hosts) = swarm(3, 4);
    let (h0, h1, h2) = (&hosts[1], &hosts[2], &hosts[3]);
    state.merge("t", "h0", &have(4, &[0, 1]));
    assert_eq!(offered_by(&state, h2, "h0"), vec![0, 1]);
    let own = state.view("t", h0).unwrap().0;
    assert!(own.parents.iter().all(|p| p.host_id != h0.id));
    for _ in 0..MAX_STRIKES {
        state.report("t", &h1.id, &h0.id, true);
    }
    assert!(offered_by(&state, h2, "h0").is_empty());
}

#[test]
fn the_peer_sent_to_the_origin_offers_its_new_pieces_like_a_seed() {
    let (mut state, hosts) = swarm(4, 8);
    // The seed dies; a peer is sent to the origin.
    state.hosts.remove("seed");
    let fetcher = &hosts[1];
    assert!(state.plan("t", Some(&fetcher.id)).back_to_source_peer);
    state.merge("t", &fetcher.id, &have(8, &[0, 1, 2, 3]));
    for p in 0..4 {
        let takers = hosts[2..]
            .iter()
            .filter(|h| offered_by(&state, h, &fetcher.id).contains(&p))
            .count();
        assert_eq!(takers, 1, "piece {p} offered to {takers} hosts");
    }
}

#[test]
fn a_fetchers_failure_sends_the_watchers_to_the_origin_and_is_its_own() {
    let (mut state, hosts) = swarm(2, 4);
    // The first watch sent the seed to the origin.
    assert_eq!(state.tasks["t"].fetcher.as_deref(), Some("seed"));
    let failure = Failure {
        http_status: 401,
        message: "expired token".into(),
    };
    state.fail("t", "seed", failure.clone());
    // The watchers learn at once, and the failed seed is not sent to the origin again.
    let (view, _) = state.view("t", &hosts[1]).unwrap();
    assert_eq!(view.failure, Some(failure));
    assert!(state.plan("t", Some("h0")).seed_job.is_none());
    // Once the failure is old, the task is planned again: not the seed that failed, but the
    // asking watcher, with its own credentials.
    if let Some(entry) = state.tasks.get_mut("t")
        && let Some((_, at)) = entry.failure.as_mut()
    {
        *at -= FAILURE_TTL;
    }
    assert_eq!(state.view("t", &hosts[1]).unwrap().0.failure, None);
    let planned = state.plan("t", Some("h0"));
    assert!(planned.seed_job.is_none() && planned.back_to_source_peer);
    // Pieces announced clear a failure at once.
    state.fail("t", "h0", Failure::default());
    state.merge("t", "h1", &have(4, &[0]));
    assert_eq!(state.view("t", &hosts[2]).unwrap().0.failure, None);
}

/// A seed that cannot reach the origin sent every watcher there (7.2x the blob from the origin
/// in the lab): now one watcher fetches for the swarm instead, and the others wait for it.
#[test]
fn a_seed_that_cannot_reach_the_origin_is_replaced_by_one_watcher() {
    let (mut state, hosts) = unknown_length(3);
    assert_eq!(state.tasks["t"].fetcher.as_deref(), Some("seed"));
    for status in [0, 503] {
        state.fail(
            "t",
            "seed",
            Failure {
                http_status: status,
                message: "unreachable".into(),
            },
        );
        assert!(
            state.view("t", &hosts[1]).unwrap().0.failure.is_none(),
            "{status}"
        );
    }
    // The watchers plan again, as their streams do: the first becomes the fetcher, alone.
    let planned: Vec<bool> = hosts[1..]
        .iter()
        .map(|h| state.plan("t", Some(&h.id)).back_to_source_peer)
        .collect();
    assert_eq!(planned, [true, false, false]);
    let fetchers = hosts[1..]
        .iter()
        .filter(|h| state.view("t", h).unwrap().0.back_to_source)
        .count();
    assert_eq!(fetchers, 1);
}

/// A piece set claiming `digest` for piece 0 of a task of `count` pieces.
fn claim(count: u32, digest: u8) -> PieceSet {
    let mut set = have(count, &[0]);
    set.digests[0].blake3 = vec![digest; 32];
    set
}

/// Issue 13 (3): piece digests were taken from any announcer, so one member could name the
/// digest of its own bytes first and have everyone fetch them. Only the fetcher (or a seed)
/// says what a task is; a contradiction is refused and its host offered to nobody.
#[test]
fn only_who_fetched_from_the_origin_says_the_length_and_the_digests() {
    let mut state = State::default();
    let task = Task {
        id: "t".into(),
        url: "http://origin/blob".into(),
        ..Default::default()
    };
    let hosts: Vec<Host> = ["h0", "h1", "liar"]
        .iter()
        .map(|id| host(id, false))
        .collect();
    for h in &hosts {
        state.attach(h.clone(), mpsc::channel(1).0);
    }
    // No seed: the first watcher is sent to the origin; the others' claims wait.
    let _ = state.watch(&hosts[0], task.clone(), &PieceSet::default());
    assert_eq!(state.tasks["t"].fetcher.as_deref(), Some("h0"));
    let _ = state.watch(&hosts[2], task.clone(), &claim(4, 0xee));
    let _ = state.watch(&hosts[1], task, &PieceSet::default());
    assert_eq!(
        state.tasks["t"].length, None,
        "a bystander's length was taken"
    );
    let mut lie = claim(8, 0xee);
    lie.bitmap = vec![0xff];
    assert_eq!(state.merge("t", "liar", &lie), Merge::Merged);
    assert_eq!(state.tasks["t"].length, None);
    // A bystander that claimed the right length is heard once it is known.
    let _ = state.merge("t", "h1", &have(4, &[]));
    // The fetcher says the length and the digest of piece 0.
    assert_eq!(state.merge("t", "h0", &claim(4, 7)), Merge::Merged);
    assert_eq!(state.tasks["t"].length, Some(4 * PIECE));
    assert_eq!(
        state.view("t", &hosts[1]).unwrap().0.digests[0],
        vec![7; 32]
    );
    // Contradictions are refused: another length, another digest; the liar is struck and
    // offered to nobody, even for the piece it claimed before the length was known.
    assert_eq!(state.merge("t", "liar", &claim(4, 0xee)), Merge::Disputed);
    assert_eq!(state.merge("t", "liar", &claim(5, 7)), Merge::Disputed);
    assert!(offered_by(&state, &hosts[1], "liar").is_empty());
    assert_eq!(
        state.view("t", &hosts[1]).unwrap().0.digests[0],
        vec![7; 32]
    );
    // A peer that agrees is offered.
    assert_eq!(state.merge("t", "h1", &claim(4, 7)), Merge::Merged);
    let h2 = host("h2", false);
    state.attach(h2.clone(), mpsc::channel(1).0);
    assert_eq!(offered_by(&state, &h2, "h1"), vec![0]);
}

/// Holdings announced before anyone who knows said the length are kept, and count once the
/// length is known (a scheduler restarted while hosts held the task).
#[test]
fn a_bitmap_announced_before_the_length_counts_once_it_is_known() {
    let (mut state, hosts) = swarm(2, 4);
    state.tasks.get_mut("t").unwrap().length = None;
    state.tasks.get_mut("t").unwrap().digests.clear();
    let mut early = have(16, &[9]);
    early.digests.clear();
    state.merge("t", "h0", &early);
    state.merge("t", "seed", &have(16, &[0, 9]));
    assert_eq!(offered_by(&state, &hosts[2], "h0"), vec![9]);
}

/// Issue 13 (2): a mirror gives a blob's bytes only to a client that every upstream the content
/// came from would serve. Those upstreams are fixed with the length, by who fetched it; a fetcher
/// naming another upstream later defines no content, so the swarm never passes on bytes from an
/// upstream the watchers were not told of.
#[test]
fn a_tasks_sources_are_fixed_with_its_length_and_bound_every_digest() {
    let (mut state, hosts) = unknown_length(2);
    // The seed fetches from the origin: the length, the digests and its source.
    let mut first = have(4, &[0]);
    first.sources = vec![source("https://registry", false)];
    assert_eq!(state.merge("t", "seed", &first), Merge::Merged);
    let view = |state: &State| state.view("t", &hosts[1]).unwrap().0;
    assert_eq!(view(&state).sources, first.sources);
    // A bystander names another upstream: not a source.
    let mut stranger = have(4, &[1]);
    stranger.sources = vec![source("https://evil", true)];
    state.merge("t", "h0", &stranger);
    assert_eq!(view(&state).sources, first.sources);
    // The fetcher's later pieces from another upstream define nothing; from the same, they do.
    let mut other = have(4, &[1]);
    other.sources = vec![
        source("https://registry", false),
        source("https://evil", true),
    ];
    assert_eq!(state.merge("t", "seed", &other), Merge::Merged);
    assert!(
        view(&state).digests[1].is_empty(),
        "a digest from elsewhere"
    );
    assert_eq!(view(&state).sources, first.sources);
    let mut more = have(4, &[1]);
    more.sources = first.sources.clone();
    state.merge("t", "seed", &more);
    assert_eq!(view(&state).digests[1], vec![1; 32]);
    // Without sources a fetcher defines nothing either.
    let mut bare = have(4, &[2]);
    bare.sources.clear();
    state.merge("t", "seed", &bare);
    assert!(view(&state).digests[2].is_empty());
}

/// A length told with sources no task may have (too many, not an upstream) leaves the task
/// without sources: its content goes to no mirror client from the swarm.
#[test]
fn implausible_sources_are_not_taken() {
    for sources in [
        (0..=crate::task::MAX_SOURCES)
            .map(|i| source(&format!("https://r{i}"), false))
            .collect::<Vec<_>>(),
        vec![source("file:///etc", true)],
        vec![source(&format!("https://{}", "a".repeat(400)), true)],
    ] {
        let (mut state, hosts) = unknown_length(1);
        let mut set = have(4, &[0]);
        set.sources = sources;
        state.merge("t", "seed", &set);
        let view = state.view("t", &hosts[1]).unwrap().0;
        assert!(view.sources.is_empty());
        assert!(view.digests[0].is_empty());
    }
}

/// A host whose disk's garbage collection removed a task withdraws it: it is offered to nobody.
#[test]
fn a_withdrawn_holder_is_nobodys_parent() {
    let (mut state, hosts) = swarm(2, 4);
    state.merge("t", "h0", &have(4, &[0, 1, 2, 3]));
    assert_eq!(offered_by(&state, &hosts[2], "h0"), vec![0, 1, 2, 3]);
    state.withdraw("t", "h0");
    assert!(offered_by(&state, &hosts[2], "h0").is_empty());
    // Unknown tasks and hosts change nothing.
    state.withdraw("other", "h0");
    state.withdraw("t", "nobody");
}

proptest::proptest! {
    /// Whatever members announce (the service has checked only the length and the sizes), the
    /// task stays consistent and every view can be built.
    #[test]
    fn any_announcements_leave_a_consistent_task(
        sets in proptest::collection::vec(
            (
                proptest::bool::ANY,
                0u64..(1 << 36),
                proptest::collection::vec(proptest::num::u8::ANY, 0..64),
                proptest::collection::vec((0u32..600, proptest::collection::vec(proptest::num::u8::ANY, 0..40)), 0..12),
                proptest::collection::vec(("(https?://)?[a-z.:]{0,12}", proptest::bool::ANY), 0..12),
                0usize..3,
            ),
            1..24,
        )
    ) {
        let (mut state, hosts) = unknown_length(2);
        for (length_known, content_length, bitmap, digests, sources, who) in sets {
            if length_known && shoal_p2p::piece::Layout::for_length(content_length).is_none() {
                continue;
            }
            let set = PieceSet {
                length_known,
                content_length,
                arriving: bitmap.iter().rev().copied().collect(),
                bitmap,
                digests: digests
                    .into_iter()
                    .map(|(number, blake3)| PieceDigest { number, blake3 })
                    .collect(),
                sources: sources.iter().map(|(u, a)| source(u, *a)).collect(),
            };
            state.merge("t", &hosts[who].id, &set);
            let entry = &state.tasks["t"];
            proptest::prop_assert_eq!(entry.digests.len() as u32, entry.piece_count());
            proptest::prop_assert!(entry.sources.len() <= crate::task::MAX_SOURCES);
            for h in &hosts {
                let (view, _) = state.view("t", h).unwrap();
                proptest::prop_assert_eq!(view.digests.len() as u32, entry.piece_count());
            }
        }
    }
}

/// A layer's gzip index is believed from a seed alone: with no seed, no peer is sent to build
/// it (its URL would fetch the layer, not an index), and a peer's claim of its length and piece
/// digests is not taken even if it watched first. Before the fix, the first watcher was made
/// the fetcher and its claims defined the index (file modes, owners, links of a layer).
#[test]
fn only_a_seed_says_what_a_layers_index_is() {
    let mut state = State::default();
    let index = Task {
        id: "t".into(),
        url: "http://origin/v2/a/blobs/sha256:00".into(),
        id_options: Some(shoal_p2p::proto::IdOptions {
            application: Some(shoal_p2p::id::GZIP_INDEX.into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let peer = host("h0", false);
    state.attach(peer.clone(), mpsc::channel(1).0);
    let _ = state.watch(&peer, index.clone(), &PieceSet::default());
    assert_eq!(
        state.tasks["t"].fetcher, None,
        "a peer sent to build an index"
    );
    assert!(!state.plan("t", Some("h0")).back_to_source_peer);
    assert_eq!(state.merge("t", "h0", &claim(4, 0xee)), Merge::Merged);
    assert_eq!(state.tasks["t"].length, None, "a peer's index was believed");
    // A seed is sent to build it, and believed.
    let seed = host("seed", true);
    state.attach(seed.clone(), mpsc::channel(1).0);
    let assigned = state.plan("t", Some("h0"));
    assert!(assigned.seed_job.is_some());
    assert_eq!(state.merge("t", "seed", &claim(4, 7)), Merge::Merged);
    assert_eq!(state.tasks["t"].length, Some(4 * PIECE));
}

/// A layer's prefetch list is nobody's to fetch: the first host that runs the layer (holds
/// pieces of it) and announces all of a list is its author and defines it, with the layer's
/// sources; a host that does not hold the layer, a later host's other list, or a partial claim
/// defines nothing.
#[test]
fn the_first_whole_prefetch_list_is_the_one_believed() {
    let mut state = State::default();
    let digest = format!("sha256:{}", "ab".repeat(32));
    let list = Task {
        id: "p".into(),
        url: format!("http://origin/v2/a/blobs/{digest}"),
        id_options: Some(shoal_p2p::proto::IdOptions {
            application: Some(shoal_p2p::id::PREFETCH.into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let hosts: Vec<Host> = ["seed", "reader", "author", "late", "stranger"]
        .iter()
        .map(|id| host(id, *id == "seed"))
        .collect();
    for h in &hosts {
        state.attach(h.clone(), mpsc::channel(1).0);
    }
    // The layer: the seed fetched it; the author and the late host hold pieces of it.
    let layer = Task {
        id: digest.clone(),
        url: format!("http://origin/v2/a/blobs/{digest}"),
        ..Default::default()
    };
    let _ = state.watch(&hosts[0], layer.clone(), &PieceSet::default());
    assert_eq!(
        state.merge(&digest, "seed", &have(2, &[0, 1])),
        Merge::Merged
    );
    for h in &hosts[2..4] {
        let _ = state.watch(h, layer.clone(), &have(2, &[0]));
    }
    // Asked for before anyone has it: nobody is sent anywhere, not even a seed.
    let (_, assigned) = state.watch(&hosts[1], list.clone(), &PieceSet::default());
    assert!(assigned.seed_job.is_none() && !assigned.back_to_source_peer);
    assert_eq!(state.tasks["p"].fetcher, None);
    // Half a list makes no author.
    assert_eq!(state.merge("p", "late", &have(2, &[0])), Merge::Merged);
    assert_eq!(state.tasks["p"].length, None);
    // A whole list from a host that does not run the layer makes no author.
    assert_eq!(
        state.merge("p", "stranger", &have(2, &[0, 1])),
        Merge::Merged
    );
    assert_eq!(
        state.tasks["p"].length, None,
        "a stranger's list was believed"
    );
    // The first whole list from one that does.
    let mut mine = have(2, &[0, 1]);
    mine.sources = vec![source("http://elsewhere", true)];
    assert_eq!(state.merge("p", "author", &mine), Merge::Merged);
    assert_eq!(state.tasks["p"].length, Some(2 * PIECE));
    assert_eq!(state.tasks["p"].fetcher.as_deref(), Some("author"));
    assert_eq!(state.tasks["p"].digests[1], Some(vec![1; 32]));
    assert_eq!(
        state.tasks["p"].sources, state.tasks[&digest].sources,
        "the list goes to whom the layer goes"
    );
    let (view, _) = state.view("p", &hosts[2]).unwrap();
    assert!(!view.back_to_source, "an author is not sent to the origin");
    // Another whole list is not taken.
    let mut other = have(2, &[0, 1]);
    other.digests[1].blake3 = vec![9; 32];
    assert_eq!(state.merge("p", "late", &other), Merge::Disputed);
    assert_eq!(state.tasks["p"].digests[1], Some(vec![1; 32]));
    assert!(state.plan("p", Some("late")).seed_job.is_none());
}

#[test]
fn a_seed_leaving_hands_only_its_own_tasks_to_another() {
    let mut state = State::default();
    let mut generation = HashMap::new();
    for id in ["s1", "s2"] {
        generation.insert(id, state.attach(host(id, true), mpsc::channel(1).0));
    }
    state.attach(host("h", false), mpsc::channel(1).0);
    let task = |id: &str| Task {
        id: id.into(),
        url: format!("http://origin/{id}"),
        ..Default::default()
    };
    // Tasks until each seed fetches one.
    let mut fetched_by: HashMap<String, String> = HashMap::new();
    for i in 0..64 {
        let id = format!("t{i}");
        let (_, assigned) = state.watch(&host("h", false), task(&id), &PieceSet::default());
        let (seed, _) = assigned.seed_job.expect("a seed fetches it");
        fetched_by.insert(id, seed);
    }
    let mine: Vec<&String> = fetched_by
        .iter()
        .filter(|(_, s)| *s == "s1")
        .map(|(t, _)| t)
        .collect();
    assert!(!mine.is_empty() && mine.len() < 64);
    let jobs = state.detach("s1", generation["s1"]);
    // Every task s1 fetched goes to s2; no other task is planned again.
    let mut moved: Vec<String> = jobs
        .iter()
        .map(|(seed, job)| {
            assert_eq!(seed, "s2");
            job.task.as_ref().unwrap().id.clone()
        })
        .collect();
    moved.sort();
    let mut expected: Vec<String> = mine.into_iter().cloned().collect();
    expected.sort();
    assert_eq!(moved, expected);
    assert!(
        !state.host_tasks.contains_key("s1"),
        "its index goes with it"
    );
    // A stale generation (it re-attached since) changes nothing.
    assert!(state.detach("s2", generation["s2"] + 100).is_empty());
}

#[test]
fn a_host_that_came_back_and_left_again_is_taken_off_its_tasks_again() {
    let mut state = State::default();
    let first = state.attach(host("h", false), mpsc::channel(1).0);
    state.attach(host("o", false), mpsc::channel(1).0);
    let task = Task {
        id: "t".into(),
        url: "http://origin/blob".into(),
        ..Default::default()
    };
    let _ = state.watch(&host("o", false), task, &PieceSet::default());
    // h holds pieces of t, leaves, and comes back without announcing them again.
    assert_eq!(state.merge("t", "h", &have(4, &[0, 1])), Merge::Merged);
    state.detach("h", first);
    let second = state.attach(host("h", false), mpsc::channel(1).0);
    let mut changed = state.tasks["t"].changed.subscribe();
    changed.borrow_and_update();
    // It leaves again: t's watchers hear of it.
    state.detach("h", second);
    assert!(changed.has_changed().unwrap(), "t was not visited");
}
