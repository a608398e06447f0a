//! The thin tokio shell of a TURN server reached over TCP or TLS (`turn:…?transport=tcp`,
//! `turns:`): one connection at a time, opened when the core asks
//! ([`super::turn::TurnOutput::Connect`]), bytes passed both ways through bounded channels.
//!
//! The framing (STUN messages and ChannelData back to back on the stream, RFC 8656 §11.5)
//! is the core's: this task only moves bytes. TLS is [`crate::tls`]'s (rustls, the system's
//! root certificates), the server name being the URL's host.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::turn::TurnTransport;

/// Largest read handed to the core at once.
const READ_CHUNK: usize = 16 * 1024;

/// How long a connect (TCP and TLS handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the engine tells the stream task.
#[derive(Debug)]
pub enum StreamCommand {
    /// Close any connection and open a new one.
    Connect,
    /// Write these bytes to the open connection (dropped when none is open).
    Write(Vec<u8>),
}

/// What the stream task tells the engine.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamEvent {
    /// Connected from this local address.
    Connected(SocketAddr),
    /// Bytes read from the server.
    Data(Vec<u8>),
    /// The connect failed, or the connection closed (the reason, for the state line).
    Disconnected(String),
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct StreamTarget {
    /// The server's resolved address.
    pub server: SocketAddr,
    /// TCP or TLS.
    pub transport: TurnTransport,
    /// The URL's host: the TLS server name.
    pub host: String,
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

async fn connect(target: &StreamTarget) -> io::Result<(Box<dyn Stream>, SocketAddr)> {
    let tcp = TcpStream::connect(target.server).await?;
    tcp.set_nodelay(true)?;
    let local = tcp.local_addr()?;
    match target.transport {
        TurnTransport::Tls => {
            let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let tls = crate::tls::client_connector("turns")
                .map_err(io::Error::other)?
                .connect(name, tcp)
                .await?;
            Ok((Box::new(tls), local))
        }
        _ => Ok((Box::new(tcp), local)),
    }
}

/// Run the stream shell until `cancel`: connect on [`StreamCommand::Connect`], write
/// [`StreamCommand::Write`]s, report reads and closes as [`StreamEvent`]s tagged with the
/// server's address (one channel serves every stream task). The engine owns both channels;
/// when it goes away the task ends.
pub async fn run(
    target: StreamTarget,
    mut commands: mpsc::Receiver<StreamCommand>,
    events: mpsc::Sender<(SocketAddr, StreamEvent)>,
    cancel: CancellationToken,
) {
    let server = target.server;
    let mut conn: Option<Box<dyn Stream>> = None;
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let read = async {
            match conn.as_mut() {
                Some(c) => c.read(&mut buf).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            cmd = commands.recv() => match cmd {
                None => return,
                Some(StreamCommand::Connect) => {
                    conn = None;
                    let attempt = tokio::time::timeout(CONNECT_TIMEOUT, connect(&target));
                    let ev = tokio::select! {
                        _ = cancel.cancelled() => return,
                        r = attempt => match r {
                            Ok(Ok((c, local))) => {
                                conn = Some(c);
                                StreamEvent::Connected(local)
                            }
                            Ok(Err(e)) => StreamEvent::Disconnected(e.to_string()),
                            Err(_) => StreamEvent::Disconnected("connect timed out".into()),
                        },
                    };
                    if events.send((server, ev)).await.is_err() {
                        return;
                    }
                }
                Some(StreamCommand::Write(bytes)) => {
                    let Some(c) = conn.as_mut() else { continue };
                    if let Err(e) = c.write_all(&bytes).await {
                        conn = None;
                        if events.send((server, StreamEvent::Disconnected(e.to_string()))).await.is_err() {
                            return;
                        }
                    }
                }
            },
            r = read => {
                let ev = match r {
                    Ok(0) => {
                        conn = None;
                        StreamEvent::Disconnected("closed by the server".into())
                    }
                    Ok(n) => StreamEvent::Data(buf[..n].to_vec()),
                    Err(e) => {
                        conn = None;
                        StreamEvent::Disconnected(e.to_string())
                    }
                };
                if events.send((server, ev)).await.is_err() {
                    return;
                }
            }
        }
    }
}
