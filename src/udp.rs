//! UDP sockets that the runtime watches for reading only.
//!
//! `tokio::net::UdpSocket` registers its socket for reading *and* writing, edge-triggered.
//! Linux signals "writable" on a UDP socket each time a sent datagram's buffer is freed
//! (`sock_def_write_space`, for every datagram, not only after the buffer was full), so every
//! `send_to` wakes the runtime's IO driver once more for an event nobody waits on: on a
//! 2-core board that is a wake-up of the other worker thread per packet sent. The engine and
//! the RTSP sessions never wait to write (a full buffer drops the datagram: UDP is lossy
//! anyway), so here the socket is registered for reading only ([`UdpSocket`]), or not at all
//! ([`SendSocket`], for a socket that is never read).

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A non-blocking UDP socket: `recv_from` waits on the runtime, `try_send_to` never waits.
#[derive(Debug)]
pub struct UdpSocket {
    fd: AsyncFd<std::net::UdpSocket>,
}

impl UdpSocket {
    /// Bind to `addr`. Call it inside a tokio runtime (it registers with the IO driver).
    pub fn bind(addr: impl ToSocketAddrs) -> io::Result<Self> {
        let SendSocket(socket) = SendSocket::bind(addr)?;
        // SAFETY: the `AsyncFd` owns the socket, whose descriptor stays open and the same
        // until the `AsyncFd` drops it.
        let fd = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }?;
        Ok(Self { fd })
    }

    /// The address bound (the port the OS picked for port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.fd.get_ref().local_addr()
    }

    /// The next datagram. Cancel-safe: dropping the future loses no datagram.
    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        loop {
            let mut ready = self.fd.readable().await?;
            match ready.try_io(|fd| fd.get_ref().recv_from(buf)) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Send now or not at all: `WouldBlock` when the socket's buffer is full.
    pub fn try_send_to(&self, buf: &[u8], target: SocketAddr) -> io::Result<usize> {
        self.fd.get_ref().send_to(buf, target)
    }
}

/// A UDP socket that is only ever written to: never registered with the runtime, so its sends
/// wake nothing.
#[derive(Debug)]
pub struct SendSocket(std::net::UdpSocket);

impl SendSocket {
    /// Bind to `addr`, non-blocking.
    pub fn bind(addr: impl ToSocketAddrs) -> io::Result<Self> {
        let socket = std::net::UdpSocket::bind(addr)?;
        socket.set_nonblocking(true)?;
        Ok(Self(socket))
    }

    /// The address bound (the port the OS picked for port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }

    /// Send now or not at all: `WouldBlock` when the socket's buffer is full.
    pub fn try_send_to(&self, buf: &[u8], target: SocketAddr) -> io::Result<usize> {
        self.0.send_to(buf, target)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test code: a panic is a failed test
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::time::Duration;

    #[tokio::test]
    async fn a_datagram_sent_is_received_and_a_pending_recv_can_be_dropped() {
        let a = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let b = SendSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let mut buf = [0u8; 16];
        // Nothing sent yet: the receive waits, and giving up on it loses nothing later.
        let waited = tokio::time::timeout(Duration::from_millis(20), a.recv_from(&mut buf)).await;
        assert!(waited.is_err());
        b.try_send_to(b"hello", a.local_addr().unwrap()).unwrap();
        a.try_send_to(b"x", b.local_addr().unwrap()).unwrap();
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), a.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(from, b.local_addr().unwrap());
    }
}
