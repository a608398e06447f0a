//! MJPEG frames to I420: a camera's JPEG decoded straight into the encoder's planes, with no
//! RGB step, into pooled buffers. In `picture`, a leaf, so that `capture` can decode as well
//! as `media` (`capture` may not import `media`); `media::jpeg` names it beside the encoder.

use std::sync::Arc;

use turbojpeg::{Colorspace, Decompressor, Subsamp, YuvImage};

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

/// Decodes a camera's MJPEG frames into I420 pictures, without an RGB step, with
/// libjpeg-turbo's planar decode (`tjDecompressToYUV2`: SIMD on x86 and arm, no chroma
/// upsampling, no colour matrix). A 4:2:0 JPEG of even size is decoded straight into the
/// picture's buffer, which is laid out as I420 already; 4:2:2 (many webcams) has its chroma
/// rows averaged in pairs; other samplings and odd sizes go through a scratch buffer (an odd
/// last column or row is cropped). Every sample is then mapped from JFIF's full range to the
/// limited range the encoder's I420 is in (`picture::rows::limit_luma`/`limit_chroma`: SSE2 on
/// x86_64, NEON on aarch64), and the chroma is smoothed (`[1 6 1]/8` each way, see `smooth`).
/// The scratch buffer grows once to the camera's size and is reused; pictures come from a
/// [`BufferPool`], so a steady stream allocates nothing of a picture's size per frame. Chosen
/// over zune-jpeg (pure Rust, which the daemon used before) for speed: docs/BENCHMARKS.md,
/// "MJPEG decode".
pub struct MjpegDecoder {
    pool: Arc<BufferPool>,
    /// Largest width or height decoded; larger frames are refused from their header.
    max_side: usize,
    /// libjpeg-turbo's handle, made at the first frame (its creation can fail, a decode error).
    tj: Option<Decompressor>,
    /// Planes at the JPEG's own sampling, for what is not decoded in place.
    scratch: Vec<u8>,
    /// Three rows of the chroma smoothing (`rows::smooth_chroma`).
    smooth_rows: [Vec<u16>; 3],
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
            tj: None,
            scratch: Vec::new(),
            smooth_rows: Default::default(),
            decoded: 0,
        }
    }

    /// Another decoder with the same size limit whose pictures come from the same pool (its
    /// handle and scratch buffer are its own, made at its first frame).
    pub fn sharing_pool(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            max_side: self.max_side,
            tj: None,
            scratch: Vec::new(),
            smooth_rows: Default::default(),
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
    /// JPEG is an error (libjpeg-turbo's warnings, such as data missing at the end, count as
    /// errors: a grey-filled picture is not shown).
    pub fn decode(&mut self, jpeg: &[u8]) -> Result<I420, DecodeError> {
        self.decoded += 1;
        let decoded = self.decode_frame(jpeg);
        if decoded.is_err() {
            // libjpeg-turbo 2.1 can leave a handle unusable after an error (a header it failed
            // to read makes the next good frame's header read as 0x0): a new one for the next
            // frame, which costs far less than a decode.
            self.tj = None;
        }
        decoded
    }

    fn decode_frame(&mut self, jpeg: &[u8]) -> Result<I420, DecodeError> {
        check_sequential(jpeg)?;
        let tj = match &mut self.tj {
            Some(tj) => tj,
            None => self.tj.insert(Decompressor::new().map_err(tj_error)?),
        };
        let header = tj.read_header(jpeg).map_err(tj_error)?;
        let (w, h) = (header.width, header.height);
        if w > self.max_side || h > self.max_side {
            return Err(DecodeError(format!(
                "{w}x{h} is over the largest side decoded here ({})",
                self.max_side
            )));
        }
        let (ew, eh) = (w & !1, h & !1);
        if ew < 2 || eh < 2 {
            return Err(DecodeError(format!("unusable size {w}x{h}")));
        }
        if !matches!(header.colorspace, Colorspace::YCbCr | Colorspace::Gray) {
            return Err(DecodeError(format!(
                "unsupported colour space {:?}",
                header.colorspace
            )));
        }
        let subsamp = header.subsamp;
        let mut out = I420::uninit_in(&self.pool, ew as u32, eh as u32)
            .map_err(|e| DecodeError(e.to_string()))?;
        if subsamp == Subsamp::Sub2x2 && (w, h) == (ew, eh) {
            // libjpeg-turbo's planes at 4:2:0, even size, no row padding: I420's layout.
            let image = YuvImage {
                pixels: out.as_bytes_mut(),
                width: w,
                align: 1,
                height: h,
                subsamp,
            };
            tj.decompress_to_yuv(jpeg, image).map_err(tj_error)?;
            let (y, u, v) = out.planes_mut();
            rows::limit_luma(y);
            rows::limit_chroma(u);
            rows::limit_chroma(v);
            self.smooth(&mut out);
            return Ok(out);
        }
        let planes = Planes::of(w, h, subsamp);
        // Grows once to the camera's size; its content is overwritten.
        if self.scratch.len() < planes.len {
            self.scratch.resize(planes.len, 0);
        }
        let image = YuvImage {
            pixels: &mut self.scratch[..planes.len],
            width: w,
            align: 1,
            height: h,
            subsamp,
        };
        tj.decompress_to_yuv(jpeg, image).map_err(tj_error)?;
        planes.to_i420(&self.scratch[..planes.len], &mut out);
        if subsamp != Subsamp::Gray {
            self.smooth(&mut out);
        }
        Ok(out)
    }

    /// The chroma planes through `rows::smooth_chroma` (`[1 6 1]/8` each way): what decoding
    /// with smooth upsampling and averaging back to 4:2:0 did to them before, a mild low-pass
    /// that keeps a camera's chroma noise from taking the encoder's bits. Measured on noisy
    /// input at 2 Mbit/s (docs/BENCHMARKS.md, "Camera path"): without it SSIM was 0.4461 at
    /// 720p (0.4500 with zune-jpeg) and 0.4232 at 1080p, under x264's 0.4287; with it
    /// 0.4496–0.4501 and 0.4283–0.4289. About 0.06 ms a 640x360 chroma plane.
    fn smooth(&mut self, out: &mut I420) {
        let cw = out.width() as usize / 2;
        let (_, u, v) = out.planes_mut();
        rows::smooth_chroma(u, cw, &mut self.smooth_rows);
        rows::smooth_chroma(v, cw, &mut self.smooth_rows);
    }
}

