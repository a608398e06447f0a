//! V4L2 cameras through `linuxvideo`, a pure-Rust V4L2 binding (no libclang/bindgen, so the
//! arm64/armhf .deb cross-builds with nothing but a cross linker; see docs/media.md).
//!
//! Opening negotiates the format (H.264 > MJPEG > YUYV > NV12 unless `[camera] format` says
//! otherwise), the size and frame rate closest to the request, sets `[camera.controls]`, and
//! starts mmap streaming. `next_frame` waits with `poll(2)` in short slices, so the capture
//! thread notices cancellation, and reports a vanished or silent device as an error.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use linuxvideo::controls::Cid;
use linuxvideo::format::{FrameIntervals, FrameSizes, PixFormat, PixelFormat};
use linuxvideo::stream::ReadStream;
use linuxvideo::{BufType, CapabilityFlags, Device, Fract};

use super::{CaptureError, CapturedFrame, Payload, Source, SourceInfo};
use crate::config::{CameraConfig, CaptureFormat};
use crate::picture::yuv::{BufferPool, I420};
use std::sync::Arc;

const H264: PixelFormat = PixelFormat::from_fourcc(*b"H264");
const NV12: PixelFormat = PixelFormat::from_fourcc(*b"NV12");

/// A device that delivers nothing for this long is treated as lost.
const STALL: Duration = Duration::from_secs(3);

/// Formats we can use, best first for `format = "auto"`.
fn preference(format: CaptureFormat) -> Vec<PixelFormat> {
    match format {
        CaptureFormat::Auto => vec![
            H264,
            PixelFormat::MJPG,
            PixelFormat::JPEG,
            PixelFormat::YUYV,
            NV12,
        ],
        CaptureFormat::H264 => vec![H264],
        CaptureFormat::Mjpeg => vec![PixelFormat::MJPG, PixelFormat::JPEG],
        CaptureFormat::Yuyv => vec![PixelFormat::YUYV],
        CaptureFormat::Nv12 => vec![NV12],
    }
}

/// The FourCC as `v4l2-ctl` prints it; the big-endian flag (bit 31) as a `-BE` suffix.
fn fourcc(pf: PixelFormat) -> String {
    let mut code = pf.as_fourcc();
    let big_endian = code[3] & 0x80 != 0;
    code[3] &= 0x7f;
    let text: String = code
        .iter()
        .map(|&b| if b.is_ascii_graphic() { b as char } else { ' ' })
        .collect();
    let text = text.trim().to_string();
    if big_endian {
        text + "-BE"
    } else {
        text
    }
}

fn is_video_capture(dev: &Device) -> bool {
    dev.capabilities()
        .map(|c| {
            c.device_capabilities()
                .contains(CapabilityFlags::VIDEO_CAPTURE)
        })
        .unwrap_or(false)
}

fn formats(dev: &Device) -> Vec<PixelFormat> {
    dev.formats(BufType::VIDEO_CAPTURE)
        .filter_map(Result::ok)
        .map(|f| f.pixel_format())
        .collect()
}

/// Sizes a format offers as (width, height) candidates near the request.
fn candidate_sizes(dev: &Device, pf: PixelFormat, want: (u32, u32)) -> Vec<(u32, u32)> {
    match dev.frame_sizes(pf) {
        Ok(FrameSizes::Discrete(list)) => list.iter().map(|s| (s.width(), s.height())).collect(),
        Ok(FrameSizes::Stepwise(s)) | Ok(FrameSizes::Continuous(s)) => {
            let clamp = |v: u32, lo: u32, hi: u32, step: u32| {
                let v = v.clamp(lo, hi.max(lo));
                let step = step.max(1);
                lo + (v - lo) / step * step
            };
            vec![(
                clamp(want.0, s.min_width(), s.max_width(), s.step_width()),
                clamp(want.1, s.min_height(), s.max_height(), s.step_height()),
            )]
        }
        Err(_) => vec![want],
    }
}

