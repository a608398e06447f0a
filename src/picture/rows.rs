//! Row kernels of the camera conversions into I420 planes: YUYV and NV12 (raw cameras), and the
//! range mapping of the decoded MJPEG's planes (libjpeg-turbo writes full-range JFIF samples,
//! the encoder takes limited range). SIMD where it pays: SSE2 on x86_64 and NEON on aarch64 (both
//! part of those targets' baseline, so no run-time detection). Everything else (armv7, the
//! tails of rows) runs the scalar code, which the SIMD code matches bit for bit (tests below, on
//! random sizes and data, and tests/cross/rows on the arm builds under qemu-user). YUYV and NV12
//! only move bytes; the range maps compute `(span·v + k) / 255`.

/// Full-range (JFIF) luma to the limited range of the encoder's I420 (BT.601 studio swing, what
/// raw cameras give): `16 + y·219/255`, rounded. A table lookup per sample, no colour matrix.
static LUMA_TO_LIMITED: [u8; 256] = range_table(219, 16);
/// Full-range chroma to limited range: `128 + (c − 128)·224/255`, rounded.
static CHROMA_TO_LIMITED: [u8; 256] = range_table(224, 128);

/// `base + (v − centre)·span/255` for every byte `v`, rounded half away from zero (a tie
/// cannot happen: 255 is odd), where `centre` is 0 for luma (`base` 16) and 128 for chroma.
/// Equal to `(span·v + K) / 255` with K = 255·base − span·centre + 127 (4207 for luma, 4095 for
/// chroma), which is what the SIMD code computes (tested on every byte).
const fn range_table(span: i32, base: i32) -> [u8; 256] {
    let centre = if base == 128 { 128 } else { 0 };
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let n = (i as i32 - centre) * span;
        let r = if n >= 0 {
            (n + 127) / 255
        } else {
            -((-n + 127) / 255)
        };
        t[i] = (base + r) as u8;
        i += 1;
    }
    t
}

/// A full-range luma sample in limited range.
pub fn limited_luma(y: u8) -> u8 {
    LUMA_TO_LIMITED[y as usize]
}

/// Full-range (JFIF) luma samples to limited range, in place: [`limited_luma`] on each (SSE2 on
/// x86_64, NEON on aarch64; libjpeg-turbo's planar output).
pub fn limit_luma(samples: &mut [u8]) {
    let done = simd::limit(samples, simd::LUMA);
    limit_scalar(&mut samples[done..], &LUMA_TO_LIMITED);
}

/// Full-range chroma samples to limited range, in place.
pub fn limit_chroma(samples: &mut [u8]) {
    let done = simd::limit(samples, simd::CHROMA);
    limit_scalar(&mut samples[done..], &CHROMA_TO_LIMITED);
}

/// [`limit_luma`] in scalar code (the reference the SIMD code is tested against).
pub fn limit_luma_scalar(samples: &mut [u8]) {
    limit_scalar(samples, &LUMA_TO_LIMITED);
}

/// [`limit_chroma`] in scalar code.
pub fn limit_chroma_scalar(samples: &mut [u8]) {
    limit_scalar(samples, &CHROMA_TO_LIMITED);
}

fn limit_scalar(samples: &mut [u8], table: &[u8; 256]) {
    for s in samples {
        *s = table[*s as usize];
    }
}

