//! Stills: what the latest picture is, and the one-shot `snaprtcd snapshot` without a daemon.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::encoder::decode_last_picture;
use super::jpeg::{fit, StillSource};
use super::StillError;
use crate::capture::{self, CaptureError, Payload};
use crate::config::{CameraConfig, Config};
use crate::picture::annexb::largest_sps_dimensions;
use crate::picture::yuv::I420;

/// Most H.264 access units kept since the last IDR to make a still of an H.264 source; a
/// longer GOP stops keeping them until the next IDR (memory stays bounded).
const MAX_GOP_FRAMES: usize = 600;

/// Stills of H.264 are decoded up to this width and height at least.
const MIN_STILL_SIDE_BUDGET: u32 = 4096;

/// Largest width or height an H.264 source's still is decoded at: 4096, or twice the configured
/// camera width or height if that is more. The decoder allocates for whatever size the SPS
/// announces, and an `exec` program's SPS comes from outside, so it is checked first.
pub fn max_still_side(camera: &CameraConfig) -> u32 {
    MIN_STILL_SIDE_BUDGET.max(camera.width.max(camera.height).saturating_mul(2))
}

/// The latest picture, kept in the cheapest form: stills are made from it only when asked.
#[derive(Debug, Default)]
pub enum Latest {
    /// Nothing captured yet (or an H.264 GOP too long to keep).
    #[default]
    None,
    /// A raw picture (testsrc, YUYV/NV12 camera, slate).
    Raw(I420),
    /// An MJPEG camera's frame, served as is when it fits.
    Jpeg(Bytes),
    /// H.264 since the last IDR: decoded only when a still is asked.
    Gop(Vec<Bytes>),
}

impl Latest {
    /// Keep an H.264 access unit (`keyframe` starts a new GOP).
    pub fn push_h264(&mut self, au: Bytes, keyframe: bool) {
        if keyframe {
            *self = Latest::Gop(vec![au]);
            return;
        }
        if let Latest::Gop(gop) = self {
            if gop.len() < MAX_GOP_FRAMES {
                gop.push(au);
            } else {
                *self = Latest::None;
            }
        }
    }

    /// A JPEG of at most `max_bytes` of the latest picture. H.264 is decoded only if its SPS
    /// announces no side over `max_side` ([`max_still_side`]).
    pub fn still(&self, quality: u8, max_bytes: usize, max_side: u32) -> Result<Bytes, StillError> {
        match self {
            Latest::None => Err(StillError::NoFrame),
            Latest::Raw(p) => fit(StillSource::Raw(p), quality, max_bytes),
            Latest::Jpeg(j) => fit(StillSource::Jpeg(j), quality, max_bytes),
            Latest::Gop(aus) => {
                if let Some((width, height)) = largest_sps_dimensions(aus) {
                    if width > max_side || height > max_side {
                        return Err(StillError::PictureTooLarge {
                            width,
                            height,
                            max_side,
                        });
                    }
                }
                let picture = decode_last_picture(aus)
                    .map_err(|e| StillError::Encode(e.to_string()))?
                    .ok_or(StillError::NoFrame)?;
                fit(StillSource::Raw(&picture), quality, max_bytes)
            }
        }
    }
}

/// Why `snaprtcd snapshot` failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFailure {
    /// The source could not be opened or read.
    #[error(transparent)]
    Capture(#[from] CaptureError),
    /// A frame came but no JPEG could be made of it.
    #[error(transparent)]
    Still(#[from] StillError),
    /// The source gave nothing usable in time.
    #[error("no usable frame within {0:?}")]
    Timeout(Duration),
}

/// A failed `snaprtcd snapshot`, naming the source (device path, `testsrc`, `exec PROGRAM`).
#[derive(Debug)]
pub struct SnapshotError {
    /// The source that was tried.
    pub camera: String,
    /// What went wrong.
    pub reason: SnapshotFailure,
}

impl std::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let reason = self.reason.to_string();
        if reason.contains(&self.camera) {
            f.write_str(&reason)
        } else {
            write!(f, "{}: {reason}", self.camera)
        }
    }
}

/// No `source()`: the message already carries the reason (`{:#}` would repeat it).
impl std::error::Error for SnapshotError {}

/// One JPEG from the configured source, without the daemon (for setting a camera up).
pub fn snapshot_once(config: &Config) -> Result<Bytes, SnapshotError> {
    let spec = capture::resolve(&config.camera);
    snapshot_from(&spec, config).map_err(|reason| SnapshotError {
        camera: spec.label(&config.camera),
        reason,
    })
}

