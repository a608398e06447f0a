//! ms/frame of three ways from a camera's JPEG to I420, on every `*.jpg` in the directory given.
//! See `run.sh`, which makes noisy 1280x720 4:2:0 and 4:2:2 JPEGs with ffmpeg first.

use std::time::Instant;

use zune_jpeg::zune_core::{bytestream::ZCursor, colorspace::ColorSpace, options::DecoderOptions};

/// Today's path (before issue 16): zune-jpeg to RGB, then BT.601 back to I420.
fn zune_rgb(jpeg: &[u8], out: &mut Vec<u8>) -> (usize, usize) {
    let options = DecoderOptions::default().jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut dec = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(jpeg), options);
    let rgb = dec.decode().expect("decode");
    let info = dec.info().expect("info");
    let (w, h) = (info.width as usize, info.height as usize);
    out.resize(w * h * 3 / 2, 0);
    let (yp, c) = out.split_at_mut(w * h);
    let (up, vp) = c.split_at_mut(w * h / 4);
    for row in 0..h {
        for col in 0..w {
            let p = &rgb[(row * w + col) * 3..(row * w + col) * 3 + 3];
            let (r, g, b) = (p[0] as i32, p[1] as i32, p[2] as i32);
            yp[row * w + col] = (((66 * r + 129 * g + 25 * b + 128) >> 8) + 16) as u8;
            if row % 2 == 0 && col % 2 == 0 {
                let c = (row / 2) * (w / 2) + col / 2;
                up[c] = (((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128).clamp(0, 255) as u8;
                vp[c] = (((112 * r - 94 * g - 18 * b + 128) >> 8) + 128).clamp(0, 255) as u8;
            }
        }
    }
    (w, h)
}

/// (a) zune-jpeg to interleaved YCbCr (chroma upsampled, no colour matrix) into a reused
/// buffer; Y taken, chroma averaged 2x2 back to 4:2:0.
fn zune_ycbcr(jpeg: &[u8], scratch: &mut Vec<u8>, out: &mut Vec<u8>) -> (usize, usize) {
    let options = DecoderOptions::default().jpeg_set_out_colorspace(ColorSpace::YCbCr);
    let mut dec = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(jpeg), options);
    dec.decode_headers().expect("headers");
    let (w, h) = dec.dimensions().expect("dims");
    scratch.resize(dec.output_buffer_size().expect("size"), 0);
    dec.decode_into(scratch).expect("decode");
    out.resize(w * h * 3 / 2, 0);
    let (yp, c) = out.split_at_mut(w * h);
    let (up, vp) = c.split_at_mut(w * h / 4);
    let cw = w / 2;
    for r in 0..h / 2 {
        let a = &scratch[2 * r * w * 3..(2 * r + 1) * w * 3];
        let b = &scratch[(2 * r + 1) * w * 3..(2 * r + 2) * w * 3];
        for (d, s) in yp[2 * r * w..(2 * r + 1) * w]
            .iter_mut()
            .zip(a.chunks_exact(3))
        {
            *d = s[0];
        }
        for (d, s) in yp[(2 * r + 1) * w..(2 * r + 2) * w]
            .iter_mut()
            .zip(b.chunks_exact(3))
        {
            *d = s[0];
        }
        for i in 0..cw {
            let (p, q) = (&a[i * 6..i * 6 + 6], &b[i * 6..i * 6 + 6]);
            up[r * cw + i] =
                ((p[1] as u16 + p[4] as u16 + q[1] as u16 + q[4] as u16 + 2) >> 2) as u8;
            vp[r * cw + i] =
                ((p[2] as u16 + p[5] as u16 + q[2] as u16 + q[5] as u16 + 2) >> 2) as u8;
        }
    }
    (w, h)
}

/// (b) libjpeg-turbo's planar decode (no upsampling, no colour matrix); 4:2:2 chroma averaged
/// vertically, 4:2:0 is I420 as decoded.
fn turbo(
    dec: &mut turbojpeg::Decompressor,
    jpeg: &[u8],
    scratch: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> (usize, usize) {
    let header = dec.read_header(jpeg).expect("header");
    let (w, h) = (header.width, header.height);
    let len = turbojpeg::yuv_pixels_len(w, 1, h, header.subsamp).expect("len");
    scratch.resize(len, 0);
    let image = turbojpeg::YuvImage {
        pixels: &mut scratch[..],
        width: w,
        align: 1,
        height: h,
        subsamp: header.subsamp,
    };
    dec.decompress_to_yuv(jpeg, image).expect("decode");
    out.resize(w * h * 3 / 2, 0);
    match header.subsamp {
        turbojpeg::Subsamp::Sub2x2 => out.copy_from_slice(&scratch[..w * h * 3 / 2]),
        turbojpeg::Subsamp::Sub2x1 => {
            let cw = w / 2;
            out[..w * h].copy_from_slice(&scratch[..w * h]);
            for plane in 0..2 {
                let src = &scratch[w * h + plane * cw * h..w * h + (plane + 1) * cw * h];
                let dst = &mut out[w * h + plane * cw * h / 2..w * h + (plane + 1) * cw * h / 2];
                for r in 0..h / 2 {
                    let (a, b) = (
                        &src[2 * r * cw..(2 * r + 1) * cw],
                        &src[(2 * r + 1) * cw..(2 * r + 2) * cw],
                    );
                    for i in 0..cw {
                        dst[r * cw + i] = ((a[i] as u16 + b[i] as u16 + 1) >> 1) as u8;
                    }
                }
            }
        }
        other => panic!("subsampling {other:?} not measured"),
    }
    (w, h)
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .expect("usage: mjpeg-decode-bench DIR");
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    for kind in ["420", "422"] {
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .expect("dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("f{kind}_")))
            })
            .collect();
        files.sort();
        let jpegs: Vec<Vec<u8>> = files
            .iter()
            .map(|p| std::fs::read(p).expect("read"))
            .collect();
        if jpegs.is_empty() {
            continue;
        }
        let mut out = Vec::new();
        let mut scratch = Vec::new();
        let mut dec = turbojpeg::Decompressor::new().expect("turbojpeg");
        let n = jpegs.len() * rounds;
        let time = |name: &str, f: &mut dyn FnMut(&[u8]) -> (usize, usize)| {
            for j in &jpegs {
                f(j); // warm-up
            }
            let t = Instant::now();
            let mut size = (0, 0);
            for _ in 0..rounds {
                for j in &jpegs {
                    size = f(j);
                }
            }
            let ms = t.elapsed().as_secs_f64() * 1000.0 / n as f64;
            println!(
                "4:{}:{} {}x{} {name:<28} {ms:6.2} ms/frame",
                &kind[1..2],
                &kind[2..3],
                size.0,
                size.1
            );
        };
        time("zune RGB + from_rgb (old)", &mut |j| zune_rgb(j, &mut out));
        let mut out2 = Vec::new();
        time("zune YCbCr + 2x2 chroma", &mut |j| {
            zune_ycbcr(j, &mut scratch, &mut out2)
        });
        let mut out3 = Vec::new();
        let mut scratch3 = Vec::new();
        time("turbojpeg planar", &mut |j| {
            turbo(&mut dec, j, &mut scratch3, &mut out3)
        });
        let diff = |a: &[u8], b: &[u8]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (*x as i32 - *y as i32).abs())
                .max()
                .unwrap_or(0)
        };
        let wh = out2.len() * 2 / 3;
        println!(
            "      max |zune YCbCr - turbo|: Y {} chroma {}",
            diff(&out2[..wh], &out3[..wh]),
            diff(&out2[wh..], &out3[wh..])
        );
    }
}
