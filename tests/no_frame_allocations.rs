//! The camera path allocates nothing of a picture's size per frame once warmed up: MJPEG
//! decoding (also with the pictures dropped on another thread, as the pipeline decodes on the
//! decode thread and encodes on the media thread), YUYV and NV12 conversion, and the encoder
//! taking the picture. A counting global allocator records, on this test's thread only, every
//! allocation (and growing reallocation) of at least a quarter of an I420 picture (a noisy JPEG
//! of that picture is larger), over N frames after a warm-up of two.
//! The encoded access unit is allocated exactly once, by the encoder, and reaches the viewers
//! as it is: the RTC engine's frame and GOP cache copy nothing (counted from 1 KiB).
//! (Smaller allocations remain: libjpeg-turbo's working memory for each frame, C `malloc`s this
//! allocator does not see, tens of KiB; with `media::keep_heap_slack` glibc hands them out again
//! without page faults, which `cargo bench --bench conversions` counts per frame.)
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test, with its line

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use snaprtcd::capture::exec::MjpegSplitter;
use snaprtcd::capture::DECODED_POOL;
use snaprtcd::media::encoder::{OpenH264Encoder, SoftwareSettings};
use snaprtcd::media::jpeg::{encode_i420, MjpegDecoder};
use snaprtcd::media::EncodedFrame;
use snaprtcd::picture::yuv::{BufferPool, I420};
use snaprtcd::rtc::viewer::VideoFrame;

struct Counting;

/// Allocations of at least this many bytes are counted (set per case).
static THRESHOLD: AtomicUsize = AtomicUsize::new(usize::MAX);
static BIG: AtomicUsize = AtomicUsize::new(0);
/// The largest allocation counted, for the failure message.
static LARGEST: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Only the thread running the case counts (the test harness has its own threads).
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn note(size: usize) {
    if size >= THRESHOLD.load(Ordering::Relaxed) && COUNTING.with(Cell::get) {
        BIG.fetch_add(1, Ordering::Relaxed);
        LARGEST.fetch_max(size, Ordering::Relaxed);
    }
}

// SAFETY: every call is passed to the system allocator unchanged; counting touches only
// atomics and a const-initialised thread-local `Cell` (neither allocates).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            note(new_size);
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const W: u32 = 320;
const H: u32 = 240;
const FRAMES: usize = 10;
const WARM_UP: usize = 2;

/// Runs `frame(i)` WARM_UP times, then FRAMES times counting; the number of big allocations
/// (a quarter of a picture and more).
fn big_allocations(frame: impl FnMut(usize)) -> usize {
    allocations_from(I420::len_for(W, H) / 4, frame)
}

