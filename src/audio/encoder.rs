//! One Opus encoder (libopus): 20 ms frames, in-band FEC on, at the capture rate (Opus takes
//! 8, 12, 16, 24 and 48 kHz as they are; RTP time is 48 kHz whatever the input rate).
//!
//! A period's frames leave in one Opus packet ([`OpusEncoder::combine`]; RFC 6716 3.2 frames
//! several frames in one packet, RFC 7587 lets an RTP packet carry up to 120 ms): they are sent
//! at the same instant anyway, and every receiver then costs one datagram per period, not one
//! per frame.
//!
//! In-band FEC is enabled, and libopus codes it in proportion to the packet loss it is told to
//! expect ([`OpusEncoder::set_expected_loss`]; none at 0). [`LossPlan`] sets that from what the
//! receivers report (RTCP receiver reports), as libwebrtc does: no redundancy, and no cost for
//! it, on a clean network; redundancy for the worst receiver once one loses packets.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{AudioError, MAX_PERIOD_FRAMES};

/// Opus frame length: 20 ms.
pub const FRAME_MS: u32 = 20;
/// Largest Opus packet of one frame (RFC 6716, 3.4: 1275 bytes), with room for the TOC.
const MAX_PACKET: usize = 1500;
/// Largest joined packet: it must fit one RTP datagram under a 1 200-byte path MTU with room
/// for the RTP, SRTP and UDP/IP headers (32 kbit/s gives ~80 bytes a frame; only a bitrate far
/// above the default reaches this, and its frames then go one per packet).
pub const MAX_JOINED: usize = 1000;
/// Most loss FEC is planned for, in percent (libwebrtc's ceiling too: beyond it redundancy
/// takes more of the bitrate than it gives back).
pub const MAX_EXPECTED_LOSS_PERCENT: u8 = 20;
/// How long a receiver's loss report holds the plan up without a new one.
pub const LOSS_HOLD: Duration = Duration::from_secs(10);

/// The loss FEC is planned for: the worst any receiver reported within [`LOSS_HOLD`], in whole
/// percent up to [`MAX_EXPECTED_LOSS_PERCENT`]; 0 once nobody has reported loss for that long.
/// Pure: instants come in.
#[derive(Debug, Default, Clone)]
pub struct LossPlan {
    percent: u8,
    until: Option<Instant>,
}

impl LossPlan {
    /// A receiver reported `percent` loss at `now` (0: none).
    pub fn handle_report(&mut self, now: Instant, percent: u8) {
        let percent = percent.min(MAX_EXPECTED_LOSS_PERCENT);
        if percent > 0 && percent >= self.poll_percent(now) {
            self.percent = percent;
            self.until = Some(now + LOSS_HOLD);
        }
    }

    /// The loss to plan for at `now`.
    pub fn poll_percent(&mut self, now: Instant) -> u8 {
        if self.until.is_some_and(|until| now >= until) {
            (self.percent, self.until) = (0, None);
        }
        self.percent
    }
}

/// Samples (per channel) in one frame at `rate`.
pub fn frame_samples(rate: u32) -> usize {
    (rate / (1000 / FRAME_MS)) as usize
}

/// The encoder and its output buffer.
pub struct OpusEncoder {
    inner: opus::Encoder,
    channels: u32,
    rate: u32,
    /// The loss libopus was last told to expect, in percent.
    expected_loss: u8,
    out: Vec<u8>,
    repacketizer: opus::Repacketizer,
}

impl OpusEncoder {
    /// An encoder for `rate` Hz (one Opus takes), `channels` (1 or 2), at `bitrate_kbps` and
    /// `complexity` (0..=10).
    pub fn new(
        rate: u32,
        channels: u32,
        bitrate_kbps: u32,
        complexity: u32,
    ) -> Result<Self, AudioError> {
        let ch = match channels {
            1 => opus::Channels::Mono,
            2 => opus::Channels::Stereo,
            n => return Err(AudioError::Encoder(format!("{n} channels"))),
        };
        let e = |e: opus::Error| AudioError::Encoder(e.to_string());
        let mut inner = opus::Encoder::new(rate, ch, opus::Application::Audio).map_err(e)?;
        inner
            .set_bitrate(opus::Bitrate::Bits(bitrate_kbps.saturating_mul(1000) as i32))
            .map_err(e)?;
        inner.set_inband_fec(true).map_err(e)?;
        inner.set_complexity(complexity.min(10) as i32).map_err(e)?;
        inner.set_packet_loss_perc(0).map_err(e)?;
        Ok(Self {
            inner,
            channels,
            rate,
            expected_loss: 0,
            out: vec![0; MAX_PACKET],
            repacketizer: opus::Repacketizer::new().map_err(e)?,
        })
    }

