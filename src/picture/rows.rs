//! Row kernels of the camera conversions into I420 planes: YUYV and NV12 (raw cameras), and the
//! decoded MJPEG's interleaved YCbCr. SIMD where it pays: SSE2 on x86_64 and NEON on aarch64 for
//! YUYV and NV12 (both part of those targets' baseline, so no run-time detection); SSSE3 on
//! x86_64 for YCbCr (its byte shuffle is what a 3-byte stride needs; detected once at run time,
//! every x86_64 CPU since 2006 has it). Everything else (armv7, aarch64's YCbCr, the tails of
//! rows) runs the scalar code, which the SIMD code matches bit for bit (tests below, on random
//! sizes and data). YUYV and NV12 only move bytes; YCbCr also averages chroma 2x2 and maps full
//! range to limited range.

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

/// Two rows of interleaved full-range YCbCr (`a`, `b`: 3 bytes a pixel, at least `3·ya.len()`
/// bytes each, as zune-jpeg writes a 4:2:0 or 4:2:2 JPEG with its chroma upsampled) into two
/// limited-range luma rows (`ya`, `yb`, the same even length) and one chroma row of each (`u`,
/// `v`: half that length), chroma averaged over each 2x2 block (rounded).
pub fn ycbcr_rows(a: &[u8], b: &[u8], ya: &mut [u8], yb: &mut [u8], u: &mut [u8], v: &mut [u8]) {
    let done = simd::ycbcr_rows(a, b, ya, yb, u, v);
    ycbcr_rows_scalar_from(a, b, ya, yb, u, v, done);
}

/// The whole rows in scalar code (the reference the SIMD code is tested against).
pub fn ycbcr_rows_scalar(
    a: &[u8],
    b: &[u8],
    ya: &mut [u8],
    yb: &mut [u8],
    u: &mut [u8],
    v: &mut [u8],
) {
    ycbcr_rows_scalar_from(a, b, ya, yb, u, v, 0);
}

