//! One HTTP connection's clock: which phase it is in and when it must be closed.
//!
//! hyper's own `header_read_timeout` restarts whenever hyper waits for a request head, so it
//! also closes idle keep-alive connections, and it cannot tell "idle" (`keepalive_idle_timeout`)
//! from "slowly sending a head" (`header_read_timeout`). [`Activity`] tells them apart: the
//! socket reports its reads ([`Watched`]), the service reports where requests start and end.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use crate::config::ServerConfig;

/// The connection timeouts of `[server]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// `header_read_timeout`: from connecting, or from the first byte after a response, to the
    /// end of the request head.
    pub header_read: Duration,
    /// `keepalive_idle_timeout`: from a response to the next byte.
    pub keepalive_idle: Duration,
}

impl Timeouts {
    /// The timeouts `[server]` sets.
    pub fn from_config(server: &ServerConfig) -> Self {
        Self {
            header_read: server.header_read_timeout,
            keepalive_idle: server.keepalive_idle_timeout,
        }
    }
}

/// Why a connection is closed by its clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// The request head did not arrive in `header_read_timeout` (slowloris).
    HeaderRead,
    /// Nothing came for `keepalive_idle_timeout` after a response.
    KeepaliveIdle,
}

impl Expiry {
    /// For the log line.
    pub fn as_str(self) -> &'static str {
        match self {
            Expiry::HeaderRead => "the request head took longer than header_read_timeout",
            Expiry::KeepaliveIdle => "idle for keepalive_idle_timeout",
        }
    }
}

/// What a connection is doing. A pure state machine: time comes in as `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request head since the connection opened or since its first byte.
    Head { since: Instant },
    /// Requests are being served: no deadline here (handlers bound their own work).
    Busy { requests: usize },
    /// Nothing received since the last response went out.
    Idle { since: Instant },
}

/// A connection's phase, and from it the deadline the connection task sleeps until.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activity {
    phase: Phase,
}

impl Activity {
    /// A connection accepted at `now`: its first head is due within `header_read_timeout`.
    pub fn new(now: Instant) -> Self {
        Self {
            phase: Phase::Head { since: now },
        }
    }

    /// Bytes arrived. After a response they start the next head's clock.
    pub fn handle_read(&mut self, now: Instant) {
        if let Phase::Idle { .. } = self.phase {
            self.phase = Phase::Head { since: now };
        }
    }

    /// hyper parsed a request head and called the service.
    pub fn handle_request_start(&mut self) {
        self.phase = match self.phase {
            Phase::Busy { requests } => Phase::Busy {
                requests: requests + 1,
            },
            _ => Phase::Busy { requests: 1 },
        };
    }

    /// The service produced its response (or the request was dropped).
    pub fn handle_request_end(&mut self, now: Instant) {
        self.phase = match self.phase {
            Phase::Busy { requests } if requests > 1 => Phase::Busy {
                requests: requests - 1,
            },
            _ => Phase::Idle { since: now },
        };
    }

    /// Whether a request head is owed: the connection is new, or bytes came after a response.
    /// A request may then be on its way (even already in the socket), which a server that stops
    /// should still read and answer. A query, not a `handle_*` input.
    pub fn awaits_head(&self) -> bool {
        matches!(self.phase, Phase::Head { .. })
    }

    /// When the connection must be closed unless something happens first.
    pub fn poll_timeout(&self, t: &Timeouts) -> Option<Instant> {
        match self.phase {
            Phase::Head { since } => Some(since + t.header_read),
            Phase::Idle { since } => Some(since + t.keepalive_idle),
            Phase::Busy { .. } => None,
        }
    }

    /// Whether the deadline has passed at `now`, and so why the connection is to be closed.
    /// A query (no state changes), so not a `handle_*` input.
    pub fn expiry(&self, now: Instant, t: &Timeouts) -> Option<Expiry> {
        let deadline = self.poll_timeout(t)?;
        if now < deadline {
            return None;
        }
        Some(match self.phase {
            Phase::Idle { .. } => Expiry::KeepaliveIdle,
            _ => Expiry::HeaderRead,
        })
    }
}

/// [`Activity`] shared by the socket, the service and the connection task. All three run in
/// the one connection task, so the lock is never contended; it exists because hyper wants its
/// IO and service `Send + 'static`. A change of phase wakes the connection task
/// ([`SharedActivity::changed`]) so it sleeps until the new deadline.
#[derive(Debug, Clone)]
pub struct SharedActivity(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    activity: Mutex<Activity>,
    changed: Notify,
}

