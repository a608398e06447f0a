//! What an SDP offer from outside asks for, read before str0m sees it.
//!
//! Pure text inspection: which m-lines it has, whether its video can be H.264 packetization
//! mode 1, the data channel's `a=max-message-size`, and the offer with remote `.local`
//! (mDNS) candidates taken out. Peer-reflexive discovery still connects on a LAN, so an
//! mDNS name never fails an offer.

/// The peer's `a=max-message-size` when it sends none (RFC 8841 §6).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 65_536;

/// What an offer contains, as far as the engine cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferSummary {
    /// An `m=video` line that is not rejected (port 0) or `inactive`.
    pub has_video: bool,
    /// That video offers H.264 with `packetization-mode=1` (any profile str0m may match).
    pub has_h264: bool,
    /// An `m=application` line (data channel).
    pub has_data: bool,
    /// Largest data channel message the peer accepts.
    pub max_message_size: usize,
    /// Remote `.local` candidates removed from the offer.
    pub mdns_candidates_dropped: usize,
}

/// Why an offer is refused before str0m parses it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    #[error("not an SDP offer: {0}")]
    Malformed(&'static str),
}

/// Inspect `sdp` and return it without `.local` candidates, with its summary.
pub fn inspect(sdp: &str) -> Result<(String, OfferSummary), OfferError> {
    let trimmed = sdp.trim_start();
    if !trimmed.starts_with("v=0") {
        return Err(OfferError::Malformed("it does not start with v=0"));
    }
    if !sdp.lines().any(|l| l.starts_with("m=")) {
        return Err(OfferError::Malformed("it has no m= line"));
    }

    let mut summary = OfferSummary {
        has_video: false,
        has_h264: false,
        has_data: false,
        max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        mdns_candidates_dropped: 0,
    };
    let mut cleaned = String::with_capacity(sdp.len());

    // Per-section state for the current video m-line.
    let mut section = Section::Session;
    let mut video_ok = false;
    let mut h264_pts: Vec<&str> = Vec::new();
    let mut pm1_pts: Vec<&str> = Vec::new();
    let mut inactive = false;

    let finish_video = |video_ok: bool,
                        inactive: bool,
                        h264: &[&str],
                        pm1: &[&str],
                        summary: &mut OfferSummary| {
        if video_ok && !inactive {
            summary.has_video = true;
            if h264.iter().any(|pt| pm1.contains(pt)) {
                summary.has_h264 = true;
            }
        }
    };

    for line in sdp.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix("m=") {
            if section == Section::Video {
                finish_video(video_ok, inactive, &h264_pts, &pm1_pts, &mut summary);
            }
            h264_pts.clear();
            pm1_pts.clear();
            inactive = false;
            let mut parts = rest.split_whitespace();
            let kind = parts.next().unwrap_or("");
            let port = parts.next().unwrap_or("0");
            section = match kind {
                "video" => Section::Video,
                "application" => Section::Application,
                _ => Section::Other,
            };
            video_ok = section == Section::Video && port != "0";
            if section == Section::Application && port != "0" {
                summary.has_data = true;
            }
        } else if let Some(rest) = line.strip_prefix("a=rtpmap:") {
            if section == Section::Video {
                if let Some((pt, codec)) = rest.split_once(' ') {
                    if codec.to_ascii_uppercase().starts_with("H264/") {
                        h264_pts.push(pt);
                    }
                }
            }
        } else if let Some(rest) = line.strip_prefix("a=fmtp:") {
            if section == Section::Video {
                if let Some((pt, params)) = rest.split_once(' ') {
                    if params
                        .split(';')
                        .any(|p| p.trim().eq_ignore_ascii_case("packetization-mode=1"))
                    {
                        pm1_pts.push(pt);
                    }
                }
            }
        } else if line == "a=inactive" && section == Section::Video {
            inactive = true;
        } else if let Some(v) = line.strip_prefix("a=max-message-size:") {
            if section == Section::Application {
                if let Ok(n) = v.trim().parse::<usize>() {
                    // 0 means "no limit" (RFC 8841); cap it at what we would ever send.
                    summary.max_message_size = if n == 0 { usize::MAX } else { n };
                }
            }
        } else if line.starts_with("a=candidate:") && is_mdns_candidate(line) {
            summary.mdns_candidates_dropped += 1;
            continue;
        }
        cleaned.push_str(line);
        cleaned.push_str("\r\n");
    }
    if section == Section::Video {
        finish_video(video_ok, inactive, &h264_pts, &pm1_pts, &mut summary);
    }
    Ok((cleaned, summary))
}

