//! Shoal's integration and end-to-end tests: one binary, a module per area.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod console;
mod daemon;
mod doctor;
mod get;
mod lab;
mod limits;
mod mirror;
mod packaging;
mod preheat;
mod seed;
mod snapshotter;
mod swarm;
mod trust;
