//! Which local addresses viewers are told to send to, and which of them a datagram reached.
//!
//! The engine has one socket bound to the unspecified address, so the kernel does not say which
//! local address a datagram came in on; str0m needs it (a STUN request must arrive "on" one of
//! its host candidates). [`LocalAddrPicker`] answers with the address the kernel would send
//! replies from (a route lookup through a connected throwaway socket, cached), falling back to
//! the candidate on the sender's subnet.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};

/// One announced local address and the prefix it is on (for the subnet fallback).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostAddr {
    /// The address announced.
    pub ip: Ipv4Addr,
    /// Netmask of the interface; all-ones for `public_addrs` (no subnet).
    pub netmask: Ipv4Addr,
}

/// Host addresses to announce: every up IPv4 interface address except loopback (loopback too
/// when `include_loopback`, i.e. the HTTP listener is on loopback), then `public`.
///
/// IPv6 is not announced yet (the engine's socket is IPv4).
pub fn host_addrs(include_loopback: bool, public: &[IpAddr]) -> Vec<HostAddr> {
    let mut out = Vec::new();
    if let Ok(ifaces) = if_addrs::get_if_addrs() {
        for iface in ifaces {
            if let if_addrs::IfAddr::V4(v4) = &iface.addr {
                if v4.ip.is_loopback() && !include_loopback {
                    continue;
                }
                push_unique(
                    &mut out,
                    HostAddr {
                        ip: v4.ip,
                        netmask: v4.netmask,
                    },
                );
            }
        }
    }
    if out.is_empty() {
        push_unique(
            &mut out,
            HostAddr {
                ip: Ipv4Addr::LOCALHOST,
                netmask: Ipv4Addr::new(255, 0, 0, 0),
            },
        );
    }
    for ip in public {
        match ip {
            IpAddr::V4(ip) => push_unique(
                &mut out,
                HostAddr {
                    ip: *ip,
                    netmask: Ipv4Addr::BROADCAST,
                },
            ),
            IpAddr::V6(ip) => tracing::warn!(%ip, "IPv6 public_addrs are not announced yet"),
        }
    }
    out
}

fn push_unique(out: &mut Vec<HostAddr>, a: HostAddr) {
    if !out.iter().any(|o| o.ip == a.ip) {
        out.push(a);
    }
}

/// Most remote addresses remembered by [`LocalAddrPicker`] (then it forgets all and relearns).
const PICKER_CACHE: usize = 1024;

/// Which of our host addresses a datagram from a given remote address was sent to.
///
/// Ask it only for datagrams a viewer accepted (the engine routes first): then only viewers'
/// addresses fill the cache, and junk from other sources neither costs a route lookup nor
/// pushes a viewer's entry out.
#[derive(Debug)]
pub struct LocalAddrPicker {
    hosts: Vec<HostAddr>,
    cache: HashMap<IpAddr, Ipv4Addr>,
    /// Route lookups made (each a socket, a connect and a getsockname).
    lookups: u64,
}

impl LocalAddrPicker {
    /// A picker choosing among `hosts` (the announced host candidates).
    pub fn new(hosts: Vec<HostAddr>) -> Self {
        Self {
            hosts,
            cache: HashMap::new(),
            lookups: 0,
        }
    }

    /// Route lookups made so far (cache misses).
    pub fn lookups(&self) -> u64 {
        self.lookups
    }

    /// The local address (with `port`) that `remote` most likely sent to.
    pub fn pick(&mut self, remote: SocketAddr, port: u16) -> SocketAddr {
        let ip = match remote.ip() {
            IpAddr::V4(r) => {
                if let Some(ip) = self.cache.get(&remote.ip()) {
                    *ip
                } else {
                    self.lookups += 1;
                    let ip = choose(&self.hosts, r, route_source(remote));
                    if self.cache.len() >= PICKER_CACHE {
                        self.cache.clear();
                    }
                    self.cache.insert(remote.ip(), ip);
                    ip
                }
            }
            IpAddr::V6(_) => self.hosts.first().map_or(Ipv4Addr::LOCALHOST, |h| h.ip),
        };
        SocketAddr::from((ip, port))
    }
}

