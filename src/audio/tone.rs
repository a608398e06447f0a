//! The test tone (`[audio] source = "test"`): a 1 kHz sine, with a 2 kHz beep in the first
//! 100 ms of every wall-clock second, the same instants the test pattern flashes
//! (`capture::testsrc`). Both a frequency a test can check by FFT and an onset a test can line up
//! with the flash to measure A/V sync. Paced like a sound card: one 20 ms block every 20 ms.

use std::f64::consts::TAU;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{AudioError, AudioSource, Block};

/// Frequency of the steady tone, in Hz.
pub const TONE_HZ: f64 = 1000.0;
/// Frequency of the beep at the start of every wall-clock second, in Hz.
pub const BEEP_HZ: f64 = 2000.0;
/// How long the beep (and the test pattern's flash) lasts from the start of each second.
pub const BEEP: Duration = Duration::from_millis(100);
/// Peak amplitude, a third of full scale.
const AMPLITUDE: f64 = 10_000.0;

/// Whether the beep (and the flash) is on at `wall` (time since the Unix epoch).
pub fn beep_at(wall: Duration) -> bool {
    wall.subsec_nanos() < BEEP.as_nanos() as u32
}

/// A sine generator whose frequency follows the wall clock: pure, sample by sample.
#[derive(Debug, Clone)]
pub struct Tone {
    rate: u32,
    channels: usize,
    phase: f64,
}

impl Tone {
    /// A generator at `rate` Hz with `channels` interleaved channels (the same on each).
    pub fn new(rate: u32, channels: u32) -> Self {
        Self {
            rate: rate.max(1),
            channels: channels.max(1) as usize,
            phase: 0.0,
        }
    }

    /// Fill `out` (interleaved) with the samples whose first one sounds at `wall` (time since
    /// the Unix epoch). The phase runs on between calls, so blocks join without clicks.
    pub fn fill(&mut self, out: &mut [i16], wall: Duration) {
        let rate = u64::from(self.rate);
        const SECOND: u64 = 1_000_000_000;
        let beep = BEEP.as_nanos() as u64 * rate;
        let (tone_step, beep_step) = (
            TAU * TONE_HZ / f64::from(self.rate),
            TAU * BEEP_HZ / f64::from(self.rate),
        );
        // Where this sample falls in its wall-clock second, in units of 1/rate ns: integer adds
        // and compares per sample (no division), exactly `ns < BEEP` for the sample's instant
        // `start + floor(i * 10^9 / rate)` ns.
        let mut at = u64::from(wall.subsec_nanos()) * rate;
        for frame in out.chunks_mut(self.channels) {
            let step = if at < beep { beep_step } else { tone_step };
            self.phase += step;
            if self.phase >= TAU {
                self.phase -= TAU;
            }
            let v = (self.phase.sin() * AMPLITUDE) as i16;
            frame.fill(v);
            at += SECOND;
            if at >= SECOND * rate {
                at -= SECOND * rate;
            }
        }
    }
}

/// The `test` source: [`Tone`] paced by the monotonic clock, 20 ms a block.
pub struct ToneSource {
    tone: Tone,
    block: Duration,
    /// When the next block's first sample is due, and that instant on the wall clock.
    next: Option<(Instant, Duration)>,
}

impl ToneSource {
    /// A tone at `rate` and `channels`, in blocks of `block`.
    pub fn new(rate: u32, channels: u32, block: Duration) -> Self {
        Self {
            tone: Tone::new(rate, channels),
            block,
            next: None,
        }
    }
}

impl AudioSource for ToneSource {
    fn name(&self) -> String {
        "test tone".into()
    }

    fn read(&mut self, pcm: &mut [i16]) -> Result<Block, AudioError> {
        let (at, wall) = *self.next.get_or_insert_with(|| {
            let wall = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            (Instant::now(), wall)
        });
        // A sound card hands a block over once its last sample is in.
        let ready = at + self.block;
        let now = Instant::now();
        if ready > now {
            std::thread::sleep(ready - now);
        }
        self.tone.fill(pcm, wall);
        let next = at + self.block;
        self.next = if Instant::now() > next + Duration::from_millis(200) {
            // After a stall, start again from now rather than catch up with a burst.
            None
        } else {
            Some((next, wall + self.block))
        };
        Ok(Block::Pcm { at })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goertzel power of `hz` in `x`, relative to the signal's total power.
    pub(crate) fn relative_power(x: &[i16], rate: u32, hz: f64) -> f64 {
        let w = TAU * hz / f64::from(rate);
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for &v in x {
            let s = f64::from(v) + 2.0 * w.cos() * s1 - s2;
            s2 = s1;
            s1 = s;
        }
        let p = s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2;
        let total: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        p / (total * x.len() as f64 / 2.0)
    }

    #[test]
    fn tone_is_1_khz_and_beeps_2_khz_in_the_first_100_ms_of_a_second() {
        let rate = 48_000;
        let mut tone = Tone::new(rate, 1);
        let mut block = vec![0i16; 960];
        // 40 ms into a second: the beep.
        tone.fill(&mut block, Duration::from_millis(5_040));
        assert!(relative_power(&block, rate, BEEP_HZ) > 0.9);
        assert!(relative_power(&block, rate, TONE_HZ) < 0.05);
        // 500 ms into a second: the tone.
        tone.fill(&mut block, Duration::from_millis(5_500));
        assert!(relative_power(&block, rate, TONE_HZ) > 0.9);
        assert!(relative_power(&block, rate, BEEP_HZ) < 0.05);
        assert!(beep_at(Duration::from_millis(7_099)));
        assert!(!beep_at(Duration::from_millis(7_100)));
    }

    #[test]
    fn the_beep_starts_and_ends_on_the_same_samples_as_the_per_sample_division() {
        // The reference: each sample's instant by division, the phase by `%` (Sterbenz: the
        // subtraction `fill` does instead is exact, so the samples match bit for bit).
        fn reference(rate: u32, out: &mut [i16], wall: Duration, phase: &mut f64) {
            let start = u64::from(wall.subsec_nanos());
            for (i, v) in out.iter_mut().enumerate() {
                let ns = (start + i as u64 * 1_000_000_000 / u64::from(rate)) % 1_000_000_000;
                let hz = if ns < BEEP.as_nanos() as u64 {
                    BEEP_HZ
                } else {
                    TONE_HZ
                };
                *phase = (*phase + TAU * hz / f64::from(rate)) % TAU;
                *v = (phase.sin() * AMPLITUDE) as i16;
            }
        }
        for rate in [48_000, 44_100, 16_000, 8_000] {
            // Blocks across the beep's end, across the second's wrap, and a plain one.
            for wall in [5_099_990_000u64, 5_999_990_123, 6_050_000_000] {
                let wall = Duration::from_nanos(wall);
                let (mut tone, mut phase) = (Tone::new(rate, 1), 0.0);
                let (mut got, mut want) = (vec![0i16; 2400], vec![0i16; 2400]);
                tone.fill(&mut got, wall);
                reference(rate, &mut want, wall, &mut phase);
                assert_eq!(got, want, "{rate} Hz at {wall:?}");
            }
        }
    }

    #[test]
    fn stereo_carries_the_same_sample_on_both_channels() {
        let mut tone = Tone::new(48_000, 2);
        let mut block = vec![0i16; 1920];
        tone.fill(&mut block, Duration::from_millis(500));
        assert!(block.chunks(2).all(|f| f[0] == f[1]));
        assert!(block.iter().any(|&v| v > 9000));
    }
}
