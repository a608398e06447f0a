//! What an SDP offer from outside asks for, read before str0m sees it.
//!
//! Pure text inspection: which m-lines it has, whether its video can be H.264 packetization
//! mode 1, the data channel's `a=max-message-size`, and the offer with remote `.local`
//! (mDNS) candidates taken out. Peer-reflexive discovery still connects on a LAN, so an
//! mDNS name never fails an offer.
//!
//! Offers and WHEP trickle fragments come from outside, so each is held to the
//! [`SdpLimits`] (bytes, m-lines, candidates) while it is read, before str0m parses it.

use str0m::Candidate;

use crate::config::{self, ServerConfig};

/// The peer's `a=max-message-size` when it sends none (RFC 8841 §6).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 65_536;

/// Budgets SDP from outside is held to before anything parses it (`[server] max_sdp_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SdpLimits {
    /// `max_sdp_bytes`: longest offer or trickle fragment.
    pub max_bytes: usize,
    /// `max_sdp_media`: most m-lines in one offer or fragment.
    pub max_media: usize,
    /// `max_sdp_candidates`: most `a=candidate:` lines in one offer or fragment (and, counted
    /// by the engine, from one viewer in all).
    pub max_candidates: usize,
}

impl Default for SdpLimits {
    /// The config's defaults.
    fn default() -> Self {
        Self {
            max_bytes: config::default_max_sdp_bytes(),
            max_media: config::default_max_sdp_media(),
            max_candidates: config::default_max_sdp_candidates(),
        }
    }
}

impl SdpLimits {
    /// From `[server] max_sdp_bytes`, `max_sdp_media` and `max_sdp_candidates`.
    pub fn from_config(server: &ServerConfig) -> Self {
        Self {
            max_bytes: server.max_sdp_bytes,
            max_media: server.max_sdp_media,
            max_candidates: server.max_sdp_candidates,
        }
    }
}

/// Which SDP budget was exceeded; shown as the unit and the config key that sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// `server.max_sdp_bytes`
    Bytes,
    /// `server.max_sdp_media`
    Media,
    /// `server.max_sdp_candidates`
    Candidates,
}

impl std::fmt::Display for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Budget::Bytes => "bytes (server.max_sdp_bytes)",
            Budget::Media => "m-lines (server.max_sdp_media)",
            Budget::Candidates => "candidates (server.max_sdp_candidates)",
        })
    }
}

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
    /// Remote candidates left in the offer (they count against the viewer's candidate budget).
    pub candidates: usize,
}

/// Why an offer or a trickle fragment is refused before str0m acts on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    /// Not SDP at all.
    #[error("not an SDP offer: {0}")]
    Malformed(&'static str),
    /// Over one of the [`SdpLimits`].
    #[error("the SDP has more than {max} {budget}")]
    OverBudget {
        /// Which budget.
        budget: Budget,
        /// Its limit.
        max: usize,
    },
    /// A trickled `a=candidate:` line str0m cannot read.
    #[error("bad candidate {line:?}: {reason}")]
    BadCandidate {
        /// The line, cut to 100 characters.
        line: String,
        /// str0m's reason.
        reason: String,
    },
}

/// [`inspect_with`] under the default [`SdpLimits`] (what a fuzz target calls).
pub fn inspect(sdp: &str) -> Result<(String, OfferSummary), OfferError> {
    inspect_with(sdp, &SdpLimits::default())
}

/// Check `sdp` against `limits` while reading it once; return it without `.local`
/// candidates, with its summary. Stops at the first line over a budget.
pub fn inspect_with(sdp: &str, limits: &SdpLimits) -> Result<(String, OfferSummary), OfferError> {
    check_size(sdp, limits)?;
    if !sdp.trim_start().starts_with("v=0") {
        return Err(OfferError::Malformed("it does not start with v=0"));
    }
    if !sdp.lines().any(|l| l.starts_with("m=")) {
        return Err(OfferError::Malformed("it has no m= line"));
    }
    let mut scan = Scan::new(limits);
    let mut cleaned = String::with_capacity(sdp.len());
    for line in sdp.lines() {
        let line = line.trim_end_matches('\r');
        if scan.line(line)? == Keep::Yes {
            cleaned.push_str(line);
            cleaned.push_str("\r\n");
        }
    }
    Ok((cleaned, scan.finish()))
}

