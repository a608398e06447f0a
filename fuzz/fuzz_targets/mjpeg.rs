//! A camera's MJPEG frames (`snaprtcd::media::jpeg::MjpegDecoder`): what a V4L2 camera or an
//! `exec` source hands the media thread, straight into I420.
//!
//! The input is one frame. Invariants, besides not panicking: a decoded picture has even
//! sides within the decoder's 8192 limit, and one decoder keeps working after any input.
//! libjpeg-turbo itself is C, linked from Debian's package and not instrumented, so libFuzzer
//! steers by the daemon's own code around it (the marker walk that refuses non-sequential
//! frames, the size checks, the plane conversions); libjpeg-turbo is fuzzed upstream
//! (OSS-Fuzz). A decode error after a valid header leaves the decoder usable: checked here.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snaprtcd::media::jpeg::MjpegDecoder;
use snaprtcd::picture::yuv::BufferPool;

fuzz_target!(|data: &[u8]| {
    let mut decoder = MjpegDecoder::new(BufferPool::new(2));
    for _ in 0..2 {
        if let Ok(picture) = decoder.decode(data) {
            let (w, h) = (picture.width(), picture.height());
            assert!(w >= 2 && h >= 2 && w % 2 == 0 && h % 2 == 0, "{w}x{h}");
            assert!(w <= 8192 && h <= 8192, "{w}x{h}");
            assert_eq!(picture.as_bytes().len(), (w * h * 3 / 2) as usize);
        }
    }
});
