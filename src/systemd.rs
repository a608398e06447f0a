//! systemd at the edges: `sd_notify` (READY, STATUS, RELOADING, STOPPING, WATCHDOG), a
//! watchdog that pings only while the work loops make progress, and the stable device id kept
//! in the state directory. What the `STATUS=` line says is the daemon's business
//! (`daemon::status`); this module imports nothing above the leaves.
//!
//! # Watchdog
//!
//! `WatchdogSec=` is only worth something if a hung daemon stops pinging. A timer that pings
//! from its own task proves nothing but that the tokio timer works, so the loops that do the
//! work report their own progress through the leaf [`crate::progress`]: the RTC engine holds a
//! [`Heartbeat`] and calls [`Heartbeat::beat`] every time round (one relaxed atomic add); the
//! media thread stamps a [`ProgressStamp`](crate::progress::ProgressStamp) every turn, read
//! through an age probe ([`Watchdog::register_age`]). The daemon hands them out. [`Watchdog`] samples them every
//! `WatchdogSec/2` and feeds them to the pure [`WatchdogPolicy`], which says ping only when every
//! registered loop advanced within the last `WatchdogSec/2`. A stalled loop therefore stops the
//! pings, and systemd restarts the service within `WatchdogSec` after that. Loops must go round
//! at least every `WatchdogSec/4` even when idle (a timer tick in their `select!` does it; the
//! media loop wakes every 100 ms, the engine every second).
//!
//! All notify calls are no-ops when `NOTIFY_SOCKET` is unset (running by hand, in tests).

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::ids::{random_hex, RandomError};
use crate::progress::Heartbeat;

/// Where state lives when systemd did not say (`StateDirectory=` sets `$STATE_DIRECTORY`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/snaprtcd";
/// File in the state directory that holds the device id.
pub const DEVICE_ID_FILE: &str = "device-id";

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// `READY=1` plus a first `STATUS=` line: call once every listener is bound.
pub fn notify_ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `READY=1` alone: a reload is done (the live `STATUS=` line stays as it is).
pub fn notify_reloaded() {
    notify(&[NotifyState::Ready]);
}

/// `STATUS=<one line>`, shown by `systemctl status`.
pub fn notify_status(status: &str) {
    notify(&[NotifyState::Status(status)]);
}

/// `RELOADING=1`: a SIGHUP is being handled; follow with [`notify_ready`].
pub fn notify_reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}

/// `STOPPING=1`: shutdown has begun.
pub fn notify_stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// `WATCHDOG=1`.
pub fn notify_watchdog() {
    notify(&[NotifyState::Watchdog]);
}

/// The `WatchdogSec=` systemd asked for, if any (from `$WATCHDOG_USEC`).
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

/// Ages are measured in whole milliseconds, so the same last turn seen twice can look up to
/// a millisecond younger; a later turn counts only beyond this (loops turn every 100 ms or so).
const AGE_RESOLUTION: Duration = Duration::from_millis(10);

