//! Where the machine's CPU went during a scenario: the whole machine's time by kind (from
//! `/proc/stat`) and the Shoal processes' own user and system time (from `/proc/<pid>/stat`).
//! On this 2-vCPU machine the lab's hosts, links and services share the same cores, so a figure
//! is only the network's when the CPU had idle time left (issue 18 asks each figure with it).

use serde::Serialize;

/// Clock ticks per second of `/proc` times (`USER_HZ`; 100 on Linux everywhere).
const TICKS: f64 = 100.0;

/// The machine's CPU time so far, in ticks, by kind.
#[derive(Clone, Copy, Debug, Default)]
pub struct Machine {
    user: u64,
    system: u64,
    idle: u64,
    softirq: u64,
    total: u64,
}

impl Machine {
    /// Now, from `/proc/stat`'s `cpu` line (all cores).
    pub fn now() -> Machine {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
            return Machine::default();
        };
        // user nice system idle iowait irq softirq steal ...
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        Machine {
            user: at(0) + at(1),
            system: at(2),
            idle: at(3) + at(4),
            softirq: at(5) + at(6),
            total: v.iter().take(8).sum(),
        }
    }
}

/// A process's user and system time so far, in ticks (0 when it is gone).
pub fn process_ticks(pid: u32) -> (u64, u64) {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return (0, 0);
    };
    // The command name may hold spaces: the fields start after its closing parenthesis.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return (0, 0);
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the line (utime, stime) are the 12th and 13th after the name.
    let at = |i: usize| f.get(i).and_then(|v| v.parse().ok()).unwrap_or(0);
    (at(11), at(12))
}

/// What a scenario's clients' run cost the CPU.
#[derive(Clone, Debug, Serialize)]
pub struct Cpu {
    /// The machine's idle share during the run, all cores, in percent.
    pub idle_percent: f64,
    /// The machine's user, system and interrupt (hard and soft) seconds during the run.
    pub user_seconds: f64,
    pub system_seconds: f64,
    pub irq_seconds: f64,
    /// The Shoal processes' (scheduler, seed, daemons) user and system seconds, from their
    /// start to the end of the run; `None` for the other scenarios.
    pub shoal_user_seconds: Option<f64>,
    pub shoal_system_seconds: Option<f64>,
}

impl Cpu {
    /// Between `before` and `after`, with the Shoal processes' ticks (user, system) if any.
    pub fn between(before: Machine, after: Machine, shoal: Option<(u64, u64)>) -> Cpu {
        let d = |a: u64, b: u64| a.saturating_sub(b) as f64;
        let total = d(after.total, before.total).max(1.0);
        Cpu {
            idle_percent: 100.0 * d(after.idle, before.idle) / total,
            user_seconds: d(after.user, before.user) / TICKS,
            system_seconds: d(after.system, before.system) / TICKS,
            irq_seconds: d(after.softirq, before.softirq) / TICKS,
            shoal_user_seconds: shoal.map(|(u, _)| u as f64 / TICKS),
            shoal_system_seconds: shoal.map(|(_, s)| s as f64 / TICKS),
        }
    }

    /// One line for the table: idle, and the Shoal processes' time per GiB delivered.
    pub fn line(&self, gib_delivered: f64) -> String {
        let mut s = format!(
            "cpu: idle {:.0} %, machine user {:.1} s, system {:.1} s, irq {:.1} s",
            self.idle_percent, self.user_seconds, self.system_seconds, self.irq_seconds
        );
        if let (Some(u), Some(sy)) = (self.shoal_user_seconds, self.shoal_system_seconds) {
            s += &format!(
                "; shoal processes user {u:.1} s + system {sy:.1} s ({:.2} + {:.2} s per GiB delivered)",
                u / gib_delivered,
                sy / gib_delivered
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_and_the_machine_have_counted_some_time() {
        let burn = std::time::Instant::now();
        while burn.elapsed() < std::time::Duration::from_millis(50) {
            std::hint::black_box(0u64);
        }
        let (user, system) = process_ticks(std::process::id());
        assert!(user + system > 0);
        let m = Machine::now();
        assert!(m.total > 0 && m.total >= m.user + m.system + m.idle);
    }
}