/// The closest size: least difference in pixel count, ties to the closer width.
pub fn closest_size(candidates: &[(u32, u32)], want: (u32, u32)) -> Option<(u32, u32)> {
    let area = |s: (u32, u32)| s.0 as i64 * s.1 as i64;
    candidates.iter().copied().min_by_key(|&s| {
        (
            (area(s) - area(want)).abs(),
            (s.0 as i64 - want.0 as i64).abs(),
        )
    })
}

/// The frame interval closest to `fps` among what the device lists.
fn closest_interval(dev: &Device, pf: PixelFormat, size: (u32, u32), fps: u32) -> Fract {
    let want = Fract::new(1, fps.max(1));
    let rate = |f: &Fract| f.denominator() as f64 / f.numerator().max(1) as f64;
    match dev.frame_intervals(pf, size.0, size.1) {
        Ok(FrameIntervals::Discrete(list)) => list
            .iter()
            .map(|i| *i.fract())
            .min_by(|a, b| {
                (rate(a) - fps as f64)
                    .abs()
                    .total_cmp(&(rate(b) - fps as f64).abs())
            })
            .unwrap_or(want),
        _ => want,
    }
}

fn control_key(name: &str) -> String {
    name.trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Set `[camera.controls]` by their `v4l2-ctl -L` names; unknown names and refusals are warned.
fn apply_controls(dev: &mut Device, camera: &CameraConfig) {
    if camera.controls.is_empty() {
        return;
    }
    let known: Vec<(String, Cid)> = dev
        .controls()
        .filter_map(Result::ok)
        .map(|c| (control_key(c.name()), c.id()))
        .collect();
    for (name, value) in &camera.controls {
        let key = control_key(name);
        match known.iter().find(|(k, _)| *k == key) {
            Some((_, cid)) => {
                let v = (*value).clamp(i32::MIN as i64, i32::MAX as i64) as i32;
                match dev.write_control_raw(*cid, v) {
                    Ok(()) => tracing::info!(control = %name, value = v, "camera control set"),
                    Err(e) => {
                        tracing::warn!(control = %name, value = v, error = %e, "camera refused the control")
                    }
                }
            }
            None => {
                tracing::warn!(control = %name, "the camera has no such control (see `v4l2-ctl -L`)")
            }
        }
    }
}

fn force_keyframe_control(dev: &Device) -> Option<Cid> {
    dev.controls()
        .filter_map(Result::ok)
        .find(|c| control_key(c.name()) == "force_key_frame")
        .map(|c| c.id())
}

/// A streaming V4L2 camera.
pub struct V4l2Source {
    stream: ReadStream,
    /// A second handle for controls while streaming (force key frame).
    control: Option<(Device, Cid)>,
    path: PathBuf,
    card: String,
    pixel_format: PixelFormat,
    width: u32,
    height: u32,
    bytes_per_line: usize,
    last_frame: Instant,
    corrupt: u64,
    pools: Pools,
}

/// Where converted pictures and copied-out JPEGs live, so that a steady stream allocates no
/// frame buffers (kept apart: their sizes differ).
struct Pools {
    pictures: Arc<BufferPool>,
    jpegs: Arc<BufferPool>,
}

/// The first format in `wanted`'s order of preference that the device offers.
fn pick_format(
    dev: &Device,
    path: &Path,
    wanted: CaptureFormat,
) -> Result<PixelFormat, CaptureError> {
    let offered = formats(dev);
    preference(wanted)
        .into_iter()
        .find(|p| offered.contains(p))
        .ok_or_else(|| {
            let offered: Vec<String> = offered.iter().map(|p| fourcc(*p)).collect();
            CaptureError::NoFormat(format!(
                "{} offers {} but not {wanted:?}",
                path.display(),
                offered.join(",")
            ))
        })
}

impl V4l2Source {
    /// Open and start streaming.
    pub fn open(path: &Path, camera: &CameraConfig) -> Result<Self, CaptureError> {
        let open_err = |e: std::io::Error| CaptureError::Open(format!("{}: {e}", path.display()));
        let mut dev = Device::open(path).map_err(open_err)?;
        let card = dev
            .capabilities()
            .map(|c| c.card().to_string())
            .unwrap_or_default();
        if !is_video_capture(&dev) {
            return Err(CaptureError::NoFormat(format!(
                "{} is not a video capture node",
                path.display()
            )));
        }
        let pf = pick_format(&dev, path, camera.format)?;
        let want = (camera.width, camera.height);
        let size = closest_size(&candidate_sizes(&dev, pf, want), want).unwrap_or(want);
        let interval = closest_interval(&dev, pf, size, camera.fps);
        apply_controls(&mut dev, camera);
        let control =
            force_keyframe_control(&dev).and_then(|cid| Device::open(path).ok().map(|d| (d, cid)));
        let capture = dev
            .video_capture(PixFormat::new(size.0, size.1, pf))
            .map_err(open_err)?;
        let fmt = capture.format();
        if fmt.pixel_format() != pf {
            return Err(CaptureError::NoFormat(format!(
                "driver switched to {}",
                fourcc(fmt.pixel_format())
            )));
        }
        let (width, height, bytes_per_line) =
            (fmt.width(), fmt.height(), fmt.bytes_per_line() as usize);
        match capture.set_frame_interval(interval) {
            Ok(got) => tracing::debug!(interval = %got, "frame interval set"),
            Err(e) => tracing::debug!(error = %e, "device does not take a frame interval"),
        }
        let stream = capture.into_stream().map_err(open_err)?;
        Ok(Self {
            stream,
            control,
            path: path.to_path_buf(),
            card,
            pixel_format: pf,
            width,
            height,
            bytes_per_line,
            last_frame: Instant::now(),
            corrupt: 0,
            pools: Pools {
                pictures: BufferPool::new(super::SOURCE_POOL),
                jpegs: BufferPool::new(super::SOURCE_POOL),
            },
        })
    }

    /// Wait for a filled buffer. Ok(false): nothing yet. Err: the device is gone.
    fn wait(&self, timeout: Duration) -> Result<bool, CaptureError> {
        let mut fds = libc::pollfd {
            fd: self.stream.as_raw_fd(),
            events: libc::POLLIN | libc::POLLPRI,
            revents: 0,
        };
        // SAFETY: one valid pollfd for an fd the stream owns.
        let n = unsafe { libc::poll(&mut fds, 1, timeout.as_millis() as libc::c_int) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return if e.kind() == std::io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e.into())
            };
        }
        if fds.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0
            && fds.revents & libc::POLLIN == 0
        {
            return Err(CaptureError::Ended(format!(
                "{} disconnected",
                self.path.display()
            )));
        }
        Ok(n > 0 && fds.revents & libc::POLLIN != 0)
    }
}

