//! When to send an IDR: a pure state machine (no clock, no IO; time comes in as `Instant`).
//!
//! Requests (new viewer, PLI, FIR, a lagging viewer) are coalesced: however many arrive, one
//! IDR answers them all. Forced IDRs are at least `min_gap` apart (an IDR costs several P frames
//! of bandwidth, and a burst of PLIs must not turn the stream into all-intra). Independently,
//! an IDR goes out every `interval` (the GOP), so a viewer that missed one recovers.
//!
//! Drive it once per picture, in the crate's draining order: `handle_request` for every request
//! that arrived, `handle_timeout(now)` with the picture's time, then `poll_output` says whether
//! this picture must be an IDR and why (it consumes the answer: ask once per picture). Report
//! every IDR actually produced (also ones the encoder or camera made on its own) with
//! `handle_keyframe_sent`; until then the reason stays and the next picture is asked again.
//! There is no timer of its own: pictures are the clock, and an IDR can only be a picture.

use std::time::{Duration, Instant};

use super::KeyframeCause;

/// The keyframe policy of one pipeline.
#[derive(Debug, Clone)]
pub struct KeyframePolicy {
    min_gap: Duration,
    interval: Duration,
    last_idr: Option<Instant>,
    /// The first request not answered by an IDR yet (later ones merge into it).
    pending: Option<KeyframeCause>,
    /// An IDR is due and nobody has asked for the answer yet.
    due: Option<KeyframeCause>,
}

/// Smallest time between two forced IDRs.
pub const MIN_FORCED_GAP: Duration = Duration::from_millis(500);

impl KeyframePolicy {
    /// `interval`: the periodic GOP; `min_gap`: least time between forced IDRs.
    pub fn new(interval: Duration, min_gap: Duration) -> Self {
        Self {
            min_gap,
            interval: interval.max(min_gap),
            last_idr: None,
            pending: None,
            due: None,
        }
    }

    /// A viewer asked for a keyframe at `now`. Later requests before the IDR merge into it.
    pub fn handle_request(&mut self, cause: KeyframeCause, now: Instant) {
        if self.pending.is_none() {
            self.pending = Some(cause);
        }
        self.handle_timeout(now);
    }