/// The scalar kernel from pixel `start` on (`start` even).
fn ycbcr_rows_scalar_from(
    a: &[u8],
    b: &[u8],
    ya: &mut [u8],
    yb: &mut [u8],
    u: &mut [u8],
    v: &mut [u8],
    start: usize,
) {
    let w = ya.len().min(yb.len());
    let (a, b) = (&a[start * 3..w * 3], &b[start * 3..w * 3]);
    for (d, s) in ya[start..w].iter_mut().zip(a.chunks_exact(3)) {
        *d = LUMA_TO_LIMITED[s[0] as usize];
    }
    for (d, s) in yb[start..w].iter_mut().zip(b.chunks_exact(3)) {
        *d = LUMA_TO_LIMITED[s[0] as usize];
    }
    let blocks = a.chunks_exact(6).zip(b.chunks_exact(6));
    for ((u, v), (p, q)) in u[start / 2..]
        .iter_mut()
        .zip(v[start / 2..].iter_mut())
        .zip(blocks)
    {
        let cb = (p[1] as u16 + p[4] as u16 + q[1] as u16 + q[4] as u16 + 2) >> 2;
        let cr = (p[2] as u16 + p[5] as u16 + q[2] as u16 + q[5] as u16 + 2) >> 2;
        *u = CHROMA_TO_LIMITED[cb as usize];
        *v = CHROMA_TO_LIMITED[cr as usize];
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

#[cfg(target_arch = "x86_64")]
mod ycbcr_ssse3 {
    use std::arch::x86_64::{
        __m128i, _mm_add_epi16, _mm_loadu_si128, _mm_maddubs_epi16, _mm_mullo_epi16, _mm_or_si128,
        _mm_packus_epi16, _mm_set1_epi16, _mm_set1_epi8, _mm_setzero_si128, _mm_shuffle_epi8,
        _mm_srli_epi16, _mm_storeu_si128, _mm_unpackhi_epi8, _mm_unpacklo_epi8,
    };

    /// Pixels a step handles: 96 source bytes of each row, 32 luma, 16 Cb, 16 Cr.
    const STEP: usize = 32;

    /// `_mm_shuffle_epi8` masks taking channel `ch` (0 Y, 1 Cb, 2 Cr) of 16 pixels out of the
    /// `reg`-th of their three 16-byte loads (0x80: a zero byte, filled by another load).
    const fn mask(ch: usize, reg: usize) -> [u8; 16] {
        let mut m = [0x80u8; 16];
        let mut p = 0;
        while p < 16 {
            let at = 3 * p + ch;
            if at / 16 == reg {
                m[p] = (at % 16) as u8;
            }
            p += 1;
        }
        m
    }

    static MASKS: [[[u8; 16]; 3]; 3] = [
        [mask(0, 0), mask(0, 1), mask(0, 2)],
        [mask(1, 0), mask(1, 1), mask(1, 2)],
        [mask(2, 0), mask(2, 1), mask(2, 2)],
    ];

    /// One channel of 16 pixels from their three loads.
    #[inline(always)]
    fn gather(r: &[__m128i; 3], m: &[[u8; 16]; 3]) -> __m128i {
        // SAFETY: only called from `rows`, which runs with SSSE3 enabled; the masks are
        // 16-byte statics.
        unsafe {
            let a = _mm_shuffle_epi8(r[0], _mm_loadu_si128(m[0].as_ptr().cast()));
            let b = _mm_shuffle_epi8(r[1], _mm_loadu_si128(m[1].as_ptr().cast()));
            let c = _mm_shuffle_epi8(r[2], _mm_loadu_si128(m[2].as_ptr().cast()));
            _mm_or_si128(_mm_or_si128(a, b), c)
        }
    }

    /// `x / 255` on u16 lanes, exact for `x < 65535`: `(x + 1 + (x >> 8)) >> 8`.
    #[inline(always)]
    fn div255(x: __m128i) -> __m128i {
        // SAFETY: SSE2 register ops (x86_64 baseline).
        unsafe {
            let x1 = _mm_add_epi16(_mm_add_epi16(x, _mm_set1_epi16(1)), _mm_srli_epi16(x, 8));
            _mm_srli_epi16(x1, 8)
        }
    }

    /// 16 full-range luma samples to limited range: `(219·y + 4207) / 255` (at most 60052).
    #[inline(always)]
    fn luma16(y: __m128i) -> __m128i {
        // SAFETY: SSE2 register ops (x86_64 baseline).
        unsafe {
            let z = _mm_setzero_si128();
            let (k, c) = (_mm_set1_epi16(219), _mm_set1_epi16(4207));
            let lo = div255(_mm_add_epi16(
                _mm_mullo_epi16(_mm_unpacklo_epi8(y, z), k),
                c,
            ));
            let hi = div255(_mm_add_epi16(
                _mm_mullo_epi16(_mm_unpackhi_epi8(y, z), k),
                c,
            ));
            _mm_packus_epi16(lo, hi)
        }
    }

    /// 8 chroma values (u16 lanes) from 16 samples of each of two rows: the 2x2 average
    /// `(sum + 2) >> 2`, then `(224·c + 4095) / 255` (at most 61215).
    #[inline(always)]
    fn chroma8(a: __m128i, b: __m128i) -> __m128i {
        // SAFETY: only called from `rows`, which runs with SSSE3 enabled (maddubs); register ops.
        unsafe {
            let ones = _mm_set1_epi8(1);
            let sum = _mm_add_epi16(_mm_maddubs_epi16(a, ones), _mm_maddubs_epi16(b, ones));
            let c = _mm_srli_epi16(_mm_add_epi16(sum, _mm_set1_epi16(2)), 2);
            div255(_mm_add_epi16(
                _mm_mullo_epi16(c, _mm_set1_epi16(224)),
                _mm_set1_epi16(4095),
            ))
        }
    }

    /// The whole steps of the rows; returns the pixels done (a multiple of [`STEP`]).
    ///
    /// # Safety
    /// The CPU must have SSSE3.
    #[target_feature(enable = "ssse3")]
    pub unsafe fn rows(
        a: &[u8],
        b: &[u8],
        ya: &mut [u8],
        yb: &mut [u8],
        u: &mut [u8],
        v: &mut [u8],
    ) -> usize {
        let w = ya.len().min(yb.len()).min(2 * u.len()).min(2 * v.len());
        let w = w.min(a.len() / 3).min(b.len() / 3);
        let steps = w / STEP;
        for s in 0..steps {
            let x = s * STEP;
            let mut cb = [_mm_setzero_si128(); 2];
            let mut cr = [_mm_setzero_si128(); 2];
            for half in 0..2 {
                let p = x + 16 * half;
                // SAFETY: p + 16 <= w: 48 bytes from 3p are within `a` and `b` (3w bytes at
                // least), 16 bytes from p within `ya` and `yb`.
                unsafe {
                    let ra =
                        [0, 1, 2].map(|i| _mm_loadu_si128(a.as_ptr().add(3 * p + 16 * i).cast()));
                    let rb =
                        [0, 1, 2].map(|i| _mm_loadu_si128(b.as_ptr().add(3 * p + 16 * i).cast()));
                    _mm_storeu_si128(
                        ya.as_mut_ptr().add(p).cast(),
                        luma16(gather(&ra, &MASKS[0])),
                    );
                    _mm_storeu_si128(
                        yb.as_mut_ptr().add(p).cast(),
                        luma16(gather(&rb, &MASKS[0])),
                    );
                    cb[half] = chroma8(gather(&ra, &MASKS[1]), gather(&rb, &MASKS[1]));
                    cr[half] = chroma8(gather(&ra, &MASKS[2]), gather(&rb, &MASKS[2]));
                }
            }
            // SAFETY: x/2 + 16 <= w/2 <= u.len(), v.len().
            unsafe {
                _mm_storeu_si128(
                    u.as_mut_ptr().add(x / 2).cast(),
                    _mm_packus_epi16(cb[0], cb[1]),
                );
                _mm_storeu_si128(
                    v.as_mut_ptr().add(x / 2).cast(),
                    _mm_packus_epi16(cr[0], cr[1]),
                );
            }
        }
        steps * STEP
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    /// The YCbCr rows with SSSE3 when the CPU has it (checked once; std caches the answer).
    pub fn ycbcr_rows(
        a: &[u8],
        b: &[u8],
        ya: &mut [u8],
        yb: &mut [u8],
        u: &mut [u8],
        v: &mut [u8],
    ) -> usize {
        if std::is_x86_feature_detected!("ssse3") {
            // SAFETY: the CPU has SSSE3 (just checked).
            unsafe { super::ycbcr_ssse3::rows(a, b, ya, yb, u, v) }
        } else {
            0
        }
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
    /// No SIMD kernel for YCbCr here: the scalar code does every pixel.
    pub fn ycbcr_rows(
        _: &[u8],
        _: &[u8],
        _: &mut [u8],
        _: &mut [u8],
        _: &mut [u8],
        _: &mut [u8],
    ) -> usize {
        0
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
    /// No SIMD kernel for YCbCr here: the scalar code does every pixel.
    pub fn ycbcr_rows(
        _: &[u8],
        _: &[u8],
        _: &mut [u8],
        _: &mut [u8],
        _: &mut [u8],
        _: &mut [u8],
    ) -> usize {
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

        /// SIMD and scalar agree bit for bit on every width (steps and tails), on random
        /// bytes with random padding after the rows.
        #[test]
        fn ycbcr_rows_match_the_scalar_code(
            half_w in 1usize..200,
            pad in 0usize..9,
            seed in any::<u64>(),
        ) {
            let w = half_w * 2;
            let a = bytes(w * 3 + pad, seed);
            let b = bytes(w * 3 + pad, seed ^ 0x5555);
            let (mut ya, mut yb, mut u, mut v) = (vec![0; w], vec![0; w], vec![0; w / 2], vec![0; w / 2]);
            let (mut yas, mut ybs, mut us, mut vs) = (vec![0; w], vec![0; w], vec![0; w / 2], vec![0; w / 2]);
            ycbcr_rows(&a, &b, &mut ya, &mut yb, &mut u, &mut v);
            ycbcr_rows_scalar(&a, &b, &mut yas, &mut ybs, &mut us, &mut vs);
            prop_assert_eq!(ya, yas);
            prop_assert_eq!(yb, ybs);
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

    /// Every luma value and every chroma average through both kernels: the SIMD arithmetic
    /// equals the range tables, and the tables the rounding they document.
    #[test]
    fn ycbcr_rows_map_every_value_like_the_tables() {
        // 512 pixels: pixel i has Y = i % 256 in both rows (chroma: any bytes).
        let w = 512;
        let (mut a, mut b) = (bytes(w * 3, 7), bytes(w * 3, 11));
        for i in 0..w {
            a[3 * i] = (i % 256) as u8;
            b[3 * i] = (i % 256) as u8;
        }
        let (mut ya, mut yb, mut u, mut v) =
            (vec![0; w], vec![0; w], vec![0; w / 2], vec![0; w / 2]);
        let (mut yas, mut ybs, mut us, mut vs) =
            (vec![0; w], vec![0; w], vec![0; w / 2], vec![0; w / 2]);
        ycbcr_rows(&a, &b, &mut ya, &mut yb, &mut u, &mut v);
        ycbcr_rows_scalar(&a, &b, &mut yas, &mut ybs, &mut us, &mut vs);
        assert_eq!((&ya, &yb, &u, &v), (&yas, &ybs, &us, &vs));
        for (i, &y) in ya.iter().enumerate() {
            let exact = 16.0 + (i % 256) as f64 * 219.0 / 255.0;
            assert_eq!(y, exact.round() as u8, "luma {}", i % 256);
        }
        for c in 0..=255u8 {
            let exact = 128.0 + (c as f64 - 128.0) * 224.0 / 255.0;
            assert_eq!(
                CHROMA_TO_LIMITED[c as usize],
                exact.round() as u8,
                "chroma {c}"
            );
        }
        // Every chroma value through the SIMD path: rows whose 2x2 blocks average to 0..=255.
        let w = 512;
        let mut a = vec![0u8; w * 3];
        for i in 0..w {
            a[3 * i + 1] = (i / 2) as u8;
            a[3 * i + 2] = (255 - i / 2) as u8;
        }
        let b = a.clone();
        let (mut ya, mut yb, mut u, mut v) =
            (vec![0; w], vec![0; w], vec![0; w / 2], vec![0; w / 2]);
        ycbcr_rows(&a, &b, &mut ya, &mut yb, &mut u, &mut v);
        for c in 0..256 {
            assert_eq!(u[c], CHROMA_TO_LIMITED[c], "Cb {c}");
            assert_eq!(v[c], CHROMA_TO_LIMITED[255 - c], "Cr {c}");
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
