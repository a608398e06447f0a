//! The test pattern: colour bars, a moving box, a frame counter and the wall clock, drawn
//! straight into I420, with the capture instant as a machine-readable row of cells at the top
//! ([`crate::picture::stamp`]) so a viewer can measure the delay from capture to display. Also draws the "no signal" slate the pipeline shows when a camera is lost.
//!
//! Cheap by construction: the bars are drawn once. The box moves along one band of rows, so a
//! picture is a recycled buffer of an earlier picture with only that band
//! restored from the bars, then the box and a few digits drawn (a sixth of a full copy).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{CaptureError, CapturedFrame, Payload, Source, SourceInfo};
use crate::picture::stamp;
use crate::picture::yuv::{even, BufferPool, I420};
use std::sync::Arc;

/// 5x7 glyphs, one byte a row, bit 4 leftmost.
fn glyph(c: char) -> [u8; 7] {
    match c {
        '0' => [0x0e, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0e],
        '1' => [0x04, 0x0c, 0x04, 0x04, 0x04, 0x04, 0x0e],
        '2' => [0x0e, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1f],
        '3' => [0x1f, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0e],
        '4' => [0x02, 0x06, 0x0a, 0x12, 0x1f, 0x02, 0x02],
        '5' => [0x1f, 0x10, 0x1e, 0x01, 0x01, 0x11, 0x0e],
        '6' => [0x06, 0x08, 0x10, 0x1e, 0x11, 0x11, 0x0e],
        '7' => [0x1f, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0e, 0x11, 0x11, 0x0e, 0x11, 0x11, 0x0e],
        '9' => [0x0e, 0x11, 0x11, 0x0f, 0x01, 0x02, 0x0c],
        ':' => [0x00, 0x0c, 0x0c, 0x00, 0x0c, 0x0c, 0x00],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0c, 0x0c],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0e, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e],
        'S' => [0x0f, 0x10, 0x10, 0x0e, 0x01, 0x01, 0x1e],
        'I' => [0x0e, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0e],
        'G' => [0x0e, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0f],
        'A' => [0x0e, 0x11, 0x11, 0x1f, 0x11, 0x11, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1f],
        _ => [0; 7],
    }
}

/// Draw `text` in luma at (x, y) with `scale`-pixel dots, on a dark backing box.
fn draw_text(p: &mut I420, x: usize, y: usize, scale: usize, text: &str) {
    let w = p.width() as usize;
    let h = p.height() as usize;
    let (yp, _, _) = p.planes_mut();
    let cols = text.chars().count() * 6 * scale;
    let (x0, x1) = (x.saturating_sub(scale).min(w), (x + cols).min(w));
    for r in y.saturating_sub(scale)..(y + 8 * scale).min(h) {
        yp[r * w + x0..r * w + x1].fill(16);
    }
    // Each lit dot is a scale x scale square: `scale` short row fills.
    for (i, ch) in text.chars().enumerate() {
        let g = glyph(ch);
        for (gr, bits) in g.iter().enumerate() {
            for gc in 0..5 {
                let px = x + (i * 6 + gc) * scale;
                if bits & (0x10 >> gc) == 0 || px >= w {
                    continue;
                }
                let end = (px + scale).min(w);
                for py in (y + gr * scale..y + (gr + 1) * scale).take_while(|&py| py < h) {
                    yp[py * w + px..py * w + end].fill(235);
                }
            }
        }
    }
}

/// Fill a rectangle with one colour (luma and chroma).
fn fill_rect(p: &mut I420, x: usize, y: usize, rw: usize, rh: usize, yuv: (u8, u8, u8)) {
    let w = p.width() as usize;
    let h = p.height() as usize;
    let (yp, up, vp) = p.planes_mut();
    for r in y.min(h)..(y + rh).min(h) {
        yp[r * w + x.min(w)..r * w + (x + rw).min(w)].fill(yuv.0);
    }
    let cw = w / 2;
    for r in (y / 2).min(h / 2)..((y + rh) / 2).min(h / 2) {
        let (a, b) = (r * cw + (x / 2).min(cw), r * cw + ((x + rw) / 2).min(cw));
        up[a..b].fill(yuv.1);
        vp[a..b].fill(yuv.2);
    }
}

