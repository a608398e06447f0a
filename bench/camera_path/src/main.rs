//! `snaprtcd-camera-path`: helpers of the camera path benchmark (bench/camera_path/run.sh).
//!
//! - `record`: a WHEP viewer (str0m, like a browser) that writes the H.264 it receives as
//!   Annex-B, from the first IDR on, and each access unit's RTP time (µs) on a line of its own;
//! - `match`: pairs every decoded picture of that recording with the source picture it was
//!   made from, and writes those source pictures, in order, as a raw I420 file, so ffmpeg's
//!   `ssim`/`psnr` filters compare like with like. The daemon may skip pictures (rate
//!   control, a busy encoder) and stamps them with the time it read them, so the n-th picture
//!   out is not the n-th picture in: the first one is found by searching every source picture,
//!   the next ones from their RTP time (at `--fps`), each checked against its two neighbours
//!   either side (luma MSE on a sparse grid);
//! - `listen`: a WHEP viewer that takes video, and audio too with `--audio 1` (an Opus
//!   m-line, as a browser offers), for `--seconds`, and prints what it got: the listeners of
//!   bench/audio/run.sh's WebRTC part. With `--recv-every-ms N` it reads its socket every N ms
//!   instead of sleeping in a read: on one machine the kernel otherwise wakes the receiving
//!   process inside the sender's `sendto`, and charges that to the daemon, which a network
//!   between them spares it (`perf` showed it at ~9 % of the daemon's samples with 20 viewers).

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind};
use str0m::net::{DatagramRecv, Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// Longest wait for an HTTP answer, or for the first picture after the answer.
const STEP_TIMEOUT: Duration = Duration::from_secs(15);

const USAGE: &str = "usage:\n  snaprtcd-camera-path record --url http://127.0.0.1:PORT --seconds S --out FILE.h264 --times FILE\n  snaprtcd-camera-path listen --url http://127.0.0.1:PORT --seconds S --audio 0|1 [--recv-every-ms N]\n  snaprtcd-camera-path match --width W --height H --fps F --source SRC.yuv --decoded DEC.yuv --times FILE --ref OUT.yuv";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let command = args.next().ok_or_else(|| anyhow!("{USAGE}"))?;
    let mut opts = std::collections::HashMap::new();
    while let Some(k) = args.next() {
        let v = args
            .next()
            .ok_or_else(|| anyhow!("{k} needs a value\n{USAGE}"))?;
        opts.insert(k.trim_start_matches("--").to_owned(), v);
    }
    let get = |k: &str| {
        opts.get(k)
            .cloned()
            .ok_or_else(|| anyhow!("--{k} is missing\n{USAGE}"))
    };
    let num =
        |k: &str| -> Result<u64> { get(k)?.parse().map_err(|e| anyhow!("--{k}: {e}\n{USAGE}")) };
    let authority = || -> Result<String> {
        Ok(get("url")?
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("--url must start with http://"))?
            .trim_end_matches('/')
            .to_owned())
    };
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    match command.as_str() {
        "record" => {
            let authority = authority()?;
            runtime()?.block_on(record(
                &authority,
                Duration::from_secs(num("seconds")?),
                PathBuf::from(get("out")?),
                PathBuf::from(get("times")?),
            ))
        }
        "listen" => {
            let authority = authority()?;
            let every = match get("recv-every-ms") {
                Ok(_) => Some(Duration::from_millis(num("recv-every-ms")?.max(1))),
                Err(_) => None,
            };
            runtime()?.block_on(listen(
                &authority,
                Duration::from_secs(num("seconds")?),
                num("audio")? != 0,
                every,
            ))
        }
        "match" => match_frames(
            num("width")? as usize,
            num("height")? as usize,
            num("fps")? as f64,
            PathBuf::from(get("source")?),
            PathBuf::from(get("decoded")?),
            PathBuf::from(get("times")?),
            PathBuf::from(get("ref")?),
        ),
        _ => bail!("unknown command {command:?}\n{USAGE}"),
    }
}

/// Does this Annex-B access unit hold an IDR slice?
fn has_idr(au: &[u8]) -> bool {
    au.windows(4)
        .any(|w| w[..3] == [0, 0, 1] && w[3] & 0x1f == 5)
}

/// POST the offer to /whep: the session's Location and the answer.
async fn whep_post(authority: &str, offer: &str) -> Result<(String, String)> {
    let r = http(
        authority,
        "POST",
        "/whep",
        Some("application/sdp"),
        offer.as_bytes(),
    )
    .await?;
    if r.status != 201 {
        bail!("POST /whep: {} {:.200}", r.status, r.text());
    }
    let location = r
        .header("location")
        .ok_or_else(|| anyhow!("POST /whep: 201 without Location"))?
        .to_owned();
    Ok((location, r.text()))
}

