//! A machine-readable time stamp drawn into a picture: a row of black and white cells at the
//! top that carries a 64-bit value (the test pattern puts its capture instant there, in
//! microseconds since the Unix epoch), so a viewer on the same machine can measure the delay
//! from capture to display (`bench/latency/`, the viewer page's stats line).
//!
//! Layout, left to right along rows `0..cell` from x = 0, each cell `cell`×`cell` pixels with
//! `cell` = `width / 80` rounded down to even (16 px at 1280 wide), white = luma 235, black = 16,
//! chroma neutral:
//!
//! | cells | what |
//! |---|---|
//! | 4 | guard: white, black, white, black (a reader finds its thresholds here) |
//! | 64 | the value, most significant bit first, white = 1 |
//! | 8 | CRC-8 (polynomial 0x07, initial 0) of the value's 8 bytes, big-endian, MSB first |
//! | 2 | guard: black, white |
//!
//! Cells this large survive H.264 at a low bitrate; a reader averages the middle half of each
//! cell, thresholds halfway between the guards' levels and checks guards and CRC, so a picture
//! without the block (or a damaged one) reads as `None`, never as a wrong value. The viewer
//! page (`src/web/index.html`) and `bench/latency/` read it with the same algorithm in
//! JavaScript.

use super::yuv::I420;

/// Cells in the row: 4 guard, 64 value, 8 CRC, 2 guard.
pub const CELLS: usize = 78;
const LEAD: [bool; 4] = [true, false, true, false];
const TAIL: [bool; 2] = [false, true];
const WHITE: u8 = 235;
const BLACK: u8 = 16;
/// The smallest difference between the white and black guards' levels a reader accepts.
const MIN_CONTRAST: u32 = 64;

/// The side of one cell in pixels for a picture `width` wide (even, so chroma lines up), or
/// `None` when the picture is too small to carry the block (narrower than 160 px).
pub fn cell_size(width: u32, height: u32) -> Option<usize> {
    let cell = (width as usize / 80) & !1;
    (cell >= 2 && cell <= height as usize).then_some(cell)
}

