//! The SDP a DESCRIBE answers with, built from the stream's real SPS and PPS.

use std::fmt::Write as _;

use base64::Engine as _;

use crate::picture::annexb;

use super::rtp::{CLOCK_RATE, OPUS_PAYLOAD_TYPE, PAYLOAD_TYPE};

/// The video track's control URL, relative to the aggregate `Content-Base`.
pub const TRACK_CONTROL: &str = "trackID=0";
/// The audio track's control URL.
pub const AUDIO_CONTROL: &str = "trackID=1";

const SPS: u8 = 7;
const PPS: u8 = 8;

/// The H.264 parameter sets of the stream, as the last IDR carried them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSets {
    /// The sequence parameter set NAL unit (header byte included).
    pub sps: Vec<u8>,
    /// The picture parameter set NAL unit (header byte included).
    pub pps: Vec<u8>,
}

impl ParamSets {
    /// The SPS and PPS in an Annex-B access unit; `None` unless it has both (and the SPS is
    /// long enough to carry a profile and level).
    pub fn from_access_unit(au: &[u8]) -> Option<Self> {
        let mut sps = None;
        let mut pps = None;
        for nal in annexb::nal_units(au) {
            match annexb::nal_type(nal) {
                Some(SPS) if nal.len() >= 4 => sps = sps.or(Some(nal)),
                Some(PPS) if nal.len() >= 2 => pps = pps.or(Some(nal)),
                _ => {}
            }
        }
        Some(Self {
            sps: sps?.to_vec(),
            pps: pps?.to_vec(),
        })
    }

    /// `profile-level-id`: the SPS's profile_idc, constraint flags and level_idc in hex.
    pub fn profile_level_id(&self) -> String {
        format!("{:02x}{:02x}{:02x}", self.sps[1], self.sps[2], self.sps[3])
    }

    /// `sprop-parameter-sets`: base64 SPS, comma, base64 PPS.
    pub fn sprop_parameter_sets(&self) -> String {
        let b64 = base64::engine::general_purpose::STANDARD;
        format!("{},{}", b64.encode(&self.sps), b64.encode(&self.pps))
    }

    /// The picture size the SPS announces, for `a=x-dimensions` (some NVRs show it).
    pub fn dimensions(&self) -> Option<(u32, u32)> {
        annexb::sps_dimensions(&self.sps)
    }
}

