//! The `exec` audio source: a program (argv, no shell) that writes raw S16LE samples (encoded
//! here) or Ogg/Opus (passed through) to stdout. Its stderr goes to the log; when it exits, the
//! audio thread restarts it with backoff and sends silence meanwhile.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use super::ogg::OggOpus;
use super::{AudioError, AudioSource, Block};
use crate::config::AudioExecFormat;

/// No byte for this long: the program is stuck; restart it.
const STALL: Duration = Duration::from_secs(5);

/// A running program and what it writes.
pub struct ExecAudio {
    child: Child,
    stdout: ChildStdout,
    program: String,
    ogg: Option<OggOpus>,
    buf: Vec<u8>,
    /// Bytes of the current raw block read so far.
    filled: usize,
    /// How long one raw block (one period) sounds.
    period: Duration,
    last_byte: Instant,
}

impl ExecAudio {
    /// Start `argv`; raw samples are read a `period` at a time.
    pub fn spawn(
        argv: &[String],
        format: AudioExecFormat,
        period: Duration,
    ) -> Result<Self, AudioError> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| AudioError::Open("[audio] exec is empty".into()))?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| AudioError::Open(format!("cannot start {program}: {e}")))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| AudioError::Open("no stdout pipe".into()))?;
        let name = std::path::Path::new(program)
            .file_name()
            .map_or_else(|| program.clone(), |n| n.to_string_lossy().into_owned());
        if let Some(stderr) = child.stderr.take() {
            let name = name.clone();
            // Ends when the program closes stderr (it exits or is killed).
            let _ = std::thread::Builder::new()
                .name("exec-audio-stderr".into())
                .spawn(move || {
                    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                        if !line.trim().is_empty() {
                            tracing::info!(target: "snaprtcd::exec", program = %name, "{}", line.trim_end());
                        }
                    }
                });
        }
        Ok(Self {
            child,
            stdout,
            program: name,
            ogg: (format == AudioExecFormat::Ogg).then(OggOpus::default),
            buf: vec![0; 16 * 1024],
            filled: 0,
            period,
            last_byte: Instant::now(),
        })
    }

    /// Wait up to `timeout` for stdout to be readable.
    fn wait_readable(&self, timeout: Duration) -> std::io::Result<bool> {
        let mut fds = libc::pollfd {
            fd: self.stdout.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; the fd is owned by self and open.
        let n = unsafe { libc::poll(&mut fds, 1, timeout.as_millis() as libc::c_int) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return if e.kind() == std::io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            };
        }
        Ok(n > 0)
    }

    fn ended(&mut self) -> AudioError {
        let _ = self.child.kill();
        match self.child.wait() {
            Ok(status) => AudioError::Ended(format!("{} exited ({status})", self.program)),
            Err(e) => AudioError::Ended(format!("{} ended: {e}", self.program)),
        }
    }
}

impl AudioSource for ExecAudio {
    fn name(&self) -> String {
        format!("exec {}", self.program)
    }

    fn read(&mut self, pcm: &mut [i16]) -> Result<Block, AudioError> {
        let started = Instant::now();
        loop {
            if let Some(ogg) = &mut self.ogg {
                if let Some(packet) = ogg.poll_packet() {
                    return Ok(Block::Opus {
                        packet,
                        at: Instant::now(),
                    });
                }
            } else if self.filled == pcm.len() * 2 {
                self.filled = 0;
                for (s, b) in pcm.iter_mut().zip(self.buf.chunks_exact(2)) {
                    *s = i16::from_le_bytes([b[0], b[1]]);
                }
                return Ok(Block::Pcm {
                    at: Instant::now()
                        .checked_sub(self.period)
                        .unwrap_or_else(Instant::now),
                });
            }
            if self.last_byte.elapsed() > STALL {
                return Err(AudioError::Ended(format!(
                    "{} wrote nothing for {STALL:?}",
                    self.program
                )));
            }
            if started.elapsed() > Duration::from_secs(1) {
                return Err(AudioError::Stalled(started.elapsed()));
            }
            if !self.wait_readable(Duration::from_millis(250))? {
                continue;
            }
            let n = if self.ogg.is_some() {
                self.stdout.read(&mut self.buf)?
            } else {
                let want = pcm.len() * 2;
                if self.buf.len() < want {
                    self.buf.resize(want, 0);
                }
                self.stdout.read(&mut self.buf[self.filled..want])?
            };
            if n == 0 {
                return Err(self.ended());
            }
            self.last_byte = Instant::now();
            match &mut self.ogg {
                Some(ogg) => ogg.handle_input(&self.buf[..n]),
                None => self.filled += n,
            }
        }
    }
}

impl Drop for ExecAudio {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
