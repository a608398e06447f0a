//! The encoder: raw pictures in, H.264 access units out. One per pipeline, whatever the number
//! of viewers. There is one kind (openh264 in software), so it is a concrete type; a hardware
//! encoder (Pi 4 V4L2 M2M) would make this an enum the pipeline matches on.

use std::sync::Arc;

use bytes::Bytes;
use openh264::encoder::{
    BitRate, Complexity, EncoderConfig, FrameRate, IntraFramePeriod, Profile, QpRange,
    RateControlMode, SpsPpsStrategy, UsageType,
};
use openh264::{OpenH264API, Timestamp};

use crate::config::{EncoderThreads, MAX_ENCODER_THREADS};
use crate::picture::annexb::ParamSetInserter;
use crate::picture::yuv::I420;

/// Why encoding failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum EncodeError {
    /// openh264 could not be loaded or refused the settings.
    #[error("encoder setup failed: {0}")]
    Setup(String),
    /// openh264 failed on a picture (or, decoding, on an access unit).
    #[error("encoding failed: {0}")]
    Encode(String),
}

/// An access unit the encoder produced.
#[derive(Debug, Clone)]
pub struct EncodedPicture {
    /// Annex-B; an IDR carries SPS and PPS in front. Allocated once, shared as it is by the
    /// broadcast, the GOP cache and every viewer's str0m writer (which takes an `Arc<[u8]>`).
    pub data: Arc<[u8]>,
    /// True for an IDR.
    pub keyframe: bool,
}

/// Settings of the software encoder.
#[derive(Debug, Clone, Copy)]
pub struct SoftwareSettings {
    /// Target bitrate (`[encoder] bitrate_kbps`).
    pub bitrate_kbps: u32,
    /// Frame rate the rate control plans for (`[camera] fps`).
    pub fps: u32,
    /// `[encoder] threads`; the count is chosen per picture size ([`encoder_threads`]).
    pub threads: EncoderThreads,
}

/// Pictures whose shorter side is at least this many lines are "1080p and up": `auto` gives
/// them more than one thread.
pub const AUTO_THREADS_MIN_LINES: u32 = 1080;

/// Most bytes in one slice when openh264 runs on several threads. Its threads work on slices
/// (one picture partition each), and the openh264 crate only offers more than one slice through
/// a slice size limit; this one is large enough that a partition is normally one slice.
const THREADED_MAX_SLICE_BYTES: u32 = 256 * 1024;

/// How many openh264 threads a `width`×`height` picture gets with `setting`, on a machine with
/// `cores` CPUs. `auto`: one below 1080p (one core keeps up, and slices cost a little
/// quality), else one per core up to openh264's limit. A fixed count is used as it is (clipped
/// to 1..=[`MAX_ENCODER_THREADS`]).
pub fn encoder_threads(width: u32, height: u32, cores: usize, setting: EncoderThreads) -> u16 {
    match setting {
        EncoderThreads::Fixed(n) => n.clamp(1, MAX_ENCODER_THREADS),
        EncoderThreads::Auto if width.min(height) < AUTO_THREADS_MIN_LINES => 1,
        EncoderThreads::Auto => {
            u16::try_from(cores.max(1)).map_or(MAX_ENCODER_THREADS, |c| c.min(MAX_ENCODER_THREADS))
        }
    }
}

/// The CPUs this process may run on (1 when unknown).
fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// openh264: H.264 Constrained Baseline, real-time camera mode, bitrate control that never
/// skips a picture (it raises the quantiser instead), IDRs only when asked (the pipeline's
/// keyframe policy owns the GOP), SPS/PPS in front of every IDR. Threads per
/// [`encoder_threads`], decided again when the picture size changes.
pub struct OpenH264Encoder {
    inner: openh264::encoder::Encoder,
    settings: SoftwareSettings,
    /// Picture size the current `inner` was chosen for (`None`: nothing encoded yet).
    size: Option<(u32, u32)>,
    /// Threads `inner` was made with.
    threads: u16,
    /// CPUs another stage of the pipeline keeps busy (the MJPEG decode thread), left to it
    /// when `auto` counts cores.
    cores_elsewhere: usize,
    params: ParamSetInserter,
    out: Vec<u8>,
}

impl OpenH264Encoder {
    /// Name shown in `/health`, metrics and the systemd status line.
    pub const NAME: &'static str = "openh264";

    /// Set openh264 up (fails if the library cannot be loaded or refuses the settings).
    pub fn new(settings: SoftwareSettings) -> Result<Self, EncodeError> {
        Ok(Self {
            inner: Self::open(settings, 1)?,
            settings,
            size: None,
            threads: 1,
            cores_elsewhere: 0,
            params: ParamSetInserter::new(),
            out: Vec::with_capacity(256 * 1024),
        })
    }