/// What the policy wants done, drained with [`WatchdogPolicy::poll_output`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchdogEvent {
    /// Send `WATCHDOG=1`.
    Ping,
    /// This loop made no progress for too long; pings are withheld.
    Stalled(&'static str),
    /// This loop moves again.
    Recovered(&'static str),
}

#[derive(Debug)]
struct LoopProgress {
    name: &'static str,
    count: u64,
    last_progress: Instant,
    stalled: bool,
}

/// Decides when to ping the systemd watchdog. Pure: counters and time come in, events go out.
///
/// Inputs: [`handle_progress`](Self::handle_progress) with each loop's counter,
/// [`handle_timeout`](Self::handle_timeout) at [`poll_timeout`](Self::poll_timeout).
/// After every input, drain [`poll_output`](Self::poll_output) until `None` (the crate's
/// draining rule, see the crate docs' *State machines*).
#[derive(Debug)]
pub struct WatchdogPolicy {
    interval: Duration,
    stall_after: Duration,
    next_tick: Instant,
    loops: Vec<LoopProgress>,
    events: std::collections::VecDeque<WatchdogEvent>,
}

impl WatchdogPolicy {
    /// For systemd's `period` (`WatchdogSec=`): ticks every `period/2`; a loop that has not
    /// advanced for `period/2` withholds the ping. Every loop counts as fresh at `now`.
    pub fn new(period: Duration, loops: &[&'static str], now: Instant) -> Self {
        let interval = (period / 2).max(Duration::from_millis(1));
        Self {
            interval,
            stall_after: interval,
            next_tick: now + interval,
            loops: loops
                .iter()
                .map(|&name| LoopProgress {
                    name,
                    count: 0,
                    last_progress: now,
                    stalled: false,
                })
                .collect(),
            events: Default::default(),
        }
    }

    /// How often the shell should sample and tick.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The current counter of loop `index` (in the order given to [`new`](Self::new)).
    pub fn handle_progress(&mut self, index: usize, count: u64, now: Instant) {
        if let Some(l) = self.loops.get_mut(index) {
            if count != l.count {
                l.count = count;
                l.last_progress = now;
                if l.stalled {
                    l.stalled = false;
                    self.events.push_back(WatchdogEvent::Recovered(l.name));
                }
            }
        }
    }

    /// Loop `index` last made progress `age` ago (for loops that stamp a time instead of
    /// counting turns).
    pub fn handle_age(&mut self, index: usize, age: Duration, now: Instant) {
        if let Some(l) = self.loops.get_mut(index) {
            let at = now.checked_sub(age).unwrap_or(l.last_progress);
            if at > l.last_progress + AGE_RESOLUTION {
                l.last_progress = at;
                if l.stalled {
                    l.stalled = false;
                    self.events.push_back(WatchdogEvent::Recovered(l.name));
                }
            }
        }
    }

    /// When the next tick is due (always some: the policy ticks for the whole process).
    pub fn poll_timeout(&self) -> Option<Instant> {
        Some(self.next_tick)
    }

    /// Tick: decide whether this period earns a ping.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.next_tick {
            return;
        }
        self.next_tick = now + self.interval;
        let mut healthy = true;
        for l in &mut self.loops {
            let fresh = now.saturating_duration_since(l.last_progress) <= self.stall_after;
            if !fresh {
                healthy = false;
                if !l.stalled {
                    l.stalled = true;
                    self.events.push_back(WatchdogEvent::Stalled(l.name));
                }
            }
        }
        if healthy {
            self.events.push_back(WatchdogEvent::Ping);
        }
    }

    /// The next thing to do; each is returned once.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<WatchdogEvent> {
        self.events.pop_front()
    }
}

/// How the watchdog learns that a loop moved.
enum Probe {
    /// A counter the loop bumps each turn.
    Count(Heartbeat),
    /// How long ago the loop last went round.
    Age(Box<dyn Fn() -> Duration + Send + Sync>),
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Probe::Count(hb) => write!(f, "Count({})", hb.count()),
            Probe::Age(_) => f.write_str("Age"),
        }
    }
}

/// The thin task around [`WatchdogPolicy`]: register loops, then [`run`](Self::run) it.
#[derive(Debug, Default)]
pub struct Watchdog {
    loops: Vec<(&'static str, Probe)>,
}

impl Watchdog {
    /// No loops yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A heartbeat for the loop called `name` ("rtc"). Pings stop when it stalls.
    pub fn register(&mut self, name: &'static str) -> Heartbeat {
        let hb = Heartbeat::default();
        self.loops.push((name, Probe::Count(hb.clone())));
        hb
    }

    /// Watch a loop that stamps its own progress: `age` says how long ago it last went round
    /// (the media thread: the age of its `ProgressStamp`). Pings stop when it stalls.
    pub fn register_age(
        &mut self,
        name: &'static str,
        age: impl Fn() -> Duration + Send + Sync + 'static,
    ) {
        self.loops.push((name, Probe::Age(Box::new(age))));
    }

    /// Pings systemd every `period/2` while all loops advance, until `cancel`. Without a
    /// watchdog (`period` is `None`) it just waits for `cancel`, so it can live in the
    /// daemon's `JoinSet` either way.
    pub async fn run(self, period: Option<Duration>, cancel: CancellationToken) {
        let Some(period) = period else {
            cancel.cancelled().await;
            return;
        };
        self.run_with(period, cancel, |event| match event {
            WatchdogEvent::Ping => notify_watchdog(),
            WatchdogEvent::Stalled(name) => {
                tracing::error!(loop_name = name, "loop stalled; withholding watchdog pings")
            }
            WatchdogEvent::Recovered(name) => {
                tracing::warn!(loop_name = name, "loop moves again; watchdog pings resume")
            }
        })
        .await
    }