/// Parse a WHEP trickle fragment (`application/trickle-ice-sdpfrag`, RFC 8840) within
/// `limits`: its remote candidates, `.local` (mDNS) ones skipped. Other lines are ignored.
pub fn parse_sdpfrag(frag: &str, limits: &SdpLimits) -> Result<Vec<Candidate>, OfferError> {
    check_size(frag, limits)?;
    let media = frag.lines().filter(|l| l.starts_with("m=")).count();
    if media > limits.max_media {
        return Err(over(Budget::Media, limits.max_media));
    }
    let count = frag
        .lines()
        .filter(|l| l.trim().starts_with("a=candidate:"))
        .count();
    if count > limits.max_candidates {
        return Err(over(Budget::Candidates, limits.max_candidates));
    }
    fragment_candidates(frag)
        .into_iter()
        .map(|line| {
            Candidate::from_sdp_string(line).map_err(|e| OfferError::BadCandidate {
                line: line.chars().take(100).collect(),
                reason: e.to_string(),
            })
        })
        .collect()
}

/// Remote candidates in a trickle fragment (`a=candidate:` lines), without `.local` ones.
pub fn fragment_candidates(frag: &str) -> Vec<&str> {
    frag.lines()
        .map(|l| l.trim_end_matches('\r').trim())
        .filter(|l| l.starts_with("a=candidate:") && !is_mdns_candidate(l))
        .map(|l| l.trim_start_matches("a="))
        .collect()
}

fn check_size(sdp: &str, limits: &SdpLimits) -> Result<(), OfferError> {
    if sdp.len() > limits.max_bytes {
        return Err(over(Budget::Bytes, limits.max_bytes));
    }
    Ok(())
}

fn over(budget: Budget, max: usize) -> OfferError {
    OfferError::OverBudget { budget, max }
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

/// Whether a line stays in the cleaned offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    Yes,
    No,
}

/// One pass over an offer: the summary so far, the budgets used, and the current video
/// m-line's state (decided when the section ends).
struct Scan<'a> {
    limits: &'a SdpLimits,
    summary: OfferSummary,
    section: Section,
    media: usize,
    candidate_lines: usize,
    /// The current video m-line has a port (not rejected).
    video_ok: bool,
    inactive: bool,
    h264_pts: Vec<&'a str>,
    pm1_pts: Vec<&'a str>,
}

impl<'a> Scan<'a> {
    fn new(limits: &'a SdpLimits) -> Self {
        Self {
            limits,
            summary: OfferSummary {
                has_video: false,
                has_h264: false,
                has_data: false,
                max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
                mdns_candidates_dropped: 0,
                candidates: 0,
            },
            section: Section::Session,
            media: 0,
            candidate_lines: 0,
            video_ok: false,
            inactive: false,
            h264_pts: Vec::new(),
            pm1_pts: Vec::new(),
        }
    }

    fn line(&mut self, line: &'a str) -> Result<Keep, OfferError> {
        if let Some(rest) = line.strip_prefix("m=") {
            self.media_line(rest)?;
        } else if let Some(rest) = line.strip_prefix("a=rtpmap:") {
            self.rtpmap(rest);
        } else if let Some(rest) = line.strip_prefix("a=fmtp:") {
            self.fmtp(rest);
        } else if line == "a=inactive" && self.section == Section::Video {
            self.inactive = true;
        } else if let Some(v) = line.strip_prefix("a=max-message-size:") {
            self.max_message_size(v);
        } else if line.starts_with("a=candidate:") {
            return self.candidate(line);
        }
        Ok(Keep::Yes)
    }

