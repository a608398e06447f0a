//! Raw pictures in the one layout the encoders take: I420 (planar 4:2:0, BT.601 limited range),
//! and the conversions into it from what cameras give.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use openh264::formats::YUVSource;

/// A planar 4:2:0 picture: the full-size Y plane, then U and V at half size, no padding.
/// Width and height are even (cameras and H.264 4:2:0 both need it).
pub struct I420 {
    width: u32,
    height: u32,
    data: Vec<u8>,
    /// Where the buffer goes back when the picture is dropped (saves a fresh allocation and its
    /// page faults per frame: ~0.1 ms at 720p).
    pool: Option<Arc<BufferPool>>,
}

impl Clone for I420 {
    fn clone(&self) -> Self {
        Self {
            width: self.width,
            height: self.height,
            data: self.data.clone(),
            pool: None,
        }
    }
}

impl PartialEq for I420 {
    fn eq(&self, other: &Self) -> bool {
        (self.width, self.height) == (other.width, other.height) && self.data == other.data
    }
}

impl Eq for I420 {}

impl Drop for I420 {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.give(std::mem::take(&mut self.data));
        }
    }
}

/// A small free list of picture buffers shared by a source (which fills them) and the pipeline
/// (which drops pictures when done). Holds at most `keep` buffers, so memory stays bounded.
#[derive(Debug)]
pub struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
    keep: usize,
}

impl BufferPool {
    /// A pool that keeps at most `keep` returned buffers for reuse.
    pub fn new(keep: usize) -> Arc<Self> {
        Arc::new(Self {
            free: Mutex::new(Vec::new()),
            keep,
        })
    }

    /// A buffer of `len` bytes with unspecified content.
    fn take(&self, len: usize) -> Vec<u8> {
        let reused = self.free.lock().ok().and_then(|mut f| f.pop());
        let mut v = reused.unwrap_or_default();
        v.resize(len, 0);
        v
    }

    /// A buffer given back with exactly `len` bytes, its content what its last picture left.
    fn take_recycled(&self, len: usize) -> Option<Vec<u8>> {
        let mut free = self.free.lock().ok()?;
        while let Some(v) = free.pop() {
            if v.len() == len {
                return Some(v);
            }
        }
        None
    }

    /// `data` copied into a buffer from the pool, as [`Bytes`]: the buffer comes back when the
    /// last clone is dropped. For compressed frames (MJPEG), whose size varies: a buffer grows
    /// only for a frame larger than any it held before, so a steady stream allocates nothing.
    /// Keep such a pool apart from a picture pool (their buffers differ in size).
    pub fn copy_to_bytes(self: &Arc<Self>, data: &[u8]) -> Bytes {
        let mut v = self
            .free
            .lock()
            .ok()
            .and_then(|mut f| f.pop())
            .unwrap_or_default();
        v.clear();
        v.extend_from_slice(data);
        Bytes::from_owner(Pooled {
            data: v,
            pool: self.clone(),
        })
    }

    fn give(&self, v: Vec<u8>) {
        if let Ok(mut free) = self.free.lock() {
            if free.len() < self.keep {
                free.push(v);
            }
        }
    }
}

/// A pool's buffer behind a [`Bytes`]; goes back to the pool when dropped.
struct Pooled {
    data: Vec<u8>,
    pool: Arc<BufferPool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.data));
    }
}

impl std::fmt::Debug for I420 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "I420({}x{})", self.width, self.height)
    }
}

/// Why a buffer could not be read as a picture.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PictureError {
    /// Odd, zero or huge dimensions.
    #[error("picture size {width}x{height} is not usable (even, 2..=8192)")]
    BadSize {
        /// Width asked for.
        width: u32,
        /// Height asked for.
        height: u32,
    },
    /// The buffer holds less than one picture of the stated size.
    #[error("buffer of {got} bytes is too small: {want} needed")]
    Short {
        /// Bytes in the buffer.
        got: usize,
        /// Bytes one picture needs.
        want: usize,
    },
}

/// Round a requested size down to what 4:2:0 needs (even, at least 2).
pub fn even(v: u32) -> u32 {
    (v & !1).max(2)
}

fn check_size(width: u32, height: u32) -> Result<(), PictureError> {
    if width < 2 || height < 2 || width % 2 == 1 || height % 2 == 1 || width > 8192 || height > 8192
    {
        return Err(PictureError::BadSize { width, height });
    }
    Ok(())
}

fn check_len(got: usize, want: usize) -> Result<(), PictureError> {
    if got < want {
        return Err(PictureError::Short { got, want });
    }
    Ok(())
}

impl I420 {
    /// Bytes of an I420 picture of this size.
    pub fn len_for(width: u32, height: u32) -> usize {
        let (w, h) = (width as usize, height as usize);
        w * h + 2 * ((w / 2) * (h / 2))
    }

