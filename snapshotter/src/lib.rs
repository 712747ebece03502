//! `shoal-snapshotter`: the containerd remote snapshotter (`proxy_plugins`).
//!
//! It will own the Snapshots gRPC service, snapshot metadata, overlay mounts and lazily fetched
//! FUSE layers (see DESIGN.md "Lazy pulling"). Nothing is implemented yet: this crate exports no API.
