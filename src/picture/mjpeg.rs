//! MJPEG frames to I420: a camera's JPEG decoded straight into the encoder's planes, with no
//! RGB step, into pooled buffers. In `picture`, a leaf, so that `capture` can decode as well
//! as `media` (`capture` may not import `media`); `media::jpeg` names it beside the encoder.

use std::sync::Arc;

use zune_jpeg::zune_core::{bytestream::ZCursor, colorspace::ColorSpace, options::DecoderOptions};

use super::rows;
use super::yuv::{BufferPool, I420};

/// Why a JPEG could not be decoded.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("JPEG decoding failed: {0}")]
pub struct DecodeError(pub String);

/// Largest side a JPEG may announce unless the decoder is told less
/// ([`MjpegDecoder::with_max_side`]): the largest picture [`I420`] takes. Checked from the
/// header, before anything the size of the picture is allocated.
const MAX_SIDE: usize = 8192;

/// Decodes a camera's MJPEG frames into I420 pictures, without an RGB step: zune-jpeg writes
/// the JPEG's own YCbCr samples (chroma upsampled to full size, no colour matrix), luma is
/// taken as is and chroma averaged 2x2 back to 4:2:0, both mapped from JFIF's full range to the
/// limited range the encoder's I420 is in (`picture::rows::ycbcr_rows`: SSSE3 on x86_64, which
/// halves the cost of that step). Its scratch buffer grows once to the camera's size
/// and is reused; pictures come from a [`BufferPool`], so a steady stream allocates nothing of
/// a picture's size per frame.
///
/// libjpeg-turbo's planar decode is faster still (docs/BENCHMARKS.md, "MJPEG decode") but is a
/// C library to bundle for three architectures; zune-jpeg is pure Rust.
pub struct MjpegDecoder {
    pool: Arc<BufferPool>,
    /// Largest width or height decoded; larger frames are refused from their header.
    max_side: usize,
    /// Interleaved Y, Cb, Cr at full size, as zune-jpeg writes it.
    scratch: Vec<u8>,
    /// Frames given to [`decode`](Self::decode), good or not (which thread decodes what is
    /// a design choice tests check).
    decoded: u64,
}

impl MjpegDecoder {
    /// A decoder whose pictures come from (and go back to) `pool`.
    pub fn new(pool: Arc<BufferPool>) -> Self {
        Self {
            pool,
            max_side: MAX_SIDE,
            scratch: Vec::new(),
            decoded: 0,
        }
    }

    /// Another decoder with the same size limit whose pictures come from the same pool (its
    /// scratch buffer is its own, made at its first frame).
    pub fn sharing_pool(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            max_side: self.max_side,
            scratch: Vec::new(),
            decoded: 0,
        }
    }

    /// How many frames [`decode`](Self::decode) was given, good or not.
    pub fn frames_decoded(&self) -> u64 {
        self.decoded
    }

    /// Refuse frames wider or taller than `max_side` (at most 8192) from their header, before
    /// anything their size is allocated: the pipeline passes the camera's budget
    /// (`media::still::max_still_side`), so a frame from an `exec` program cannot make it
    /// allocate hundreds of megabytes.
    pub fn with_max_side(mut self, max_side: u32) -> Self {
        self.max_side = (max_side as usize).min(MAX_SIDE);
        self
    }

    /// Decode one JPEG into I420, cropping an odd last column or row. A truncated or corrupt
    /// JPEG is an error (strict mode: zune-jpeg would otherwise fill what is missing with grey).
    pub fn decode(&mut self, jpeg: &[u8]) -> Result<I420, DecodeError> {
        self.decoded += 1;
        let options = DecoderOptions::default()
            .set_strict_mode(true)
            .set_max_width(self.max_side)
            .set_max_height(self.max_side)
            .jpeg_set_out_colorspace(ColorSpace::YCbCr);
        let mut dec = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(jpeg), options);
        dec.decode_headers()
            .map_err(|e| DecodeError(format!("{e:?}")))?;
        let grey = match dec.input_colorspace() {
            Some(ColorSpace::YCbCr) => false,
            Some(ColorSpace::Luma) => {
                dec.set_options(options.jpeg_set_out_colorspace(ColorSpace::Luma));
                true
            }
            other => return Err(DecodeError(format!("unsupported colour space {other:?}"))),
        };
        let (w, h) = dec
            .dimensions()
            .ok_or_else(|| DecodeError("no header".into()))?;
        let (ew, eh) = (w & !1, h & !1);
        if ew < 2 || eh < 2 {
            return Err(DecodeError(format!("unusable size {w}x{h}")));
        }
        let len = dec
            .output_buffer_size()
            .ok_or_else(|| DecodeError("no header".into()))?;
        // Grows once to the camera's size; its content is overwritten.
        if self.scratch.len() < len {
            self.scratch.resize(len, 0);
        }
        let samples = &mut self.scratch[..len];
        dec.decode_into(samples)
            .map_err(|e| DecodeError(format!("{e:?}")))?;
        let mut out = I420::uninit_in(&self.pool, ew as u32, eh as u32)
            .map_err(|e| DecodeError(e.to_string()))?;
        if grey {
            luma_to_i420(samples, w, &mut out);
        } else {
            ycbcr_to_i420(samples, w, &mut out);
        }
        Ok(out)
    }
}

