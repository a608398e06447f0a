//! `GET /stream.mjpeg`: JPEG stills as `multipart/x-mixed-replace`, for the simplest clients
//! (Home Assistant's MJPEG camera, OctoPrint, a plain `<img>`).
//!
//! One producer task ([`MjpegProducer`]) owns the stills: while at least one client watches it
//! asks the pipeline for a still at most `[snapshot] mjpeg_max_fps` times a second and publishes
//! it on a `watch` channel; with nobody watching it waits and nothing is encoded. Every client
//! reads the latest still from the channel, so however many watch, one still is made per
//! period, and a slow client skips to the newest still instead of queueing old ones (its memory
//! is one shared `Bytes`). At most `[snapshot] mjpeg_max_clients` clients (more: 503).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::media::{MediaHandle, StillError};
use crate::response::text;

/// The multipart boundary between parts.
pub const BOUNDARY: &str = "snaprtcdframe";

/// A streamed response body.
pub type StreamingBody = UnsyncBoxBody<Bytes, Infallible>;

/// The latest still, numbered so a client sends each one once.
type Latest = Option<(u64, Bytes)>;

/// The handle routes use: subscribe a client.
#[derive(Clone)]
pub struct Mjpeg {
    latest: watch::Receiver<Latest>,
    wake: Arc<Notify>,
    clients: Arc<Semaphore>,
}

/// The task that makes stills while someone watches.
pub struct MjpegProducer {
    latest: watch::Sender<Latest>,
    wake: Arc<Notify>,
    clients: Arc<Semaphore>,
    max_clients: usize,
    media: MediaHandle,
    period: Duration,
}

/// The handle and its producer, for `media` at `max_fps` for up to `max_clients` clients.
pub fn channel(media: MediaHandle, max_fps: u32, max_clients: usize) -> (Mjpeg, MjpegProducer) {
    let (tx, rx) = watch::channel(None);
    let wake = Arc::new(Notify::new());
    let max_clients = max_clients.max(1);
    let clients = Arc::new(Semaphore::new(max_clients));
    (
        Mjpeg {
            latest: rx,
            wake: wake.clone(),
            clients: clients.clone(),
        },
        MjpegProducer {
            latest: tx,
            wake,
            clients,
            max_clients,
            media,
            period: Duration::from_secs(1) / max_fps.max(1),
        },
    )
}

impl MjpegProducer {
    /// Make stills while clients watch, until `cancel` (then every client's stream ends).
    pub async fn run(self, cancel: CancellationToken) {
        let mut seq = 0u64;
        loop {
            // Each watching client holds a permit.
            while self.clients.available_permits() >= self.max_clients {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = self.wake.notified() => {}
                }
            }
            let next = tokio::time::Instant::now() + self.period;
            let still = tokio::select! {
                _ = cancel.cancelled() => return,
                still = self.media.still(usize::MAX) => still,
            };
            match still {
                Ok(jpeg) => {
                    seq += 1;
                    self.latest.send_replace(Some((seq, jpeg)));
                }
                Err(StillError::Stopped) => return,
                Err(e) => debug!(error = %e, "mjpeg: no still this period"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(next) => {}
            }
        }
    }
}

impl Mjpeg {
    /// The response to `GET /stream.mjpeg`: a part per still, until the client leaves; `None`
    /// when `mjpeg_max_clients` already watch (answer [`busy`]).
    pub fn respond(&self) -> Option<Response<StreamingBody>> {
        let permit = self.clients.clone().try_acquire_owned().ok()?;
        let mut rx = self.latest.clone();
        // Stills from before this client came are not sent: the first part is fresh.
        rx.mark_unchanged();
        self.wake.notify_one();
        let stream = futures_util::stream::unfold((rx, permit), next_part);
        let body = StreamBody::new(stream).boxed_unsync();
        let mut r = Response::new(body);
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(concat!(
                "multipart/x-mixed-replace; boundary=",
                "snaprtcdframe"
            )),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Some(r)
    }
}