async fn record(authority: &str, seconds: Duration, out: PathBuf, times: PathBuf) -> Result<()> {
    let (mut peer, offer, pending) = Peer::offer(authority, false, None).await?;
    let (location, answer) = whep_post(authority, &offer).await?;
    peer.accept(pending, &answer)?;

    let mut out = BufWriter::new(File::create(&out).with_context(|| format!("{out:?}"))?);
    let mut times = BufWriter::new(File::create(&times).with_context(|| format!("{times:?}"))?);
    let (mut frames, mut bytes, mut gaps, mut skipped) = (0u64, 0u64, 0u64, 0u64);
    let mut first: Option<Instant> = None;
    let mut io_error = None;
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT + seconds;
    let watched = peer
        .drive(deadline, |e| {
            if let Event::MediaData(d) = e {
                if first.is_none() && !has_idr(&d.data) {
                    skipped += 1;
                    return Ok(false);
                }
                first.get_or_insert_with(Instant::now);
                if !d.contiguous {
                    gaps += 1;
                }
                frames += 1;
                bytes += d.data.len() as u64;
                if let Err(e) = out
                    .write_all(&d.data)
                    .and_then(|()| writeln!(times, "{}", d.time.as_micros()))
                {
                    io_error = Some(e);
                    return Ok(true);
                }
            }
            Ok(first.is_some_and(|t| t.elapsed() >= seconds))
        })
        .await;
    let r = http(authority, "DELETE", &location, None, b"").await;
    watched.with_context(|| format!("video ({frames} pictures so far)"))?;
    if let Some(e) = io_error {
        return Err(e.into());
    }
    out.flush()?;
    times.flush()?;
    let r = r?;
    if r.status != 200 {
        bail!("DELETE {location}: {} {:.200}", r.status, r.text());
    }
    let secs = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    println!(
        "recorded {frames} pictures in {secs:.1} s, {:.0} kbit/s, {gaps} not contiguous, {skipped} before the first IDR",
        bytes as f64 * 8.0 / secs.max(0.001) / 1000.0
    );
    Ok(())
}

/// The local address a datagram to `authority` (`IP:PORT`) would leave from: a route lookup
/// through a connected UDP socket, which sends nothing. Loopback when it is not an address.
fn local_ip_toward(authority: &str) -> Result<std::net::IpAddr> {
    let Ok(to) = authority.parse::<SocketAddr>() else {
        return Ok(Ipv4Addr::LOCALHOST.into());
    };
    let probe = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    probe.connect(to)?;
    Ok(probe.local_addr()?.ip())
}

/// Watch (video, and audio when `audio`) for `seconds` once media flows, then leave.
async fn listen(
    authority: &str,
    seconds: Duration,
    audio: bool,
    recv_every: Option<Duration>,
) -> Result<()> {
    let (mut peer, offer, pending) = Peer::offer(authority, audio, recv_every).await?;
    let (location, answer) = whep_post(authority, &offer).await?;
    if audio && !answer.contains("opus/48000") {
        bail!("the answer has no Opus track: {answer:.400}");
    }
    peer.accept(pending, &answer)?;
    let (mut pictures, mut sound) = (0u64, 0u64);
    let mut first: Option<Instant> = None;
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT + seconds;
    let watched = peer
        .drive(deadline, |e| {
            if let Event::MediaData(d) = e {
                first.get_or_insert_with(Instant::now);
                let (kind, count) = match d.params.spec().codec {
                    str0m::format::Codec::Opus => ("audio", &mut sound),
                    _ => ("video", &mut pictures),
                };
                *count += 1;
                if *count == 1 {
                    // For bench/audio/run.sh, which stops the viewers before they finish.
                    println!("{kind} flowing");
                }
            }
            Ok(first.is_some_and(|t| t.elapsed() >= seconds))
        })
        .await;
    let _ = http(authority, "DELETE", &location, None, b"").await;
    watched.with_context(|| format!("{pictures} pictures, {sound} audio frames so far"))?;
    if audio && sound == 0 {
        bail!("no audio in {seconds:?}");
    }
    println!("{pictures} pictures, {sound} audio frames in {seconds:?}");
    Ok(())
}

/// Luma MSE of two I420 pictures on a sparse grid (every 2nd line, every 4th column): enough
/// to tell noisy pictures apart, cheap enough to search hundreds.
fn luma_mse(a: &[u8], b: &[u8], width: usize, height: usize) -> f64 {
    let mut sum = 0u64;
    let mut n = 0u64;
    for y in (0..height).step_by(2) {
        let row = y * width;
        for x in (0..width).step_by(4) {
            let d = i64::from(a[row + x]) - i64::from(b[row + x]);
            sum += (d * d) as u64;
            n += 1;
        }
    }
    sum as f64 / n.max(1) as f64
}

