//! `shoal-snapshotter`: the containerd remote snapshotter (`proxy_plugins`).
//!
//! It will own the Snapshots gRPC service, snapshot metadata, overlay mounts and lazily fetched
//! FUSE layers (see DESIGN.md "Lazy pulling"), asking the local node for pieces through the
//! local API client in `shoal-p2p` (`shoal_p2p::api`), never through node internals. Nothing is
//! implemented yet: this crate exports no API.
