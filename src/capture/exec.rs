//! The `exec` source: a program (argv, no shell) that writes H.264 (Annex-B), MJPEG or raw YUYV
//! to stdout, e.g. `rpicam-vid -t 0 --inline --codec h264 -o -` on a Raspberry Pi. Frames are cut
//! from the byte stream whatever the pipe's read boundaries; the program's stderr goes to the
//! log. When it exits, the capture thread restarts it with backoff.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{CaptureError, CapturedFrame, Payload, Source, SourceInfo};
use crate::config::{CameraConfig, ExecFormat};
use crate::picture::annexb::AccessUnitSplitter;
use crate::picture::yuv::{BufferPool, PictureError, I420};

/// Largest MJPEG frame accepted from a program (a 4K picture fits). H.264 access units have
/// their own bound, `[camera.exec] max_access_unit_bytes`.
const MAX_FRAME_BYTES: usize = 8 << 20;
/// No byte for this long: the program is stuck; restart it.
const STALL: Duration = Duration::from_secs(5);
/// How long one wait for output lasts before `next_frame` reports `Stalled`.
const POLL_SLICE: Duration = Duration::from_millis(250);

/// Cuts JPEG images (SOI `FF D8` .. EOI `FF D9`) out of a byte stream. Each image is copied
/// out into a pooled buffer and the rest of the stream (the start of the next image, less than
/// one read) moved to the front of the stream buffer, so that buffer keeps one allocation, grown
/// only to the largest image plus a read. (A `BytesMut` consumed from the front reallocated now
/// and then, when what was left was longer than what had been consumed, and each new block
/// was faulted in again.)
#[derive(Debug)]
pub struct MjpegSplitter {
    buf: Vec<u8>,
    scan: usize,
    frames: Arc<BufferPool>,
}

impl Default for MjpegSplitter {
    fn default() -> Self {
        Self {
            buf: Vec::new(),
            scan: 0,
            frames: BufferPool::new(super::SOURCE_POOL),
        }
    }
}

impl MjpegSplitter {
    /// Feed the next piece of the stream; a frame over 8 MiB is dropped.
    pub fn handle_input(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        if self.buf.len() > MAX_FRAME_BYTES {
            self.buf.clear();
            self.scan = 0;
        }
    }

    /// The next complete JPEG, if any.
    pub fn poll_frame(&mut self) -> Option<Bytes> {
        // Find the start of an image; drop anything before it.
        let soi = self.buf.windows(2).position(|w| w == [0xff, 0xd8])?;
        if soi > 0 {
            self.buf.drain(..soi);
            self.scan = 0;
        }
        let from = self.scan.max(2);
        match self.buf[from..].windows(2).position(|w| w == [0xff, 0xd9]) {
            Some(p) => {
                let end = from + p + 2;
                self.scan = 0;
                let frame = self.frames.copy_to_bytes(&self.buf[..end]);
                self.buf.drain(..end);
                Some(frame)
            }
            None => {
                self.scan = self.buf.len().saturating_sub(1).max(2);
                None
            }
        }
    }
}

/// Cuts raw YUYV pictures of a fixed size out of a byte stream and converts each to I420 on
/// the capture thread (as a V4L2 YUYV camera's are). The program's bytes are read straight into
/// one frame buffer ([`spare`](Self::spare), [`handle_read`](Self::handle_read)) and pictures
/// come from a pool, so a steady stream allocates nothing.
#[derive(Debug)]
pub struct YuyvFramer {
    width: u32,
    height: u32,
    /// One picture's bytes, filled by reads; converted when full.
    frame: Vec<u8>,
    filled: usize,
    pictures: Arc<BufferPool>,
}

impl YuyvFramer {
    /// A framer for `width`×`height` pictures (even sides, at most 8192).
    pub fn new(width: u32, height: u32) -> Result<Self, PictureError> {
        // Checks the size once, so the conversions below cannot fail.
        drop(I420::filled(width, height, 0, 0, 0)?);
        Ok(Self {
            width,
            height,
            frame: vec![0; width as usize * height as usize * 2],
            filled: 0,
            pictures: BufferPool::new(super::SOURCE_POOL),
        })
    }

    /// Where the next read goes: the rest of the current picture.
    pub fn spare(&mut self) -> &mut [u8] {
        &mut self.frame[self.filled..]
    }

    /// `n` bytes were read into [`spare`](Self::spare).
    pub fn handle_read(&mut self, n: usize) {
        self.filled = (self.filled + n).min(self.frame.len());
    }