impl SharedActivity {
    /// A connection accepted at `now`.
    pub fn new(now: Instant) -> Self {
        Self(Arc::new(Shared {
            activity: Mutex::new(Activity::new(now)),
            changed: Notify::new(),
        }))
    }

    /// Run `f` on the activity (a poisoned lock still holds a valid phase).
    pub fn with<R>(&self, f: impl FnOnce(&mut Activity) -> R) -> R {
        let mut a = self
            .0
            .activity
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let before = *a;
        let r = f(&mut a);
        if *a != before {
            self.0.changed.notify_one();
        }
        r
    }

    /// Resolves when the phase changed since the last call (so the deadline may have moved).
    pub async fn changed(&self) {
        self.0.changed.notified().await;
    }

    /// Mark a request as started; it ends when the guard drops.
    pub fn request(&self) -> RequestGuard {
        self.with(Activity::handle_request_start);
        RequestGuard(self.clone())
    }
}

/// Ends a request in its connection's [`Activity`] when dropped (also when hyper drops the
/// service future because the client went away).
#[derive(Debug)]
pub struct RequestGuard(SharedActivity);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.with(|a| a.handle_request_end(Instant::now()));
    }
}

/// A socket that tells its connection's [`Activity`] when bytes arrive.
#[derive(Debug)]
pub struct Watched<T> {
    inner: T,
    activity: SharedActivity,
}

impl<T> Watched<T> {
    /// Wrap `inner`.
    pub fn new(inner: T, activity: SharedActivity) -> Self {
        Self { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.with(|a| a.handle_read(Instant::now()));
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        header_read: Duration::from_secs(10),
        keepalive_idle: Duration::from_secs(60),
    };

    #[test]
    fn a_new_connection_must_send_its_head_in_time() {
        let t0 = Instant::now();
        let a = Activity::new(t0);
        assert_eq!(a.poll_timeout(&T), Some(t0 + T.header_read));
        assert_eq!(a.expiry(t0 + Duration::from_secs(9), &T), None);
        assert_eq!(a.expiry(t0 + T.header_read, &T), Some(Expiry::HeaderRead));
    }

    #[test]
    fn a_head_is_owed_by_a_new_connection_and_after_bytes_follow_a_response() {
        let t0 = Instant::now();
        let mut a = Activity::new(t0);
        assert!(a.awaits_head(), "a new connection");
        a.handle_request_start();
        assert!(!a.awaits_head(), "serving");
        a.handle_request_end(t0);
        assert!(!a.awaits_head(), "idle after a response: nothing owed");
        a.handle_read(t0);
        assert!(a.awaits_head(), "the next request's first bytes");
    }

    #[test]
    fn trickling_bytes_do_not_extend_the_head_deadline() {
        let t0 = Instant::now();
        let mut a = Activity::new(t0);
        for s in 1..10 {
            a.handle_read(t0 + Duration::from_secs(s));
        }
        assert_eq!(a.poll_timeout(&T), Some(t0 + T.header_read));
    }

    #[test]
    fn after_a_response_the_idle_timeout_runs_until_the_next_byte() {
        let t0 = Instant::now();
        let mut a = Activity::new(t0);
        a.handle_request_start();
        assert_eq!(
            a.poll_timeout(&T),
            None,
            "a request in progress has no deadline"
        );
        let t1 = t0 + Duration::from_secs(30);
        a.handle_request_end(t1);
        assert_eq!(a.poll_timeout(&T), Some(t1 + T.keepalive_idle));
        assert_eq!(
            a.expiry(t1 + T.keepalive_idle, &T),
            Some(Expiry::KeepaliveIdle)
        );
        let t2 = t1 + Duration::from_secs(5);
        a.handle_read(t2);
        assert_eq!(a.poll_timeout(&T), Some(t2 + T.header_read));
    }

    #[test]
    fn pipelined_requests_keep_the_connection_busy_until_the_last_ends() {
        let t0 = Instant::now();
        let mut a = Activity::new(t0);
        a.handle_request_start();
        a.handle_request_start();
        a.handle_request_end(t0);
        assert_eq!(a.poll_timeout(&T), None);
        a.handle_request_end(t0);
        assert_eq!(a.poll_timeout(&T), Some(t0 + T.keepalive_idle));
    }
}