/// The session description: the H.264 video track, and with `audio_channels` an Opus track
/// (RFC 7587: always `opus/48000/2`; `stereo=1` says the sender sends two channels).
/// `session_id` is the `o=` line's id (any number), `server_ip` the address the client reached.
pub fn describe(
    params: &ParamSets,
    session_id: u64,
    server_ip: std::net::IpAddr,
    audio_channels: Option<u32>,
) -> String {
    let family = if server_ip.is_ipv6() { "IP6" } else { "IP4" };
    let mut sdp = String::with_capacity(512);
    // `write!` into a String cannot fail.
    let _ = write!(
        sdp,
        "v=0\r\n\
         o=- {session_id} 1 IN {family} {server_ip}\r\n\
         s=snaprtcd\r\n\
         c=IN {family} {server_ip}\r\n\
         t=0 0\r\n\
         a=tool:snaprtcd {version}\r\n\
         a=control:*\r\n\
         a=range:npt=now-\r\n\
         m=video 0 RTP/AVP {pt}\r\n\
         a=rtpmap:{pt} H264/{CLOCK_RATE}\r\n\
         a=fmtp:{pt} packetization-mode=1;profile-level-id={pli};sprop-parameter-sets={sprop}\r\n",
        version = env!("CARGO_PKG_VERSION"),
        pt = PAYLOAD_TYPE,
        pli = params.profile_level_id(),
        sprop = params.sprop_parameter_sets(),
    );
    if let Some((w, h)) = params.dimensions() {
        let _ = write!(sdp, "a=x-dimensions:{w},{h}\r\n");
    }
    let _ = write!(sdp, "a=control:{TRACK_CONTROL}\r\n");
    if let Some(channels) = audio_channels {
        let stereo = u8::from(channels == 2);
        let _ = write!(
            sdp,
            "m=audio 0 RTP/AVP {OPUS_PAYLOAD_TYPE}\r\n\
             a=rtpmap:{OPUS_PAYLOAD_TYPE} opus/48000/2\r\n\
             a=fmtp:{OPUS_PAYLOAD_TYPE} stereo={stereo};sprop-stereo={stereo};useinbandfec=1\r\n\
             a=control:{AUDIO_CONTROL}\r\n"
        );
    }
    sdp
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPS_640X480: &[u8] = &[
        0x67, 0x42, 0xc0, 0x1e, 0xd9, 0x00, 0xa0, 0x3d, 0xb0, 0x11, 0x00, 0x00, 0x03, 0x00, 0x01,
        0x00, 0x00, 0x03, 0x00, 0x3c, 0x0f, 0x16, 0x2e, 0x48,
    ];

    fn au() -> Vec<u8> {
        let mut v = vec![0, 0, 0, 1, 0x09, 0xf0, 0, 0, 0, 1];
        v.extend_from_slice(SPS_640X480);
        v.extend_from_slice(&[0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80, 0, 0, 0, 1, 0x65, 0x88]);
        v
    }

    #[test]
    fn parameter_sets_come_from_the_access_unit() {
        let p = ParamSets::from_access_unit(&au()).expect("SPS and PPS");
        assert_eq!(p.sps, SPS_640X480);
        assert_eq!(p.pps, [0x68, 0xce, 0x3c, 0x80]);
        assert_eq!(p.profile_level_id(), "42c01e");
        assert_eq!(
            p.sprop_parameter_sets(),
            "Z0LAHtkAoD2wEQAAAwABAAADADwPFi5I,aM48gA=="
        );
        assert_eq!(p.dimensions(), Some((640, 480)));
        assert_eq!(ParamSets::from_access_unit(&[0, 0, 0, 1, 0x41, 1]), None);
    }

    #[test]
    fn sdp_names_the_track_codec_and_parameter_sets() {
        let p = ParamSets::from_access_unit(&au()).expect("SPS and PPS");
        let sdp = describe(&p, 42, "192.0.2.1".parse().expect("ip"), None);
        assert!(sdp.starts_with("v=0\r\no=- 42 1 IN IP4 192.0.2.1\r\n"));
        assert!(sdp.contains("m=video 0 RTP/AVP 96\r\n"));
        assert!(sdp.contains("a=rtpmap:96 H264/90000\r\n"));
        assert!(sdp.contains("profile-level-id=42c01e;"));
        assert!(sdp.contains("sprop-parameter-sets=Z0LAHtkAoD2wEQAAAwABAAADADwPFi5I,aM48gA==\r\n"));
        assert!(sdp.ends_with("a=control:trackID=0\r\n"));
        let v6 = describe(&p, 1, "::1".parse().expect("ip"), None);
        assert!(v6.contains("c=IN IP6 ::1\r\n"));
        assert!(!sdp.contains("m=audio"));
        let av = describe(&p, 42, "192.0.2.1".parse().expect("ip"), Some(1));
        assert!(av.starts_with(&sdp), "the video part is unchanged");
        assert!(av.ends_with(
            "m=audio 0 RTP/AVP 97\r\na=rtpmap:97 opus/48000/2\r\n\
             a=fmtp:97 stereo=0;sprop-stereo=0;useinbandfec=1\r\na=control:trackID=1\r\n"
        ));
        let stereo = describe(&p, 42, "192.0.2.1".parse().expect("ip"), Some(2));
        assert!(stereo.contains("stereo=1;sprop-stereo=1;"));
    }
}
