//! The camera path's conversions into I420, as the media and capture threads run them: MJPEG
//! (libjpeg-turbo's planes, `MjpegDecoder`), YUYV and NV12, at 1280x720. Prints ms per frame
//! (MB/s of input for the raw formats) and minor page faults per frame after a warm-up (0 when
//! every buffer is reused). YUYV and NV12 run twice: as the daemon does (SSE2 / NEON row
//! kernels) and with the scalar kernels the SIMD ones are tested against.
//!
//! Run: `cargo bench --bench conversions`. The MJPEG input is made with ffmpeg (noisy
//! `testsrc2`, 4:2:0 and 4:2:2, 30 frames each) into a temporary directory, removed after;
//! without ffmpeg the MJPEG rows are skipped. `SNAPRTCD_BENCH_ROUNDS` sets the passes over the
//! frames (default 10); `SNAPRTCD_BENCH_DEFAULT_MALLOC=1` leaves glibc's heap trimming as it
//! is by default (see `media::keep_heap_slack`). libjpeg-turbo beside zune-jpeg, outside the daemon:
//! `bench/mjpeg_decode/run.sh`.
#![allow(clippy::unwrap_used)] // bench code: a panic is a failed run, with its line

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use snaprtcd::media::jpeg::MjpegDecoder;
use snaprtcd::picture::rows;
use snaprtcd::picture::yuv::{BufferPool, I420};

const W: u32 = 1280;
const H: u32 = 720;

fn rounds() -> usize {
    std::env::var("SNAPRTCD_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

fn minor_faults() -> i64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: a valid out pointer to a zeroed rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    // SAFETY: getrusage filled it (or left it zeroed, which is a valid rusage too).
    unsafe { usage.assume_init() }.ru_minflt
}

/// Runs `f` over `inputs` once to warm up, then `rounds` times; prints ms/frame and faults.
fn measure<T>(name: &str, inputs: &[Vec<u8>], mut f: impl FnMut(&[u8]) -> T) {
    for i in inputs {
        drop(f(i));
    }
    let n = inputs.len() * rounds();
    let bytes: usize = inputs.iter().map(Vec::len).sum::<usize>() * rounds();
    let faults = minor_faults();
    let t = Instant::now();
    for _ in 0..rounds() {
        for i in inputs {
            drop(f(i));
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let faults = (minor_faults() - faults) as f64 / n as f64;
    println!(
        "| {name} | {:.2} | {:.0} | {faults:.2} |",
        secs * 1000.0 / n as f64,
        bytes as f64 / secs / 1e6
    );
}

fn jpegs(dir: &Path, sampling: &str) -> Option<Vec<Vec<u8>>> {
    let pattern = dir.join(format!("f{sampling}_%02d.jpg"));
    let ok = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!(
            "testsrc2=size={W}x{H}:rate=30,noise=alls=20:allf=t"
        ))
        .args(["-frames:v", "30", "-q:v", "5", "-pix_fmt"])
        .arg(format!("yuvj{sampling}p"))
        .arg(&pattern)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        println!("(ffmpeg not found or failed: MJPEG {sampling} skipped)");
        return None;
    }
    Some(
        (1..=30)
            .map(|i| std::fs::read(dir.join(format!("f{sampling}_{i:02}.jpg"))).unwrap())
            .collect(),
    )
}

fn noise(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn main() {
    // As the daemon does at start (without it: ~21 faults a frame for MJPEG 4:2:0).
    if std::env::var_os("SNAPRTCD_BENCH_DEFAULT_MALLOC").is_none() {
        snaprtcd::media::keep_heap_slack();
    }
    println!("| {W}x{H} → I420 | ms/frame | MB/s in | minor faults/frame |");
    println!("|---|---:|---:|---:|");
    let dir = std::env::temp_dir().join(format!("snaprtcd-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for sampling in ["420", "422"] {
        if let Some(inputs) = jpegs(&dir, sampling) {
            let mut dec = MjpegDecoder::new(BufferPool::new(2));
            let name = format!(
                "MJPEG 4:{}:{} (libjpeg-turbo planes)",
                &sampling[1..2],
                &sampling[2..]
            );
            measure(&name, &inputs, |j| dec.decode(j).unwrap());
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let pool = BufferPool::new(2);
    let (w, h) = (W as usize, H as usize);
    let yuyv: Vec<Vec<u8>> = (0..4).map(|s| noise(w * h * 2, s)).collect();
    measure("YUYV (SIMD rows)", &yuyv, |f| {
        I420::from_yuyv_in(Some(&pool), W, H, w * 2, f).unwrap()
    });
    let mut out = I420::filled(W, H, 0, 128, 128).unwrap();
    measure("YUYV (scalar rows)", &yuyv, |f| {
        let (yp, up, vp) = out.planes_mut();
        for (row, line) in f.chunks_exact(w * 2).enumerate() {
            let c = row / 2 * (w / 2);
            let chroma = (row % 2 == 0).then(|| (&mut up[c..c + w / 2], &mut vp[c..c + w / 2]));
            rows::yuyv_row_scalar(line, &mut yp[row * w..(row + 1) * w], chroma);
        }
    });
    let nv12: Vec<Vec<u8>> = (0..4).map(|s| noise(w * h * 3 / 2, s)).collect();
    measure("NV12 (SIMD rows)", &nv12, |f| {
        I420::from_nv12_in(Some(&pool), W, H, w, f).unwrap()
    });
    measure("NV12 (scalar rows)", &nv12, |f| {
        let (yp, up, vp) = out.planes_mut();
        yp.copy_from_slice(&f[..w * h]);
        for (row, line) in f[w * h..].chunks_exact(w).enumerate() {
            let c = row * (w / 2);
            rows::nv12_chroma_row_scalar(line, &mut up[c..c + w / 2], &mut vp[c..c + w / 2]);
        }
    });
}