/// Seven 75% colour bars (white, yellow, cyan, green, magenta, red, blue) in BT.601 YUV.
const BARS: [(u8, u8, u8); 7] = [
    (180, 128, 128),
    (162, 44, 142),
    (131, 156, 44),
    (112, 72, 58),
    (84, 184, 198),
    (65, 100, 212),
    (35, 212, 114),
];

fn text_scale(height: u32) -> usize {
    (height as usize / 120).max(1)
}

/// The background every test picture starts from.
fn bars(width: u32, height: u32) -> Result<I420, CaptureError> {
    let mut p =
        I420::filled(width, height, 16, 128, 128).map_err(|e| CaptureError::Open(e.to_string()))?;
    let (w, h) = (width as usize, height as usize);
    let bar_w = w.div_ceil(7);
    for (i, c) in BARS.iter().enumerate() {
        fill_rect(&mut p, i * bar_w, 0, bar_w, h * 2 / 3, *c);
    }
    // A grey ramp below the bars shows scaling and banding.
    for i in 0..16 {
        let v = 16 + (i * 219 / 15) as u8;
        fill_rect(
            &mut p,
            i * w / 16,
            h * 2 / 3,
            w / 16 + 1,
            h / 3,
            (v, 128, 128),
        );
    }
    Ok(p)
}

/// `HH:MM:SS.mmm` of the wall clock (UTC).
fn clock_text(now: SystemTime) -> String {
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let s = d.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        s / 3600,
        (s / 60) % 60,
        s % 60,
        d.subsec_millis()
    )
}

/// The grey "NO SIGNAL" picture with the wall clock, so a viewer sees the stream is alive.
pub fn slate(width: u32, height: u32) -> I420 {
    let (w, h) = (even(width), even(height));
    let mut p = match I420::filled(w, h, 60, 128, 128) {
        Ok(p) => p,
        Err(_) => return slate(320, 240),
    };
    let scale = text_scale(h) * 2;
    let text = "NO SIGNAL";
    let tw = text.len() * 6 * scale;
    draw_text(
        &mut p,
        (w as usize).saturating_sub(tw) / 2,
        h as usize / 2 - 4 * scale,
        scale,
        text,
    );
    let clock = clock_text(SystemTime::now());
    let small = text_scale(h);
    let cw = clock.len() * 6 * small;
    draw_text(
        &mut p,
        (w as usize).saturating_sub(cw) / 2,
        h as usize * 3 / 4,
        small,
        &clock,
    );
    p
}

/// The test pattern source, paced at `fps` like a camera.
pub struct TestSource {
    background: I420,
    /// Only this source's pictures live here (nobody draws on a picture once handed out), so a
    /// recycled buffer differs from `background` only in the box band and the text line.
    pool: Arc<BufferPool>,
    fps: u32,
    frame: u64,
    next_at: Option<Instant>,
    paced: bool,
}

/// How long the corner flash lasts from the start of every wall-clock second: the audio test
/// tone (`audio::tone`) beeps over the same 100 ms, so a receiver can measure A/V sync.
pub const FLASH: Duration = Duration::from_millis(100);

/// Whether the flash is on at `wall` (time since the Unix epoch).
pub fn flash_at(wall: Duration) -> bool {
    wall.subsec_nanos() < FLASH.as_nanos() as u32
}

/// The flash square of a `width`×`height` picture: x, y, side (at the right edge, above the
/// moving box's band, below the stamp row). White while [`flash_at`], else black.
pub fn flash_rect(width: u32, height: u32) -> (usize, usize, usize) {
    let (w, h) = (width as usize, height as usize);
    let side = (h / 8).max(2) & !1;
    (w.saturating_sub(side) & !1, (h / 8) & !1, side)
}