    fn media_line(&mut self, rest: &str) -> Result<(), OfferError> {
        self.media += 1;
        if self.media > self.limits.max_media {
            return Err(over(Budget::Media, self.limits.max_media));
        }
        self.finish_section();
        let mut parts = rest.split_whitespace();
        let kind = parts.next().unwrap_or("");
        let port = parts.next().unwrap_or("0");
        self.section = match kind {
            "video" => Section::Video,
            "application" => Section::Application,
            _ => Section::Other,
        };
        self.video_ok = self.section == Section::Video && port != "0";
        if self.section == Section::Application && port != "0" {
            self.summary.has_data = true;
        }
        Ok(())
    }

    fn rtpmap(&mut self, rest: &'a str) {
        if self.section != Section::Video {
            return;
        }
        if let Some((pt, codec)) = rest.split_once(' ') {
            if codec.to_ascii_uppercase().starts_with("H264/") {
                self.h264_pts.push(pt);
            }
        }
    }

    fn fmtp(&mut self, rest: &'a str) {
        if self.section != Section::Video {
            return;
        }
        if let Some((pt, params)) = rest.split_once(' ') {
            if params
                .split(';')
                .any(|p| p.trim().eq_ignore_ascii_case("packetization-mode=1"))
            {
                self.pm1_pts.push(pt);
            }
        }
    }

    fn max_message_size(&mut self, v: &str) {
        if self.section != Section::Application {
            return;
        }
        if let Ok(n) = v.trim().parse::<usize>() {
            // 0 means "no limit" (RFC 8841); the viewer caps it at what we would ever send.
            self.summary.max_message_size = if n == 0 { usize::MAX } else { n };
        }
    }

    fn candidate(&mut self, line: &str) -> Result<Keep, OfferError> {
        self.candidate_lines += 1;
        if self.candidate_lines > self.limits.max_candidates {
            return Err(over(Budget::Candidates, self.limits.max_candidates));
        }
        if is_mdns_candidate(line) {
            self.summary.mdns_candidates_dropped += 1;
            return Ok(Keep::No);
        }
        self.summary.candidates += 1;
        Ok(Keep::Yes)
    }

    /// End of an m-line section: a usable video m-line counts, with H.264 if one of its
    /// H.264 payload types has packetization-mode 1.
    fn finish_section(&mut self) {
        if self.section == Section::Video && self.video_ok && !self.inactive {
            self.summary.has_video = true;
            if self.h264_pts.iter().any(|pt| self.pm1_pts.contains(pt)) {
                self.summary.has_h264 = true;
            }
        }
        self.h264_pts.clear();
        self.pm1_pts.clear();
        self.inactive = false;
    }

    fn finish(mut self) -> OfferSummary {
        self.finish_section();
        self.summary
    }
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
    fn offers_over_a_budget_are_refused_naming_the_key() {
        let limits = SdpLimits {
            max_bytes: CHROME_OFFER.len(),
            max_media: 2,
            max_candidates: 2,
        };
        let (_, s) = inspect_with(CHROME_OFFER, &limits).unwrap();
        assert_eq!(s.candidates, 1);

        let tight = |f: fn(&mut SdpLimits)| {
            let mut l = limits;
            f(&mut l);
            inspect_with(CHROME_OFFER, &l).unwrap_err()
        };
        let e = tight(|l| l.max_bytes -= 1);
        assert_eq!(e, over(Budget::Bytes, CHROME_OFFER.len() - 1));
        assert!(e.to_string().contains("server.max_sdp_bytes"), "{e}");
        let e = tight(|l| l.max_media = 1);
        assert_eq!(e, over(Budget::Media, 1));
        assert!(e.to_string().contains("server.max_sdp_media"), "{e}");
        let e = tight(|l| l.max_candidates = 1);
        assert_eq!(e, over(Budget::Candidates, 1));
        assert!(e.to_string().contains("server.max_sdp_candidates"), "{e}");
    }

