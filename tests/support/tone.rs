//! Where a test tone is in decoded audio (48 kHz mono): the strongest frequency, and how much
//! of a block's power one frequency holds. Goertzel filters, with no trigonometry in the inner
//! loop, so they stay cheap under software emulation in the VM. Included with `#[path]` by the
//! test files that check the daemon's 1 kHz tone.
#![allow(dead_code)]

const RATE: f64 = 48_000.0;

/// Power of `hz` in `x` (Goertzel).
fn power(x: &[f32], hz: f64) -> f64 {
    let c = 2.0 * (std::f64::consts::TAU * hz / RATE).cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &v in x {
        let s = f64::from(v) + c * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    s1 * s1 + s2 * s2 - c * s1 * s2
}

/// The strongest frequency in `x` between 500 and 3000 Hz: filters 5 Hz apart over the first
/// `coarse` samples, then 1 Hz apart around the peak over up to 1 s. A block that may hold a
/// beep needs a `coarse` long enough for the tone to outweigh it.
pub fn dominant_hz(x: &[f32], coarse: usize) -> f64 {
    let best = |x: &[f32], fs: Vec<f64>| {
        fs.into_iter()
            .max_by(|a, b| power(x, *a).total_cmp(&power(x, *b)))
            .unwrap_or(0.0)
    };
    let coarse = best(
        &x[..x.len().min(coarse)],
        (100..600).map(|k| f64::from(k) * 5.0).collect(),
    );
    best(
        &x[..x.len().min(48_000)],
        (-10..=10).map(|d| coarse + f64::from(d)).collect(),
    )
}

/// The share of a block's power that `hz` holds: about 1 for a pure tone at `hz`, 0 for
/// silence.
pub fn tone_share(x: &[f32], hz: f64) -> f64 {
    let total: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    if total == 0.0 {
        0.0
    } else {
        power(x, hz) / (total * x.len() as f64 / 2.0)
    }
}

/// 16-bit samples (as ffmpeg writes `s16le`) as floats in [-1, 1).
pub fn from_s16(x: &[i16]) -> Vec<f32> {
    x.iter().map(|&v| f32::from(v) / 32_768.0).collect()
}