impl TestSource {
    /// A test pattern of `width`×`height` (even) paced at `fps`.
    pub fn new(width: u32, height: u32, fps: u32) -> Result<Self, CaptureError> {
        Ok(Self {
            background: bars(even(width), even(height))?,
            pool: BufferPool::new(4),
            fps: fps.max(1),
            frame: 0,
            next_at: None,
            paced: true,
        })
    }

    /// Produce pictures as fast as asked (benchmarks, file tests).
    pub fn unpaced(mut self) -> Self {
        self.paced = false;
        self
    }

    /// The band of rows the box moves along: the only rows a recycled picture must restore
    /// from the background. (The text sits on opaque backing boxes at fixed places whose
    /// width never shrinks, so drawing it again covers the old text.)
    fn box_band(&self) -> std::ops::Range<usize> {
        let h = self.background.height() as usize;
        let side = (h / 6).max(2);
        let by = ((h * 2 / 3).saturating_sub(side) / 2) & !1;
        by..by + side
    }

    /// Picture number `n` (the box position and counter depend on `n` only), stamped with
    /// `now` (the clock text, and the stamp block: microseconds since the Unix epoch).
    pub fn picture(&self, n: u64, now: SystemTime) -> I420 {
        let (bw, bh) = (self.background.width(), self.background.height());
        let band = self.box_band();
        let mut p = match I420::recycled_in(&self.pool, bw, bh) {
            Some(mut p) => {
                p.copy_rows_from(&self.background, band.clone());
                p
            }
            None => self.background.copy_in(&self.pool),
        };
        let (w, h) = (p.width() as usize, p.height() as usize);
        let side = band.len();
        let span_x = w.saturating_sub(side).max(1);
        let t = n as usize * 4;
        // Bounce left and right across the bars.
        let bx = if (t / span_x) % 2 == 0 {
            t % span_x
        } else {
            span_x - t % span_x
        };
        fill_rect(&mut p, bx & !1, band.start, side, side, (235, 128, 128));
        let wall = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let (fx, fy, fside) = flash_rect(w as u32, h as u32);
        let luma = if flash_at(wall) { 235 } else { 16 };
        fill_rect(&mut p, fx, fy, fside, fside, (luma, 128, 128));
        let scale = text_scale(h as u32);
        let counter = format!("{n:08}");
        let y = h - 10 * scale;
        draw_text(&mut p, 2 * scale, y, scale, &counter);
        let clock = clock_text(now);
        let cx = w.saturating_sub(clock.len() * 6 * scale + 2 * scale);
        draw_text(&mut p, cx, y, scale, &clock);
        // Drawn whole every time (every cell of the block is written), like the text.
        let micros = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros();
        stamp::draw(&mut p, u64::try_from(micros).unwrap_or(u64::MAX));
        p
    }
}

impl Source for TestSource {
    fn info(&self) -> SourceInfo {
        SourceInfo {
            name: "testsrc".into(),
            format: "I420".into(),
            width: self.background.width(),
            height: self.background.height(),
        }
    }