    /// Threads the encoder uses now (1 until the first picture decides).
    pub fn threads(&self) -> u16 {
        self.threads
    }

    /// Leave `cores` CPUs to another stage of the pipeline when `auto` counts them (1 while
    /// MJPEG is decoded on its own thread: two openh264 threads beside it on two cores wait
    /// for each other's slices). The next picture chooses the thread count again; a new count
    /// means a new openh264 encoder, so the caller's next picture must be an IDR.
    pub fn leave_cores(&mut self, cores: usize) {
        if self.cores_elsewhere != cores {
            self.cores_elsewhere = cores;
            self.size = None;
        }
    }

    fn open(
        settings: SoftwareSettings,
        threads: u16,
    ) -> Result<openh264::encoder::Encoder, EncodeError> {
        let mut config = EncoderConfig::new()
            .profile(Profile::Baseline)
            .usage_type(UsageType::CameraVideoRealTime)
            .rate_control_mode(RateControlMode::Bitrate)
            .bitrate(BitRate::from_bps(
                settings.bitrate_kbps.saturating_mul(1000),
            ))
            .max_frame_rate(FrameRate::from_hz(settings.fps.max(1) as f32))
            // No frame skipping: for a live camera a skipped picture is a stall the viewer sees
            // (40 of 309 at noisy 1080p and 2 Mbit/s). The rate control raises the QP instead
            // (up to 51, see `qp` below), so a picture too rich for the bitrate costs quality;
            // only one too rich for QP 51 overshoots the rate (docs/BENCHMARKS.md, "Camera
            // path"). openh264's warning about this at open is not printed: the crate sets its
            // log level to quiet.
            .skip_frames(false)
            .scene_change_detect(false)
            .intra_frame_period(IntraFramePeriod::from_num_frames(0))
            .sps_pps_strategy(SpsPpsStrategy::ConstantId)
            .complexity(Complexity::Low)
            // openh264 turns a QP range starting at 0 (the crate's default) into 12..=42, and
            // at 42 a noisy picture overshoots the bitrate several times over
            // (`rate_control_holds_the_bitrate_on_noise_by_raising_the_qp`); 12..=51 lets the
            // rate control go as far as H.264 does.
            .qp(QpRange::new(12, 51))
            .num_threads(threads);
        if threads > 1 {
            // Without a slice limit the crate asks for one slice, and openh264 then runs one
            // thread whatever `num_threads` says.
            config = config.max_slice_len(THREADED_MAX_SLICE_BYTES);
        }
        openh264::encoder::Encoder::with_api_config(OpenH264API::from_source(), config)
            .map_err(|e| EncodeError::Setup(e.to_string()))
    }

    /// Choose the thread count for this picture size; a new count means a new openh264 encoder
    /// (the caller's next picture is then an IDR anyway: a size change restarts the stream).
    fn fit(&mut self, width: u32, height: u32) -> Result<(), EncodeError> {
        if self.size == Some((width, height)) {
            return Ok(());
        }
        let cores = available_cores().saturating_sub(self.cores_elsewhere);
        let threads = encoder_threads(width, height, cores, self.settings.threads);
        if threads != self.threads {
            self.inner = Self::open(self.settings, threads)?;
            self.threads = threads;
        }
        self.size = Some((width, height));
        tracing::info!(
            width,
            height,
            threads,
            setting = ?self.settings.threads,
            cores_left_to_decode = self.cores_elsewhere,
            "openh264 encoder open"
        );
        Ok(())
    }

    /// Encode one picture; `force_idr` makes it an IDR. `None`: openh264 produced nothing for it
    /// (it does not skip pictures for its rate control here; the pipeline counts any `None`).
    pub fn encode(
        &mut self,
        picture: &I420,
        timestamp_ms: u64,
        force_idr: bool,
    ) -> Result<Option<EncodedPicture>, EncodeError> {
        self.fit(picture.width(), picture.height())?;
        if force_idr {
            self.inner.force_intra_frame();
        }
        let stream = self
            .inner
            .encode_at(picture, Timestamp::from_millis(timestamp_ms))
            .map_err(|e| EncodeError::Encode(e.to_string()))?;
        self.out.clear();
        stream.write_vec(&mut self.out);
        if self.out.is_empty() {
            return Ok(None);
        }
        let (data, keyframe) = self.params.process_shared(&self.out);
        Ok(Some(EncodedPicture { data, keyframe }))
    }
}