    /// A picture filled with one colour.
    pub fn filled(width: u32, height: u32, y: u8, u: u8, v: u8) -> Result<Self, PictureError> {
        check_size(width, height)?;
        let luma = width as usize * height as usize;
        let chroma = luma / 4;
        let mut data = Vec::with_capacity(luma + 2 * chroma);
        data.resize(luma, y);
        data.resize(luma + chroma, u);
        data.resize(luma + 2 * chroma, v);
        Ok(Self {
            width,
            height,
            data,
            pool: None,
        })
    }

    /// A picture whose buffer comes from (and returns to) `pool`, content unspecified: the
    /// caller overwrites every byte.
    pub fn uninit_in(
        pool: &Arc<BufferPool>,
        width: u32,
        height: u32,
    ) -> Result<Self, PictureError> {
        check_size(width, height)?;
        Ok(Self {
            width,
            height,
            data: pool.take(Self::len_for(width, height)),
            pool: Some(pool.clone()),
        })
    }

    /// A picture in a buffer that already held a `width`x`height` picture from `pool`, content
    /// as that picture left it; `None` if the pool has no such buffer. Lets a source that is the
    /// pool's only user redraw just what changed (the test pattern).
    pub fn recycled_in(pool: &Arc<BufferPool>, width: u32, height: u32) -> Option<Self> {
        check_size(width, height).ok()?;
        Some(Self {
            width,
            height,
            data: pool.take_recycled(Self::len_for(width, height))?,
            pool: Some(pool.clone()),
        })
    }

    /// Copy luma rows `rows` (and the chroma rows covering them) from `src`, same size.
    pub fn copy_rows_from(&mut self, src: &I420, rows: std::ops::Range<usize>) {
        if (src.width, src.height) != (self.width, self.height) {
            return;
        }
        let (w, h) = (self.width as usize, self.height as usize);
        let (r0, r1) = (rows.start.min(h), rows.end.min(h));
        if r0 >= r1 {
            return;
        }
        let (c0, c1, cw) = (r0 / 2, r1.div_ceil(2), w / 2);
        let (y, u, v) = self.planes_mut();
        y[r0 * w..r1 * w].copy_from_slice(&src.y_plane()[r0 * w..r1 * w]);
        u[c0 * cw..c1 * cw].copy_from_slice(&src.u_plane()[c0 * cw..c1 * cw]);
        v[c0 * cw..c1 * cw].copy_from_slice(&src.v_plane()[c0 * cw..c1 * cw]);
    }

    /// A copy of `self` in a pooled buffer.
    pub fn copy_in(&self, pool: &Arc<BufferPool>) -> Self {
        let mut data = pool.take(0);
        data.extend_from_slice(&self.data);
        Self {
            width: self.width,
            height: self.height,
            data,
            pool: Some(pool.clone()),
        }
    }

    /// Wrap a contiguous I420 buffer (Y, U, V planes without padding).
    pub fn from_vec(width: u32, height: u32, data: Vec<u8>) -> Result<Self, PictureError> {
        check_size(width, height)?;
        let want = Self::len_for(width, height);
        check_len(data.len(), want)?;
        let mut data = data;
        data.truncate(want);
        Ok(Self {
            width,
            height,
            data,
            pool: None,
        })
    }

    /// Width in pixels (even).
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels (even).
    pub fn height(&self) -> u32 {
        self.height
    }

    /// The whole buffer (Y, U, V).
    pub fn as_bytes(&self) -> &[u8] {
        &self.data
    }

    /// The whole buffer (Y, U, V), for a decoder that writes the three planes at once.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }

    fn luma_len(&self) -> usize {
        self.width as usize * self.height as usize
    }

    fn chroma_len(&self) -> usize {
        self.luma_len() / 4
    }

    /// The luma plane, `width × height` bytes.
    pub fn y_plane(&self) -> &[u8] {
        &self.data[..self.luma_len()]
    }

    /// The Cb plane, `width/2 × height/2` bytes.
    pub fn u_plane(&self) -> &[u8] {
        let l = self.luma_len();
        &self.data[l..l + self.chroma_len()]
    }

    /// The Cr plane, `width/2 × height/2` bytes.
    pub fn v_plane(&self) -> &[u8] {
        let l = self.luma_len() + self.chroma_len();
        &self.data[l..l + self.chroma_len()]
    }

    /// Mutable planes (Y, U, V) for drawing.
    pub fn planes_mut(&mut self) -> (&mut [u8], &mut [u8], &mut [u8]) {
        let l = self.luma_len();
        let c = self.chroma_len();
        let (y, rest) = self.data.split_at_mut(l);
        let (u, v) = rest.split_at_mut(c);
        (y, u, &mut v[..c])
    }

