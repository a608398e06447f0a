//! JPEG stills: encode a raw picture, decode a camera's MJPEG frame, and fit a still under a
//! size limit (a data channel's max-message-size: 256 KiB in Chrome).

use bytes::Bytes;
use jpeg_encoder::{ColorType, Encoder, ImageBuffer, JpegColorType, SamplingFactor};
use zune_jpeg::zune_core::{bytestream::ZCursor, colorspace::ColorSpace, options::DecoderOptions};

use super::StillError;
use crate::picture::yuv::I420;

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
    if picture.width() > u16::MAX as u32 || picture.height() > u16::MAX as u32 {
        return Err(StillError::Encode("picture too large for JPEG".into()));
    }
    let mut out = Vec::with_capacity(picture.as_bytes().len() / 8);
    let mut enc = Encoder::new(&mut out, quality.clamp(1, 100));
    enc.set_sampling_factor(SamplingFactor::R_4_2_0);
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

/// Why a JPEG could not be decoded.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("JPEG decoding failed: {0}")]
pub struct DecodeError(pub String);

/// Decode a JPEG (an MJPEG camera's frame) into I420, cropping odd edges.
pub fn decode_to_i420(jpeg: &[u8]) -> Result<I420, DecodeError> {
    let options = DecoderOptions::default().jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut dec = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(jpeg), options);
    let rgb = dec.decode().map_err(|e| DecodeError(format!("{e:?}")))?;
    let info = dec.info().ok_or_else(|| DecodeError("no header".into()))?;
    let (w, h) = (info.width as usize, info.height as usize);
    let (ew, eh) = (w & !1, h & !1);
    if ew < 2 || eh < 2 || rgb.len() < w * h * 3 {
        return Err(DecodeError(format!("unusable size {w}x{h}")));
    }
    let rgb = if ew == w {
        rgb[..w * eh * 3].to_vec()
    } else {
        (0..eh)
            .flat_map(|r| rgb[r * w * 3..(r * w + ew) * 3].iter().copied())
            .collect()
    };
    I420::from_rgb(ew as u32, eh as u32, &rgb).map_err(|e| DecodeError(e.to_string()))
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

    #[test]
    fn garbage_jpeg_is_an_error() {
        assert!(decode_to_i420(&[0xff, 0xd8, 1, 2, 3]).is_err());
        let junk = Bytes::from_static(&[1, 2, 3, 4]);
        assert!(fit(StillSource::Jpeg(&junk), 85, 2).is_err());
    }
}