/// Decodes H.264 only when a still is asked of an H.264 source (never per frame).
pub fn decode_last_picture(access_units: &[Bytes]) -> Result<Option<I420>, EncodeError> {
    let mut dec =
        openh264::decoder::Decoder::new().map_err(|e| EncodeError::Setup(e.to_string()))?;
    let mut last = None;
    for au in access_units {
        match dec.decode(au) {
            Ok(Some(yuv)) => {
                last = Some(
                    crate::picture::yuv::from_yuv_source(&yuv)
                        .map_err(|e| EncodeError::Encode(e.to_string()))?,
                )
            }
            Ok(None) => {}
            Err(e) => return Err(EncodeError::Encode(e.to_string())),
        }
    }
    if last.is_none() {
        if let Ok(rest) = dec.flush_remaining() {
            if let Some(yuv) = rest.last() {
                last = crate::picture::yuv::from_yuv_source(yuv).ok();
            }
        }
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::picture::annexb::{nal, nal_type, nal_units};

    #[test]
    fn software_encoder_makes_constrained_baseline_with_param_sets_on_every_idr() {
        let mut enc = OpenH264Encoder::new(SoftwareSettings {
            bitrate_kbps: 500,
            fps: 30,
            threads: EncoderThreads::Auto,
        })
        .unwrap();
        let pic = I420::filled(160, 120, 80, 100, 150).unwrap();
        let mut keys = 0;
        for i in 0..10u64 {
            let out = enc.encode(&pic, i * 33, i == 0 || i == 5).unwrap().unwrap();
            let types: Vec<u8> = nal_units(&out.data)
                .iter()
                .filter_map(|n| nal_type(n))
                .collect();
            if out.keyframe {
                keys += 1;
                assert!(
                    types.contains(&nal::SPS) && types.contains(&nal::PPS),
                    "{types:?}"
                );
                let sps = nal_units(&out.data)
                    .into_iter()
                    .find(|n| nal_type(n) == Some(nal::SPS))
                    .unwrap();
                assert_eq!(sps[1], 66, "profile_idc baseline");
                assert!(sps[2] & 0x40 != 0, "constraint_set1: Constrained Baseline");
            } else {
                assert!(!types.contains(&nal::IDR));
            }
        }
        assert_eq!(keys, 2, "IDRs only when forced");
    }

    /// The test pattern's capture stamp survives openh264 at 720p and 2 Mbit/s (the bench and
    /// the viewer page read it from the decoded picture).
    #[test]
    fn capture_stamp_survives_encoding_at_720p_2_mbit() {
        use crate::capture::testsrc::TestSource;
        use crate::picture::stamp;
        use std::time::{Duration, UNIX_EPOCH};
        let src = TestSource::new(1280, 720, 30).unwrap();
        let mut enc = OpenH264Encoder::new(SoftwareSettings {
            bitrate_kbps: 2000,
            fps: 30,
            threads: EncoderThreads::Auto,
        })
        .unwrap();
        let mut dec = openh264::decoder::Decoder::new().unwrap();
        let mut read = 0;
        for n in 0..12u64 {
            // Microseconds that change many cells from one picture to the next.
            let micros = 1_795_000_000_000_000 + n * 33_333 + n * n * 7_919;
            let picture = src.picture(n, UNIX_EPOCH + Duration::from_micros(micros));
            let Some(au) = enc.encode(&picture, n * 33, n == 0).unwrap() else {
                continue;
            };
            let decoded = dec
                .decode(&au.data)
                .unwrap()
                .expect("a picture per access unit");
            let decoded = crate::picture::yuv::from_yuv_source(&decoded).unwrap();
            assert_eq!(stamp::read(&decoded), Some(micros), "picture {n}");
            read += 1;
        }
        assert!(read >= 10, "only {read} pictures encoded");
    }

    /// Noise around mid-grey (±32): openh264 with its QP capped at 42 sent 1 105 kbit/s for
    /// 300 asked (3.7 times); allowed up to 51, it holds the rate.
    #[test]
    fn rate_control_holds_the_bitrate_on_noise_by_raising_the_qp() {
        let kbps = 300;
        let mut enc = noise_encoder(kbps);
        let mut noise = noise_pictures(|x| (96 + x % 65) as u8);
        // Two seconds to settle, then two seconds measured.
        let mut bytes = 0;
        for i in 0..120u64 {
            let frame = enc.encode(&noise(), i * 33, i == 0).unwrap();
            if i >= 60 {
                bytes += frame.map_or(0, |f| f.data.len());
            }
        }
        let got_kbps = bytes as u32 * 8 / 2 / 1000;
        assert!(
            got_kbps <= kbps * 5 / 4,
            "{got_kbps} kbit/s for {kbps} asked"
        );
    }

    /// A software encoder at `kbps`, 30 fps, for the noise tests.
    fn noise_encoder(kbps: u32) -> OpenH264Encoder {
        OpenH264Encoder::new(SoftwareSettings {
            bitrate_kbps: kbps,
            fps: 30,
            threads: EncoderThreads::Auto,
        })
        .unwrap()
    }

    /// 320x240 pictures of fresh xorshift noise, each sample `sample(x)` of the next state.
    fn noise_pictures(sample: impl Fn(u32) -> u8) -> impl FnMut() -> I420 {
        let (w, h) = (320, 240);
        let mut x = 0x9e37_79b9_u32;
        move || {
            let data = (0..I420::len_for(w, h))
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    sample(x)
                })
                .collect();
            I420::from_vec(w, h, data).unwrap()
        }
    }

    /// Pictures of fresh noise at a bitrate far below what they need: with openh264's frame
    /// skipping on, its rate control drops most of them (a stall a viewer sees); here every
    /// picture comes out, the quantiser pays instead (how far over the rate that goes on real
    /// content is measured in bench/camera_path; white noise like this stays far over it).
    #[test]
    fn rate_control_never_skips_a_picture_on_noise_at_a_low_bitrate() {
        let mut enc = noise_encoder(100);
        let mut noise = noise_pictures(|x| x as u8);
        let pictures = 30u64;
        let mut skipped = 0;
        for i in 0..pictures {
            if enc.encode(&noise(), i * 33, i == 0).unwrap().is_none() {
                skipped += 1;
            }
        }
        assert_eq!(skipped, 0, "pictures skipped by the rate control");
    }

    #[test]
    fn auto_leaves_a_core_to_the_decode_thread_when_asked() {
        let mut enc = OpenH264Encoder::new(SoftwareSettings {
            bitrate_kbps: 2000,
            fps: 30,
            threads: EncoderThreads::Auto,
        })
        .unwrap();
        let picture = I420::filled(1920, 1080, 80, 100, 150).unwrap();
        let cores = available_cores();
        enc.encode(&picture, 0, true).unwrap();
        assert_eq!(
            enc.threads(),
            encoder_threads(1920, 1080, cores, EncoderThreads::Auto)
        );
        enc.leave_cores(1);
        enc.encode(&picture, 33, true).unwrap();
        assert_eq!(
            enc.threads(),
            encoder_threads(1920, 1080, cores - 1, EncoderThreads::Auto),
            "one core fewer"
        );
        enc.leave_cores(0);
        enc.encode(&picture, 66, true).unwrap();
        assert_eq!(
            enc.threads(),
            encoder_threads(1920, 1080, cores, EncoderThreads::Auto)
        );
    }

    #[test]
    fn auto_threads_from_picture_size_and_cores() {
        use EncoderThreads::{Auto, Fixed};
        // Below 1080p: one thread, whatever the machine.
        assert_eq!(encoder_threads(1280, 720, 8, Auto), 1);
        assert_eq!(encoder_threads(1920, 1079, 8, Auto), 1);
        // 1080p and up (either orientation): one per core, up to openh264's four.
        assert_eq!(encoder_threads(1920, 1080, 2, Auto), 2);
        assert_eq!(encoder_threads(1080, 1920, 2, Auto), 2);
        assert_eq!(encoder_threads(3840, 2160, 16, Auto), MAX_ENCODER_THREADS);
        // ... but one on a single core.
        assert_eq!(encoder_threads(1920, 1080, 1, Auto), 1);
        assert_eq!(encoder_threads(1920, 1080, 0, Auto), 1);
        // A fixed count is used at every size.
        assert_eq!(encoder_threads(640, 480, 1, Fixed(3)), 3);
        assert_eq!(encoder_threads(1920, 1080, 8, Fixed(1)), 1);
        assert_eq!(
            encoder_threads(1920, 1080, 8, Fixed(9)),
            MAX_ENCODER_THREADS
        );
    }

    #[test]
    fn two_threads_encode_a_picture_as_slices_that_decode() {
        let mut enc = OpenH264Encoder::new(SoftwareSettings {
            bitrate_kbps: 1000,
            fps: 30,
            threads: EncoderThreads::Fixed(2),
        })
        .unwrap();
        let pic = I420::filled(320, 240, 80, 100, 150).unwrap();
        let out = enc.encode(&pic, 0, true).unwrap().unwrap();
        assert_eq!(enc.threads(), 2);
        let idr_slices = nal_units(&out.data)
            .iter()
            .filter(|n| nal_type(n) == Some(nal::IDR))
            .count();
        // One slice per thread: openh264 really split the work.
        assert_eq!(idr_slices, 2, "IDR slices");
        let decoded = decode_last_picture(&[Bytes::copy_from_slice(&out.data)])
            .unwrap()
            .unwrap();
        assert_eq!((decoded.width(), decoded.height()), (320, 240));
    }
}