    /// Feed bytes that were read elsewhere (tests); returns how many were taken (at most the
    /// rest of the current picture: poll, then feed the remainder).
    pub fn handle_input(&mut self, data: &[u8]) -> usize {
        let spare = self.spare();
        let n = data.len().min(spare.len());
        spare[..n].copy_from_slice(&data[..n]);
        self.handle_read(n);
        n
    }

    /// The picture, once all of its bytes have come.
    pub fn poll_picture(&mut self) -> Option<I420> {
        if self.filled < self.frame.len() {
            return None;
        }
        self.filled = 0;
        let (w, h) = (self.width, self.height);
        I420::from_yuyv_in(Some(&self.pictures), w, h, w as usize * 2, &self.frame).ok()
    }
}

enum Splitter {
    H264(AccessUnitSplitter),
    Mjpeg(MjpegSplitter),
    Yuyv(YuyvFramer),
}

/// A running program whose stdout is the video.
pub struct ExecSource {
    child: Child,
    stdout: ChildStdout,
    program: String,
    format: ExecFormat,
    splitter: Splitter,
    buf: Vec<u8>,
    /// Oversize access units already logged (the splitter counts them).
    dropped_logged: u64,
    last_byte: Instant,
    stderr_thread: Option<std::thread::JoinHandle<()>>,
}