    /// A picture for a conversion to fill: a pooled buffer when `pool` is given (its content
    /// unspecified, every byte is overwritten), else a fresh one.
    fn output(
        pool: Option<&Arc<BufferPool>>,
        width: u32,
        height: u32,
    ) -> Result<Self, PictureError> {
        match pool {
            Some(p) => Self::uninit_in(p, width, height),
            None => Self::filled(width, height, 0, 128, 128),
        }
    }

    /// Packed YUYV (4:2:2) with `stride` bytes per line, into I420 (chroma of even lines; SIMD
    /// row kernels in [`super::rows`]).
    pub fn from_yuyv(
        width: u32,
        height: u32,
        stride: usize,
        src: &[u8],
    ) -> Result<Self, PictureError> {
        Self::from_yuyv_in(None, width, height, stride, src)
    }

    /// The same conversion into a pooled buffer.
    pub fn from_yuyv_in(
        pool: Option<&Arc<BufferPool>>,
        width: u32,
        height: u32,
        stride: usize,
        src: &[u8],
    ) -> Result<Self, PictureError> {
        check_size(width, height)?;
        let (w, h) = (width as usize, height as usize);
        let stride = stride.max(w * 2);
        check_len(src.len(), stride * (h - 1) + w * 2)?;
        let mut out = Self::output(pool, width, height)?;
        let (yp, up, vp) = out.planes_mut();
        let cw = w / 2;
        for row in 0..h {
            let line = &src[row * stride..row * stride + w * 2];
            let ydst = &mut yp[row * w..(row + 1) * w];
            let c = (row / 2) * cw;
            let chroma = (row % 2 == 0).then(|| (&mut up[c..c + cw], &mut vp[c..c + cw]));
            super::rows::yuyv_row(line, ydst, chroma);
        }
        Ok(out)
    }

    /// NV12 (Y plane, then interleaved UV at half size), both with `stride` bytes per line.
    pub fn from_nv12(
        width: u32,
        height: u32,
        stride: usize,
        src: &[u8],
    ) -> Result<Self, PictureError> {
        Self::from_nv12_in(None, width, height, stride, src)
    }

    /// The same conversion into a pooled buffer.
    pub fn from_nv12_in(
        pool: Option<&Arc<BufferPool>>,
        width: u32,
        height: u32,
        stride: usize,
        src: &[u8],
    ) -> Result<Self, PictureError> {
        check_size(width, height)?;
        let (w, h) = (width as usize, height as usize);
        let stride = stride.max(w);
        let uv_off = stride * h;
        check_len(src.len(), uv_off + stride * (h / 2 - 1) + w)?;
        let mut out = Self::output(pool, width, height)?;
        let (yp, up, vp) = out.planes_mut();
        for row in 0..h {
            yp[row * w..(row + 1) * w].copy_from_slice(&src[row * stride..row * stride + w]);
        }
        let cw = w / 2;
        for row in 0..h / 2 {
            let line = &src[uv_off + row * stride..uv_off + row * stride + w];
            let c = row * cw;
            super::rows::nv12_chroma_row(line, &mut up[c..c + cw], &mut vp[c..c + cw]);
        }
        Ok(out)
    }

    /// A copy at half the width and height (2x2 box filter), kept even.
    pub fn half(&self) -> Result<Self, PictureError> {
        let (nw, nh) = (even(self.width / 2), even(self.height / 2));
        let mut out = Self::filled(nw, nh, 0, 128, 128)?;
        let (w, cw) = (self.width as usize, self.width as usize / 2);
        let (ys, us, vs) = (self.y_plane(), self.u_plane(), self.v_plane());
        let (yd, ud, vd) = out.planes_mut();
        let shrink = |src: &[u8], sw: usize, sh: usize, dst: &mut [u8], dw: usize, dh: usize| {
            for r in 0..dh {
                for c in 0..dw {
                    let (r0, c0) = ((r * 2).min(sh - 1), (c * 2).min(sw - 1));
                    let (r1, c1) = ((r0 + 1).min(sh - 1), (c0 + 1).min(sw - 1));
                    let sum = src[r0 * sw + c0] as u32
                        + src[r0 * sw + c1] as u32
                        + src[r1 * sw + c0] as u32
                        + src[r1 * sw + c1] as u32;
                    dst[r * dw + c] = ((sum + 2) / 4) as u8;
                }
            }
        };
        let h = self.height as usize;
        shrink(ys, w, h, yd, nw as usize, nh as usize);
        shrink(us, cw, h / 2, ud, nw as usize / 2, nh as usize / 2);
        shrink(vs, cw, h / 2, vd, nw as usize / 2, nh as usize / 2);
        Ok(out)
    }
}

impl YUVSource for I420 {
    fn dimensions(&self) -> (usize, usize) {
        (self.width as usize, self.height as usize)
    }

