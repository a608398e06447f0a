//! Reading request bodies within a limit, after the route's auth check (see [`super::routes`]).

use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::response::{text, Body};

/// Most of a refused body that is read before the connection is dropped anyway.
pub const DRAIN_MAX_BYTES: usize = 8 << 20;
/// Longest a refused body is read for.
pub const DRAIN_MAX_TIME: Duration = Duration::from_secs(2);

/// Where a refused body is drained: the server's task tracker (so shutdown waits for it, and
/// nothing runs unowned) and its cancel token (so shutdown does not wait the full
/// [`DRAIN_MAX_TIME`]).
#[derive(Debug, Clone)]
pub struct Drainer {
    /// The HTTP server's connection tracker.
    pub tracker: TaskTracker,
    /// Fires at shutdown.
    pub cancel: CancellationToken,
}

/// Read a request body, refusing more than `limit` bytes (413) without buffering it all, and
/// one that takes longer than `timeout` to arrive (408: a slow body holds a connection as a
/// slow head does).
///
/// A refused body is drained by `drainer` so that the client, which is usually still sending
/// it, gets to read the 413.
pub async fn read_body<B>(
    req: Request<B>,
    limit: usize,
    timeout: Duration,
    drainer: &Drainer,
) -> Result<Request<Bytes>, Response<Body>>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let too_large = || {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body exceeds max_body_bytes\n",
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let (parts, mut body) = req.into_parts();
    if declared.is_some_and(|n| n > limit as u64) {
        drainer.drain(body);
        return Err(too_large());
    }
    // `&mut body`: on overflow the rest of the body is still ours to drain.
    let read = tokio::time::timeout(timeout, Limited::new(&mut body, limit).collect()).await;
    let Ok(read) = read else {
        return Err(text(
            StatusCode::REQUEST_TIMEOUT,
            "the body did not arrive within header_read_timeout\n",
        ));
    };
    match read {
        Ok(collected) => Ok(Request::from_parts(parts, collected.to_bytes())),
        Err(e) if e.is::<LengthLimitError>() => {
            drainer.drain(body);
            Err(too_large())
        }
        Err(e) => Err(text(
            StatusCode::BAD_REQUEST,
            format!("could not read the body: {e}\n"),
        )),
    }
}

impl Drainer {
    /// Read and discard the rest of a refused body, up to [`DRAIN_MAX_BYTES`] or
    /// [`DRAIN_MAX_TIME`], in a task of the server's tracker. Closing a connection with unread
    /// data makes the kernel reset it, and a client still writing its body then reports a
    /// network error instead of our 413 ("lingering close", as nginx and Apache do).
    pub fn drain<B>(&self, mut body: B)
    where
        B: http_body::Body + Send + Unpin + 'static,
        B::Data: Send,
    {
        let cancel = self.cancel.clone();
        self.tracker.spawn(async move {
            let discard = async move {
                let mut n = 0usize;
                while let Some(Ok(frame)) = body.frame().await {
                    if let Some(data) = frame.data_ref() {
                        n += data.remaining();
                        if n > DRAIN_MAX_BYTES {
                            break;
                        }
                    }
                }
            };
            tokio::select! {
                _ = tokio::time::timeout(DRAIN_MAX_TIME, discard) => {}
                _ = cancel.cancelled() => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    const SECOND: Duration = Duration::from_secs(1);

    fn drainer() -> Drainer {
        Drainer {
            tracker: TaskTracker::new(),
            cancel: CancellationToken::new(),
        }
    }

    #[tokio::test]
    async fn read_body_refuses_large_bodies() {
        let d = drainer();
        let req = Request::builder()
            .body(Full::new(Bytes::from(vec![0u8; 2048])))
            .unwrap();
        assert_eq!(
            read_body(req, 1024, SECOND, &d).await.unwrap_err().status(),
            413
        );
        let req = Request::builder()
            .body(Full::new(Bytes::from_static(b"v=0")))
            .unwrap();
        let read = read_body(req, 1024, SECOND, &d).await.unwrap();
        assert_eq!(read.body().as_ref(), b"v=0");
    }

    #[tokio::test]
    async fn a_refused_body_is_drained_by_the_tracker_and_bounded_in_time() {
        let d = drainer();
        // A body that never ends: the drain must give up after DRAIN_MAX_TIME.
        let endless = futures_util::stream::pending::<
            Result<http_body::Frame<Bytes>, std::convert::Infallible>,
        >();
        let req = Request::builder()
            .header(header::CONTENT_LENGTH, "1000000")
            .body(StreamBody::new(endless))
            .unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(
            read_body(req, 1024, SECOND, &d).await.unwrap_err().status(),
            413
        );
        assert_eq!(d.tracker.len(), 1, "the drain runs under the tracker");
        d.tracker.close();
        tokio::time::timeout(DRAIN_MAX_TIME + SECOND, d.tracker.wait())
            .await
            .expect("the drain gives up");
        assert!(
            started.elapsed() >= DRAIN_MAX_TIME,
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_body_that_does_not_arrive_in_time_gets_408() {
        let d = drainer();
        let endless = futures_util::stream::pending::<
            Result<http_body::Frame<Bytes>, std::convert::Infallible>,
        >();
        let req = Request::builder()
            .header(header::CONTENT_LENGTH, "100")
            .body(StreamBody::new(endless))
            .unwrap();
        let limit = Duration::from_millis(50);
        let started = tokio::time::Instant::now();
        let refused = tokio::time::timeout(SECOND, read_body(req, 1024, limit, &d))
            .await
            .expect("refused within the limit, not hanging")
            .unwrap_err();
        assert_eq!(refused.status(), 408);
        assert!(started.elapsed() >= limit);
    }

    #[tokio::test]
    async fn the_drain_stops_at_shutdown() {
        let d = drainer();
        let endless = futures_util::stream::pending::<
            Result<http_body::Frame<Bytes>, std::convert::Infallible>,
        >();
        d.drain(StreamBody::new(endless));
        d.cancel.cancel();
        d.tracker.close();
        tokio::time::timeout(Duration::from_secs(1), d.tracker.wait())
            .await
            .expect("cancel ends the drain at once");
    }
}
