//! mDNS/DNS-SD advertisement of `<instance>._snaprtc._tcp.local.` with `mdns-sd`.
//!
//! What is advertised is decided by pure functions ([`Advertisement::new`], [`txt_records`],
//! [`instance_name`], [`srv_host`]) that the tests check without sockets. [`Advertiser`] is
//! the thin shell: it hands the record set to an `mdns-sd` responder (which runs its own
//! thread), logs what the responder reports, and on cancellation sends goodbye packets
//! (TTL 0) so browsers drop the service at once instead of after the record TTL.
//!
//! # Living beside avahi-daemon
//!
//! Raspberry Pi OS runs avahi-daemon, which owns `<hostname>.local.`. Two responders answering
//! for one unique name with different address sets is a conflict by RFC 6762 §9, and avahi
//! resolves it by renaming the host (`raspberrypi-2.local`). So when another responder is
//! present (avahi's socket answers) the SRV record points at a host name of our own,
//! `snaprtcd-<device id>.local.`, with our addresses; avahi keeps `<hostname>.local.`
//! untouched and both are browsable. Without avahi the SRV target is `<hostname>.local.`
//! and we answer its A/AAAA queries, so `http://<hostname>.local:8080/` works too.
//! Both responders share UDP 5353 (`SO_REUSEADDR`/`SO_REUSEPORT`), which Linux allows and
//! both set.
//!
//! Address changes (DHCP renew, Wi-Fi roaming, a cable plugged in) are picked up by the
//! responder itself (`enable_addr_auto`): it polls the interfaces every
//! [`IP_CHECK_INTERVAL_SECS`] and re-announces with the new addresses.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mdns_sd::{DaemonEvent, IfKind, ServiceDaemon, ServiceInfo, UnregisterStatus};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{AuthMode, Config};

/// The DNS-SD service type snaprtcd advertises.
pub const SERVICE_TYPE: &str = "_snaprtc._tcp.local.";
/// The DNS-SD service type of the RTSP server (RFC 7826 §C.4 names `path` in its TXT).
pub const RTSP_SERVICE_TYPE: &str = "_rtsp._tcp.local.";
/// Path of the WHEP endpoint, advertised as TXT `whep`.
pub const WHEP_PATH: &str = "/whep";
/// How often the responder looks for new or lost interface addresses.
pub const IP_CHECK_INTERVAL_SECS: u32 = 5;
/// The socket avahi-daemon listens on when it runs.
pub const AVAHI_SOCKET: &str = "/run/avahi-daemon/socket";
/// Longest DNS label (RFC 1035) — instance names and host labels are cut to it.
const MAX_LABEL: usize = 63;
/// How long shutdown waits for the goodbye packets to leave.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the advertiser could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The responder could not open its sockets or thread.
    #[error("starting the mDNS responder: {0}")]
    Start(#[source] mdns_sd::Error),
    /// The service record was refused (bad TXT, bad name).
    #[error("describing the mDNS service: {0}")]
    Service(#[source] mdns_sd::Error),
    /// The responder thread went away while we were talking to it.
    #[error("mDNS responder: {0}")]
    Responder(#[source] mdns_sd::Error),
}

/// Facts about this host that decide the records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// The kernel host name (may be a FQDN; only the first label is used).
    pub hostname: String,
    /// Another mDNS responder (avahi-daemon) owns `<hostname>.local.`.
    pub other_responder: bool,
}

impl HostFacts {
    /// Reads the host name and looks for avahi-daemon.
    pub fn detect() -> Self {
        Self {
            hostname: system_hostname(),
            other_responder: avahi_running(Path::new(AVAHI_SOCKET)),
        }
    }
}

/// Everything that goes on the wire, decided without IO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertisement {
    /// Instance label: `<instance>._snaprtc._tcp.local.`.
    pub instance: String,
    /// SRV target, `<label>.local.`.
    pub host_name: String,
    /// The HTTP port (viewer page, hub, WHEP).
    pub port: u16,
    /// TXT key/value pairs, in a fixed order.
    pub txt: Vec<(String, String)>,
    /// Interfaces to advertise on; empty means every up, non-loopback interface.
    pub interfaces: Vec<String>,
    /// The RTSP server's port: `<instance>._rtsp._tcp.local.` with TXT `path=/stream` is
    /// advertised beside the main service; `None` while the RTSP server is off.
    pub rtsp_port: Option<u16>,
}