/// A filled buffer as a payload: raw formats converted to I420, compressed ones copied out.
fn convert(
    layout: (PixelFormat, u32, u32, usize),
    pools: &Pools,
    data: &[u8],
) -> Result<Payload, String> {
    let pool = &pools.pictures;
    let (pf, w, h, bpl) = (layout.0, layout.1 & !1, layout.2 & !1, layout.3);
    if pf == PixelFormat::YUYV {
        I420::from_yuyv_in(Some(pool), w, h, bpl, data)
            .map(Payload::I420)
            .map_err(|e| e.to_string())
    } else if pf == NV12 {
        I420::from_nv12_in(Some(pool), w, h, bpl, data)
            .map(Payload::I420)
            .map_err(|e| e.to_string())
    } else if pf == H264 {
        Ok(Payload::H264(Bytes::copy_from_slice(data)))
    } else {
        Ok(Payload::Mjpeg(pools.jpegs.copy_to_bytes(data)))
    }
}

impl Source for V4l2Source {
    fn info(&self) -> SourceInfo {
        SourceInfo {
            name: if self.card.is_empty() {
                self.path.display().to_string()
            } else {
                format!("{} ({})", self.path.display(), self.card)
            },
            format: match fourcc(self.pixel_format).as_str() {
                "MJPG" | "JPEG" => "MJPEG".into(),
                other => other.to_string(),
            },
            width: self.width,
            height: self.height,
        }
    }

