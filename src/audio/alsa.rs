//! ALSA capture (libasound through the `alsa` crate): S16_LE, interleaved, at `[audio] rate`
//! and `channels`, one `[audio] period_ms` period a read (whole 20 ms frames), ten periods of
//! buffer. And `auto`: the ALSA card on the same USB device as the V4L2 camera, found in sysfs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use alsa::pcm::{Access, Format, HwParams, PCM};
use alsa::{Direction, ValueOr};

use super::{AudioError, AudioSource, Block};

/// Periods in the ALSA buffer: 200 to 600 ms of slack before an overrun.
const PERIODS: alsa::pcm::Frames = 10;
/// Longest wait for a period before the read reports a stall.
const WAIT: Duration = Duration::from_secs(1);

/// An open ALSA capture device.
pub struct AlsaSource {
    pcm: PCM,
    device: String,
    block: Duration,
    channels: usize,
}

impl AlsaSource {
    /// Open `device` for capture at `rate` Hz and `channels`, in periods of `frames` frames.
    pub fn open(device: &str, rate: u32, channels: u32, frames: usize) -> Result<Self, AudioError> {
        let open = |e: alsa::Error| AudioError::Open(format!("ALSA {device}: {e}"));
        let pcm = PCM::new(device, Direction::Capture, false).map_err(open)?;
        {
            let hw = HwParams::any(&pcm).map_err(open)?;
            hw.set_access(Access::RWInterleaved).map_err(open)?;
            hw.set_format(Format::s16()).map_err(open)?;
            hw.set_channels(channels).map_err(open)?;
            hw.set_rate(rate, ValueOr::Nearest).map_err(|e| {
                AudioError::Open(format!(
                    "ALSA {device}: {rate} Hz: {e} (a plughw: device converts)"
                ))
            })?;
            let period = frames as alsa::pcm::Frames;
            hw.set_period_size_near(period, ValueOr::Nearest)
                .map_err(open)?;
            hw.set_buffer_size_near(period * PERIODS).map_err(open)?;
            pcm.hw_params(&hw).map_err(open)?;
        }
        pcm.start().map_err(open)?;
        Ok(Self {
            pcm,
            device: device.to_owned(),
            channels: channels as usize,
            block: Duration::from_secs_f64(frames as f64 / f64::from(rate)),
        })
    }
}

impl AudioSource for AlsaSource {
    fn name(&self) -> String {
        format!("alsa {}", self.device)
    }

    fn read(&mut self, pcm: &mut [i16]) -> Result<Block, AudioError> {
        let io = self
            .pcm
            .io_i16()
            .map_err(|e| AudioError::Ended(e.to_string()))?;
        let channels = self.channels;
        let mut filled = 0;
        while filled < pcm.len() {
            match self.pcm.wait(Some(WAIT.as_millis() as u32)) {
                Ok(true) => {}
                Ok(false) => return Err(AudioError::Stalled(WAIT)),
                Err(e) => self.recover(e)?,
            }
            match io.readi(&mut pcm[filled..]) {
                Ok(n) => filled += n * channels,
                Err(e) => self.recover(e)?,
            }
        }
        // The block's last frame just arrived: its first was captured one block ago.
        Ok(Block::Pcm {
            at: Instant::now()
                .checked_sub(self.block)
                .unwrap_or_else(Instant::now),
        })
    }
}

impl AlsaSource {
    /// An overrun (EPIPE) or a suspend is recovered from; anything else (the card is gone:
    /// ENODEV) ends the source.
    fn recover(&self, e: alsa::Error) -> Result<(), AudioError> {
        let errno = e.errno();
        if errno == libc::EPIPE || errno == libc::ESTRPIPE || errno == libc::EINTR {
            self.pcm
                .try_recover(e, true)
                .map_err(|e| AudioError::Ended(format!("ALSA {}: {e}", self.device)))?;
            let _ = self.pcm.start();
            return Ok(());
        }
        Err(AudioError::Ended(format!("ALSA {}: {e}", self.device)))
    }
}