/// CRC-8, polynomial x⁸+x²+x+1 (0x07), initial value 0, no reflection.
pub fn crc8(bytes: &[u8]) -> u8 {
    let mut crc = 0u8;
    for b in bytes {
        crc ^= b;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ 0x07
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The 78 cells for `value`, white = `true`.
fn cells(value: u64) -> [bool; CELLS] {
    let mut out = [false; CELLS];
    out[..4].copy_from_slice(&LEAD);
    for i in 0..64 {
        out[4 + i] = value >> (63 - i) & 1 == 1;
    }
    let crc = crc8(&value.to_be_bytes());
    for i in 0..8 {
        out[68 + i] = crc >> (7 - i) & 1 == 1;
    }
    out[76..].copy_from_slice(&TAIL);
    out
}

/// Draw the block carrying `value` into the top rows of `p` (nothing when the picture is too
/// small, see [`cell_size`]). Writes every pixel of the block, so drawing over an older block
/// leaves nothing of it.
pub fn draw(p: &mut I420, value: u64) {
    let (w, h) = (p.width() as usize, p.height() as usize);
    let Some(cell) = cell_size(w as u32, h as u32) else {
        return;
    };
    let bits = cells(value);
    let (yp, up, vp) = p.planes_mut();
    for row in 0..cell {
        let line = &mut yp[row * w..row * w + CELLS * cell];
        for (chunk, &white) in line.chunks_exact_mut(cell).zip(bits.iter()) {
            chunk.fill(if white { WHITE } else { BLACK });
        }
    }
    let cw = w / 2;
    for row in 0..cell / 2 {
        up[row * cw..row * cw + CELLS * cell / 2].fill(128);
        vp[row * cw..row * cw + CELLS * cell / 2].fill(128);
    }
}

/// Read the value back from a picture's luma (`luma(x, y)`, `width`×`height`): `None` unless
/// the guards and the CRC check out. The algorithm the JavaScript readers copy.
pub fn read_luma(width: u32, height: u32, luma: impl Fn(usize, usize) -> u8) -> Option<u64> {
    let cell = cell_size(width, height)?;
    // Mean of the middle half of cell `i` (both ways), so edges smeared by the codec or by
    // scaling do not count.
    let (a, b) = (cell / 4, cell - cell / 4);
    let level = |i: usize| -> u32 {
        let mut sum = 0u32;
        for y in a..b {
            for x in i * cell + a..i * cell + b {
                sum += u32::from(luma(x, y));
            }
        }
        sum / ((b - a) * (b - a)) as u32
    };
    let levels: Vec<u32> = (0..CELLS).map(level).collect();
    let white = (levels[0] + levels[2] + levels[77]) / 3;
    let black = (levels[1] + levels[3] + levels[76]) / 3;
    if white < black + MIN_CONTRAST {
        return None;
    }
    let threshold = (white + black) / 2;
    let bit = |i: usize| levels[i] > threshold;
    let guards_ok = LEAD.iter().enumerate().all(|(i, &g)| bit(i) == g)
        && TAIL.iter().enumerate().all(|(i, &g)| bit(76 + i) == g);
    if !guards_ok {
        return None;
    }
    let value = (0..64).fold(0u64, |v, i| v << 1 | u64::from(bit(4 + i)));
    let crc = (0..8).fold(0u8, |c, i| c << 1 | u8::from(bit(68 + i)));
    (crc == crc8(&value.to_be_bytes())).then_some(value)
}

/// Read the value back from an I420 picture (see [`read_luma`]).
pub fn read(p: &I420) -> Option<u64> {
    let w = p.width() as usize;
    let y = p.y_plane();
    read_luma(p.width(), p.height(), |x, r| y[r * w + x])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic generator for noise (xorshift64).
    struct Noise(u64);
    impl Noise {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        /// Uniform in `-amp..=amp`.
        fn offset(&mut self, amp: i32) -> i32 {
            (self.next() % (2 * amp as u64 + 1)) as i32 - amp
        }
    }

    fn noisy(p: &I420, amp: i32, seed: u64) -> I420 {
        let mut q = p.clone();
        let mut n = Noise(seed);
        let (y, _, _) = q.planes_mut();
        for px in y.iter_mut() {
            *px = (i32::from(*px) + n.offset(amp)).clamp(0, 255) as u8;
        }
        q
    }

    /// A 3x3 box blur of the luma: the soft edges a codec leaves.
    fn blurred(p: &I420) -> I420 {
        let mut q = p.clone();
        let (w, h) = (p.width() as usize, p.height() as usize);
        let src = p.y_plane();
        let (y, _, _) = q.planes_mut();
        for r in 1..h - 1 {
            for c in 1..w - 1 {
                let mut s = 0u32;
                for dr in 0..3 {
                    for dc in 0..3 {
                        s += u32::from(src[(r + dr - 1) * w + c + dc - 1]);
                    }
                }
                y[r * w + c] = (s / 9) as u8;
            }
        }
        q
    }

    const NOW_US: u64 = 1_795_000_000_123_456;

    #[test]
    fn cells_scale_with_the_width() {
        assert_eq!(cell_size(1280, 720), Some(16));
        assert_eq!(cell_size(1920, 1080), Some(24));
        assert_eq!(cell_size(640, 480), Some(8));
        assert_eq!(cell_size(200, 100), Some(2));
        assert_eq!(cell_size(158, 100), None);
    }

    #[test]
    fn crc8_matches_the_standard_check_value() {
        // CRC-8 (SMBus): check value of "123456789" is 0xF4.
        assert_eq!(crc8(b"123456789"), 0xf4);
    }

    #[test]
    fn reads_back_through_noise_and_blur() {
        for (w, h) in [(1280, 720), (640, 480), (1920, 1080), (320, 240)] {
            for (k, value) in [NOW_US, 0, u64::MAX, 0x8000_0000_0000_0001]
                .into_iter()
                .enumerate()
            {
                // Start from mid grey with texture, so the block's surroundings are not flat.
                let mut p = I420::filled(w, h, 128, 100, 160).unwrap();
                let p0 = noisy(&p, 100, 7 + k as u64);
                p = p0;
                draw(&mut p, value);
                assert_eq!(read(&p), Some(value), "{w}x{h} clean");
                let damaged = noisy(&blurred(&p), 60, 99 + k as u64);
                assert_eq!(read(&damaged), Some(value), "{w}x{h} noisy");
            }
        }
    }

    #[test]
    fn a_new_block_replaces_an_old_one() {
        let mut p = I420::filled(1280, 720, 128, 128, 128).unwrap();
        draw(&mut p, u64::MAX);
        draw(&mut p, NOW_US);
        assert_eq!(read(&p), Some(NOW_US));
    }

    #[test]
    fn no_block_or_a_damaged_one_reads_as_none() {
        let plain = noisy(&I420::filled(1280, 720, 128, 128, 128).unwrap(), 100, 3);
        assert_eq!(read(&plain), None);
        let mut p = I420::filled(1280, 720, 128, 128, 128).unwrap();
        draw(&mut p, NOW_US);
        // Flip one value cell (bit 63 - 10): the CRC no longer matches.
        let (y, _, _) = p.planes_mut();
        let cell = 16;
        for r in 0..cell {
            for x in (4 + 10) * cell..(5 + 10) * cell {
                y[r * 1280 + x] = 255 - y[r * 1280 + x];
            }
        }
        assert_eq!(read(&p), None);
        // Too small to carry a block: nothing drawn, nothing read.
        let mut tiny = I420::filled(100, 100, 128, 128, 128).unwrap();
        draw(&mut tiny, NOW_US);
        assert_eq!(tiny, I420::filled(100, 100, 128, 128, 128).unwrap());
        assert_eq!(read(&tiny), None);
    }
}