    fn next_frame(&mut self) -> Result<CapturedFrame, CaptureError> {
        let started = Instant::now();
        loop {
            if self.last_frame.elapsed() > STALL {
                return Err(CaptureError::Ended(format!(
                    "{} delivered nothing for {STALL:?}",
                    self.path.display()
                )));
            }
            if started.elapsed() > Duration::from_secs(1) {
                return Err(CaptureError::Stalled(started.elapsed()));
            }
            if !self.wait(Duration::from_millis(200))? {
                continue;
            }
            let layout = (
                self.pixel_format,
                self.width,
                self.height,
                self.bytes_per_line,
            );
            let pools = &self.pools;
            let converted = self.stream.dequeue(|buf| {
                if buf.is_error() || buf.is_empty() {
                    return Ok(None);
                }
                Ok(Some(convert(layout, pools, &buf)))
            });
            match converted {
                Ok(Some(Ok(payload))) => {
                    self.last_frame = Instant::now();
                    return Ok(CapturedFrame {
                        payload,
                        captured_at: Instant::now(),
                    });
                }
                Ok(Some(Err(e))) => {
                    self.corrupt += 1;
                    tracing::debug!(error = %e, "unusable buffer skipped");
                }
                Ok(None) => {
                    // Driver flagged the buffer as corrupt (V4L2_BUF_FLAG_ERROR): skip it.
                    self.corrupt += 1;
                    self.last_frame = Instant::now();
                }
                Err(e) => {
                    return Err(match e.raw_os_error() {
                        Some(libc::ENODEV) => {
                            CaptureError::Ended(format!("{} disconnected", self.path.display()))
                        }
                        _ => CaptureError::Io(e),
                    })
                }
            }
        }
    }

    fn request_keyframe(&mut self) -> bool {
        match &mut self.control {
            Some((dev, cid)) => dev.write_control_raw(*cid, 1).is_ok(),
            None => false,
        }
    }
}

/// The first capture node with a format we can use, for `source = "auto"`.
pub fn first_usable_device(camera: &CameraConfig) -> Option<PathBuf> {
    let mut nodes: Vec<PathBuf> = std::fs::read_dir("/dev")
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.strip_prefix("video")
                    .is_some_and(|d| d.parse::<u32>().is_ok())
            })
        })
        .collect();
    nodes.sort_by_key(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n[5..].parse::<u32>().ok())
            .unwrap_or(u32::MAX)
    });
    // The configured device first, then the rest in order.
    nodes.insert(0, camera.device.clone());
    let wanted = preference(camera.format);
    nodes.into_iter().find(|p| {
        Device::open(p)
            .map(|d| is_video_capture(&d) && formats(&d).iter().any(|f| wanted.contains(f)))
            .unwrap_or(false)
    })
}

/// What `snaprtcd list-devices` shows of one capture node.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceListing {
    /// The device node, e.g. `/dev/video0`.
    pub path: String,
    /// The driver's card name, e.g. `HD Pro Webcam C920`.
    pub card: String,
    /// Every pixel format it can capture.
    pub formats: Vec<FormatListing>,
}

/// One pixel format of a device and the sizes it offers.
#[derive(Debug, Clone, PartialEq)]
pub struct FormatListing {
    /// FourCC, e.g. `YUYV`, `MJPG`, `H264`.
    pub fourcc: String,
    /// The sizes offered in that format.
    pub sizes: SizeListing,
}

