//! Progress signals: how a work loop shows that it still goes round, without knowing who
//! watches. The loops (RTC engine, media thread) are handed one of these; the systemd watchdog
//! reads them. A leaf module, so neither side imports the other.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A loop's turn counter. Clone it into the loop; call [`beat`](Self::beat) each turn.
#[derive(Debug, Clone, Default)]
pub struct Heartbeat(Arc<AtomicU64>);

impl Heartbeat {
    /// Record one turn of the loop (one relaxed atomic add).
    pub fn beat(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Turns so far.
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// When a loop last went round, for loops that stamp a time instead of counting turns (the
/// media thread). Milliseconds since its creation, in one atomic.
#[derive(Debug)]
pub struct ProgressStamp {
    epoch: Instant,
    last_ms: AtomicU64,
}

impl Default for ProgressStamp {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
}

impl ProgressStamp {
    /// The loop went round now.
    pub fn record(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long ago the loop last went round (from creation if it never did).
    pub fn age(&self) -> Duration {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_counts_across_clones() {
        let hb = Heartbeat::default();
        let clone = hb.clone();
        hb.beat();
        clone.beat();
        assert_eq!(hb.count(), 2);
    }

    #[test]
    fn a_fresh_stamp_is_young_and_recording_resets_its_age() {
        let stamp = ProgressStamp::default();
        assert!(stamp.age() < Duration::from_secs(5));
        stamp.record();
        assert!(stamp.age() < Duration::from_secs(5));
    }
}
