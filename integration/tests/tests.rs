//! Shoal's integration and end-to-end tests: one binary, a module per area.

mod daemon;
mod get;