    fn strides(&self) -> (usize, usize, usize) {
        let w = self.width as usize;
        (w, w / 2, w / 2)
    }

    fn y(&self) -> &[u8] {
        self.y_plane()
    }

    fn u(&self) -> &[u8] {
        self.u_plane()
    }

    fn v(&self) -> &[u8] {
        self.v_plane()
    }
}

/// Copy any openh264 picture (e.g. a decoded one, with padded strides) into an [`I420`].
pub fn from_yuv_source(src: &impl YUVSource) -> Result<I420, PictureError> {
    let (w, h) = src.dimensions();
    let (width, height) = (even(w as u32), even(h as u32));
    let (sy, su, sv) = src.strides();
    let mut out = I420::filled(width, height, 0, 128, 128)?;
    let (ow, oh) = (width as usize, height as usize);
    check_len(src.y().len(), sy * (oh - 1) + ow)?;
    check_len(src.u().len(), su * (oh / 2 - 1) + ow / 2)?;
    check_len(src.v().len(), sv * (oh / 2 - 1) + ow / 2)?;
    let (yd, ud, vd) = out.planes_mut();
    for r in 0..oh {
        yd[r * ow..(r + 1) * ow].copy_from_slice(&src.y()[r * sy..r * sy + ow]);
    }
    for r in 0..oh / 2 {
        let cw = ow / 2;
        ud[r * cw..(r + 1) * cw].copy_from_slice(&src.u()[r * su..r * su + cw]);
        vd[r * cw..(r + 1) * cw].copy_from_slice(&src.v()[r * sv..r * sv + cw]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuyv_and_nv12_convert_with_strides() {
        // 4x2 YUYV with 2 bytes of padding per line.
        let yuyv = [
            10, 100, 11, 200, 12, 101, 13, 201, 0, 0, //
            20, 102, 21, 202, 22, 103, 23, 203, 0, 0,
        ];
        let p = I420::from_yuyv(4, 2, 10, &yuyv).unwrap();
        assert_eq!(p.y_plane(), &[10, 11, 12, 13, 20, 21, 22, 23]);
        assert_eq!(p.u_plane(), &[100, 101]);
        assert_eq!(p.v_plane(), &[200, 201]);

        let nv12 = [1, 2, 3, 4, 9, 5, 6, 7, 8, 9, 50, 60, 51, 61, 9];
        let p = I420::from_nv12(4, 2, 5, &nv12).unwrap();
        assert_eq!(p.y_plane(), &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(p.u_plane(), &[50, 51]);
        assert_eq!(p.v_plane(), &[60, 61]);
    }

    #[test]
    fn short_or_odd_buffers_are_errors_not_panics() {
        assert!(I420::from_yuyv(4, 2, 8, &[0; 10]).is_err());
        assert!(I420::from_nv12(4, 2, 4, &[0; 3]).is_err());
        assert!(I420::from_vec(4, 4, vec![0; 5]).is_err());
    }

    #[test]
    fn pooled_buffers_are_reused_and_bounded() {
        let pool = BufferPool::new(2);
        let bg = I420::filled(4, 2, 1, 2, 3).unwrap();
        let a = bg.copy_in(&pool);
        let ptr = a.as_bytes().as_ptr();
        drop(a);
        let b = bg.copy_in(&pool);
        assert_eq!(b.as_bytes().as_ptr(), ptr, "the buffer came back");
        assert_eq!(b, bg);
        let many: Vec<I420> = (0..5).map(|_| bg.copy_in(&pool)).collect();
        drop(many);
        assert_eq!(pool.free.lock().unwrap().len(), 2);
    }

    #[test]
    fn pooled_bytes_come_back_and_keep_their_capacity() {
        let pool = BufferPool::new(2);
        let a = pool.copy_to_bytes(&[1; 1000]);
        let ptr = a.as_ptr();
        let b = a.clone();
        drop(a);
        assert!(
            pool.free.lock().unwrap().is_empty(),
            "a clone still holds it"
        );
        drop(b);
        let c = pool.copy_to_bytes(&[2; 10]);
        assert_eq!(
            (c.as_ptr(), &c[..]),
            (ptr, &[2; 10][..]),
            "same buffer, new content"
        );
        drop(c);
        let d = pool.copy_to_bytes(&[3; 900]);
        assert_eq!(d.as_ptr(), ptr, "no growth below the largest frame");
    }

    #[test]
    fn half_keeps_the_picture_even() {
        let p = I420::filled(6, 6, 50, 60, 70).unwrap();
        let h = p.half().unwrap();
        assert_eq!((h.width(), h.height()), (2, 2));
        assert!(h.y_plane().iter().all(|&v| v == 50));
        assert!(h.v_plane().iter().all(|&v| v == 70));
    }
}