/// Remote candidates in a trickle fragment (`a=candidate:` lines), without `.local` ones.
pub fn fragment_candidates(frag: &str) -> Vec<&str> {
    frag.lines()
        .map(|l| l.trim_end_matches('\r').trim())
        .filter(|l| l.starts_with("a=candidate:") && !is_mdns_candidate(l))
        .map(|l| l.trim_start_matches("a="))
        .collect()
}

/// `a=candidate:<foundation> <component> <proto> <prio> <address> …` with an mDNS address.
fn is_mdns_candidate(line: &str) -> bool {
    line.split_whitespace()
        .nth(4)
        .is_some_and(|addr| addr.to_ascii_lowercase().ends_with(".local"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Session,
    Video,
    Application,
    Other,
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const CHROME_OFFER: &str = "v=0\r\n\
o=- 1 2 IN IP4 127.0.0.1\r\n\
s=-\r\n\
t=0 0\r\n\
a=group:BUNDLE 0 1\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 102 103\r\n\
c=IN IP4 0.0.0.0\r\n\
a=mid:0\r\n\
a=recvonly\r\n\
a=rtpmap:96 VP8/90000\r\n\
a=rtpmap:102 H264/90000\r\n\
a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
a=rtpmap:103 H264/90000\r\n\
a=fmtp:103 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f\r\n\
a=candidate:1 1 udp 2113937151 3f1c9a2b-1111-2222-3333-444455556666.local 50000 typ host\r\n\
a=candidate:2 1 udp 2113937151 192.168.1.20 50001 typ host\r\n\
m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
c=IN IP4 0.0.0.0\r\n\
a=mid:1\r\n\
a=sctp-port:5000\r\n\
a=max-message-size:262144\r\n";

    #[test]
    fn chrome_offer_has_h264_video_data_and_its_message_size() {
        let (cleaned, s) = inspect(CHROME_OFFER).unwrap();
        assert!(s.has_video && s.has_h264 && s.has_data);
        assert_eq!(s.max_message_size, 262_144);
        assert_eq!(s.mdns_candidates_dropped, 1);
        assert!(!cleaned.contains(".local"));
        assert!(cleaned.contains("192.168.1.20 50001"));
    }

    #[test]
    fn missing_max_message_size_defaults_to_64k() {
        let sdp = CHROME_OFFER.replace("a=max-message-size:262144\r\n", "");
        assert_eq!(
            inspect(&sdp).unwrap().1.max_message_size,
            DEFAULT_MAX_MESSAGE_SIZE
        );
    }

    #[test]
    fn vp8_only_and_packetization_mode_0_only_are_not_h264() {
        let sdp = CHROME_OFFER.replace("packetization-mode=1", "packetization-mode=0");
        let s = inspect(&sdp).unwrap().1;
        assert!(s.has_video && !s.has_h264);
    }

    #[test]
    fn audio_only_offer_has_no_video() {
        let sdp = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n";
        let s = inspect(sdp).unwrap().1;
        assert!(!s.has_video && !s.has_h264 && !s.has_data);
    }

    #[test]
    fn rejected_or_inactive_video_does_not_count() {
        let sdp = CHROME_OFFER.replace("m=video 9", "m=video 0");
        assert!(!inspect(&sdp).unwrap().1.has_video);
        let sdp = CHROME_OFFER.replace("a=recvonly", "a=inactive");
        assert!(!inspect(&sdp).unwrap().1.has_video);
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(inspect("hello").is_err());
        assert!(inspect("v=0\r\ns=-\r\n").is_err());
        assert!(inspect("").is_err());
    }

    #[test]
    fn fragment_candidates_skip_mdns_and_other_lines() {
        let frag = "a=ice-ufrag:abc\r\na=ice-pwd:def\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\n\
a=candidate:1 1 udp 1 10.0.0.2 4000 typ host\r\n\
a=candidate:2 1 udp 1 x.local 4001 typ host\r\na=end-of-candidates\r\n";
        assert_eq!(
            fragment_candidates(frag),
            vec!["candidate:1 1 udp 1 10.0.0.2 4000 typ host"]
        );
    }
}