    /// Plan in-band FEC for `percent` packet loss (0: code none), from the next frame on.
    pub fn set_expected_loss(&mut self, percent: u8) -> Result<(), AudioError> {
        let percent = percent.min(MAX_EXPECTED_LOSS_PERCENT);
        if percent != self.expected_loss {
            self.inner
                .set_packet_loss_perc(i32::from(percent))
                .map_err(|e| AudioError::Encoder(e.to_string()))?;
            self.expected_loss = percent;
        }
        Ok(())
    }

    /// The loss FEC is planned for now, in percent.
    pub fn expected_loss(&self) -> u8 {
        self.expected_loss
    }

    /// Interleaved samples in one 20 ms frame.
    pub fn frame_len(&self) -> usize {
        frame_samples(self.rate) * self.channels as usize
    }

    /// Encode exactly one frame ([`frame_len`](Self::frame_len) samples) to one Opus packet.
    pub fn encode(&mut self, pcm: &[i16]) -> Result<Bytes, AudioError> {
        if pcm.len() != self.frame_len() {
            return Err(AudioError::Encoder(format!(
                "{} samples, not one 20 ms frame ({})",
                pcm.len(),
                self.frame_len()
            )));
        }
        let n = self
            .inner
            .encode(pcm, &mut self.out)
            .map_err(|e| AudioError::Encoder(e.to_string()))?;
        Ok(Bytes::copy_from_slice(&self.out[..n]))
    }