/// [`big_allocations`] counting every allocation of at least `threshold` bytes.
fn allocations_from(threshold: usize, mut frame: impl FnMut(usize)) -> usize {
    for i in 0..WARM_UP {
        frame(i);
    }
    THRESHOLD.store(threshold, Ordering::Relaxed);
    BIG.store(0, Ordering::Relaxed);
    LARGEST.store(0, Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    for i in 0..FRAMES {
        frame(WARM_UP + i);
    }
    COUNTING.with(|c| c.set(false));
    BIG.load(Ordering::Relaxed)
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

fn assert_none(what: &str, n: usize) {
    assert_eq!(
        n,
        0,
        "{what}: {n} allocations of a picture's size in {FRAMES} frames (largest {} bytes)",
        LARGEST.load(Ordering::Relaxed)
    );
}

#[test]
fn the_camera_path_allocates_no_picture_buffers_per_frame() {
    let (w, h) = (W as usize, H as usize);

    // Two different noisy JPEGs, alternated, so nothing is cached by accident.
    let jpegs: Vec<Vec<u8>> = (0..2)
        .map(|s| {
            let yuv = noise(I420::len_for(W, H), s + 1);
            encode_i420(&I420::from_vec(W, H, yuv).unwrap(), 80).unwrap()
        })
        .collect();
    let mut mjpeg = MjpegDecoder::new(BufferPool::new(2));
    let n = big_allocations(|i| drop(mjpeg.decode(&jpegs[i % 2]).unwrap()));
    assert_none("MJPEG decode", n);

    // The pipeline's two stages: this thread decodes (as the decode thread does) into a pool
    // of DECODED_POOL buffers; another (the media thread) drops the pictures when done with
    // them. Each picture is decoded while as many others are alive (queued, or being encoded)
    // as the pipeline allows (DECODED_POOL - 1: at most two frames are on their way to the media
    // thread); the oldest is then dropped on the other thread, its buffer back in the pool.
    // Once each buffer has been made (DECODED_POOL frames), the decoding thread allocates none.
    enum ToMedia {
        Picture(I420),
        DropOldest,
    }
    let mut decoder = MjpegDecoder::new(BufferPool::new(DECODED_POOL));
    let (to_media, media_rx) = std::sync::mpsc::channel::<ToMedia>();
    let (dropped_tx, dropped) = std::sync::mpsc::channel::<()>();
    let media = std::thread::spawn(move || {
        let mut alive = std::collections::VecDeque::new();
        for message in media_rx {
            match message {
                ToMedia::Picture(picture) => alive.push_back(picture),
                ToMedia::DropOldest => {
                    drop(alive.pop_front());
                    let _ = dropped_tx.send(());
                }
            }
        }
    });
    let mut alive = 0;
    let mut two_stages = |i: usize| {
        let picture = decoder.decode(&jpegs[i % 2]).unwrap();
        to_media.send(ToMedia::Picture(picture)).unwrap();
        alive += 1;
        if alive == DECODED_POOL {
            to_media.send(ToMedia::DropOldest).unwrap();
            dropped.recv().unwrap();
            alive -= 1;
        }
    };
    for i in 0..DECODED_POOL {
        two_stages(i);
    }
    let n = big_allocations(two_stages);
    drop(to_media);
    media.join().unwrap();
    assert_none("MJPEG decoded on one thread, dropped on another", n);

    // An `exec` program's stdout, cut into JPEGs (read in 64 KiB pieces, as the source does),
    // decoded, and the latest kept for stills as the media thread does.
    let mut splitter = MjpegSplitter::default();
    let mut latest = None;
    let n = big_allocations(|i| {
        let jpeg = &jpegs[i % 2];
        for piece in jpeg.chunks(64 * 1024) {
            splitter.handle_input(piece);
        }
        let frame = splitter.poll_frame().unwrap();
        drop(mjpeg.decode(&frame).unwrap());
        latest = Some(frame);
    });
    assert_none("exec MJPEG split + decode", n);
    drop(latest);

    let pool = BufferPool::new(2);
    let yuyv = [noise(w * h * 2, 3), noise(w * h * 2, 4)];
    let n = big_allocations(|i| {
        drop(I420::from_yuyv_in(Some(&pool), W, H, w * 2, &yuyv[i % 2]).unwrap())
    });
    assert_none("YUYV to I420", n);

    let nv12 = [noise(w * h * 3 / 2, 5), noise(w * h * 3 / 2, 6)];
    let n =
        big_allocations(|i| drop(I420::from_nv12_in(Some(&pool), W, H, w, &nv12[i % 2]).unwrap()));
    assert_none("NV12 to I420", n);

    // The encoder takes the pooled picture as it is (no copy into a buffer of its own). Its
    // access unit is the one allocation it makes (counted below); faint noise keeps that under
    // a quarter of a picture (full noise makes 50 KB access units: nothing is skipped).
    let faint: Vec<Vec<u8>> = (0..2)
        .map(|s| {
            let yuv = noise(I420::len_for(W, H), s + 11)
                .into_iter()
                .map(|b| 96 + (b & 3))
                .collect();
            encode_i420(&I420::from_vec(W, H, yuv).unwrap(), 80).unwrap()
        })
        .collect();
    let mut encoder = OpenH264Encoder::new(SoftwareSettings {
        bitrate_kbps: 1000,
        fps: 30,
        threads: snaprtcd::config::EncoderThreads::Auto,
    })
    .unwrap();
    let n = big_allocations(|i| {
        let picture = mjpeg.decode(&faint[i % 2]).unwrap();
        let _ = encoder.encode(&picture, i as u64 * 33, i == 0).unwrap();
    });
    assert_none("MJPEG decode + encode", n);

    // From the encoder to the viewers: one allocation per access unit (the `Arc<[u8]>` the
    // encoder fills), shared as it is by the broadcast's frame, the RTC engine's `VideoFrame`
    // and its GOP cache. The engine used to copy every access unit again.
    let pictures: Vec<I420> = (0..2)
        .map(|s| {
            let yuv = noise(I420::len_for(W, H), s + 7)
                .into_iter()
                .map(|b| 80 + (b & 31))
                .collect();
            I420::from_vec(W, H, yuv).unwrap()
        })
        .collect();
    let mut smallest = usize::MAX;
    let mut gop = Vec::with_capacity(WARM_UP + FRAMES);
    let n = allocations_from(1024, |i| {
        let au = encoder
            .encode(&pictures[i % 2], i as u64 * 33, false)
            .unwrap()
            .expect("no picture skipped");
        smallest = smallest.min(au.data.len());
        let frame = EncodedFrame {
            data: au.data,
            keyframe: au.keyframe,
            timestamp: std::time::Duration::from_millis(i as u64 * 33),
        };
        let shared = VideoFrame::new(&frame);
        gop.push(shared.clone());
    });
    assert!(
        smallest >= 1024,
        "access units of {smallest} bytes count for nothing here"
    );
    assert_eq!(
        n,
        FRAMES,
        "allocations of 1 KiB and more from encoder to viewers in {FRAMES} frames (largest {} bytes)",
        LARGEST.load(Ordering::Relaxed)
    );
}