/// Interleaved full-size YCbCr (`width` pixels a row) into `out` (at most as large): luma
/// copied, chroma averaged over each 2x2 block, both mapped to limited range.
fn ycbcr_to_i420(src: &[u8], width: usize, out: &mut I420) {
    let (w, h) = (out.width() as usize, out.height() as usize);
    let cw = w / 2;
    let row_bytes = width * 3;
    let (yp, up, vp) = out.planes_mut();
    let rows = src.chunks_exact(2 * row_bytes).take(h / 2);
    let luma = yp.chunks_exact_mut(2 * w);
    let chroma = up.chunks_exact_mut(cw).zip(vp.chunks_exact_mut(cw));
    for ((pair, ys), (us, vs)) in rows.zip(luma).zip(chroma) {
        let (a, b) = pair.split_at(row_bytes);
        let (ya, yb) = ys.split_at_mut(w);
        rows::ycbcr_rows(a, b, ya, yb, us, vs);
    }
}

/// A greyscale JPEG's luma (`width` pixels a row) into `out`, chroma neutral.
fn luma_to_i420(src: &[u8], width: usize, out: &mut I420) {
    let w = out.width() as usize;
    let (yp, up, vp) = out.planes_mut();
    for (d, s) in yp.chunks_exact_mut(w).zip(src.chunks_exact(width)) {
        for (d, s) in d.iter_mut().zip(s) {
            *d = rows::limited_luma(*s);
        }
    }
    up.fill(128);
    vp.fill(128);
}

/// Decode a JPEG (a camera's frame, for a still) into I420 in a fresh buffer.
pub fn decode_to_i420(jpeg: &[u8]) -> Result<I420, DecodeError> {
    MjpegDecoder::new(BufferPool::new(0)).decode(jpeg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jpeg_encoder::{ColorType, Encoder};

    /// A baseline JPEG of noise (compresses badly: a realistic camera frame's structure).
    fn noisy_jpeg(w: u16, h: u16) -> Vec<u8> {
        let mut x: u32 = 12345;
        let rgb: Vec<u8> = (0..w as usize * h as usize * 3)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let mut out = Vec::new();
        Encoder::new(&mut out, 85)
            .encode(&rgb, w, h, ColorType::Rgb)
            .unwrap();
        out
    }

    #[test]
    fn truncated_and_garbage_mjpeg_are_errors_not_grey_pictures_or_panics() {
        let jpeg = noisy_jpeg(64, 48);
        let mut dec = MjpegDecoder::new(BufferPool::new(2));
        assert!(dec.decode(&jpeg).is_ok());
        for cut in [jpeg.len() * 3 / 4, jpeg.len() / 2, 300, 20, 2, 0] {
            assert!(dec.decode(&jpeg[..cut]).is_err(), "cut at {cut}");
        }
        // Random bytes, and random bytes behind a valid header: whatever comes out, no panic.
        let mut x: u32 = 99;
        let mut rand = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for _ in 0..200 {
            let n = (rand() % 4096) as usize;
            let junk: Vec<u8> = (0..n).map(|_| rand() as u8).collect();
            assert!(dec.decode(&junk).is_err());
            let keep = (rand() as usize) % jpeg.len();
            let spliced = [&jpeg[..keep], &junk[..]].concat();
            let _ = dec.decode(&spliced);
        }
        // A header that announces a picture over the largest side: refused before allocating.
        let mut huge = jpeg.clone();
        let sof = huge.windows(2).position(|w| w == [0xff, 0xc0]).unwrap();
        huge[sof + 5..sof + 9].copy_from_slice(&[0xff, 0xff, 0xff, 0xff]);
        assert!(dec.decode(&huge).is_err());
        assert!(dec.scratch.len() < 64 * 48 * 3 * 2, "no huge buffer");
    }

    #[test]
    fn a_frame_over_the_cameras_budget_is_refused_from_its_header() {
        let jpeg = noisy_jpeg(64, 48);
        let mut dec = MjpegDecoder::new(BufferPool::new(2)).with_max_side(48);
        assert!(dec.decode(&jpeg).is_err(), "64 wide, budget 48");
        assert!(dec.scratch.is_empty(), "nothing allocated for it");
        let mut dec = MjpegDecoder::new(BufferPool::new(2)).with_max_side(64);
        assert_eq!(dec.decode(&jpeg).unwrap().width(), 64);
    }
}