/// The kernel's source address for packets to `remote` (no packet is sent).
fn route_source(remote: SocketAddr) -> Option<Ipv4Addr> {
    let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    s.connect(remote).ok()?;
    match s.local_addr().ok()?.ip() {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(_) => None,
    }
}

/// Pure choice: the routed source if it is ours, else the host on the remote's subnet, else the
/// first host (loopback remotes prefer a loopback host).
pub fn choose(hosts: &[HostAddr], remote: Ipv4Addr, routed: Option<Ipv4Addr>) -> Ipv4Addr {
    if let Some(r) = routed {
        if hosts.iter().any(|h| h.ip == r) {
            return r;
        }
    }
    if remote.is_loopback() {
        if let Some(h) = hosts.iter().find(|h| h.ip.is_loopback()) {
            return h.ip;
        }
    }
    let on_subnet = |h: &&HostAddr| {
        let m = u32::from(h.netmask);
        m != u32::MAX && (u32::from(h.ip) & m) == (u32::from(remote) & m)
    };
    if let Some(h) = hosts.iter().find(on_subnet) {
        return h.ip;
    }
    hosts
        .iter()
        .find(|h| !h.ip.is_loopback())
        .or(hosts.first())
        .map_or(Ipv4Addr::LOCALHOST, |h| h.ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(ip: [u8; 4], mask: [u8; 4]) -> HostAddr {
        HostAddr {
            ip: ip.into(),
            netmask: mask.into(),
        }
    }

    #[test]
    fn routed_source_wins_when_it_is_ours() {
        let hosts = [
            h([10, 0, 0, 1], [255, 0, 0, 0]),
            h([192, 168, 1, 5], [255, 255, 255, 0]),
        ];
        let got = choose(&hosts, [8, 8, 8, 8].into(), Some([192, 168, 1, 5].into()));
        assert_eq!(got, Ipv4Addr::new(192, 168, 1, 5));
    }

    #[test]
    fn subnet_then_loopback_then_first_non_loopback() {
        let hosts = [
            h([127, 0, 0, 1], [255, 0, 0, 0]),
            h([10, 0, 0, 1], [255, 0, 0, 0]),
            h([192, 168, 1, 5], [255, 255, 255, 0]),
            h([203, 0, 113, 9], [255, 255, 255, 255]),
        ];
        assert_eq!(
            choose(&hosts, [192, 168, 1, 77].into(), None),
            Ipv4Addr::new(192, 168, 1, 5)
        );
        assert_eq!(
            choose(&hosts, [127, 0, 0, 1].into(), Some([1, 2, 3, 4].into())),
            Ipv4Addr::LOCALHOST
        );
        assert_eq!(
            choose(&hosts, [172, 16, 0, 1].into(), None),
            Ipv4Addr::new(10, 0, 0, 1)
        );
    }

    #[test]
    fn public_addrs_are_announced_after_interfaces_without_duplicates() {
        let public = [
            IpAddr::from([203, 0, 113, 9]),
            IpAddr::from([203, 0, 113, 9]),
        ];
        let hosts = host_addrs(true, &public);
        assert!(hosts.iter().any(|h| h.ip.is_loopback()));
        assert_eq!(
            hosts
                .iter()
                .filter(|h| h.ip == Ipv4Addr::new(203, 0, 113, 9))
                .count(),
            1
        );
        assert_eq!(hosts.last().unwrap().ip, Ipv4Addr::new(203, 0, 113, 9));
        assert!(host_addrs(false, &[])
            .iter()
            .all(|h| !h.ip.is_loopback() || hosts.len() == 1));
    }

    #[test]
    fn picker_caches_and_uses_the_port() {
        let mut p = LocalAddrPicker::new(vec![h([127, 0, 0, 1], [255, 0, 0, 0])]);
        let remote: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert_eq!(p.pick(remote, 8555), "127.0.0.1:8555".parse().unwrap());
        assert_eq!(p.cache.len(), 1);
        let _ = p.pick("127.0.0.1:5001".parse().unwrap(), 8555);
        assert_eq!(p.lookups(), 1, "one lookup per remote address");
    }
}
