//! The line a long command (`get`, `pull`, `preheat`) ends with, as wget's: size, time, rate,
//! and the bytes by where they came from; or the same as JSON for scripts.

use std::fmt;
use std::time::Duration;

use indicatif::HumanBytes;
use serde::Serialize;
use shoal_p2p::BySource;

/// What a command moved, and how long it took.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub bytes: u64,
    #[serde(rename = "seconds", serialize_with = "seconds")]
    pub elapsed: Duration,
    /// Where the bytes came from, when the command knows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by_source: Option<BySource>,
}

impl Summary {
    /// Bytes per second over the whole command.
    pub fn rate(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-6)
    }

    /// The summary as one JSON object (with `bytes_per_second`).
    pub fn json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("a summary serializes");
        v["bytes_per_second"] = (self.rate().round() as u64).into();
        v
    }
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
}

impl fmt::Display for Summary {
    /// `256.00 MiB in 2.3 s (110.84 MiB/s); origin 0 B, peers 200.00 MiB, seeds 56.00 MiB, cache 0 B`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} in {:.1} s ({}/s)",
            HumanBytes(self.bytes),
            self.elapsed.as_secs_f64(),
            HumanBytes(self.rate() as u64)
        )?;
        if let Some(s) = &self.by_source {
            write!(
                f,
                "; origin {}, peers {}, seeds {}, cache {}",
                HumanBytes(s.origin),
                HumanBytes(s.peer),
                HumanBytes(s.seed),
                HumanBytes(s.cache)
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_reads_as_one_line_and_as_json() {
        let s = Summary {
            bytes: 3 << 20,
            elapsed: Duration::from_millis(1500),
            by_source: Some(BySource {
                origin: 1 << 20,
                peer: 2 << 20,
                ..BySource::default()
            }),
        };
        assert_eq!(
            s.to_string(),
            "3.00 MiB in 1.5 s (2.00 MiB/s); origin 1.00 MiB, peers 2.00 MiB, seeds 0 B, cache 0 B"
        );
        let j = s.json();
        assert_eq!(j["bytes"], 3 << 20);
        assert_eq!(j["seconds"], 1.5);
        assert_eq!(j["bytes_per_second"], 2 << 20);
        assert_eq!(j["by_source"]["peer"], 2 << 20);
        let none = Summary {
            by_source: None,
            ..s
        };
        assert!(!none.to_string().contains(';'));
        assert!(none.json().get("by_source").is_none());
    }
}
