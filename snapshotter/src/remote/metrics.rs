//! What lazy layers do, for `/metrics`: how much of a layer its reads needed, how soon the
//! first read came, how long the background took to bring the rest.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug)]
pub struct LazyMetrics {
    /// Layers mounted lazily (again after a restart included).
    pub mounted: Counter,
    /// Compressed bytes of the layers mounted.
    pub layer_bytes: Counter,
    /// Compressed bytes reads asked the node for (the spans around what was read).
    pub read_bytes: Counter,
    /// Compressed bytes made present ahead of reads, from layers' prefetch lists.
    pub prefetched: Counter,
    /// From a layer's mount to its first read.
    pub first_read: Histogram,
    /// How long a read waited for the node to make its span present (reads of a whole
    /// layer wait for nothing and are not counted).
    pub fetch: Histogram,
    /// From a layer's mount to the node holding all of it.
    pub complete: Histogram,
    /// Whole lazy layers unpacked beside their mounts (new containers read plain files).
    pub unpacked: Counter,
}

impl Default for LazyMetrics {
    fn default() -> Self {
        // 10 ms to about 20 min.
        let seconds = || Histogram::new(exponential_buckets(0.01, 2.0, 18));
        LazyMetrics {
            mounted: Counter::default(),
            layer_bytes: Counter::default(),
            read_bytes: Counter::default(),
            prefetched: Counter::default(),
            first_read: seconds(),
            // 1 ms to about 30 s.
            fetch: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            complete: seconds(),
            unpacked: Counter::default(),
        }
    }
}

impl LazyMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "shoal_lazy_layers_mounted",
            "Layers mounted lazily (FUSE) instead of unpacked",
            self.mounted.clone(),
        );
        registry.register(
            "shoal_lazy_layer_bytes",
            "Compressed bytes of the layers mounted lazily",
            self.layer_bytes.clone(),
        );
        registry.register(
            "shoal_lazy_read_bytes",
            "Compressed bytes of lazy layers that reads needed before the layer was whole",
            self.read_bytes.clone(),
        );
        registry.register(
            "shoal_lazy_prefetched_bytes",
            "Compressed bytes of lazy layers made present ahead of reads, from their prefetch lists",
            self.prefetched.clone(),
        );
        registry.register(
            "shoal_lazy_first_read_seconds",
            "From a lazy layer's mount to its first read",
            self.first_read.clone(),
        );
        registry.register(
            "shoal_lazy_fetch_seconds",
            "How long a lazy read waited for the node to make its span present",
            self.fetch.clone(),
        );
        registry.register(
            "shoal_lazy_complete_seconds",
            "From a lazy layer's mount to the node holding all of it",
            self.complete.clone(),
        );
        registry.register(
            "shoal_lazy_layers_unpacked",
            "Lazy layers unpacked once whole: containers started since read plain files",
            self.unpacked.clone(),
        );
    }
}