    /// Time is `now` (a picture is about to be encoded or forwarded): an IDR may become due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.due = self.due_at(now);
    }

    /// An IDR went out at `now` (forced or not): pending requests are satisfied.
    pub fn handle_keyframe_sent(&mut self, now: Instant) {
        self.last_idr = Some(now);
        self.pending = None;
        self.due = None;
    }

    /// `Some(cause)`: the next picture must be an IDR, counted under `cause`. Consumes the
    /// answer; the reason stays until [`handle_keyframe_sent`](Self::handle_keyframe_sent), so
    /// the next `handle_timeout` makes it due again if this picture was not an IDR after all.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<KeyframeCause> {
        self.due.take()
    }

    fn due_at(&self, now: Instant) -> Option<KeyframeCause> {
        let Some(last) = self.last_idr else {
            // Nothing sent yet: the first picture is always an IDR.
            return Some(self.pending.unwrap_or(KeyframeCause::Periodic));
        };
        let since = now.saturating_duration_since(last);
        if since >= self.interval {
            return Some(self.pending.unwrap_or(KeyframeCause::Periodic));
        }
        match self.pending {
            Some(cause) if since >= self.min_gap => Some(cause),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: Duration = Duration::from_millis(33);

    /// Run `frames` pictures from `t0`, injecting requests at the given frame numbers; return
    /// the frame numbers that were IDRs and why.
    fn drive(
        policy: &mut KeyframePolicy,
        t0: Instant,
        frames: u32,
        requests: &[(u32, KeyframeCause)],
    ) -> Vec<(u32, KeyframeCause)> {
        let mut idrs = Vec::new();
        for f in 0..frames {
            let now = t0 + FRAME * f;
            for (_, cause) in requests.iter().filter(|(at, _)| *at == f) {
                policy.handle_request(*cause, now);
            }
            policy.handle_timeout(now);
            if let Some(cause) = policy.poll_output() {
                policy.handle_keyframe_sent(now);
                idrs.push((f, cause));
            }
        }
        idrs
    }

    #[test]
    fn first_picture_is_an_idr_then_every_interval() {
        let mut p = KeyframePolicy::new(Duration::from_secs(1), MIN_FORCED_GAP);
        let idrs = drive(&mut p, Instant::now(), 100, &[]);
        let at: Vec<u32> = idrs.iter().map(|i| i.0).collect();
        // 1 s / 33 ms: the picture at 1023 ms is the first at or past the interval.
        assert_eq!(at, vec![0, 31, 62, 93]);
        assert!(idrs.iter().all(|i| i.1 == KeyframeCause::Periodic));
    }

    #[test]
    fn requests_are_coalesced_and_rate_limited() {
        let mut p = KeyframePolicy::new(Duration::from_secs(10), MIN_FORCED_GAP);
        let requests: Vec<(u32, KeyframeCause)> = (1..60)
            .map(|f| {
                (
                    f,
                    if f % 2 == 0 {
                        KeyframeCause::Pli
                    } else {
                        KeyframeCause::NewViewer
                    },
                )
            })
            .collect();
        let idrs = drive(&mut p, Instant::now(), 60, &requests);
        // 59 requests in ~2 s: IDRs at 0 (first picture), then one per 500 ms at most.
        let at: Vec<u32> = idrs.iter().map(|i| i.0).collect();
        assert_eq!(at, vec![0, 16, 32, 48]);
        for w in idrs.windows(2) {
            assert!(FRAME * (w[1].0 - w[0].0) >= MIN_FORCED_GAP);
        }
        assert_eq!(
            idrs[1].1,
            KeyframeCause::NewViewer,
            "the first cause is reported"
        );
    }

    /// `handle_timeout(now)` then `poll_output()`, as the pipeline does once per picture.
    fn at(p: &mut KeyframePolicy, now: Instant) -> Option<KeyframeCause> {
        p.handle_timeout(now);
        p.poll_output()
    }

    #[test]
    fn request_right_after_an_idr_waits_for_the_gap_then_fires_once() {
        let mut p = KeyframePolicy::new(Duration::from_secs(10), MIN_FORCED_GAP);
        let t0 = Instant::now();
        assert!(at(&mut p, t0).is_some());
        p.handle_keyframe_sent(t0);
        p.handle_request(KeyframeCause::Fir, t0);
        p.handle_request(KeyframeCause::Pli, t0);
        assert_eq!(p.poll_output(), None, "within the gap: nothing due yet");
        assert_eq!(at(&mut p, t0 + Duration::from_millis(499)), None);
        let t1 = t0 + MIN_FORCED_GAP;
        assert_eq!(at(&mut p, t1), Some(KeyframeCause::Fir));
        p.handle_keyframe_sent(t1);
        assert_eq!(at(&mut p, t1 + Duration::from_secs(1)), None);
    }

    #[test]
    fn poll_output_consumes_but_the_reason_stays_until_an_idr_is_sent() {
        let mut p = KeyframePolicy::new(Duration::from_secs(10), MIN_FORCED_GAP);
        let t0 = Instant::now();
        p.handle_keyframe_sent(t0);
        let t1 = t0 + Duration::from_secs(1);
        p.handle_request(KeyframeCause::Pli, t1);
        assert_eq!(p.poll_output(), Some(KeyframeCause::Pli));
        assert_eq!(p.poll_output(), None, "asked once, answered once");
        // The encoder skipped that picture: the next one is asked again.
        assert_eq!(at(&mut p, t1 + FRAME), Some(KeyframeCause::Pli));
        p.handle_keyframe_sent(t1 + FRAME);
        assert_eq!(p.poll_output(), None);
        assert_eq!(at(&mut p, t1 + FRAME * 2), None);
    }

    #[test]
    fn an_idr_the_source_made_satisfies_pending_requests() {
        let mut p = KeyframePolicy::new(Duration::from_secs(2), MIN_FORCED_GAP);
        let t0 = Instant::now();
        p.handle_keyframe_sent(t0);
        p.handle_request(KeyframeCause::NewViewer, t0);
        p.handle_keyframe_sent(t0 + Duration::from_millis(100));
        assert_eq!(at(&mut p, t0 + Duration::from_secs(1)), None);
    }
}