    /// [`run`](Self::run) with the events handed to `on_event` instead of systemd and the log.
    pub async fn run_with(
        self,
        period: Duration,
        cancel: CancellationToken,
        mut on_event: impl FnMut(WatchdogEvent),
    ) {
        let names: Vec<&'static str> = self.loops.iter().map(|(n, _)| *n).collect();
        let mut policy = WatchdogPolicy::new(period, &names, Instant::now());
        tracing::info!(?period, loops = ?names, "systemd watchdog armed");
        loop {
            let Some(deadline) = policy.poll_timeout() else {
                cancel.cancelled().await;
                return;
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
            let now = Instant::now();
            for (i, (_, probe)) in self.loops.iter().enumerate() {
                match probe {
                    Probe::Count(hb) => policy.handle_progress(i, hb.count(), now),
                    Probe::Age(age) => policy.handle_age(i, age(), now),
                }
            }
            policy.handle_timeout(now);
            while let Some(event) = policy.poll_output() {
                on_event(event);
            }
        }
    }
}

/// Why the device id could not be kept.
#[derive(Debug, thiserror::Error)]
pub enum DeviceIdError {
    /// The state directory or the id file could not be written.
    #[error("keeping the device id in {path}: {source}")]
    Io {
        /// The id file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// No randomness from the OS.
    #[error("generating a device id: {0}")]
    Random(#[from] RandomError),
}

/// The state directory: the first entry of `$STATE_DIRECTORY` (systemd `StateDirectory=`),
/// else [`DEFAULT_STATE_DIR`].
pub fn state_dir() -> PathBuf {
    state_dir_from(std::env::var_os("STATE_DIRECTORY").as_deref())
}

fn state_dir_from(var: Option<&std::ffi::OsStr>) -> PathBuf {
    var.and_then(|v| v.to_str())
        .and_then(|v| v.split(':').find(|p| !p.is_empty()))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
}

/// A well-formed id: 8 to 64 of `[0-9a-z-]`. Anything else in the file is replaced.
fn valid_id(id: &str) -> bool {
    (8..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b == b'-')
}

/// The device's stable id (16 hex digits), read from `<dir>/device-id` or created there once
/// (written to a temporary file and renamed, so a crash never leaves half an id).
pub fn device_id(dir: &Path) -> Result<String, DeviceIdError> {
    let path = dir.join(DEVICE_ID_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let id = text.trim();
        if valid_id(id) {
            return Ok(id.to_owned());
        }
        tracing::warn!(path = %path.display(), "device id file is malformed; making a new id");
    }
    let id = random_hex::<8>()?;
    let io_err = |source| DeviceIdError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io_err)?;
    let tmp = dir.join(format!(".{DEVICE_ID_FILE}.tmp"));
    std::fs::write(&tmp, format!("{id}\n")).map_err(io_err)?;
    std::fs::rename(&tmp, &path).map_err(io_err)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn drain(p: &mut WatchdogPolicy) -> Vec<WatchdogEvent> {
        std::iter::from_fn(|| p.poll_output()).collect()
    }

    #[test]
    fn pings_every_half_period_while_loops_progress() {
        let t0 = Instant::now();
        let mut p = WatchdogPolicy::new(10 * SEC, &["media", "rtc"], t0);
        assert_eq!(p.interval(), 5 * SEC);
        assert_eq!(p.poll_timeout(), Some(t0 + 5 * SEC));
        for k in 1..=4u64 {
            let now = t0 + 5 * SEC * k as u32;
            p.handle_progress(0, k, now - SEC);
            p.handle_progress(1, k * 7, now - SEC);
            p.handle_timeout(now);
            assert_eq!(drain(&mut p), vec![WatchdogEvent::Ping], "tick {k}");
            assert_eq!(p.poll_timeout(), Some(now + 5 * SEC));
        }
    }

    #[test]
    fn no_ping_before_the_tick_is_due() {
        let t0 = Instant::now();
        let mut p = WatchdogPolicy::new(10 * SEC, &["media"], t0);
        p.handle_timeout(t0 + 4 * SEC);
        assert_eq!(drain(&mut p), vec![]);
    }

    #[test]
    fn a_stalled_loop_withholds_pings_until_it_moves() {
        let t0 = Instant::now();
        let mut p = WatchdogPolicy::new(10 * SEC, &["media", "rtc"], t0);
        // Both fresh at start: first tick pings even before any beat.
        p.handle_timeout(t0 + 5 * SEC);
        assert_eq!(drain(&mut p), vec![WatchdogEvent::Ping]);
        // rtc keeps going, media is stuck at its counter.
        p.handle_progress(0, 0, t0 + 10 * SEC);
        p.handle_progress(1, 3, t0 + 10 * SEC);
        p.handle_timeout(t0 + 10 * SEC + Duration::from_millis(1));
        assert_eq!(drain(&mut p), vec![WatchdogEvent::Stalled("media")]);
        // Still stuck: no ping, and no repeated Stalled event.
        p.handle_progress(1, 4, t0 + 15 * SEC);
        p.handle_timeout(t0 + 16 * SEC);
        assert_eq!(drain(&mut p), vec![]);
        // Media moves: recovered, and the next tick pings again.
        p.handle_progress(0, 1, t0 + 17 * SEC);
        assert_eq!(drain(&mut p), vec![WatchdogEvent::Recovered("media")]);
        p.handle_progress(1, 5, t0 + 21 * SEC);
        p.handle_timeout(t0 + 21 * SEC);
        assert_eq!(drain(&mut p), vec![WatchdogEvent::Ping]);
    }

    #[test]
    fn a_counter_that_does_not_change_is_not_progress() {
        let t0 = Instant::now();
        let mut p = WatchdogPolicy::new(2 * SEC, &["rtc"], t0);
        p.handle_progress(0, 5, t0 + SEC);
        p.handle_timeout(t0 + SEC);
        assert_eq!(drain(&mut p), vec![WatchdogEvent::Ping]);
        p.handle_progress(0, 5, t0 + 2 * SEC);
        p.handle_progress(0, 5, t0 + 3 * SEC);
        p.handle_timeout(t0 + 3 * SEC);
        assert_eq!(drain(&mut p), vec![WatchdogEvent::Stalled("rtc")]);
    }

    #[test]
    fn an_age_probe_counts_as_progress_only_while_it_stays_young() {
        let t0 = Instant::now();
        let mut p = WatchdogPolicy::new(10 * SEC, &["media"], t0);
        // Went round 100 ms ago at each tick: pings.
        for k in 1..=3u32 {
            let now = t0 + 5 * SEC * k;
            p.handle_age(0, Duration::from_millis(100), now);
            p.handle_timeout(now);
            assert_eq!(drain(&mut p), vec![WatchdogEvent::Ping], "tick {k}");
        }
        // Last turn at t0+15s-100ms; at t0+25s its age is ~10 s: stalled, no ping.
        p.handle_age(0, 10 * SEC - Duration::from_millis(100), t0 + 25 * SEC);
        p.handle_timeout(t0 + 25 * SEC);
        assert_eq!(drain(&mut p), vec![WatchdogEvent::Stalled("media")]);
        // The same last turn measured a millisecond younger (rounding) is not progress.
        p.handle_age(0, 10 * SEC - Duration::from_millis(101), t0 + 25 * SEC);
        assert_eq!(drain(&mut p), vec![]);
        p.handle_age(0, Duration::ZERO, t0 + 26 * SEC);
        assert_eq!(drain(&mut p), vec![WatchdogEvent::Recovered("media")]);
    }

    #[test]
    fn no_loops_means_the_process_itself_is_the_progress() {
        let t0 = Instant::now();
        let mut p = WatchdogPolicy::new(SEC, &[], t0);
        p.handle_timeout(t0 + SEC);
        assert_eq!(drain(&mut p), vec![WatchdogEvent::Ping]);
    }

    #[test]
    fn heartbeat_counts_across_clones() {
        let mut w = Watchdog::new();
        let hb = w.register("media");
        let clone = hb.clone();
        hb.beat();
        clone.beat();
        assert_eq!(hb.count(), 2);
        assert_eq!(w.loops.len(), 1);
    }

    #[tokio::test]
    async fn watchdog_task_runs_until_cancelled_with_or_without_a_period() {
        let cancel = CancellationToken::new();
        let idle = tokio::spawn(Watchdog::new().run(None, cancel.clone()));
        let (pings, mut pinged) = tokio::sync::mpsc::unbounded_channel();
        let armed = tokio::spawn(Watchdog::new().run_with(
            Duration::from_millis(20),
            cancel.clone(),
            move |event| {
                let _ = pings.send(event);
            },
        ));
        for _ in 0..5 {
            let event = tokio::time::timeout(SEC, pinged.recv()).await;
            assert_eq!(
                event.expect("a ping every 10 ms"),
                Some(WatchdogEvent::Ping)
            );
        }
        assert!(!idle.is_finished() && !armed.is_finished());
        cancel.cancel();
        for task in [idle, armed] {
            tokio::time::timeout(SEC, task)
                .await
                .expect("stops on cancel")
                .expect("no panic");
        }
    }

    #[test]
    fn state_dir_prefers_systemds_first_entry() {
        use std::ffi::OsStr;
        assert_eq!(state_dir_from(None), PathBuf::from("/var/lib/snaprtcd"));
        assert_eq!(
            state_dir_from(Some(OsStr::new("/var/lib/a:/var/lib/b"))),
            PathBuf::from("/var/lib/a")
        );
        assert_eq!(
            state_dir_from(Some(OsStr::new(""))),
            PathBuf::from("/var/lib/snaprtcd")
        );
    }

    #[test]
    fn device_id_is_created_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("snaprtcd-id-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = device_id(&dir).expect("created");
        assert_eq!(first.len(), 16);
        assert!(valid_id(&first));
        assert_eq!(device_id(&dir).expect("read back"), first);
        // A damaged file is replaced with a fresh id.
        std::fs::write(dir.join(DEVICE_ID_FILE), "NOT AN ID!\n").expect("write");
        let second = device_id(&dir).expect("replaced");
        assert_ne!(second, first);
        assert!(valid_id(&second));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