impl Advertisement {
    /// The record set for `config`, listening on `http_port`, known as `device_id`.
    pub fn new(config: &Config, http_port: u16, device_id: &str, host: &HostFacts) -> Self {
        Self {
            instance: instance_name(&config.mdns.instance_name, &host.hostname),
            host_name: srv_host(&host.hostname, device_id, host.other_responder),
            port: http_port,
            txt: txt_records(config, device_id),
            interfaces: config.mdns.interfaces.clone(),
            rtsp_port: None,
        }
    }

    /// Also advertise the RTSP server on `rtsp_port`.
    pub fn with_rtsp(mut self, rtsp_port: Option<u16>) -> Self {
        self.rtsp_port = rtsp_port;
        self
    }

    /// `_rtsp._tcp` for the same instance and host, with TXT `path`; `None` without RTSP.
    fn rtsp_service_info(&self) -> Result<Option<ServiceInfo>, DiscoveryError> {
        let Some(port) = self.rtsp_port else {
            return Ok(None);
        };
        let props = [("path", crate::rtsp::STREAM_PATH)];
        self.info(RTSP_SERVICE_TYPE, port, &props).map(Some)
    }

    /// The full service name, `<instance>._snaprtc._tcp.local.` (the responder may rename it
    /// on a conflict; see [`DaemonEvent::NameChange`]).
    pub fn fullname(&self) -> String {
        format!("{}.{SERVICE_TYPE}", self.instance)
    }

    fn service_info(&self) -> Result<ServiceInfo, DiscoveryError> {
        let props: Vec<(&str, &str)> = self
            .txt
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.info(SERVICE_TYPE, self.port, &props)
    }

    /// A service of `service_type` on `port` for this instance and host, on the configured
    /// interfaces.
    fn info(
        &self,
        service_type: &str,
        port: u16,
        props: &[(&str, &str)],
    ) -> Result<ServiceInfo, DiscoveryError> {
        let mut info = ServiceInfo::new(
            service_type,
            &self.instance,
            &self.host_name,
            "",
            port,
            props,
        )
        .map_err(DiscoveryError::Service)?
        .enable_addr_auto();
        if !self.interfaces.is_empty() {
            info.set_interfaces(
                self.interfaces
                    .iter()
                    .map(|n| IfKind::Name(n.clone()))
                    .collect(),
            );
        }
        Ok(info)
    }
}

/// TXT records: `path` (hub), `whep`, `id`, `v` (version), `auth` (`0`/`1`). A relay
/// (`[camera] source = "none"`) serves no WHEP and has no `whep` record.
pub fn txt_records(config: &Config, device_id: &str) -> Vec<(String, String)> {
    let auth = match config.server.auth {
        AuthMode::None => "0",
        AuthMode::Token => "1",
    };
    [
        ("path", config.signaling.hub_path.as_str()),
        ("whep", WHEP_PATH),
        ("id", device_id),
        ("v", env!("CARGO_PKG_VERSION")),
        ("auth", auth),
    ]
    .into_iter()
    .filter(|(k, _)| *k != "whep" || !config.is_relay())
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The instance label: the configured name, else the host's short name, else `snaprtcd`;
/// at most 63 bytes (cut on a character boundary).
pub fn instance_name(configured: &str, hostname: &str) -> String {
    let configured = configured.trim();
    let name = if !configured.is_empty() {
        configured
    } else {
        match short_hostname(hostname) {
            "" => "snaprtcd",
            short => short,
        }
    };
    truncate_utf8(name, MAX_LABEL).to_owned()
}

/// The SRV target: `<hostname>.local.` when we are the host's only responder, else a name of
/// our own that cannot collide with avahi's, `snaprtcd-<id>.local.`.
pub fn srv_host(hostname: &str, device_id: &str, other_responder: bool) -> String {
    let label = if other_responder {
        dns_label(&format!("snaprtcd-{device_id}"))
    } else {
        dns_label(short_hostname(hostname))
    };
    let label = if label.is_empty() {
        dns_label(&format!("snaprtcd-{device_id}"))
    } else {
        label
    };
    format!("{label}.local.")
}

/// The first label of a host name (`pi.example.org` → `pi`).
fn short_hostname(hostname: &str) -> &str {
    hostname.trim().split('.').next().unwrap_or("")
}

/// Lower-case letters, digits and inner hyphens only, at most 63 bytes.
fn dns_label(s: &str) -> String {
    let mapped: String = s
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    let trimmed = mapped.trim_matches('-');
    trimmed[..trimmed.len().min(MAX_LABEL)]
        .trim_end_matches('-')
        .to_owned()
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The kernel's host name (`uname`; `/proc/sys` is hidden by the unit's `ProcSubset=pid`).
pub fn system_hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .trim()
        .to_owned()
}

