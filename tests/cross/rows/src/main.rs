//! Runs the row kernels of `src/picture/rows.rs` (YUYV, NV12 and the MJPEG planes' range maps:
//! SSE2 on x86_64, NEON on aarch64, scalar on armv7) on 20 000
//! pseudo-random rows (every width up to 600, with padding), fails if any
//! differs from the scalar kernels, and prints a checksum of all outputs: tests/cross/run.sh
//! compares it between the host and each arm build under qemu-user.

#[path = "../../../../src/picture/rows.rs"]
mod rows;

/// FNV-1a over every output byte.
fn fnv(hash: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *hash = (*hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
}

fn main() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut hash = 0xcbf2_9ce4_8422_2325;
    let rounds = 20_000;
    for _ in 0..rounds {
        let w = ((next() % 300) as usize + 1) * 2;
        let pad = (next() % 9) as usize;
        let src: Vec<u8> = (0..w * 2 + pad).map(|_| next() as u8).collect();
        let (mut y, mut u, mut v) = (vec![0; w], vec![0; w / 2], vec![0; w / 2]);
        let (mut ys, mut us, mut vs) = (vec![0; w], vec![0; w / 2], vec![0; w / 2]);
        rows::yuyv_row(&src, &mut y, Some((&mut u, &mut v)));
        rows::yuyv_row_scalar(&src, &mut ys, Some((&mut us, &mut vs)));
        assert!(y == ys && u == us && v == vs, "YUYV row of {w} differs");
        let (mut yl, mut yls) = (vec![0; w], vec![0; w]);
        rows::yuyv_row(&src, &mut yl, None);
        rows::yuyv_row_scalar(&src, &mut yls, None);
        assert!(yl == yls, "YUYV luma row of {w} differs");
        let n = w / 2;
        let (mut cu, mut cv, mut cus, mut cvs) = (vec![0; n], vec![0; n], vec![0; n], vec![0; n]);
        rows::nv12_chroma_row(&src, &mut cu, &mut cv);
        rows::nv12_chroma_row_scalar(&src, &mut cus, &mut cvs);
        assert!(cu == cus && cv == cvs, "NV12 chroma row of {n} differs");
        // The range maps of libjpeg-turbo's planes, in place, and 4:2:2's row average.
        let (mut ml, mut mls) = (src.clone(), src.clone());
        rows::limit_luma(&mut ml);
        rows::limit_luma_scalar(&mut mls);
        assert!(ml == mls, "luma range map of {} differs", src.len());
        let (mut mc, mut mcs) = (src.clone(), src.clone());
        rows::limit_chroma(&mut mc);
        rows::limit_chroma_scalar(&mut mcs);
        assert!(mc == mcs, "chroma range map of {} differs", src.len());
        let mut avg = vec![0; w];
        rows::average_rows(&src[..w], &src[w..2 * w], &mut avg);
        // The chroma smoothing over a plane of these bytes (scalar code the compiler
        // vectorises: the same output on every architecture).
        let mut smooth = src.clone();
        let mut smooth_rows = Default::default();
        rows::smooth_chroma(&mut smooth, w / 2 + 1, &mut smooth_rows);
        for out in [&y, &u, &v, &yl, &cu, &cv, &ml, &mc, &avg, &smooth] {
            fnv(&mut hash, out);
        }
    }
    let luma: Vec<u8> = (0..=255).map(rows::limited_luma).collect();
    fnv(&mut hash, &luma);
    println!("rows {rounds} checksum {hash:016x}");
}