/// Sizes of a format: a list (each with its frame rates) or a range.
#[derive(Debug, Clone, PartialEq)]
pub enum SizeListing {
    /// (width, height, frame rates offered).
    Discrete(Vec<(u32, u32, Vec<f64>)>),
    /// Any size between the two (stepwise or continuous).
    Range {
        /// Smallest (width, height).
        min: (u32, u32),
        /// Largest (width, height).
        max: (u32, u32),
    },
}

fn rates(dev: &Device, pf: PixelFormat, w: u32, h: u32) -> Vec<f64> {
    match dev.frame_intervals(pf, w, h) {
        Ok(FrameIntervals::Discrete(list)) => list
            .iter()
            .map(|i| {
                let f = i.fract();
                f.denominator() as f64 / f.numerator().max(1) as f64
            })
            .collect(),
        Ok(FrameIntervals::Stepwise(s)) | Ok(FrameIntervals::Continuous(s)) => {
            let rate = |f: &Fract| f.denominator() as f64 / f.numerator().max(1) as f64;
            vec![rate(s.max()), rate(s.min())]
        }
        Err(_) => Vec::new(),
    }
}

fn describe(dev: &Device) -> DeviceListing {
    let path = dev
        .path()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let card = dev
        .capabilities()
        .map(|c| c.card().to_string())
        .unwrap_or_default();
    let formats = formats(dev)
        .into_iter()
        .filter_map(|pf| {
            let sizes = match dev.frame_sizes(pf).ok()? {
                FrameSizes::Discrete(list) => SizeListing::Discrete(
                    list.iter()
                        .map(|s| (s.width(), s.height(), rates(dev, pf, s.width(), s.height())))
                        .collect(),
                ),
                FrameSizes::Stepwise(s) | FrameSizes::Continuous(s) => SizeListing::Range {
                    min: (s.min_width(), s.min_height()),
                    max: (s.max_width(), s.max_height()),
                },
            };
            Some(FormatListing {
                fourcc: fourcc(pf),
                sizes,
            })
        })
        .collect();
    DeviceListing {
        path,
        card,
        formats,
    }
}

fn rate_text(rates: &[f64]) -> String {
    let fmt = |r: f64| format!("{}", (r * 100.0).round() / 100.0);
    let lo = rates.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = rates.iter().copied().fold(0.0, f64::max);
    match rates.len() {
        0 => String::new(),
        _ if (hi - lo).abs() < 0.01 => format!("@{}", fmt(hi)),
        _ => format!("@{}-{}", fmt(lo), fmt(hi)),
    }
}

/// The table: one line per device and format; sizes as `WxH@fps` (`@min-max` when the device
/// offers several rates), or a `WxH..WxH` range.
pub fn format_table(devices: &[DeviceListing]) -> String {
    use std::fmt::Write;
    if devices.is_empty() {
        return "no V4L2 capture devices found\n".into();
    }
    let pw = devices
        .iter()
        .map(|d| d.path.len())
        .max()
        .unwrap_or(0)
        .max(6);
    let cw = devices
        .iter()
        .map(|d| d.card.chars().count().min(24))
        .max()
        .unwrap_or(0)
        .max(4);
    let mut out = String::new();
    let _ = writeln!(out, "{:<pw$}  {:<cw$}  FORMAT  SIZES@FPS", "DEVICE", "CARD");
    for d in devices {
        let card: String = d.card.chars().take(24).collect();
        if d.formats.is_empty() {
            let _ = writeln!(out, "{:<pw$}  {card:<cw$}  -       (no formats)", d.path);
        }
        for f in &d.formats {
            let sizes = match &f.sizes {
                SizeListing::Discrete(list) => list
                    .iter()
                    .map(|(w, h, r)| format!("{w}x{h}{}", rate_text(r)))
                    .collect::<Vec<_>>()
                    .join(" "),
                SizeListing::Range { min, max } => {
                    format!("{}x{}..{}x{}", min.0, min.1, max.0, max.1)
                }
            };
            let _ = writeln!(
                out,
                "{:<pw$}  {card:<cw$}  {:<6}  {sizes}",
                d.path, f.fourcc
            );
        }
    }
    out
}