/// Whether avahi-daemon is running: its socket accepts a connection.
pub fn avahi_running(socket: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(socket).is_ok()
}

/// A running advertisement. Build with [`Advertiser::start`], drive with [`Advertiser::run`].
pub struct Advertiser {
    daemon: ServiceDaemon,
    fullname: String,
    /// The `_rtsp._tcp` service registered beside it, if any.
    rtsp_fullname: Option<String>,
    events: mdns_sd::Receiver<DaemonEvent>,
}

impl Advertiser {
    /// Opens the responder and registers the service. Errors here (no usable socket, bad
    /// record) come back at once so the daemon can log them before it reports ready.
    pub fn start(ad: &Advertisement) -> Result<Self, DiscoveryError> {
        let info = ad.service_info()?;
        let rtsp_info = ad.rtsp_service_info()?;
        let daemon = ServiceDaemon::new().map_err(DiscoveryError::Start)?;
        daemon
            .set_ip_check_interval(IP_CHECK_INTERVAL_SECS)
            .map_err(DiscoveryError::Responder)?;
        if !ad.interfaces.is_empty() {
            daemon
                .disable_interface(IfKind::All)
                .map_err(DiscoveryError::Responder)?;
            let names: Vec<IfKind> = ad
                .interfaces
                .iter()
                .map(|n| IfKind::Name(n.clone()))
                .collect();
            daemon
                .enable_interface(names)
                .map_err(DiscoveryError::Responder)?;
        }
        let events = daemon.monitor().map_err(DiscoveryError::Responder)?;
        let fullname = info.get_fullname().to_owned();
        daemon.register(info).map_err(DiscoveryError::Responder)?;
        tracing::info!(
            service = %fullname,
            host = %ad.host_name,
            port = ad.port,
            "mdns advertising"
        );
        let mut rtsp_fullname = None;
        if let Some(info) = rtsp_info {
            let name = info.get_fullname().to_owned();
            let port = info.get_port();
            daemon.register(info).map_err(DiscoveryError::Responder)?;
            tracing::info!(service = %name, port, "mdns advertising");
            rtsp_fullname = Some(name);
        }
        Ok(Self {
            daemon,
            fullname,
            rtsp_fullname,
            events,
        })
    }

    /// The registered service name.
    pub fn fullname(&self) -> &str {
        &self.fullname
    }

    /// Logs what the responder reports until `cancel`, then says goodbye and stops it.
    pub async fn run(mut self, cancel: CancellationToken) -> Result<(), DiscoveryError> {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                event = self.events.recv_async() => match event {
                    Ok(event) => self.log_event(event),
                    // The responder thread ended on its own: nothing left to advertise.
                    Err(_) => {
                        return Err(DiscoveryError::Responder(mdns_sd::Error::Msg(
                            "responder stopped".into(),
                        )))
                    }
                },
            }
        }
        self.goodbye().await
    }

    fn log_event(&mut self, event: DaemonEvent) {
        match event {
            DaemonEvent::IpAdd(ip) => tracing::info!(%ip, "mdns address added; re-announcing"),
            DaemonEvent::IpDel(ip) => tracing::info!(%ip, "mdns address removed"),
            DaemonEvent::NameChange(change) => {
                tracing::warn!(
                    from = %change.original,
                    to = %change.new_name,
                    "mdns name taken on the network; renamed"
                );
                if change.original == self.fullname {
                    self.fullname = change.new_name;
                } else if self.rtsp_fullname.as_ref() == Some(&change.original) {
                    self.rtsp_fullname = Some(change.new_name);
                }
            }
            DaemonEvent::Error(e) => tracing::warn!(error = %e, "mdns responder"),
            DaemonEvent::Announce(name, intf) => {
                tracing::debug!(%name, %intf, "mdns announced")
            }
            _ => {}
        }
    }

    async fn goodbye(self) -> Result<(), DiscoveryError> {
        if let Some(name) = &self.rtsp_fullname {
            let done = self
                .daemon
                .unregister(name)
                .map_err(DiscoveryError::Responder)?;
            let _ = tokio::time::timeout(GOODBYE_TIMEOUT, done.recv_async()).await;
        }
        let done = self
            .daemon
            .unregister(&self.fullname)
            .map_err(DiscoveryError::Responder)?;
        match tokio::time::timeout(GOODBYE_TIMEOUT, done.recv_async()).await {
            Ok(Ok(UnregisterStatus::OK)) => {
                tracing::info!(service = %self.fullname, "mdns goodbye sent")
            }
            Ok(other) => tracing::warn!(?other, "mdns goodbye not confirmed"),
            Err(_) => tracing::warn!("mdns goodbye timed out"),
        }
        let stopped = self.daemon.shutdown().map_err(DiscoveryError::Responder)?;
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, stopped.recv_async()).await;
        Ok(())
    }
}

