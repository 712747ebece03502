//! The scheduler's Prometheus metrics (no task ids or digests as labels).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug)]
pub struct Metrics {
    /// Hosts attached now.
    pub hosts: Gauge,
    /// Tasks in memory now.
    pub tasks: Gauge,
    /// Time to register a watch and plan who fetches from the origin.
    pub schedule_seconds: Histogram,
    /// Peers told to fetch from the origin themselves (no seed could).
    pub back_to_source: Counter,
    /// Jobs sent to seeds.
    pub seed_triggers: Counter,
    /// Announcements refused for contradicting a task's length or piece digests.
    pub disputed: Counter,
    /// Views sent to watching hosts: each one the scheduler's choice of a host's parents.
    pub views: Counter,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics {
            hosts: Gauge::default(),
            tasks: Gauge::default(),
            schedule_seconds: Histogram::new(exponential_buckets(0.000_05, 4.0, 10)),
            back_to_source: Counter::default(),
            seed_triggers: Counter::default(),
            disputed: Counter::default(),
            views: Counter::default(),
        };
        registry.register("shoal_scheduler_hosts", "Hosts attached", m.hosts.clone());
        registry.register("shoal_scheduler_tasks", "Tasks in memory", m.tasks.clone());
        registry.register(
            "shoal_scheduler_schedule_seconds",
            "Time to register a watch and plan the origin fetch",
            m.schedule_seconds.clone(),
        );
        registry.register(
            "shoal_scheduler_back_to_source",
            "Peers told to fetch from the origin themselves",
            m.back_to_source.clone(),
        );
        registry.register(
            "shoal_scheduler_seed_triggers",
            "Jobs sent to seeds",
            m.seed_triggers.clone(),
        );
        registry.register(
            "shoal_scheduler_disputed_claims",
            "Announcements refused for contradicting a task's length or piece digests",
            m.disputed.clone(),
        );
        registry.register(
            "shoal_scheduler_views",
            "Views sent to watching hosts (each a choice of a host's parents)",
            m.views.clone(),
        );
        m
    }
}