    /// The frames `packets` (consecutive, each one packet from [`encode`](Self::encode)) as one
    /// Opus packet that decodes to the same samples. `None` when there is nothing to join (one
    /// packet), when libopus refuses (it switched mode, bandwidth or channels between them, so
    /// their TOC bytes differ) or when the result would pass [`MAX_JOINED`]: send them one by
    /// one then.
    pub fn combine(&mut self, packets: &[Bytes]) -> Option<Bytes> {
        let total: usize = packets.iter().map(Bytes::len).sum();
        if packets.len() < 2 || packets.len() > MAX_PERIOD_FRAMES || total > MAX_JOINED {
            return None;
        }
        let mut parts: [&[u8]; MAX_PERIOD_FRAMES] = [&[]; MAX_PERIOD_FRAMES];
        for (part, packet) in parts.iter_mut().zip(packets) {
            *part = packet;
        }
        let n = self
            .repacketizer
            .combine(&parts[..packets.len()], &mut self.out)
            .ok()?;
        (n <= MAX_JOINED).then(|| Bytes::copy_from_slice(&self.out[..n]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_follows_the_worst_report_and_falls_to_zero_when_reports_stop() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut plan = LossPlan::default();
        assert_eq!(plan.poll_percent(t0), 0, "nothing reported: no FEC");
        plan.handle_report(t0, 0);
        assert_eq!(plan.poll_percent(t0), 0);
        plan.handle_report(t0, 7);
        // A better receiver does not lower the plan while the worse one's report holds.
        plan.handle_report(t0 + s(1), 2);
        assert_eq!(plan.poll_percent(t0 + s(2)), 7);
        // Worse loss raises it at once, capped.
        plan.handle_report(t0 + s(3), 90);
        assert_eq!(plan.poll_percent(t0 + s(3)), MAX_EXPECTED_LOSS_PERCENT);
        // The report held for LOSS_HOLD; then a lower one is taken...
        plan.handle_report(t0 + s(3) + LOSS_HOLD, 3);
        assert_eq!(plan.poll_percent(t0 + s(4) + LOSS_HOLD), 3);
        // ...and without any, the plan is back to none.
        assert_eq!(plan.poll_percent(t0 + s(3) + LOSS_HOLD * 2), 0);
    }

    fn tone(enc: &OpusEncoder, from: usize) -> Vec<i16> {
        (from..from + enc.frame_len())
            .map(|i| ((i as f64 * 0.13).sin() * 8000.0) as i16)
            .collect()
    }

    #[test]
    fn a_period_joins_into_one_packet_that_decodes_to_the_same_samples() {
        let mut enc = OpusEncoder::new(48_000, 1, 32, 5).unwrap();
        let frames: Vec<Bytes> = (0..3)
            .map(|k| enc.encode(&tone(&enc, k * 960)).unwrap())
            .collect();
        let joined = enc.combine(&frames).unwrap();
        assert_eq!(opus::packet::get_nb_frames(&joined).unwrap(), 3);
        assert_eq!(opus::packet::get_nb_samples(&joined, 48_000).unwrap(), 2880);
        assert!(joined.len() <= frames.iter().map(Bytes::len).sum::<usize>() + 8);
        // The same samples as the frames decoded one by one.
        let (mut one, mut all) = (
            opus::Decoder::new(48_000, opus::Channels::Mono).unwrap(),
            opus::Decoder::new(48_000, opus::Channels::Mono).unwrap(),
        );
        let mut apart = Vec::new();
        for f in &frames {
            let mut out = vec![0i16; 960];
            assert_eq!(one.decode(f, &mut out, false).unwrap(), 960);
            apart.extend_from_slice(&out);
        }
        let mut together = vec![0i16; 2880];
        assert_eq!(all.decode(&joined, &mut together, false).unwrap(), 2880);
        assert_eq!(apart, together);

        // Nothing to join, too many to join, too big to send in one datagram.
        assert!(enc.combine(&frames[..1]).is_none());
        assert!(enc
            .combine(&[frames.clone(), frames.clone()].concat())
            .is_none());
        let big = Bytes::from(vec![frames[0][0]; MAX_JOINED / 2 + 1]);
        assert!(enc.combine(&[big.clone(), big]).is_none());
    }

    #[test]
    fn frames_of_different_modes_are_not_joined() {
        // 8 kbit/s codes narrowband SILK, 128 kbit/s fullband CELT: different TOC bytes.
        let mut low = OpusEncoder::new(48_000, 1, 8, 5).unwrap();
        let mut high = OpusEncoder::new(48_000, 1, 128, 5).unwrap();
        let (a, b) = (
            low.encode(&tone(&low, 0)).unwrap(),
            high.encode(&tone(&high, 0)).unwrap(),
        );
        assert_ne!(a[0] >> 3, b[0] >> 3, "different configurations");
        assert!(low.combine(&[a, b]).is_none());
    }

    #[test]
    fn frames_are_20_ms_with_fec_and_decode_to_20_ms() {
        for (rate, channels) in [(48_000, 1), (48_000, 2), (16_000, 1)] {
            let mut enc = OpusEncoder::new(rate, channels, 32, 5).unwrap();
            assert_eq!(enc.frame_len(), (rate / 50 * channels) as usize);
            assert!(enc.inner.get_inband_fec().unwrap());
            let pcm: Vec<i16> = (0..enc.frame_len())
                .map(|i| ((i as f64 * 0.13).sin() * 8000.0) as i16)
                .collect();
            let packet = enc.encode(&pcm).unwrap();
            assert!(!packet.is_empty() && packet.len() <= 1275);
            // 20 ms at 48 kHz, whatever the input rate (RTP time is 48 kHz).
            assert_eq!(opus::packet::get_nb_samples(&packet, 48_000).unwrap(), 960);
            assert!(enc.encode(&pcm[1..]).is_err(), "a short frame is refused");
        }
        let mut enc = OpusEncoder::new(48_000, 1, 32, 5).unwrap();
        assert_eq!(
            enc.inner.get_packet_loss_perc().unwrap(),
            0,
            "no FEC bits until loss"
        );
        enc.set_expected_loss(55).unwrap();
        assert_eq!(enc.inner.get_packet_loss_perc().unwrap(), 20, "capped");
        assert_eq!(enc.expected_loss(), 20);
        assert!(OpusEncoder::new(44_100, 1, 32, 5).is_err());
        assert!(OpusEncoder::new(48_000, 3, 32, 5).is_err());
    }
}