/// Starts advertising `config` on `http_port` as `device_id` (and, with `[rtsp] enabled`, the
/// RTSP server on `[rtsp] listen`'s port); the returned future runs until `cancel` and then
/// sends goodbyes.
pub fn start(
    config: &Config,
    http_port: u16,
    device_id: &str,
    cancel: CancellationToken,
) -> Result<impl Future<Output = Result<(), DiscoveryError>> + Send + 'static, DiscoveryError> {
    let ad = Advertisement::new(config, http_port, device_id, &HostFacts::detect())
        .with_rtsp(config.rtsp.enabled.then_some(config.rtsp.listen.port()));
    let advertiser = Advertiser::start(&ad)?;
    Ok(advertiser.run(cancel))
}

/// What `config` asks to advertise now (`None` while `[mdns] enabled = false`).
fn wanted_advertisement(
    config: &Config,
    http_port: u16,
    rtsp_port: Option<u16>,
    device_id: &str,
) -> Option<Advertisement> {
    config.mdns.enabled.then(|| {
        Advertisement::new(config, http_port, device_id, &HostFacts::detect())
            .with_rtsp(rtsp_port.filter(|_| config.rtsp.enabled))
    })
}

/// Start a responder for `ad`; a failure is logged, not fatal (the camera still works by
/// address).
fn start_or_log(ad: &Advertisement) -> Option<Advertiser> {
    Advertiser::start(ad)
        .inspect_err(|e| {
            tracing::error!(error = %e, "mDNS advertisement failed; find the device by address")
        })
        .ok()
}