/// 503: `mjpeg_max_clients` already watch.
pub fn busy() -> Response<crate::response::Body> {
    let mut r = text(
        StatusCode::SERVICE_UNAVAILABLE,
        "too many MJPEG clients; try again later\n",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    r
}

/// The next part of one client's stream; `None` (the end) once the producer has stopped.
async fn next_part(
    (mut rx, permit): (watch::Receiver<Latest>, OwnedSemaphorePermit),
) -> Option<(
    Result<Frame<Bytes>, Infallible>,
    (watch::Receiver<Latest>, OwnedSemaphorePermit),
)> {
    loop {
        rx.changed().await.ok()?;
        let latest = rx.borrow_and_update().clone();
        if let Some((_, jpeg)) = latest {
            return Some((Ok(Frame::data(part(&jpeg))), (rx, permit)));
        }
    }
}

/// One multipart part: boundary, headers, the JPEG.
pub fn part(jpeg: &[u8]) -> Bytes {
    let head = format!(
        "--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
        jpeg.len()
    );
    let mut b = BytesMut::with_capacity(head.len() + jpeg.len() + 2);
    b.extend_from_slice(head.as_bytes());
    b.extend_from_slice(jpeg);
    b.extend_from_slice(b"\r\n");
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_has_the_boundary_type_length_and_the_jpeg() {
        let p = part(b"\xff\xd8JPEG\xff\xd9");
        assert_eq!(
            &p[..],
            b"--snaprtcdframe\r\nContent-Type: image/jpeg\r\nContent-Length: 8\r\n\r\n\xff\xd8JPEG\xff\xd9\r\n"
        );
    }

    #[tokio::test]
    async fn clients_over_the_limit_get_503_and_a_leaving_client_frees_its_place() {
        let (media, _ports) = crate::media::channel(crate::media::ChannelLimits::default());
        let (mjpeg, _producer) = channel(media, 5, 1);
        let first = mjpeg.respond().expect("first client");
        assert_eq!(
            first.headers()[header::CONTENT_TYPE],
            "multipart/x-mixed-replace; boundary=snaprtcdframe"
        );
        assert!(mjpeg.respond().is_none(), "second client");
        assert_eq!(busy().status(), StatusCode::SERVICE_UNAVAILABLE);
        drop(first);
        assert!(mjpeg.respond().is_some());
    }

    #[tokio::test]
    async fn stills_are_asked_for_only_while_a_client_watches_and_at_most_max_fps() {
        use futures_util::StreamExt;
        use http_body_util::BodyExt;
        let (media, mut ports) = crate::media::channel(crate::media::ChannelLimits::default());
        // 50 a second: a still every 20 ms at most, so a few hundred ms are many periods.
        let (mjpeg, producer) = channel(media, 50, 4);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(producer.run(cancel.clone()));

        // Nobody watches: no still is asked for, however long (15 periods).
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            ports.stills.try_recv().is_err(),
            "no still without a client"
        );

        let response = mjpeg.respond().expect("a place");
        let mut frames = response.into_body().into_data_stream();
        let started = tokio::time::Instant::now();
        for n in 0..3u8 {
            let req = ports.stills.recv().await.expect("a still request");
            let _ = req
                .reply
                .send(Ok(Bytes::from(vec![0xff, 0xd8, n, 0xff, 0xd9])));
            let part = frames.next().await.expect("a part").expect("data");
            assert!(part.ends_with(&[0xff, 0xd8, n, 0xff, 0xd9, b'\r', b'\n']));
        }
        // Three stills at 50 a second: the second and third came 20 ms apart at the earliest.
        assert!(started.elapsed() >= Duration::from_millis(40));

        // The client leaves: at most the request already under way, then none.
        drop(frames);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut late = 0;
        while let Ok(req) = ports.stills.try_recv() {
            let _ = req.reply.send(Ok(Bytes::from_static(b"x")));
            late += 1;
        }
        assert!(late <= 1, "{late} stills asked for after the client left");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            ports.stills.try_recv().is_err(),
            "none while nobody watches"
        );
        cancel.cancel();
        task.await.expect("producer ends");
    }
}