/// Every video capture node (metadata and output nodes skipped), sorted by path.
pub fn capture_devices() -> Result<Vec<DeviceListing>, CaptureError> {
    let mut devices: Vec<DeviceListing> = match linuxvideo::list() {
        Ok(list) => list
            .filter_map(Result::ok)
            .filter(is_video_capture)
            .map(|d| describe(&d))
            .collect(),
        // No /dev at all (a container): no devices.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(CaptureError::Io(e)),
    };
    devices.sort_by(|a, b| {
        let num = |p: &str| {
            p.trim_start_matches(|c: char| !c.is_ascii_digit())
                .parse::<u32>()
                .unwrap_or(u32::MAX)
        };
        (num(&a.path), &a.path).cmp(&(num(&b.path), &b.path))
    });
    Ok(devices)
}

/// A compact table of every capture device: formats, sizes, frame rates.
pub fn list_devices() -> Result<String, CaptureError> {
    Ok(format_table(&capture_devices()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_size_prefers_the_nearest_area() {
        let sizes = [
            (320, 180),
            (640, 360),
            (640, 480),
            (1280, 720),
            (1920, 1080),
        ];
        assert_eq!(closest_size(&sizes, (1280, 720)), Some((1280, 720)));
        assert_eq!(closest_size(&sizes, (1200, 700)), Some((1280, 720)));
        assert_eq!(closest_size(&sizes, (640, 470)), Some((640, 480)));
        assert_eq!(closest_size(&[], (640, 480)), None);
    }

    #[test]
    fn preference_puts_compressed_formats_first() {
        let p = preference(CaptureFormat::Auto);
        assert_eq!(p[0], H264);
        assert_eq!(p[1], PixelFormat::MJPG);
        assert_eq!(preference(CaptureFormat::Nv12), vec![NV12]);
    }

    #[test]
    fn device_table_is_one_line_per_format() {
        assert_eq!(format_table(&[]), "no V4L2 capture devices found\n");
        let devices = [DeviceListing {
            path: "/dev/video0".into(),
            card: "vivid".into(),
            formats: vec![
                FormatListing {
                    fourcc: "YUYV".into(),
                    sizes: SizeListing::Discrete(vec![
                        (640, 480, vec![30.0, 25.0, 15.0]),
                        (1280, 720, vec![30.0]),
                        (1920, 1080, vec![]),
                    ]),
                },
                FormatListing {
                    fourcc: "NV12".into(),
                    sizes: SizeListing::Range {
                        min: (16, 16),
                        max: (1920, 1080),
                    },
                },
            ],
        }];
        let table = format_table(&devices);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].starts_with("DEVICE"));
        assert_eq!(
            lines[1],
            "/dev/video0  vivid  YUYV    640x480@15-30 1280x720@30 1920x1080"
        );
        assert_eq!(lines[2], "/dev/video0  vivid  NV12    16x16..1920x1080");
    }

    #[test]
    fn fourcc_names_are_printable() {
        assert_eq!(fourcc(PixelFormat::YUYV), "YUYV");
        assert_eq!(fourcc(PixelFormat::from_fourcc(*b"Y10 ")), "Y10");
        let be = PixelFormat::from_fourcc([b'Y', b'1', b'6', b' ' | 0x80]);
        assert_eq!(fourcc(be), "Y16-BE");
    }

    #[test]
    fn control_names_match_like_v4l2_ctl() {
        assert_eq!(control_key("Force Key Frame"), "force_key_frame");
        assert_eq!(control_key("brightness"), "brightness");
    }
}
