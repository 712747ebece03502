//! What hosts tell of their traffic (bytes received by source, bytes sent, where their recent
//! tasks' bytes came from), kept for the console. Only tasks this scheduler knows are kept, at
//! most [`TASKS_PER_HOST`] per host, and a host gone for [`FORGET`] is forgotten: the memory
//! follows the swarm state, not what hosts send.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shoal_p2p::BySource;
use shoal_p2p::proto::StatsRequest;

/// How long a detached host's traffic is still shown.
pub const FORGET: Duration = Duration::from_secs(600);

/// A host's recent tasks kept at most.
pub const TASKS_PER_HOST: usize = 64;

/// What a host last told.
#[derive(Clone, Debug)]
pub struct HostTraffic {
    pub received: BySource,
    pub sent: u64,
    /// `(task id, content length, bytes by source)`, newest first.
    pub tasks: Vec<(String, u64, BySource)>,
    /// When it told it.
    pub at: Instant,
}

#[derive(Debug, Default)]
pub struct Traffic {
    hosts: Mutex<HashMap<String, HostTraffic>>,
}

fn by_source(t: Option<shoal_p2p::proto::Traffic>) -> BySource {
    let t = t.unwrap_or_default();
    BySource {
        origin: t.origin,
        peer: t.peer,
        seed: t.seed,
        cache: t.cache,
    }
}

impl Traffic {
    /// Keeps what `req`'s host told, with the tasks `known` says this scheduler has.
    pub fn put(&self, req: StatsRequest, known: impl Fn(&str) -> bool) {
        let tasks = req
            .tasks
            .into_iter()
            .filter(|t| known(&t.task_id))
            .take(TASKS_PER_HOST)
            .map(|t| (t.task_id, t.content_length, by_source(t.received)))
            .collect();
        let told = HostTraffic {
            received: by_source(req.received),
            sent: req.sent,
            tasks,
            at: Instant::now(),
        };
        self.hosts
            .lock()
            .expect("traffic lock")
            .insert(req.host_id, told);
    }

    /// What each host last told.
    pub fn hosts(&self) -> HashMap<String, HostTraffic> {
        self.hosts.lock().expect("traffic lock").clone()
    }

    /// Forgets the hosts not `attached` that told nothing for `age`.
    pub fn forget(&self, attached: impl Fn(&str) -> bool, age: Duration) {
        let mut hosts = self.hosts.lock().expect("traffic lock");
        hosts.retain(|id, t| attached(id) || t.at.elapsed() < age);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_p2p::proto::TaskTraffic;

    #[test]
    fn hosts_tell_their_traffic_less_often_as_the_cluster_grows() {
        use crate::service::stats_every_ms;
        assert_eq!(stats_every_ms(1), 2_000);
        assert_eq!(stats_every_ms(6_666), 2_000);
        assert_eq!(stats_every_ms(10_000), 3_000);
        assert_eq!(stats_every_ms(100_000), 30_000);
    }

    #[test]
    fn only_known_tasks_are_kept_and_gone_hosts_are_forgotten() {
        let t = Traffic::default();
        let task = |id: &str| TaskTraffic {
            task_id: id.into(),
            content_length: 5,
            received: Some(shoal_p2p::proto::Traffic {
                peer: 5,
                ..Default::default()
            }),
        };
        let mut req = StatsRequest {
            host_id: "h".into(),
            received: None,
            sent: 7,
            tasks: vec![task("known"), task("unknown")],
        };
        req.tasks
            .extend((0..2 * TASKS_PER_HOST).map(|i| task(&format!("k{i}"))));
        t.put(req, |id| id != "unknown");
        t.forget(|id| id == "h", Duration::ZERO);
        let hosts = t.hosts();
        let h = &hosts["h"];
        assert_eq!(h.sent, 7);
        assert_eq!(h.tasks.len(), TASKS_PER_HOST);
        assert_eq!(h.tasks[0].0, "known");
        assert_eq!(h.tasks[0].2.peer, 5);
        assert!(h.tasks.iter().all(|(id, ..)| id != "unknown"));
        t.forget(|_| false, Duration::from_secs(60));
        assert_eq!(t.hosts().len(), 1, "told just now");
        t.forget(|_| false, Duration::ZERO);
        assert!(t.hosts().is_empty());
    }
}
