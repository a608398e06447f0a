//! JPEG stills: encode a raw picture, decode a camera's MJPEG frame, and fit a still under a
//! size limit (a data channel's max-message-size: 256 KiB in Chrome).

use bytes::Bytes;
use jpeg_encoder::{ColorType, Encoder, ImageBuffer, JpegColorType, SamplingFactor};

use super::StillError;
use crate::picture::yuv::I420;

/// The MJPEG decoder lives in `picture` (the capture thread uses it too); named here as well,
/// beside the encoder.
pub use crate::picture::mjpeg::{decode_to_i420, DecodeError, MjpegDecoder};

/// Qualities tried, after the configured one, before the picture is made smaller.
const QUALITY_STEPS: [u8; 4] = [70, 50, 35, 20];
/// Below this width a still is useless: give up instead.
const MIN_WIDTH: u32 = 80;

/// Feeds an I420 picture to the encoder row by row as YCbCr (no RGB round trip).
struct YuvRows<'a>(&'a I420);

impl ImageBuffer for YuvRows<'_> {
    fn get_jpeg_color_type(&self) -> JpegColorType {
        JpegColorType::Ycbcr
    }

    fn width(&self) -> u16 {
        self.0.width() as u16
    }

    fn height(&self) -> u16 {
        self.0.height() as u16
    }

    fn fill_buffers(&self, y: u16, buffers: &mut [Vec<u8>; 4]) {
        let w = self.0.width() as usize;
        let row = y as usize;
        let luma = &self.0.y_plane()[row * w..(row + 1) * w];
        let c = (row / 2) * (w / 2);
        let (u, v) = (
            &self.0.u_plane()[c..c + w / 2],
            &self.0.v_plane()[c..c + w / 2],
        );
        buffers[0].extend_from_slice(luma);
        for x in 0..w {
            buffers[1].push(u[x / 2]);
            buffers[2].push(v[x / 2]);
        }
    }
}

/// Encode a picture as a baseline 4:2:0 JPEG.
pub fn encode_i420(picture: &I420, quality: u8) -> Result<Vec<u8>, StillError> {
    encode_i420_sampled(picture, quality, SamplingFactor::R_4_2_0)
}

/// Encode a picture as a baseline JPEG with the given chroma subsampling.
fn encode_i420_sampled(
    picture: &I420,
    quality: u8,
    sampling: SamplingFactor,
) -> Result<Vec<u8>, StillError> {
    if picture.width() > u16::MAX as u32 || picture.height() > u16::MAX as u32 {
        return Err(StillError::Encode("picture too large for JPEG".into()));
    }
    let mut out = Vec::with_capacity(picture.as_bytes().len() / 8);
    let mut enc = Encoder::new(&mut out, quality.clamp(1, 100));
    enc.set_sampling_factor(sampling);
    enc.encode_image(YuvRows(picture))
        .map_err(|e| StillError::Encode(e.to_string()))?;
    Ok(out)
}

/// Encode packed RGB (for tests and tools).
pub fn encode_rgb(width: u16, height: u16, rgb: &[u8], quality: u8) -> Result<Vec<u8>, StillError> {
    let mut out = Vec::new();
    Encoder::new(&mut out, quality)
        .encode(rgb, width, height, ColorType::Rgb)
        .map_err(|e| StillError::Encode(e.to_string()))?;
    Ok(out)
}