/// Smooth a chroma plane (`width` samples a row) in place with the separable kernel
/// `[1 6 1] / 8` in each direction (edge samples repeated), rounded once at the end. This is
/// what a JPEG decoder's smooth ("fancy") chroma upsampling followed by a 2x2 average amounts
/// to: a mild low-pass that takes a camera's chroma noise out before the encoder spends bits on
/// it. `rows` holds three rows of `u16`, grown once to `width`. The compiler vectorises the
/// loops.
pub fn smooth_chroma(plane: &mut [u8], width: usize, rows: &mut [Vec<u16>; 3]) {
    if width == 0 || plane.len() < width {
        return;
    }
    let height = plane.len() / width;
    for r in rows.iter_mut() {
        r.resize(width, 0);
    }
    // Horizontal pass of row `r` into `out`: a[i-1] + 6·a[i] + a[i+1] (at most 2040).
    let horizontal = |row: &[u8], out: &mut [u16]| {
        let at = |l: u8, c: u8, r: u8| u16::from(l) + 6 * u16::from(c) + u16::from(r);
        let last = width - 1;
        out[0] = at(row[0], row[0], row[1.min(last)]);
        if width > 1 {
            out[last] = at(row[last - 1], row[last], row[last]);
            // The interior as three shifted slices: no index arithmetic, so it vectorises.
            let inner = out[1..last].iter_mut();
            let taps = row[..width - 2]
                .iter()
                .zip(&row[1..last])
                .zip(&row[2..width]);
            for (o, ((&l, &c), &r)) in inner.zip(taps) {
                *o = at(l, c, r);
            }
        }
    };
    let [above, here, below] = rows;
    horizontal(&plane[..width], here);
    above.copy_from_slice(here);
    for r in 0..height {
        // Row r + 1 is still unwritten: its horizontal sums come from the original samples.
        let next = (r + 1).min(height - 1);
        horizontal(&plane[next * width..next * width + width], below);
        let out = &mut plane[r * width..r * width + width];
        for (((o, &a), &h), &b) in out
            .iter_mut()
            .zip(above.iter())
            .zip(here.iter())
            .zip(below.iter())
        {
            // At most 16320: fits u16.
            *o = ((a + 6 * h + b + 32) >> 6) as u8;
        }
        std::mem::swap(above, here);
        std::mem::swap(here, below);
    }
}

/// The rounded mean of two rows (`(a + b + 1) / 2`, sample by sample) into `out`: a 4:2:2
/// JPEG's chroma rows in pairs. The compiler vectorises it (`pavgb`, `urhadd`).
pub fn average_rows(a: &[u8], b: &[u8], out: &mut [u8]) {
    for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
        *o = ((u16::from(a) + u16::from(b) + 1) >> 1) as u8;
    }
}

/// One YUYV row (`src`: at least `2·y.len()` bytes) into its luma row; with `chroma`, also into
/// the chroma rows (`y.len()/2` bytes each: Cb from byte 1 of each 4, Cr from byte 3).
pub fn yuyv_row(src: &[u8], y: &mut [u8], chroma: Option<(&mut [u8], &mut [u8])>) {
    match chroma {
        Some((u, v)) => {
            let done = simd::yuyv_luma_chroma(src, y, u, v);
            yuyv_row_scalar_from(src, y, Some((u, v)), done);
        }
        None => {
            let done = simd::yuyv_luma(src, y);
            yuyv_row_scalar_from(src, y, None, done);
        }
    }
}

/// The scalar kernel from pixel `start` on (`start` even); with `chroma`, chroma too.
fn yuyv_row_scalar_from(
    src: &[u8],
    y: &mut [u8],
    chroma: Option<(&mut [u8], &mut [u8])>,
    start: usize,
) {
    let w = y.len();
    for (d, s) in y[start..]
        .iter_mut()
        .zip(src[start * 2..w * 2].iter().step_by(2))
    {
        *d = *s;
    }
    if let Some((u, v)) = chroma {
        let px = src[start * 2..w * 2].chunks_exact(4);
        for ((u, v), px) in u[start / 2..]
            .iter_mut()
            .zip(v[start / 2..].iter_mut())
            .zip(px)
        {
            *u = px[1];
            *v = px[3];
        }
    }
}

/// The whole row in scalar code (the reference the SIMD code is tested against).
pub fn yuyv_row_scalar(src: &[u8], y: &mut [u8], chroma: Option<(&mut [u8], &mut [u8])>) {
    yuyv_row_scalar_from(src, y, chroma, 0);
}

/// One NV12 chroma row (`src`: interleaved Cb Cr, at least `2·u.len()` bytes) into its planes.
pub fn nv12_chroma_row(src: &[u8], u: &mut [u8], v: &mut [u8]) {
    let done = simd::nv12_chroma_row(src, u, v);
    nv12_chroma_row_scalar_from(src, u, v, done);
}

