//! `shoal-seed`: the peer that talks to the origin.
//!
//! It will own `shoal seed`: registry clients with token auth, manifest resolution, and
//! back-to-source downloads whose pieces are hashed and announced as they arrive. The plain
//! HTTP origin client it builds on lives in `shoal-p2p` (`origin`), because every daemon must be
//! able to fall back to the origin itself. Nothing is implemented yet: this crate exports no API.