fn tj_error(e: turbojpeg::Error) -> DecodeError {
    DecodeError(e.to_string())
}

/// Refuse what no camera sends and what costs a decoder far more per byte than a camera's
/// frame: progressive, lossless and arithmetic-coded JPEGs (a progressive one may hold
/// thousands of scans, each a pass over the picture). Walks the segments from SOI to the frame
/// header; only baseline and extended sequential Huffman frames (SOF0, SOF1) pass.
fn check_sequential(jpeg: &[u8]) -> Result<(), DecodeError> {
    if jpeg.get(..2) != Some(&[0xff, 0xd8]) {
        return Err(DecodeError("not a JPEG (no SOI marker)".into()));
    }
    let mut i = 2;
    loop {
        if jpeg.get(i) != Some(&0xff) {
            return Err(DecodeError(format!("no marker at byte {i}")));
        }
        // Fill bytes (0xff) may precede a marker.
        while jpeg.get(i + 1) == Some(&0xff) {
            i += 1;
        }
        let Some(&marker) = jpeg.get(i + 1) else {
            return Err(DecodeError("no frame header".into()));
        };
        match marker {
            0xc0 | 0xc1 => return Ok(()),
            0xc2 | 0xc3 | 0xc5..=0xc7 | 0xc9..=0xcb | 0xcd..=0xcf => {
                return Err(DecodeError(format!(
                    "a SOF{} frame (progressive, lossless or arithmetic-coded) is not a camera \
                     frame",
                    marker - 0xc0
                )))
            }
            0xd8..=0xda => return Err(DecodeError("no frame header before the scan".into())),
            _ => {}
        }
        let len = match jpeg.get(i + 2..i + 4) {
            Some(&[hi, lo]) => usize::from(u16::from_be_bytes([hi, lo])),
            _ => return Err(DecodeError("no frame header".into())),
        };
        if len < 2 {
            return Err(DecodeError(format!("segment length {len} at byte {i}")));
        }
        i += 2 + len;
    }
}

