//! `shoal-scheduler`: the swarm's coordinator.
//!
//! It will own the scheduler service (`shoal scheduler`, gRPC on port 8002): peers register tasks
//! and get parents or "go to the origin", announce finished pieces, and the scheduler triggers the
//! seed peer on a task's first download. It will also own preheat jobs (Harbor's provider API and
//! push webhooks) and the cluster view. Nothing is implemented yet: this crate exports no API, so
//! nothing can depend on it by mistake.