fn snapshot_from(spec: &capture::SourceSpec, config: &Config) -> Result<Bytes, SnapshotFailure> {
    const LIMIT: Duration = Duration::from_secs(10);
    let mut source = capture::open(spec, &config.camera)?;
    let quality = config.snapshot.quality;
    let max_side = max_still_side(&config.camera);
    let started = Instant::now();
    let mut latest = Latest::None;
    // Cameras often deliver dark or partial first frames while they settle: skip a few.
    let mut raw_seen = 0;
    while started.elapsed() < LIMIT {
        let frame = match source.next_frame() {
            Ok(f) => f,
            Err(CaptureError::Stalled(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        match frame.payload {
            Payload::I420(p) => {
                raw_seen += 1;
                latest = Latest::Raw(p);
                if raw_seen >= 3 || *spec == capture::SourceSpec::Testsrc {
                    return Ok(latest.still(quality, usize::MAX, max_side)?);
                }
            }
            Payload::Mjpeg(j) | Payload::DecodedMjpeg { jpeg: j, .. } => {
                raw_seen += 1;
                if raw_seen >= 3 {
                    return Ok(Latest::Jpeg(j).still(quality, usize::MAX, max_side)?);
                }
            }
            Payload::H264(au) => {
                let key = crate::picture::annexb::is_idr(&au);
                latest.push_h264(au, key);
                if matches!(&latest, Latest::Gop(_)) {
                    if let Ok(jpeg) = latest.still(quality, usize::MAX, max_side) {
                        return Ok(jpeg);
                    }
                }
            }
        }
    }
    Err(SnapshotFailure::Timeout(LIMIT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gop_memory_is_bounded_and_restarts_at_idr() {
        let mut l = Latest::None;
        l.push_h264(Bytes::from_static(b"p"), false);
        assert!(
            matches!(l, Latest::None),
            "no IDR yet: nothing to decode from"
        );
        l.push_h264(Bytes::from_static(b"i"), true);
        for _ in 0..MAX_GOP_FRAMES + 5 {
            l.push_h264(Bytes::from_static(b"p"), false);
        }
        assert!(
            matches!(l, Latest::None),
            "GOP too long: dropped, not grown"
        );
        l.push_h264(Bytes::from_static(b"i"), true);
        assert!(matches!(&l, Latest::Gop(g) if g.len() == 1));
    }

    /// An access unit that announces an 8192x8192 picture (crafted SPS), a PPS and an IDR.
    fn huge_idr() -> Bytes {
        let sps = [
            0x67, 0x42, 0xc0, 0x33, 0xf4, 0x00, 0x40, 0x00, 0x08, 0x03, 0x20,
        ];
        let mut au = vec![0, 0, 0, 1];
        au.extend_from_slice(&sps);
        au.extend_from_slice(&[0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80]);
        au.extend_from_slice(&[0, 0, 0, 1, 0x65, 0x88, 0x84, 0x00, 0x33, 0xff]);
        Bytes::from(au)
    }

    #[test]
    fn an_h264_still_over_the_size_budget_is_refused_before_decoding() {
        let mut l = Latest::None;
        l.push_h264(huge_idr(), true);
        assert_eq!(
            l.still(80, usize::MAX, 4096),
            Err(StillError::PictureTooLarge {
                width: 8192,
                height: 8192,
                max_side: 4096
            })
        );
        let mut camera = CameraConfig::default();
        assert_eq!(max_still_side(&camera), 4096, "1280x720: the floor");
        camera.width = 3840;
        assert_eq!(max_still_side(&camera), 7680, "twice the configured size");
    }

    #[test]
    fn an_h264_still_within_the_budget_is_decoded() {
        use crate::media::encoder::{OpenH264Encoder, SoftwareSettings};
        let mut enc = OpenH264Encoder::new(SoftwareSettings {
            bitrate_kbps: 300,
            fps: 30,
            threads: crate::config::EncoderThreads::Auto,
        })
        .unwrap();
        let pic = I420::filled(160, 120, 80, 100, 150).unwrap();
        let au = Bytes::copy_from_slice(&enc.encode(&pic, 0, true).unwrap().unwrap().data);
        assert_eq!(largest_sps_dimensions([&au]), Some((160, 120)));
        let mut l = Latest::None;
        l.push_h264(au, true);
        let jpeg = l.still(80, usize::MAX, 4096).unwrap();
        assert_eq!(&jpeg[..2], &[0xff, 0xd8]);
        assert!(matches!(
            l.still(80, usize::MAX, 100),
            Err(StillError::PictureTooLarge {
                width: 160,
                height: 120,
                max_side: 100
            })
        ));
    }

    #[test]
    fn testsrc_snapshot_is_a_jpeg() {
        let mut config = Config::default();
        config.camera.source = crate::config::SourceKind::Testsrc;
        config.camera.width = 320;
        config.camera.height = 240;
        let jpeg = snapshot_once(&config).unwrap();
        assert_eq!(&jpeg[..2], &[0xff, 0xd8]);
        let p = super::super::jpeg::decode_to_i420(&jpeg).unwrap();
        assert_eq!((p.width(), p.height()), (320, 240));
    }

    #[test]
    fn snapshot_errors_name_the_device_once() {
        let mut config = Config::default();
        config.camera.source = crate::config::SourceKind::V4l2;
        config.camera.device = "/nonexistent/video9".into();
        let err = snapshot_once(&config).unwrap_err();
        assert_eq!(err.camera, "/nonexistent/video9");
        let text = err.to_string();
        assert_eq!(text.matches("/nonexistent/video9").count(), 1, "{text}");
    }
}
