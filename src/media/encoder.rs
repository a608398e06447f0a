//! The encoder: raw pictures in, H.264 access units out. One per pipeline, whatever the number
//! of viewers. There is one kind (openh264 in software), so it is a concrete type; a hardware
//! encoder (Pi 4 V4L2 M2M) would make this an enum the pipeline matches on.

use bytes::Bytes;
use openh264::encoder::{
    BitRate, Complexity, EncoderConfig, FrameRate, IntraFramePeriod, Profile, RateControlMode,
    SpsPpsStrategy, UsageType,
};
use openh264::{OpenH264API, Timestamp};

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
    /// Annex-B; an IDR carries SPS and PPS in front.
    pub data: Bytes,
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
}

/// openh264: H.264 Constrained Baseline, real-time camera mode, bitrate control (it may skip a
/// picture to hold the rate), one thread, IDRs only when
/// asked (the pipeline's keyframe policy owns the GOP), SPS/PPS in front of every IDR.
pub struct OpenH264Encoder {
    inner: openh264::encoder::Encoder,
    params: ParamSetInserter,
    out: Vec<u8>,
}

impl OpenH264Encoder {
    /// Name shown in `/health`, metrics and the systemd status line.
    pub const NAME: &'static str = "openh264";

    /// Set openh264 up (fails if the library cannot be loaded or refuses the settings).
    pub fn new(settings: SoftwareSettings) -> Result<Self, EncodeError> {
        let config = EncoderConfig::new()
            .profile(Profile::Baseline)
            .usage_type(UsageType::CameraVideoRealTime)
            .rate_control_mode(RateControlMode::Bitrate)
            .bitrate(BitRate::from_bps(
                settings.bitrate_kbps.saturating_mul(1000),
            ))
            .max_frame_rate(FrameRate::from_hz(settings.fps.max(1) as f32))
            // Frame skipping is how openh264 holds the bitrate (it warns without it).
            .skip_frames(true)
            .scene_change_detect(false)
            .intra_frame_period(IntraFramePeriod::from_num_frames(0))
            .sps_pps_strategy(SpsPpsStrategy::ConstantId)
            .complexity(Complexity::Low)
            .num_threads(1);
        let inner = openh264::encoder::Encoder::with_api_config(OpenH264API::from_source(), config)
            .map_err(|e| EncodeError::Setup(e.to_string()))?;
        Ok(Self {
            inner,
            params: ParamSetInserter::new(),
            out: Vec::with_capacity(256 * 1024),
        })
    }

    /// Encode one picture; `force_idr` makes it an IDR. `None`: the encoder skipped it (rate
    /// control).
    pub fn encode(
        &mut self,
        picture: &I420,
        timestamp_ms: u64,
        force_idr: bool,
    ) -> Result<Option<EncodedPicture>, EncodeError> {
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
        let (data, keyframe) = self.params.process(Bytes::copy_from_slice(&self.out));
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
}