/// The ALSA capture device of the USB device the V4L2 node `video` belongs to (a webcam's own
/// microphone), as `plughw:CARD=ID,DEV=N` (plughw converts its rate to the one asked for).
/// `sys` is the sysfs root (`/sys`; tests give a fake tree).
pub fn camera_microphone(sys: &Path, video: &Path) -> Option<String> {
    let video = std::fs::canonicalize(video).unwrap_or_else(|_| video.to_path_buf());
    let node = video.file_name()?.to_str()?;
    let cam = usb_device(&sys.join("class/video4linux").join(node).join("device"))?;
    let mut cards: Vec<PathBuf> = std::fs::read_dir(sys.join("class/sound"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("card"))
        })
        .collect();
    cards.sort();
    for card in cards {
        if usb_device(&card.join("device")).as_deref() != Some(cam.as_path()) {
            continue;
        }
        let Some(index) = card
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("card"))
        else {
            continue;
        };
        // The card's first capture PCM: pcmC<card>D<dev>c.
        let mut devs: Vec<u32> = std::fs::read_dir(sys.join("class/sound"))
            .ok()?
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().into_string().ok()?;
                let rest = n.strip_prefix(&format!("pcmC{index}D"))?;
                rest.strip_suffix('c')?.parse().ok()
            })
            .collect();
        devs.sort_unstable();
        let dev = *devs.first()?;
        let id = std::fs::read_to_string(card.join("id")).ok();
        let id = id.as_deref().map(str::trim).filter(|s| !s.is_empty());
        return Some(match id {
            Some(id) => format!("plughw:CARD={id},DEV={dev}"),
            None => format!("plughw:{index},{dev}"),
        });
    }
    None
}

/// The USB device (e.g. `/sys/devices/…/usb1/1-1`) that a sysfs `device` link leads into: its
/// interface directory (`1-1:1.0`) is the one named with a colon; the device is its parent.
fn usb_device(link: &Path) -> Option<PathBuf> {
    let real = std::fs::canonicalize(link).ok()?;
    let mut at = real.as_path();
    loop {
        let name = at.file_name()?.to_str()?;
        if name.contains(':') && name.contains('-') {
            return at.parent().map(Path::to_path_buf);
        }
        at = at.parent()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn auto_finds_the_sound_card_on_the_cameras_usb_device() {
        let dir = std::env::temp_dir().join(format!("snaprtcd-sysfs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let usb = dir.join("devices/pci0000:00/0000:00:14.0/usb1");
        let other = usb.join("1-2/1-2:1.0");
        let cam = usb.join("1-1");
        for d in [
            cam.join("1-1:1.0/video4linux/video0"),
            cam.join("1-1:1.2/sound/card1"),
            other.join("sound/card0"),
            dir.join("class/video4linux"),
            dir.join("class/sound"),
        ] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::create_dir_all(dir.join("class/video4linux/video0")).unwrap();
        symlink(
            cam.join("1-1:1.0"),
            dir.join("class/video4linux/video0/device"),
        )
        .unwrap();
        for (card, iface) in [("card0", other.clone()), ("card1", cam.join("1-1:1.2"))] {
            std::fs::create_dir_all(dir.join("class/sound").join(card)).unwrap();
            symlink(&iface, dir.join("class/sound").join(card).join("device")).unwrap();
        }
        std::fs::write(dir.join("class/sound/card1/id"), "C920\n").unwrap();
        std::fs::create_dir_all(dir.join("class/sound/pcmC1D0c")).unwrap();
        std::fs::create_dir_all(dir.join("class/sound/pcmC0D0c")).unwrap();
        assert_eq!(
            camera_microphone(&dir, Path::new("/dev/video0")).as_deref(),
            Some("plughw:CARD=C920,DEV=0")
        );
        // A camera with no sound card on its USB device: none.
        assert_eq!(camera_microphone(&dir, Path::new("/dev/video7")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
