//! One Opus encoder (libopus): 20 ms frames, in-band FEC on, at the capture rate (Opus takes
//! 8, 12, 16, 24 and 48 kHz as they are; RTP time is 48 kHz whatever the input rate).

use bytes::Bytes;

use super::AudioError;

/// Opus frame length: 20 ms.
pub const FRAME_MS: u32 = 20;
/// Largest Opus packet of one frame (RFC 6716, 3.4: 1275 bytes), with room for the TOC.
const MAX_PACKET: usize = 1500;
/// Loss the encoder plans FEC for, in percent (in-band FEC is only coded when this is > 0).
const EXPECTED_LOSS_PERCENT: i32 = 10;

/// Samples (per channel) in one frame at `rate`.
pub fn frame_samples(rate: u32) -> usize {
    (rate / (1000 / FRAME_MS)) as usize
}

/// The encoder and its output buffer.
pub struct OpusEncoder {
    inner: opus::Encoder,
    channels: u32,
    rate: u32,
    out: Vec<u8>,
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
        inner
            .set_packet_loss_perc(EXPECTED_LOSS_PERCENT)
            .map_err(e)?;
        Ok(Self {
            inner,
            channels,
            rate,
            out: vec![0; MAX_PACKET],
        })
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(OpusEncoder::new(44_100, 1, 32, 5).is_err());
        assert!(OpusEncoder::new(48_000, 3, 32, 5).is_err());
    }
}