fn nv12_chroma_row_scalar_from(src: &[u8], u: &mut [u8], v: &mut [u8], start: usize) {
    let n = u.len().min(v.len());
    let pairs = src[start * 2..n * 2].chunks_exact(2);
    for ((u, v), px) in u[start..n]
        .iter_mut()
        .zip(v[start..n].iter_mut())
        .zip(pairs)
    {
        *u = px[0];
        *v = px[1];
    }
}

/// The whole chroma row in scalar code (the reference the SIMD code is tested against).
pub fn nv12_chroma_row_scalar(src: &[u8], u: &mut [u8], v: &mut [u8]) {
    nv12_chroma_row_scalar_from(src, u, v, 0);
}

/// SSE2 (the x86_64 baseline) arithmetic of the range maps.
#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::{
        __m128i, _mm_add_epi16, _mm_mullo_epi16, _mm_packus_epi16, _mm_set1_epi16,
        _mm_setzero_si128, _mm_srli_epi16, _mm_unpackhi_epi8, _mm_unpacklo_epi8,
    };

    /// `x / 255` on u16 lanes, exact for `x < 65535`: `(x + 1 + (x >> 8)) >> 8`.
    #[inline(always)]
    fn div255(x: __m128i) -> __m128i {
        // SAFETY: SSE2 register ops (x86_64 baseline).
        unsafe {
            let x1 = _mm_add_epi16(_mm_add_epi16(x, _mm_set1_epi16(1)), _mm_srli_epi16(x, 8));
            _mm_srli_epi16(x1, 8)
        }
    }

    /// 16 full-range samples to limited range: `(span·v + k) / 255` (at most 61215), where
    /// `(span, k)` is [`super::simd::LUMA`] or [`super::simd::CHROMA`].
    #[inline(always)]
    pub fn map16(v: __m128i, (span, k): (i16, i16)) -> __m128i {
        // SAFETY: SSE2 register ops (x86_64 baseline).
        unsafe {
            let z = _mm_setzero_si128();
            let (span, k) = (_mm_set1_epi16(span), _mm_set1_epi16(k));
            let lo = div255(_mm_add_epi16(
                _mm_mullo_epi16(_mm_unpacklo_epi8(v, z), span),
                k,
            ));
            let hi = div255(_mm_add_epi16(
                _mm_mullo_epi16(_mm_unpackhi_epi8(v, z), span),
                k,
            ));
            _mm_packus_epi16(lo, hi)
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    /// `(span, k)` of the full-to-limited range maps, `(span·v + k) / 255`: see
    /// [`range_table`](super::range_table).
    pub const LUMA: (i16, i16) = (219, 4207);
    /// The chroma map's `(span, k)`.
    pub const CHROMA: (i16, i16) = (224, 4095);

    /// The whole 16-sample steps of `samples` mapped in place; returns the samples done.
    pub fn limit(samples: &mut [u8], map: (i16, i16)) -> usize {
        use std::arch::x86_64::{_mm_loadu_si128, _mm_storeu_si128};
        let done = samples.len() / 16 * 16;
        for c in samples.chunks_exact_mut(16) {
            // SAFETY: `c` is 16 bytes: one unaligned load and one unaligned store.
            unsafe {
                let v = _mm_loadu_si128(c.as_ptr().cast());
                _mm_storeu_si128(c.as_mut_ptr().cast(), super::sse2::map16(v, map));
            }
        }
        done
    }

    use std::arch::x86_64::{
        __m128i, _mm_and_si128, _mm_loadu_si128, _mm_packus_epi16, _mm_set1_epi16, _mm_srli_epi16,
        _mm_storeu_si128,
    };

    /// Pixels a YUYV step handles: 64 source bytes, 32 luma, 16 Cb, 16 Cr.
    const STEP: usize = 32;

    /// Even bytes of `a` then of `b` (16 bytes), and odd bytes likewise.
    ///
    /// SAFETY (for the callers): SSE2 is in the x86_64 baseline; these are plain register ops.
    #[inline(always)]
    fn split(a: __m128i, b: __m128i) -> (__m128i, __m128i) {
        // SAFETY: SSE2 is always present on x86_64; no memory is touched.
        unsafe {
            let low = _mm_set1_epi16(0x00ff);
            let even = _mm_packus_epi16(_mm_and_si128(a, low), _mm_and_si128(b, low));
            let odd = _mm_packus_epi16(_mm_srli_epi16(a, 8), _mm_srli_epi16(b, 8));
            (even, odd)
        }
    }

    /// Luma of the whole steps of the row; returns the pixels done (a multiple of [`STEP`]).
    pub fn yuyv_luma(src: &[u8], y: &mut [u8]) -> usize {
        let w = y.len().min(src.len() / 2);
        let steps = w / STEP;
        for i in 0..steps {
            let (s, d) = (&src[i * 64..i * 64 + 64], &mut y[i * 32..i * 32 + 32]);
            // SAFETY: `s` is 64 bytes and `d` 32 (slicing checked it), so the four 16-byte
            // unaligned loads and two 16-byte unaligned stores stay inside them.
            unsafe {
                let p = s.as_ptr().cast::<__m128i>();
                let q = d.as_mut_ptr().cast::<__m128i>();
                let (y0, _) = split(_mm_loadu_si128(p), _mm_loadu_si128(p.add(1)));
                let (y1, _) = split(_mm_loadu_si128(p.add(2)), _mm_loadu_si128(p.add(3)));
                _mm_storeu_si128(q, y0);
                _mm_storeu_si128(q.add(1), y1);
            }
        }
        steps * STEP
    }

    /// Luma and chroma of the whole steps of the row; returns the pixels done.
    pub fn yuyv_luma_chroma(src: &[u8], y: &mut [u8], u: &mut [u8], v: &mut [u8]) -> usize {
        let w = y.len().min(src.len() / 2).min(u.len() * 2).min(v.len() * 2);
        let steps = w / STEP;
        for i in 0..steps {
            let s = &src[i * 64..i * 64 + 64];
            let d = &mut y[i * 32..i * 32 + 32];
            let (du, dv) = (&mut u[i * 16..i * 16 + 16], &mut v[i * 16..i * 16 + 16]);
            // SAFETY: `s` is 64 bytes, `d` 32, `du` and `dv` 16 each (slicing checked it): the
            // four unaligned loads and four unaligned stores of 16 bytes stay inside them.
            unsafe {
                let p = s.as_ptr().cast::<__m128i>();
                let (y0, uv0) = split(_mm_loadu_si128(p), _mm_loadu_si128(p.add(1)));
                let (y1, uv1) = split(_mm_loadu_si128(p.add(2)), _mm_loadu_si128(p.add(3)));
                let (cb, cr) = split(uv0, uv1);
                let q = d.as_mut_ptr().cast::<__m128i>();
                _mm_storeu_si128(q, y0);
                _mm_storeu_si128(q.add(1), y1);
                _mm_storeu_si128(du.as_mut_ptr().cast(), cb);
                _mm_storeu_si128(dv.as_mut_ptr().cast(), cr);
            }
        }
        steps * STEP
    }

    /// Chroma pairs of the whole steps (16 pairs) of the row; returns the pairs done.
    pub fn nv12_chroma_row(src: &[u8], u: &mut [u8], v: &mut [u8]) -> usize {
        let n = u.len().min(v.len()).min(src.len() / 2);
        let steps = n / 16;
        for i in 0..steps {
            let s = &src[i * 32..i * 32 + 32];
            let (du, dv) = (&mut u[i * 16..i * 16 + 16], &mut v[i * 16..i * 16 + 16]);
            // SAFETY: `s` is 32 bytes, `du` and `dv` 16 each (slicing checked it): two
            // unaligned loads and two unaligned stores of 16 bytes stay inside them.
            unsafe {
                let p = s.as_ptr().cast::<__m128i>();
                let (cb, cr) = split(_mm_loadu_si128(p), _mm_loadu_si128(p.add(1)));
                _mm_storeu_si128(du.as_mut_ptr().cast(), cb);
                _mm_storeu_si128(dv.as_mut_ptr().cast(), cr);
            }
        }
        steps * 16
    }
}

#[cfg(target_arch = "aarch64")]
mod simd {
    /// `(span, k)` of the full-to-limited range maps, `(span·v + k) / 255`: see
    /// [`range_table`](super::range_table).
    pub const LUMA: (i16, i16) = (219, 4207);
    /// The chroma map's `(span, k)`.
    pub const CHROMA: (i16, i16) = (224, 4095);

    /// The whole 16-sample steps of `samples` mapped in place; returns the samples done.
    pub fn limit(samples: &mut [u8], (span, k): (i16, i16)) -> usize {
        use std::arch::aarch64::{vcombine_u8, vget_high_u8, vget_low_u8, vld1q_u8, vst1q_u8};
        let done = samples.len() / 16 * 16;
        for c in samples.chunks_exact_mut(16) {
            // SAFETY: NEON is in the aarch64 baseline; `c` is 16 bytes: one load, one store.
            unsafe {
                let v = vld1q_u8(c.as_ptr());
                let lo = map8(vget_low_u8(v), span as u8, k as u16);
                let hi = map8(vget_high_u8(v), span as u8, k as u16);
                vst1q_u8(c.as_mut_ptr(), vcombine_u8(lo, hi));
            }
        }
        done
    }

    /// 8 samples: `(span·v + k) / 255`, the division as `(x + 1 + (x >> 8)) >> 8` (exact for
    /// `x < 65535`).
    #[inline(always)]
    fn map8(v: std::arch::aarch64::uint8x8_t, span: u8, k: u16) -> std::arch::aarch64::uint8x8_t {
        use std::arch::aarch64::{
            vaddq_u16, vdup_n_u8, vdupq_n_u16, vmull_u8, vshrn_n_u16, vshrq_n_u16,
        };
        // SAFETY: NEON register ops (aarch64 baseline).
        unsafe {
            let x = vaddq_u16(vmull_u8(v, vdup_n_u8(span)), vdupq_n_u16(k));
            let x1 = vaddq_u16(vaddq_u16(x, vdupq_n_u16(1)), vshrq_n_u16::<8>(x));
            vshrn_n_u16::<8>(x1)
        }
    }

    use std::arch::aarch64::{uint8x16x2_t, vld2q_u8, vld4q_u8, vst1q_u8, vst2q_u8};

    /// Pixels a YUYV step handles: 64 source bytes, 32 luma, 16 Cb, 16 Cr.
    const STEP: usize = 32;

    /// Luma of the whole steps of the row; returns the pixels done (a multiple of [`STEP`]).
    pub fn yuyv_luma(src: &[u8], y: &mut [u8]) -> usize {
        let w = y.len().min(src.len() / 2);
        let steps = w / STEP;
        for i in 0..steps {
            let (s, d) = (&src[i * 64..i * 64 + 64], &mut y[i * 32..i * 32 + 32]);
            // SAFETY: NEON is in the aarch64 baseline; `s` is 64 bytes and `d` 32 (slicing
            // checked it): one 64-byte de-interleaving load, one 32-byte interleaving store.
            unsafe {
                let px = vld4q_u8(s.as_ptr());
                vst2q_u8(d.as_mut_ptr(), uint8x16x2_t(px.0, px.2));
            }
        }
        steps * STEP
    }

    /// Luma and chroma of the whole steps of the row; returns the pixels done.
    pub fn yuyv_luma_chroma(src: &[u8], y: &mut [u8], u: &mut [u8], v: &mut [u8]) -> usize {
        let w = y.len().min(src.len() / 2).min(u.len() * 2).min(v.len() * 2);
        let steps = w / STEP;
        for i in 0..steps {
            let s = &src[i * 64..i * 64 + 64];
            let d = &mut y[i * 32..i * 32 + 32];
            let (du, dv) = (&mut u[i * 16..i * 16 + 16], &mut v[i * 16..i * 16 + 16]);
            // SAFETY: NEON is in the aarch64 baseline; `s` is 64 bytes, `d` 32, `du` and `dv`
            // 16 each (slicing checked it), exactly what the loads and stores touch.
            unsafe {
                let px = vld4q_u8(s.as_ptr());
                vst2q_u8(d.as_mut_ptr(), uint8x16x2_t(px.0, px.2));
                vst1q_u8(du.as_mut_ptr(), px.1);
                vst1q_u8(dv.as_mut_ptr(), px.3);
            }
        }
        steps * STEP
    }

    /// Chroma pairs of the whole steps (16 pairs) of the row; returns the pairs done.
    pub fn nv12_chroma_row(src: &[u8], u: &mut [u8], v: &mut [u8]) -> usize {
        let n = u.len().min(v.len()).min(src.len() / 2);
        let steps = n / 16;
        for i in 0..steps {
            let s = &src[i * 32..i * 32 + 32];
            let (du, dv) = (&mut u[i * 16..i * 16 + 16], &mut v[i * 16..i * 16 + 16]);
            // SAFETY: NEON is in the aarch64 baseline; `s` is 32 bytes, `du` and `dv` 16 each
            // (slicing checked it), exactly what the load and stores touch.
            unsafe {
                let uv = vld2q_u8(s.as_ptr());
                vst1q_u8(du.as_mut_ptr(), uv.0);
                vst1q_u8(dv.as_mut_ptr(), uv.1);
            }
        }
        steps * 16
    }
}

/// No SIMD on this target (armv7 and others): the scalar code does every pixel.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
mod simd {
    /// `(span, k)` of the full-to-limited range maps, `(span·v + k) / 255`: see
    /// [`range_table`](super::range_table).
    pub const LUMA: (i16, i16) = (219, 4207);
    /// The chroma map's `(span, k)`.
    pub const CHROMA: (i16, i16) = (224, 4095);

    /// No SIMD here: the scalar code maps every sample.
    pub fn limit(_: &mut [u8], _: (i16, i16)) -> usize {
        0
    }

    pub fn yuyv_luma(_: &[u8], _: &mut [u8]) -> usize {
        0
    }

    pub fn yuyv_luma_chroma(_: &[u8], _: &mut [u8], _: &mut [u8], _: &mut [u8]) -> usize {
        0
    }

    pub fn nv12_chroma_row(_: &[u8], _: &mut [u8], _: &mut [u8]) -> usize {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// SIMD and scalar agree bit for bit on every width (steps and tails), with and
        /// without chroma, on random bytes with random padding after the row.
        #[test]
        fn yuyv_rows_match_the_scalar_code(
            half_w in 1usize..200,
            pad in 0usize..9,
            seed in any::<u64>(),
            chroma in any::<bool>(),
        ) {
            let w = half_w * 2;
            let src = bytes(w * 2 + pad, seed);
            let (mut y, mut u, mut v) = (vec![0; w], vec![0; w / 2], vec![0; w / 2]);
            let (mut ys, mut us, mut vs) = (vec![0; w], vec![0; w / 2], vec![0; w / 2]);
            if chroma {
                yuyv_row(&src, &mut y, Some((&mut u, &mut v)));
                yuyv_row_scalar(&src, &mut ys, Some((&mut us, &mut vs)));
            } else {
                yuyv_row(&src, &mut y, None);
                yuyv_row_scalar(&src, &mut ys, None);
            }
            prop_assert_eq!(y, ys);
            prop_assert_eq!(u, us);
            prop_assert_eq!(v, vs);
        }

        #[test]
        fn nv12_rows_match_the_scalar_code(
            n in 1usize..200,
            pad in 0usize..9,
            seed in any::<u64>(),
        ) {
            let src = bytes(n * 2 + pad, seed);
            let (mut u, mut v, mut us, mut vs) = (vec![0; n], vec![0; n], vec![0; n], vec![0; n]);
            nv12_chroma_row(&src, &mut u, &mut v);
            nv12_chroma_row_scalar(&src, &mut us, &mut vs);
            prop_assert_eq!(u, us);
            prop_assert_eq!(v, vs);
        }
    }

    /// The in-place range maps (libjpeg-turbo's planes): SIMD and scalar agree on every
    /// length (steps and tails), and every byte maps as the tables say.
    #[test]
    fn range_maps_match_the_tables_at_every_length() {
        let all: Vec<u8> = (0..=255).collect();
        for len in (0..70).chain([256, 257, 1000]) {
            let src = bytes(len, len as u64 + 3);
            for (simd, scalar, table) in [
                (
                    limit_luma as fn(&mut [u8]),
                    limit_luma_scalar as fn(&mut [u8]),
                    &LUMA_TO_LIMITED,
                ),
                (limit_chroma, limit_chroma_scalar, &CHROMA_TO_LIMITED),
            ] {
                let (mut a, mut b) = (src.clone(), src.clone());
                simd(&mut a);
                scalar(&mut b);
                assert_eq!(a, b, "length {len}");
                let mut every = all.clone();
                simd(&mut every);
                assert!(every
                    .iter()
                    .zip(&all)
                    .all(|(&m, &v)| m == table[v as usize]));
            }
        }
        assert_eq!((LUMA_TO_LIMITED[0], LUMA_TO_LIMITED[255]), (16, 235));
        assert_eq!(
            (
                CHROMA_TO_LIMITED[0],
                CHROMA_TO_LIMITED[128],
                CHROMA_TO_LIMITED[255]
            ),
            (16, 128, 240)
        );
    }

    #[test]
    fn smoothing_keeps_flat_planes_and_handles_one_row_or_column() {
        let mut rows = Default::default();
        let mut flat = vec![77u8; 12 * 5];
        smooth_chroma(&mut flat, 12, &mut rows);
        assert!(flat.iter().all(|&v| v == 77));
        // One row: only the horizontal kernel acts (the vertical one sees the row thrice).
        let mut row = vec![0u8, 64, 0];
        smooth_chroma(&mut row, 3, &mut rows);
        assert_eq!(row, [8, 48, 8]);
        // One column: the same, vertically.
        let mut col = vec![0u8, 64, 0];
        smooth_chroma(&mut col, 1, &mut rows);
        assert_eq!(col, [8, 48, 8]);
        // A zero width or a plane shorter than a row: nothing happens, no panic.
        smooth_chroma(&mut [1, 2], 0, &mut rows);
        smooth_chroma(&mut [1, 2], 3, &mut rows);
    }

    #[test]
    fn average_rows_rounds_half_up() {
        let (a, b) = (bytes(100, 5), bytes(100, 9));
        let mut out = vec![0; 100];
        average_rows(&a, &b, &mut out);
        for i in 0..100 {
            assert_eq!(
                out[i] as u32,
                (a[i] as u32 + b[i] as u32).div_ceil(2),
                "at {i}"
            );
        }
    }

    #[test]
    fn scalar_rows_take_the_right_bytes() {
        let src: Vec<u8> = (0..64 * 2).map(|i| i as u8).collect();
        let (mut y, mut u, mut v) = (vec![0; 64], vec![0; 32], vec![0; 32]);
        yuyv_row(&src, &mut y, Some((&mut u, &mut v)));
        assert!(y.iter().enumerate().all(|(i, &b)| b as usize == 2 * i));
        assert!(u.iter().enumerate().all(|(i, &b)| b as usize == 4 * i + 1));
        assert!(v.iter().enumerate().all(|(i, &b)| b as usize == 4 * i + 3));
        let (mut u, mut v) = (vec![0; 64], vec![0; 64]);
        nv12_chroma_row(&src, &mut u, &mut v);
        assert!(u.iter().enumerate().all(|(i, &b)| b as usize == 2 * i));
        assert!(v.iter().enumerate().all(|(i, &b)| b as usize == 2 * i + 1));
    }

    fn bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }
}