/// The daemon's mDNS service: advertises what `config` says, re-advertises (goodbye, then
/// the new records) when a reload changes them, stays quiet while `[mdns] enabled = false`,
/// and runs until `cancel`. A responder that cannot start is logged, not fatal: the camera
/// still works by address.
pub async fn supervise(
    mut config: watch::Receiver<Arc<Config>>,
    http_port: u16,
    rtsp_port: Option<u16>,
    device_id: String,
    cancel: CancellationToken,
) {
    loop {
        let current = config.borrow_and_update().clone();
        let wanted = wanted_advertisement(&current, http_port, rtsp_port, &device_id);
        let running = wanted.as_ref().and_then(start_or_log);
        let child = cancel.child_token();
        let run = async {
            match running {
                Some(a) => {
                    if let Err(e) = a.run(child.clone()).await {
                        tracing::error!(error = %e, "mDNS responder stopped");
                    }
                }
                None => child.cancelled().await,
            }
        };
        tokio::pin!(run);
        // Wait for a reload that changes the records, or the end.
        let mut finished = false;
        loop {
            tokio::select! {
                _ = &mut run, if !finished => {
                    if cancel.is_cancelled() {
                        return;
                    }
                    // The responder died on its own: retry on the next config change.
                    finished = true;
                }
                changed = config.changed() => {
                    if changed.is_err() {
                        // No more reloads: run until cancelled.
                        if !finished {
                            (&mut run).await;
                        } else {
                            cancel.cancelled().await;
                        }
                        return;
                    }
                    let new = config.borrow().clone();
                    let again = wanted_advertisement(&new, http_port, rtsp_port, &device_id);
                    if again != wanted || finished {
                        tracing::info!("mDNS settings changed; re-advertising");
                        break;
                    }
                }
                _ = cancel.cancelled(), if finished => return,
            }
        }
        child.cancel();
        if !finished {
            (&mut run).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, other: bool) -> HostFacts {
        HostFacts {
            hostname: name.into(),
            other_responder: other,
        }
    }

    #[test]
    fn txt_carries_path_whep_id_version_and_auth() {
        let mut config = Config::default();
        let txt = txt_records(&config, "abc123");
        let expect: Vec<(String, String)> = [
            ("path", "/snaprtc-hub"),
            ("whep", "/whep"),
            ("id", "abc123"),
            ("v", env!("CARGO_PKG_VERSION")),
            ("auth", "0"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(txt, expect);

        config.server.auth = AuthMode::Token;
        config.signaling.hub_path = "/hub".into();
        let txt = txt_records(&config, "abc123");
        assert_eq!(txt[0], ("path".into(), "/hub".into()));
        assert_eq!(txt[4], ("auth".into(), "1".into()));

        config.camera.source = crate::config::SourceKind::None;
        let keys: Vec<String> = txt_records(&config, "abc123")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["path", "id", "v", "auth"], "a relay serves no WHEP");
    }

    #[test]
    fn rtsp_is_advertised_beside_the_main_service_only_when_on() {
        let ad = Advertisement::new(&Config::default(), 8080, "0123abcd", &host("pi", true));
        assert!(ad.rtsp_service_info().expect("no error").is_none());
        let ad = ad.with_rtsp(Some(8554));
        let info = ad
            .rtsp_service_info()
            .expect("valid service")
            .expect("an RTSP record");
        assert_eq!(info.get_fullname(), "pi._rtsp._tcp.local.");
        assert_eq!(info.get_port(), 8554);
        assert_eq!(info.get_property_val_str("path"), Some("/stream"));
        assert_eq!(info.get_hostname(), ad.host_name);
    }

    #[test]
    fn txt_is_accepted_by_the_responder() {
        let ad = Advertisement::new(&Config::default(), 8080, "0123abcd", &host("pi", false));
        let info = ad.service_info().expect("valid service");
        assert_eq!(info.get_fullname(), "pi._snaprtc._tcp.local.");
        assert_eq!(info.get_property_val_str("whep"), Some("/whep"));
        assert_eq!(info.get_property_val_str("id"), Some("0123abcd"));
        assert_eq!(info.get_port(), 8080);
        assert_eq!(info.get_hostname(), "pi.local.");
    }

    #[test]
    fn instance_defaults_to_the_short_hostname() {
        assert_eq!(instance_name("", "raspberrypi"), "raspberrypi");
        assert_eq!(instance_name("  ", "cam.example.org"), "cam");
        assert_eq!(instance_name("Garage camera", "pi"), "Garage camera");
        assert_eq!(instance_name("", ""), "snaprtcd");
        let long = "é".repeat(40); // 80 bytes
        let cut = instance_name(&long, "pi");
        assert!(cut.len() <= 63);
        assert_eq!(cut, "é".repeat(31));
    }

    #[test]
    fn srv_target_avoids_the_name_another_responder_owns() {
        assert_eq!(srv_host("raspberrypi", "ab12", false), "raspberrypi.local.");
        assert_eq!(
            srv_host("RaspberryPi", "ab12", true),
            "snaprtcd-ab12.local."
        );
        assert_eq!(srv_host("my_host.lan", "ab12", false), "my-host.local.");
        assert_eq!(srv_host("", "ab12", false), "snaprtcd-ab12.local.");
    }

    #[test]
    fn configured_interfaces_and_port_are_kept() {
        let mut config = Config::default();
        config.mdns.interfaces = vec!["eth0".into()];
        config.mdns.instance_name = "cam".into();
        let ad = Advertisement::new(&config, 9000, "id", &host("pi", true));
        assert_eq!(ad.interfaces, vec!["eth0".to_owned()]);
        assert_eq!(ad.port, 9000);
        assert_eq!(ad.fullname(), "cam._snaprtc._tcp.local.");
        assert_eq!(ad.host_name, "snaprtcd-id.local.");
    }

    #[test]
    fn avahi_is_absent_when_its_socket_is() {
        assert!(!avahi_running(Path::new("/nonexistent/avahi/socket")));
    }
}