    fn next_frame(&mut self) -> Result<CapturedFrame, CaptureError> {
        let interval = Duration::from_secs(1) / self.fps;
        if self.paced {
            let now = Instant::now();
            let at = *self.next_at.get_or_insert(now);
            if at > now {
                // Pacing like a camera's sensor clock; bounded by one frame interval.
                std::thread::sleep(at - now);
            }
            let next = at + interval;
            // After a stall, do not try to catch up with a burst.
            self.next_at = Some(if next < Instant::now() {
                Instant::now()
            } else {
                next
            });
        }
        // The wall clock (CLOCK_REALTIME) goes into the stamp: a browser on the same machine
        // compares it with its own `Date.now()`.
        let picture = self.picture(self.frame, SystemTime::now());
        self.frame += 1;
        Ok(CapturedFrame {
            payload: Payload::I420(picture),
            captured_at: Instant::now(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pictures_move_and_have_the_requested_size() {
        let src = TestSource::new(321, 240, 30).unwrap();
        let a = src.picture(0, UNIX_EPOCH);
        let b = src.picture(10, UNIX_EPOCH);
        assert_eq!((a.width(), a.height()), (320, 240));
        assert_ne!(a, b, "box and counter move");
        let s = slate(320, 240);
        assert_eq!((s.width(), s.height()), (320, 240));
    }

    #[test]
    fn the_corner_flashes_white_in_the_first_100_ms_of_each_second() {
        let src = TestSource::new(320, 240, 30).unwrap();
        let (x, y, side) = flash_rect(320, 240);
        assert!(y + side <= src.box_band().start, "clear of the moving box");
        let centre = |p: &I420| p.y_plane()[(y + side / 2) * 320 + x + side / 2];
        let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
        assert_eq!(centre(&src.picture(0, at(5_000))), 235);
        assert_eq!(centre(&src.picture(1, at(5_099))), 235);
        assert_eq!(centre(&src.picture(2, at(5_100))), 16);
        assert_eq!(centre(&src.picture(3, at(5_900))), 16);
    }

    #[test]
    fn recycled_pictures_equal_freshly_drawn_ones() {
        let at = |n: u64| UNIX_EPOCH + Duration::from_millis(n * 33);
        let fresh = TestSource::new(640, 480, 30).unwrap();
        // All kept alive, so the pool never gets a buffer back: every one is a full copy.
        // 160 frames: the box bounces off the right edge (4 px a frame over 560 px).
        let fresh_pictures: Vec<I420> = (0..160).map(|n| fresh.picture(n, at(n))).collect();
        let recycling = TestSource::new(640, 480, 30).unwrap();
        let mut kept = Vec::new();
        for (n, want) in fresh_pictures.iter().enumerate() {
            let p = recycling.picture(n as u64, at(n as u64));
            assert!(p == *want, "picture {n} differs");
            kept.push(p);
            // Hand buffers back in a different order than they were taken.
            if kept.len() == 3 {
                kept.remove(1);
                kept.remove(0);
            }
        }
    }

    #[test]
    fn text_dots_are_scale_squares_on_a_dark_box() {
        let mut p = I420::filled(32, 32, 128, 128, 128).unwrap();
        draw_text(&mut p, 4, 4, 2, "1");
        let y = |x: usize, r: usize| p.y_plane()[r * 32 + x];
        // '1' row 0 is 0x04: the middle dot, x 8..10, rows 4..6.
        assert_eq!((y(8, 4), y(9, 4), y(8, 5), y(9, 5)), (235, 235, 235, 235));
        assert_eq!((y(7, 4), y(10, 4), y(8, 3)), (16, 16, 16));
        // Outside the backing box: untouched.
        assert_eq!((y(1, 4), y(4, 21)), (128, 128));
    }

    #[test]
    fn pictures_carry_their_capture_instant() {
        let src = TestSource::new(1280, 720, 30).unwrap();
        let at = UNIX_EPOCH + Duration::from_micros(1_795_000_000_123_456);
        assert_eq!(
            stamp::read(&src.picture(3, at)),
            Some(1_795_000_000_123_456)
        );
        // The box band and the text never reach the block, whatever the size.
        for (w, h) in [(640, 480), (320, 240), (1920, 1080)] {
            let src = TestSource::new(w, h, 30).unwrap();
            for n in [0, 77, 500] {
                assert_eq!(
                    stamp::read(&src.picture(n, at)),
                    Some(1_795_000_000_123_456)
                );
            }
        }
    }

    #[test]
    fn clock_text_is_utc_time_of_day() {
        let t = UNIX_EPOCH + Duration::from_millis(3_723_004);
        assert_eq!(clock_text(t), "01:02:03.004");
    }
}