    #[test]
    fn a_huge_offer_fails_at_the_first_line_over_budget() {
        // 100 000 m-lines: refused by the default budget, whatever follows.
        let mut sdp = String::from("v=0\r\n");
        for _ in 0..100_000 {
            sdp.push_str("m=video 9 UDP/TLS/RTP/SAVPF 96\r\n");
        }
        let limits = SdpLimits {
            max_bytes: usize::MAX,
            ..SdpLimits::default()
        };
        assert_eq!(
            inspect_with(&sdp, &limits).unwrap_err(),
            over(Budget::Media, limits.max_media)
        );
        assert_eq!(
            inspect(&sdp).unwrap_err(),
            over(Budget::Bytes, SdpLimits::default().max_bytes)
        );
    }

    #[test]
    fn sdpfrags_are_parsed_within_the_budget() {
        let line = "a=candidate:1 1 udp 2113937151 10.0.0.2 4000 typ host\r\n";
        let limits = SdpLimits {
            max_bytes: 4096,
            max_media: 1,
            max_candidates: 2,
        };
        let got = parse_sdpfrag(&line.repeat(2), &limits).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].addr(), "10.0.0.2:4000".parse().unwrap());
        assert_eq!(
            parse_sdpfrag(&line.repeat(3), &limits).unwrap_err(),
            over(Budget::Candidates, 2)
        );
        assert_eq!(
            parse_sdpfrag("m=audio 9 x 0\r\nm=video 9 x 0\r\n", &limits).unwrap_err(),
            over(Budget::Media, 1)
        );
        assert_eq!(
            parse_sdpfrag(&" ".repeat(4097), &limits).unwrap_err(),
            over(Budget::Bytes, 4096)
        );
        let e = parse_sdpfrag("a=candidate:junk\r\n", &limits).unwrap_err();
        assert!(matches!(e, OfferError::BadCandidate { .. }), "{e}");
        assert!(parse_sdpfrag("a=end-of-candidates\r\n", &limits)
            .unwrap()
            .is_empty());
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

    /// SDP-ish lines: the prefixes the scanner and str0m's candidate parser look at, with
    /// arbitrary tails.
    fn sdp_lines() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let prefix = prop_oneof![
            Just("v=0"),
            Just("m=video "),
            Just("m=application "),
            Just("a=rtpmap:"),
            Just("a=fmtp:"),
            Just("a=inactive"),
            Just("a=max-message-size:"),
            Just("a=candidate:"),
            Just("a=candidate:1 1 udp 2113937151 "),
            Just(""),
        ];
        proptest::collection::vec((prefix, "\\PC{0,40}"), 0..40).prop_map(|lines| {
            lines
                .into_iter()
                .map(|(p, t)| format!("{p}{t}\r\n"))
                .collect()
        })
    }

    proptest::proptest! {
        #[test]
        fn inspect_and_parse_sdpfrag_never_panic_and_keep_the_budget(sdp in sdp_lines()) {
            let limits = SdpLimits { max_bytes: 4096, max_media: 3, max_candidates: 5 };
            if let Ok((cleaned, s)) = inspect_with(&sdp, &limits) {
                proptest::prop_assert!(s.candidates + s.mdns_candidates_dropped <= 5);
                proptest::prop_assert!(cleaned.lines().filter(|l| l.starts_with("m=")).count() <= 3);
                // What follows inspection in `RtcHandle::answer` must not panic either.
                let _ = str0m::change::SdpOffer::from_sdp_string(&cleaned);
            }
            if let Ok(c) = parse_sdpfrag(&sdp, &limits) {
                proptest::prop_assert!(c.len() <= 5);
            }
        }

        #[test]
        fn inspect_never_panics_on_any_text(s in "\\PC{0,300}") {
            let _ = inspect(&s);
            let _ = parse_sdpfrag(&s, &SdpLimits::default());
        }
    }
}