fn psnr(mse: f64) -> f64 {
    if mse <= 0.0 {
        99.0
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

fn match_frames(
    width: usize,
    height: usize,
    fps: f64,
    source: PathBuf,
    decoded: PathBuf,
    times: PathBuf,
    reference: PathBuf,
) -> Result<()> {
    let size = width * height * 3 / 2;
    let src = File::open(&source).with_context(|| format!("{source:?}"))?;
    let n_src = (src.metadata()?.len() as usize) / size;
    let mut dec = File::open(&decoded).with_context(|| format!("{decoded:?}"))?;
    let n_dec = (dec.metadata()?.len() as usize) / size;
    let mut text = String::new();
    File::open(&times)
        .with_context(|| format!("{times:?}"))?
        .read_to_string(&mut text)?;
    let stamps: Vec<i64> = text
        .lines()
        .map(|l| l.trim().parse())
        .collect::<Result<_, _>>()
        .context("times file")?;
    if n_src == 0 || n_dec == 0 {
        bail!("nothing to match: {n_src} source and {n_dec} decoded pictures");
    }
    if stamps.len() != n_dec {
        eprintln!(
            "match: {} RTP times but {n_dec} decoded pictures; matching the first {}",
            stamps.len(),
            stamps.len().min(n_dec)
        );
    }
    let n = stamps.len().min(n_dec);
    let read_src = |k: usize, buf: &mut Vec<u8>| -> Result<()> {
        buf.resize(size, 0);
        src.read_exact_at(buf, (k * size) as u64)?;
        Ok(())
    };
    let mut out = BufWriter::new(File::create(&reference)?);
    let mut picture = vec![0u8; size];
    let mut candidate = Vec::new();
    let mut k0 = 0usize;
    let (mut adjusted, mut psnr_sum) = (0usize, 0.0);
    for (j, stamp) in stamps.iter().take(n).enumerate() {
        dec.read_exact(&mut picture)?;
        let best = if j == 0 {
            // Every source picture (the stream loops, so the recording may start anywhere).
            let mut best = (f64::MAX, 0usize);
            for k in 0..n_src {
                read_src(k, &mut candidate)?;
                let mse = luma_mse(&picture, &candidate, width, height);
                if mse < best.0 {
                    best = (mse, k);
                }
            }
            k0 = best.1;
            best
        } else {
            let steps = ((stamp - stamps[0]) as f64 * fps / 1e6).round() as i64;
            let predicted = (k0 as i64 + steps).rem_euclid(n_src as i64);
            let mut best = (f64::MAX, 0usize, 0i64);
            for d in -2i64..=2 {
                let k = (predicted + d).rem_euclid(n_src as i64) as usize;
                read_src(k, &mut candidate)?;
                let mse = luma_mse(&picture, &candidate, width, height);
                if mse < best.0 {
                    best = (mse, k, d);
                }
            }
            if best.2 != 0 {
                adjusted += 1;
            }
            (best.0, best.1)
        };
        psnr_sum += psnr(best.0);
        read_src(best.1, &mut candidate)?;
        out.write_all(&candidate)?;
    }
    out.flush()?;
    println!(
        "matched {n} pictures against {n_src} source pictures (first at #{k0}); {adjusted} moved off the RTP-time guess; sparse luma PSNR {:.2} dB",
        psnr_sum / n as f64
    );
    Ok(())
}

/// A str0m peer like a browser: full ICE on a loopback UDP socket, recvonly H.264.
struct Peer {
    rtc: Rtc,
    socket: Socket,
    local: SocketAddr,
}

/// How the peer reads: woken by each datagram (a browser), or every so often from a socket no
/// poller watches, so that a datagram sent to it wakes nobody.
enum Socket {
    Woken(UdpSocket),
    Polled(std::net::UdpSocket, Duration),
}

impl Peer {
    /// A recvonly offer for video, and for audio (Opus) when `audio`; reading every
    /// `recv_every` when given. The socket is on the local address the daemon at
    /// `authority` is reached from (loopback for 127.0.0.1; another interface across a
    /// network or a network namespace).
    async fn offer(
        authority: &str,
        audio: bool,
        recv_every: Option<Duration>,
    ) -> Result<(Peer, String, SdpPendingOffer)> {
        let ip = local_ip_toward(authority)?;
        let socket = match recv_every {
            None => Socket::Woken(UdpSocket::bind((ip, 0)).await?),
            Some(every) => {
                let s = std::net::UdpSocket::bind((ip, 0))?;
                s.set_nonblocking(true)?;
                Socket::Polled(s, every)
            }
        };
        let local = match &socket {
            Socket::Woken(s) => s.local_addr()?,
            Socket::Polled(s, _) => s.local_addr()?,
        };
        let mut rtc = Rtc::builder()
            .enable_h264(true)
            .enable_opus(audio, false)
            .build(Instant::now());
        rtc.add_local_candidate(Candidate::host(local, "udp")?);
        let mut api = rtc.sdp_api();
        api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        if audio {
            api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        }
        let (offer, pending) = api.apply().ok_or_else(|| anyhow!("str0m made no offer"))?;
        let sdp = offer.to_sdp_string();
        Ok((Peer { rtc, socket, local }, sdp, pending))
    }

    fn accept(&mut self, pending: SdpPendingOffer, answer: &str) -> Result<()> {
        let answer = SdpAnswer::from_sdp_string(answer)
            .map_err(|e| anyhow!("answer SDP: {e}: {answer:.200}"))?;
        self.rtc.sdp_api().accept_answer(pending, answer)?;
        Ok(())
    }

    /// Run the peer like a browser's event loop until `on_event` returns true; an error at
    /// `deadline`.
    async fn drive(
        &mut self,
        deadline: tokio::time::Instant,
        mut on_event: impl FnMut(Event) -> Result<bool>,
    ) -> Result<()> {
        let mut buf = vec![0u8; 2048];
        loop {
            let timeout = loop {
                match self.rtc.poll_output()? {
                    Output::Timeout(t) => break t,
                    Output::Transmit(t) => match &self.socket {
                        Socket::Woken(s) => {
                            s.send_to(&t.contents, t.destination).await?;
                        }
                        Socket::Polled(s, _) => match s.send_to(&t.contents, t.destination) {
                            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => {
                                return Err(e.into())
                            }
                            _ => {}
                        },
                    },
                    Output::Event(e) => {
                        if on_event(e)? {
                            return Ok(());
                        }
                    }
                }
            };
            let socket = match &self.socket {
                Socket::Woken(s) => s,
                Socket::Polled(s, every) => {
                    let wake = timeout.min(Instant::now() + *every);
                    tokio::select! {
                        _ = tokio::time::sleep_until(wake.into()) => {}
                        _ = tokio::time::sleep_until(deadline) => bail!("timed out"),
                    }
                    loop {
                        match s.recv_from(&mut buf) {
                            Ok((n, source)) => {
                                Peer::receive(&mut self.rtc, self.local, &buf[..n], source)?
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                            Err(e) => return Err(e.into()),
                        }
                    }
                    if Instant::now() >= timeout {
                        self.rtc.handle_input(Input::Timeout(Instant::now()))?;
                    }
                    continue;
                }
            };
            tokio::select! {
                r = socket.recv_from(&mut buf) => {
                    let (n, source) = r?;
                    Peer::receive(&mut self.rtc, self.local, &buf[..n], source)?;
                }
                _ = tokio::time::sleep_until(timeout.into()) => {
                    self.rtc.handle_input(Input::Timeout(Instant::now()))?;
                }
                _ = tokio::time::sleep_until(deadline) => bail!("timed out"),
            }
        }
    }

    /// One datagram in (what is no DTLS, STUN or RTP is ignored).
    fn receive(rtc: &mut Rtc, local: SocketAddr, data: &[u8], source: SocketAddr) -> Result<()> {
        let Ok(contents) = DatagramRecv::try_from(data) else {
            return Ok(());
        };
        let input = Input::Receive(
            Instant::now(),
            Receive {
                proto: Protocol::Udp,
                source,
                destination: local,
                contents,
            },
        );
        rtc.handle_input(input)?;
        Ok(())
    }
}

struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request over a fresh connection (`Connection: close`), read to the end.
async fn http(
    authority: &str,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<HttpResponse> {
    let exchange = async {
        let mut tcp = TcpStream::connect(authority).await?;
        let ct = content_type
            .map(|t| format!("Content-Type: {t}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {authority}\r\n{ct}Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        tcp.write_all(head.as_bytes()).await?;
        tcp.write_all(body).await?;
        let mut buf = Vec::with_capacity(4096);
        tcp.read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(STEP_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow!("{method} {path}: no answer within {STEP_TIMEOUT:?}"))?
        .with_context(|| format!("{method} {path}"))?;
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("{method} {path}: no end of the HTTP head"))?;
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("{method} {path}: bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = buf[head_end + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = dechunk(&body);
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(nl) = body.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&body[..nl]).trim(), 16).unwrap_or(0);
        if size == 0 || body.len() < nl + 2 + size {
            break;
        }
        out.extend_from_slice(&body[nl + 2..nl + 2 + size]);
        body = &body[(nl + 4 + size).min(body.len())..];
    }
    out
}