impl ExecSource {
    /// Start the program (`[camera.exec]`; raw YUYV pictures are `[camera]` width×height).
    pub fn spawn(camera: &CameraConfig) -> Result<Self, CaptureError> {
        let config = &camera.exec;
        let (program, args) = config
            .command
            .split_first()
            .ok_or_else(|| CaptureError::Open("[camera.exec] command is empty".into()))?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| CaptureError::Open(format!("{program}: {e}")))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| CaptureError::Open("no stdout pipe".into()))?;
        let name = std::path::Path::new(program)
            .file_name()
            .map_or_else(|| program.clone(), |n| n.to_string_lossy().into_owned());
        // The stderr reader ends when the program closes stderr (it exits or is killed).
        let stderr_thread = child.stderr.take().and_then(|stderr| {
            let name = name.clone();
            std::thread::Builder::new()
                .name("exec-stderr".into())
                .spawn(move || {
                    for line in BufReader::new(stderr).lines() {
                        match line {
                            Ok(line) if !line.trim().is_empty() => {
                                tracing::info!(target: "snaprtcd::exec", program = %name, "{}", line.trim_end())
                            }
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                })
                .ok()
        });
        let splitter = match config.format {
            ExecFormat::H264 => {
                Splitter::H264(AccessUnitSplitter::new(config.max_access_unit_bytes))
            }
            ExecFormat::Mjpeg => Splitter::Mjpeg(MjpegSplitter::default()),
            ExecFormat::Yuyv => Splitter::Yuyv(
                YuyvFramer::new(camera.width, camera.height)
                    .map_err(|e| CaptureError::Open(format!("[camera] size for YUYV: {e}")))?,
            ),
        };
        Ok(Self {
            child,
            stdout,
            program: name,
            format: config.format,
            splitter,
            buf: vec![0; 64 * 1024],
            dropped_logged: 0,
            last_byte: Instant::now(),
            stderr_thread,
        })
    }

    fn poll_frame(&mut self) -> Option<Payload> {
        match &mut self.splitter {
            Splitter::H264(s) => s.poll_access_unit().map(Payload::H264),
            Splitter::Mjpeg(s) => s.poll_frame().map(Payload::Mjpeg),
            Splitter::Yuyv(s) => s.poll_picture().map(Payload::I420),
        }
    }

    /// Wait up to `timeout` for stdout to be readable.
    fn wait_readable(&self, timeout: Duration) -> std::io::Result<bool> {
        let mut fds = libc::pollfd {
            fd: self.stdout.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, the fd is owned by self and open.
        let n = unsafe { libc::poll(&mut fds, 1, timeout.as_millis() as libc::c_int) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(e);
        }
        Ok(n > 0)
    }

    /// Say when the splitter dropped access units: the first time, then every 100th.
    fn log_dropped(&mut self) {
        let Splitter::H264(s) = &self.splitter else {
            return;
        };
        let dropped = s.dropped();
        if dropped > self.dropped_logged
            && (self.dropped_logged == 0 || dropped / 100 > self.dropped_logged / 100)
        {
            tracing::warn!(
                program = %self.program,
                dropped,
                "H.264 access units dropped: larger than [camera.exec] max_access_unit_bytes, or \
                 waiting for the IDR after one"
            );
            self.dropped_logged = dropped;
        }
    }

    fn exit_reason(&mut self) -> String {
        match self.child.wait() {
            Ok(status) => format!("{} exited ({status})", self.program),
            Err(e) => format!("{} ended: {e}", self.program),
        }
    }
}

impl Source for ExecSource {
    fn info(&self) -> SourceInfo {
        SourceInfo {
            name: format!("exec {}", self.program),
            format: match self.format {
                ExecFormat::H264 => "H264".into(),
                ExecFormat::Mjpeg => "MJPEG".into(),
                ExecFormat::Yuyv => "YUYV".into(),
            },
            width: 0,
            height: 0,
        }
    }

    fn next_frame(&mut self) -> Result<CapturedFrame, CaptureError> {
        let started = Instant::now();
        loop {
            if let Some(payload) = self.poll_frame() {
                return Ok(CapturedFrame {
                    payload,
                    captured_at: Instant::now(),
                });
            }
            if self.last_byte.elapsed() > STALL {
                return Err(CaptureError::Ended(format!(
                    "{} wrote nothing for {STALL:?}",
                    self.program
                )));
            }
            if started.elapsed() > Duration::from_secs(1) {
                return Err(CaptureError::Stalled(started.elapsed()));
            }
            if !self.wait_readable(POLL_SLICE)? {
                continue;
            }
            let n = match &mut self.splitter {
                // Raw pictures are read straight into the frame buffer (no intermediate copy).
                Splitter::Yuyv(f) => self.stdout.read(f.spare())?,
                _ => self.stdout.read(&mut self.buf)?,
            };
            if n == 0 {
                // End of stream: flush the last access unit, then report the exit.
                if let Splitter::H264(s) = &mut self.splitter {
                    if let Some(au) = s.finish() {
                        return Ok(CapturedFrame {
                            payload: Payload::H264(au),
                            captured_at: Instant::now(),
                        });
                    }
                }
                return Err(CaptureError::Ended(self.exit_reason()));
            }
            self.last_byte = Instant::now();
            match &mut self.splitter {
                Splitter::H264(s) => s.handle_input(&self.buf[..n]),
                Splitter::Mjpeg(s) => s.handle_input(&self.buf[..n]),
                Splitter::Yuyv(f) => f.handle_read(n),
            }
            self.log_dropped();
        }
    }
}

impl Drop for ExecSource {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Raw YUYV pictures are cut at their size whatever the read boundaries, and each is the
    /// same I420 as converting it on its own.
    #[test]
    fn yuyv_pictures_are_cut_across_reads() {
        let (w, h) = (8u32, 4u32);
        let frame_len = (w * h * 2) as usize;
        let stream: Vec<u8> = (0..frame_len * 2).map(|i| (i * 7 % 251) as u8).collect();
        let expect: Vec<Vec<u8>> = stream
            .chunks(frame_len)
            .map(|f| I420::from_yuyv(w, h, 0, f).unwrap().as_bytes().to_vec())
            .collect();
        for cut in [
            1,
            3,
            frame_len - 1,
            frame_len,
            frame_len + 5,
            2 * frame_len - 1,
        ] {
            let mut f = YuyvFramer::new(w, h).unwrap();
            let mut got = Vec::new();
            for piece in [&stream[..cut], &stream[cut..]] {
                let mut rest = piece;
                while !rest.is_empty() {
                    let n = f.handle_input(rest);
                    rest = &rest[n..];
                    if let Some(p) = f.poll_picture() {
                        got.push(p.as_bytes().to_vec());
                    }
                }
            }
            assert_eq!(got, expect, "cut at {cut}");
            assert!(f.poll_picture().is_none());
        }
        assert!(YuyvFramer::new(7, 4).is_err(), "odd width");
    }

    #[test]
    fn mjpeg_frames_are_cut_across_reads() {
        let a = [0xff, 0xd8, 1, 2, 0xff, 0x00, 3, 0xff, 0xd9];
        let b = [0xff, 0xd8, 4, 0xff, 0xd9];
        let stream = [&[9, 9][..], &a, &b].concat();
        for cut in 0..stream.len() {
            let mut s = MjpegSplitter::default();
            let mut got = Vec::new();
            for piece in [&stream[..cut], &stream[cut..]] {
                s.handle_input(piece);
                while let Some(f) = s.poll_frame() {
                    got.push(f.to_vec());
                }
            }
            assert_eq!(got, vec![a.to_vec(), b.to_vec()], "cut at {cut}");
        }
    }
}