/// Where a still comes from.
pub enum StillSource<'a> {
    /// A raw picture: encoded at the configured quality.
    Raw(&'a I420),
    /// A camera's JPEG: sent as is when it fits, re-encoded only when it does not.
    Jpeg(&'a Bytes),
}

/// The best JPEG of at most `max_bytes`: `quality` first, then lower qualities, then half the
/// size, until it fits or the picture would be narrower than 80 pixels.
pub fn fit(source: StillSource<'_>, quality: u8, max_bytes: usize) -> Result<Bytes, StillError> {
    let decoded;
    let mut picture = match source {
        StillSource::Jpeg(jpeg) => {
            if jpeg.len() <= max_bytes {
                return Ok(jpeg.clone());
            }
            decoded = decode_to_i420(jpeg).map_err(|e| StillError::Encode(e.to_string()))?;
            std::borrow::Cow::Borrowed(&decoded)
        }
        StillSource::Raw(p) => std::borrow::Cow::Borrowed(p),
    };
    loop {
        let qualities =
            std::iter::once(quality).chain(QUALITY_STEPS.into_iter().filter(|&q| q < quality));
        for q in qualities {
            let jpeg = encode_i420(&picture, q)?;
            if jpeg.len() <= max_bytes {
                return Ok(Bytes::from(jpeg));
            }
        }
        if picture.width() / 2 < MIN_WIDTH {
            return Err(StillError::TooLarge(max_bytes));
        }
        let smaller = picture
            .half()
            .map_err(|e| StillError::Encode(e.to_string()))?;
        picture = std::borrow::Cow::Owned(smaller);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::picture::yuv::BufferPool;
    use zune_jpeg::zune_core::{
        bytestream::ZCursor, colorspace::ColorSpace, options::DecoderOptions,
    };

    /// A noisy picture: compresses badly, so size limits bite.
    fn noisy(w: u32, h: u32) -> I420 {
        let mut p = I420::filled(w, h, 0, 128, 128).unwrap();
        let (y, u, v) = p.planes_mut();
        let mut x: u32 = 12345;
        for b in y.iter_mut().chain(u.iter_mut()).chain(v.iter_mut()) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = (x & 0xff) as u8;
        }
        p
    }

    fn size_of(jpeg: &[u8]) -> (u32, u32) {
        let p = decode_to_i420(jpeg).unwrap();
        (p.width(), p.height())
    }

    #[test]
    fn raw_still_round_trips() {
        let p = I420::filled(64, 48, 120, 90, 200).unwrap();
        let jpeg = encode_i420(&p, 85).unwrap();
        assert_eq!(&jpeg[..2], &[0xff, 0xd8]);
        let back = decode_to_i420(&jpeg).unwrap();
        assert_eq!((back.width(), back.height()), (64, 48));
        let y = back.y_plane()[64 * 24 + 32] as i32;
        assert!((y - 120).abs() <= 3, "luma {y}");
    }

    #[test]
    fn fit_lowers_quality_before_size() {
        let p = noisy(320, 240);
        let full = encode_i420(&p, 85).unwrap().len();
        let q50 = encode_i420(&p, 50).unwrap().len();
        assert!(q50 < full);
        let still = fit(StillSource::Raw(&p), 85, q50).unwrap();
        assert!(still.len() <= q50);
        assert_eq!(size_of(&still), (320, 240), "quality was enough; size kept");
    }

    #[test]
    fn fit_shrinks_when_quality_is_not_enough() {
        let p = noisy(640, 480);
        let q20 = encode_i420(&p, 20).unwrap().len();
        let still = fit(StillSource::Raw(&p), 85, q20 / 2).unwrap();
        assert!(still.len() <= q20 / 2);
        let (w, h) = size_of(&still);
        assert!(w <= 320 && h <= 240, "{w}x{h}");
    }

    #[test]
    fn fit_gives_up_with_an_error() {
        let p = noisy(320, 240);
        assert_eq!(
            fit(StillSource::Raw(&p), 85, 100),
            Err(StillError::TooLarge(100))
        );
    }

    #[test]
    fn camera_jpeg_is_passed_as_is_when_it_fits() {
        let p = noisy(160, 120);
        let jpeg = Bytes::from(encode_i420(&p, 90).unwrap());
        let still = fit(StillSource::Jpeg(&jpeg), 85, jpeg.len()).unwrap();
        assert_eq!(still.as_ptr(), jpeg.as_ptr(), "no copy, no transcode");
        let smaller = fit(StillSource::Jpeg(&jpeg), 85, jpeg.len() / 2).unwrap();
        assert!(smaller.len() <= jpeg.len() / 2);
    }

    /// Independent of the decoder's tables: `base + (v − centre)·span/255`, rounded.
    fn limited_luma(y: u8) -> u8 {
        (16.0 + y as f64 * 219.0 / 255.0).round() as u8
    }

    fn limited_chroma(c: u8) -> u8 {
        (128.0 + (c as f64 - 128.0) * 224.0 / 255.0).round() as u8
    }

    /// Luma flat over each 8x8 block, chroma flat over each 16x16 one (one DC coefficient per
    /// JPEG block, so quality 100 keeps every sample), the extremes included.
    fn blocks(w: u32, h: u32) -> I420 {
        let mut p = I420::filled(w, h, 0, 128, 128).unwrap();
        let (wu, cw) = (w as usize, w as usize / 2);
        let (y, u, v) = p.planes_mut();
        let levels = [0u8, 255, 16, 235, 128, 1, 254, 77];
        for (i, s) in y.iter_mut().enumerate() {
            let (r, c) = (i / wu / 8, i % wu / 8);
            *s = levels[(r * 3 + c) % 8].wrapping_add((r * 40 + c * 13) as u8 & 0xf0);
        }
        for (i, (su, sv)) in u.iter_mut().zip(v.iter_mut()).enumerate() {
            let (r, c) = (i / cw / 8, i % cw / 8);
            *su = levels[(r + c * 5) % 8];
            *sv = levels[(r * 7 + c + 3) % 8];
        }
        p
    }

    /// Decoded planes against the source mapped to limited range: luma everywhere, chroma
    /// inside its flat 8x8 blocks (the smoothing mixes neighbours at their edges only, and the
    /// planar decode upsamples nothing).
    fn assert_planes_of(src: &I420, got: &I420) {
        assert_eq!((got.width(), got.height()), (src.width(), src.height()));
        for (i, (&s, &g)) in src.y_plane().iter().zip(got.y_plane()).enumerate() {
            assert_eq!(g, limited_luma(s), "luma {s} at sample {i}");
        }
        let cw = src.width() as usize / 2;
        let mut checked = 0;
        for (name, s, g) in [
            ("Cb", src.u_plane(), got.u_plane()),
            ("Cr", src.v_plane(), got.v_plane()),
        ] {
            for (i, (&s, &g)) in s.iter().zip(g).enumerate() {
                let (r, c) = (i / cw, i % cw);
                if (1..7).contains(&(r % 8)) && (1..7).contains(&(c % 8)) {
                    assert_eq!(g, limited_chroma(s), "{name} at {c},{r}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 0);
    }

    #[test]
    fn mjpeg_420_planes_become_i420_without_a_colour_matrix() {
        let src = blocks(64, 48);
        let jpeg = encode_i420_sampled(&src, 100, SamplingFactor::R_4_2_0).unwrap();
        let pool = BufferPool::new(2);
        let got = MjpegDecoder::new(pool).decode(&jpeg).unwrap();
        assert_planes_of(&src, &got);
    }

    #[test]
    fn mjpeg_422_chroma_is_only_halved_vertically() {
        let src = blocks(64, 48);
        let jpeg = encode_i420_sampled(&src, 100, SamplingFactor::R_4_2_2).unwrap();
        let got = decode_to_i420(&jpeg).unwrap();
        assert_planes_of(&src, &got);
    }

    /// The conversion against a reference written out here, at every sampling a JPEG may
    /// have and at odd and even sizes: libjpeg-turbo's own planes (a second, plain decode),
    /// luma sample for sample, each chroma sample of the picture the rounded mean of the four
    /// JPEG samples its 2x2 block covers, an odd last row and column cropped, both mapped to
    /// limited range, the chroma then smoothed (`smoothed`, written out). Luma also agrees
    /// with zune-jpeg, an independent decoder, within the IDCTs' rounding (1).
    #[test]
    fn mjpeg_conversion_matches_a_reference_bit_for_bit_and_crops_odd_edges() {
        use turbojpeg::{Decompressor, YuvImage};
        let samplings = [
            SamplingFactor::R_4_2_0,
            SamplingFactor::R_4_2_2,
            SamplingFactor::R_4_4_4,
            SamplingFactor::R_4_4_0,
            SamplingFactor::R_4_1_1,
        ];
        for (w, h) in [(65u32, 49u32), (64, 48)] {
            // Noise in all three channels (4·w·h bytes, 3·w·h taken).
            let rgb: Vec<u8> = noisy(2 * w, 2 * h).y_plane().to_vec();
            for sampling in samplings {
                let mut jpeg = Vec::new();
                let mut enc = Encoder::new(&mut jpeg, 90);
                enc.set_sampling_factor(sampling);
                enc.encode(
                    &rgb[..(3 * w * h) as usize],
                    w as u16,
                    h as u16,
                    ColorType::Rgb,
                )
                .unwrap();

                let mut tj = Decompressor::new().unwrap();
                let header = tj.read_header(&jpeg).unwrap();
                let geometry = YuvImage {
                    pixels: (),
                    width: w as usize,
                    align: 1,
                    height: h as usize,
                    subsamp: header.subsamp,
                };
                let (yw, yh) = geometry.y_size();
                let (cw, ch) = geometry.uv_size();
                let (hs, vs) = header.subsamp.size();
                let mut planes = vec![0u8; yw * yh + 2 * cw * ch];
                tj.decompress_to_yuv(
                    &jpeg,
                    YuvImage {
                        pixels: &mut planes[..],
                        width: w as usize,
                        align: 1,
                        height: h as usize,
                        subsamp: header.subsamp,
                    },
                )
                .unwrap();

                let got = decode_to_i420(&jpeg).unwrap();
                let (ew, eh) = ((w & !1) as usize, (h & !1) as usize);
                assert_eq!((got.width() as usize, got.height() as usize), (ew, eh));
                let mut zune = zune_jpeg::JpegDecoder::new_with_options(
                    ZCursor::new(&jpeg),
                    DecoderOptions::default().jpeg_set_out_colorspace(ColorSpace::YCbCr),
                );
                let full = zune.decode().unwrap();
                for r in 0..eh {
                    for c in 0..ew {
                        let y = planes[r * yw + c];
                        assert_eq!(
                            got.y_plane()[r * ew + c],
                            limited_luma(y),
                            "{sampling:?} luma at {c},{r}"
                        );
                        let z = full[(r * w as usize + c) * 3] as i32;
                        assert!(
                            (z - y as i32).abs() <= 1,
                            "{sampling:?}: zune-jpeg's luma {z}, libjpeg-turbo's {y}"
                        );
                    }
                }
                let (cw2, ch2) = (ew / 2, eh / 2);
                for (k, plane) in [(0, got.u_plane()), (1, got.v_plane())] {
                    let chroma = &planes[yw * yh + k * cw * ch..][..cw * ch];
                    let mut expected = vec![0u8; cw2 * ch2];
                    for r in 0..ch2 {
                        for c in 0..cw2 {
                            let sum: u32 = [(0, 0), (0, 1), (1, 0), (1, 1)]
                                .iter()
                                .map(|&(dy, dx)| {
                                    chroma[(2 * r + dy) / vs * cw + (2 * c + dx) / hs] as u32
                                })
                                .sum();
                            let mean = ((sum as f64) / 4.0 + 0.5).floor() as u8;
                            expected[r * cw2 + c] = limited_chroma(mean);
                        }
                    }
                    let expected = smoothed(&expected, cw2, ch2);
                    for (i, (&g, &e)) in plane.iter().zip(&expected).enumerate() {
                        assert_eq!(g, e, "{sampling:?} {k} at {},{}", i % cw2, i / cw2);
                    }
                }
            }
        }
    }

    /// The chroma smoothing written out: `[1 6 1]/8` each way, edges repeated, rounded once.
    fn smoothed(plane: &[u8], w: usize, h: usize) -> Vec<u8> {
        let weight = |d: isize| if d == 0 { 6 } else { 1 };
        let at = |r: isize, c: isize| {
            let (r, c) = (r.clamp(0, h as isize - 1), c.clamp(0, w as isize - 1));
            plane[r as usize * w + c as usize] as u32
        };
        let mut out = vec![0; w * h];
        for r in 0..h as isize {
            for c in 0..w as isize {
                let mut sum = 0;
                for dy in -1..=1 {
                    for dx in -1..=1 {
                        sum += weight(dy) * weight(dx) * at(r + dy, c + dx);
                    }
                }
                out[r as usize * w + c as usize] = ((sum + 32) / 64) as u8;
            }
        }
        out
    }

    /// Progressive (and other non-sequential) JPEGs are refused before decoding: no camera
    /// sends them, and a progressive one may hold thousands of scans.
    #[test]
    fn a_progressive_jpeg_is_refused_from_its_frame_header() {
        let mut enc_out = Vec::new();
        let mut enc = Encoder::new(&mut enc_out, 80);
        enc.set_progressive(true);
        enc.encode(&[128u8; 32 * 16 * 3], 32, 16, ColorType::Rgb)
            .unwrap();
        assert!(
            enc_out.windows(2).any(|w| w == [0xff, 0xc2]),
            "SOF2 written"
        );
        let err = decode_to_i420(&enc_out).unwrap_err();
        assert!(err.0.contains("SOF2"), "{err}");
        // The same picture, sequential, decodes.
        let mut seq = Vec::new();
        Encoder::new(&mut seq, 80)
            .encode(&[128u8; 32 * 16 * 3], 32, 16, ColorType::Rgb)
            .unwrap();
        assert!(decode_to_i420(&seq).is_ok());
    }

    /// What many UVC cameras send: an `AVI1` APP0 segment and no Huffman tables (the decoder
    /// uses JPEG's standard ones, as AVI MJPEG prescribes). Strict mode must not refuse it.
    #[test]
    fn mjpeg_without_huffman_tables_decodes_like_the_full_jpeg() {
        let jpeg = encode_i420(&noisy(64, 48), 85).unwrap();
        let mut stripped = Vec::new();
        let mut i = 2;
        stripped.extend_from_slice(&jpeg[..2]);
        // APP0 "AVI1": polarity 0, then padding, as uvcvideo cameras write it.
        stripped.extend_from_slice(&[0xff, 0xe0, 0, 16]);
        stripped.extend_from_slice(b"AVI1\0\0\0\0\0\0\0\0\0\0");
        while i + 4 <= jpeg.len() && jpeg[i] == 0xff && jpeg[i + 1] != 0xda {
            let len = u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]) as usize;
            if jpeg[i + 1] != 0xc4 {
                stripped.extend_from_slice(&jpeg[i..i + 2 + len]);
            }
            i += 2 + len;
        }
        stripped.extend_from_slice(&jpeg[i..]);
        assert!(stripped.len() < jpeg.len(), "the DHT segments were cut");
        assert!(!stripped.windows(2).any(|w| w == [0xff, 0xc4]));
        assert_eq!(
            decode_to_i420(&stripped).unwrap(),
            decode_to_i420(&jpeg).unwrap()
        );
    }

    #[test]
    fn greyscale_mjpeg_has_neutral_chroma() {
        let luma: Vec<u8> = (0..32 * 16).map(|i| (i * 7) as u8).collect();
        let mut jpeg = Vec::new();
        Encoder::new(&mut jpeg, 90)
            .encode(&luma, 32, 16, ColorType::Luma)
            .unwrap();
        let got = decode_to_i420(&jpeg).unwrap();
        assert_eq!((got.width(), got.height()), (32, 16));
        assert!(got.u_plane().iter().chain(got.v_plane()).all(|&c| c == 128));
        assert!(got.y_plane().iter().all(|&y| (16..=235).contains(&y)));
    }

    #[test]
    fn garbage_jpeg_is_an_error() {
        assert!(decode_to_i420(&[0xff, 0xd8, 1, 2, 3]).is_err());
        let junk = Bytes::from_static(&[1, 2, 3, 4]);
        assert!(fit(StillSource::Jpeg(&junk), 85, 2).is_err());
    }
}