/// The planes `tjDecompressToYUV2` writes (no row padding) at a JPEG's own sampling.
struct Planes {
    /// Luma row length and row count (the picture's, rounded up to the sampling factors).
    luma: (usize, usize),
    /// Each chroma plane's row length and row count.
    chroma: (usize, usize),
    /// Chroma sampling factors (horizontal, vertical); `None` for greyscale.
    factors: Option<(usize, usize)>,
    /// Bytes of all the planes.
    len: usize,
}

impl Planes {
    fn of(width: usize, height: usize, subsamp: Subsamp) -> Self {
        let image = YuvImage {
            pixels: (),
            width,
            align: 1,
            height,
            subsamp,
        };
        let grey = subsamp == Subsamp::Gray;
        let (luma, chroma) = (image.y_size(), image.uv_size());
        let chroma = if grey { (0, 0) } else { chroma };
        Self {
            luma,
            chroma,
            factors: (!grey).then(|| subsamp.size()),
            len: luma.0 * luma.1 + 2 * chroma.0 * chroma.1,
        }
    }

    /// Into `out` (at most as large as the picture): luma copied, chroma averaged over the
    /// samples each 2x2 block of the picture covers (rounded), both mapped to limited range.
    fn to_i420(&self, src: &[u8], out: &mut I420) {
        let w = out.width() as usize;
        let (luma, chroma) = src.split_at(self.luma.0 * self.luma.1);
        let (yp, up, vp) = out.planes_mut();
        for (d, s) in yp.chunks_exact_mut(w).zip(luma.chunks_exact(self.luma.0)) {
            d.copy_from_slice(&s[..w]);
        }
        rows::limit_luma(yp);
        let Some(factors) = self.factors else {
            up.fill(128);
            vp.fill(128);
            return;
        };
        let (cb, cr) = chroma.split_at(self.chroma.0 * self.chroma.1);
        for (s, d) in [(cb, up), (cr, vp)] {
            chroma_to_half(s, self.chroma.0, factors, d, w / 2);
            rows::limit_chroma(d);
        }
    }
}

/// One chroma plane (`stride` samples a row, sampled `factors` times below luma) to half the
/// luma's size in each direction (`dst`: rows of `width`), each sample the rounded mean of the
/// four the 2x2 block covers: a copy at 4:2:0, two rows averaged at 4:2:2.
fn chroma_to_half(
    src: &[u8],
    stride: usize,
    factors: (usize, usize),
    dst: &mut [u8],
    width: usize,
) {
    let row = |r: usize| &src[r * stride..r * stride + stride];
    for (r, d) in dst.chunks_exact_mut(width).enumerate() {
        match factors {
            (2, 2) => d.copy_from_slice(&row(r)[..width]),
            (2, 1) => rows::average_rows(&row(2 * r)[..width], &row(2 * r + 1)[..width], d),
            (hs, vs) => {
                for (c, d) in d.iter_mut().enumerate() {
                    let sum: u32 = [(0, 0), (0, 1), (1, 0), (1, 1)]
                        .iter()
                        .map(|&(dy, dx)| u32::from(row((2 * r + dy) / vs)[(2 * c + dx) / hs]))
                        .sum();
                    *d = ((sum + 2) / 4) as u8;
                }
            }
        }
    }
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
            // The same decoder takes the next good frame after every kind of error.
            assert_eq!(
                dec.decode(&jpeg).map(|p| p.width()),
                Ok(64),
                "after a cut at {cut}"
            );
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
            assert!(
                dec.decode(&jpeg).is_ok(),
                "a good frame after a spliced one"
            );
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
