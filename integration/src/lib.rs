//! Test and benchmark harness.
