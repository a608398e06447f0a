//! H.264 over RTP (RFC 6184, packetization-mode 1) and RTCP sender reports (RFC 3550), pure.
//!
//! str0m has its own H.264 packetiser, but it is private to the crate (exported only under an
//! internal test feature), so the RTSP server carries this small one: each NAL unit that fits
//! goes as a single-NAL-unit packet, a larger one is cut into FU-A fragments. The marker bit is
//! set on the last packet of an access unit. SPS and PPS stay in band before every IDR (the
//! pipeline puts them there), so a client can also start from the stream alone.

use bytes::{BufMut, Bytes, BytesMut};

use crate::picture::annexb;

/// The RTP payload type announced in the SDP (`a=rtpmap:96 H264/90000`).
pub const PAYLOAD_TYPE: u8 = 96;
/// The RTP payload type of the Opus audio track (`a=rtpmap:97 opus/48000/2`).
pub const OPUS_PAYLOAD_TYPE: u8 = 97;
/// RTP clock rate of H.264 video.
pub const CLOCK_RATE: u64 = 90_000;
/// Largest RTP payload: a 1500-byte Ethernet MTU less IPv6 (40), UDP (8) and RTP (12) headers,
/// with room to spare for tunnels.
pub const MAX_PAYLOAD: usize = 1200;
/// Size of the fixed RTP header (no CSRC, no extension).
pub const RTP_HEADER: usize = 12;

const FU_A: u8 = 28;

/// The sending state of one RTP stream: SSRC, the next sequence number, and the counts an RTCP
/// sender report carries.
#[derive(Debug, Clone)]
pub struct RtpSender {
    ssrc: u32,
    seq: u16,
    packets: u32,
    octets: u32,
}

impl RtpSender {
    /// A stream with this SSRC whose first packet has sequence number `first_seq` (both random
    /// per RFC 3550).
    pub fn new(ssrc: u32, first_seq: u16) -> Self {
        Self {
            ssrc,
            seq: first_seq,
            packets: 0,
            octets: 0,
        }
    }

    /// The stream's SSRC.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// The sequence number the next packet will carry (for `RTP-Info`).
    pub fn next_seq(&self) -> u16 {
        self.seq
    }

    /// Packets sent so far.
    pub fn packets(&self) -> u32 {
        self.packets
    }

    /// Cut one Annex-B access unit into RTP packets stamped `rtp_time`, calling `emit` with each
    /// whole packet (header and payload) in order. Returns how many packets were made.
    pub fn packetize(&mut self, au: &[u8], rtp_time: u32, mut emit: impl FnMut(Bytes)) -> usize {
        let nals: Vec<&[u8]> = annexb::nal_units(au)
            .into_iter()
            .filter(|n| !n.is_empty())
            .collect();
        let mut made = 0;
        for (i, nal) in nals.iter().enumerate() {
            let last_nal = i + 1 == nals.len();
            if nal.len() <= MAX_PAYLOAD {
                emit(self.packet(PAYLOAD_TYPE, rtp_time, last_nal, &[], nal));
                made += 1;
                continue;
            }
            // FU-A: the NAL header's F and NRI bits go in the FU indicator, its type in the FU
            // header; the header byte itself is not repeated.
            let header = nal[0];
            let indicator = (header & 0xe0) | FU_A;
            let body = &nal[1..];
            let chunks = body.chunks(MAX_PAYLOAD - 2);
            let count = chunks.len();
            for (k, chunk) in chunks.enumerate() {
                let start = if k == 0 { 0x80 } else { 0 };
                let end = if k + 1 == count { 0x40 } else { 0 };
                let fu = [indicator, start | end | (header & 0x1f)];
                emit(self.packet(
                    PAYLOAD_TYPE,
                    rtp_time,
                    last_nal && k + 1 == count,
                    &fu,
                    chunk,
                ));
                made += 1;
            }
        }
        made
    }

    /// One Opus packet as one RTP packet (RFC 7587: the marker bit is not set; a frame is never
    /// split).
    pub fn opus(&mut self, packet: &[u8], rtp_time: u32) -> Bytes {
        self.packet(OPUS_PAYLOAD_TYPE, rtp_time, false, &[], packet)
    }

    fn packet(
        &mut self,
        pt: u8,
        rtp_time: u32,
        marker: bool,
        prefix: &[u8],
        payload: &[u8],
    ) -> Bytes {
        let mut b = BytesMut::with_capacity(RTP_HEADER + prefix.len() + payload.len());
        b.put_u8(0x80); // V=2, no padding, no extension, no CSRC
        b.put_u8(if marker { 0x80 } else { 0 } | pt);
        b.put_u16(self.seq);
        b.put_u32(rtp_time);
        b.put_u32(self.ssrc);
        b.put_slice(prefix);
        b.put_slice(payload);
        self.seq = self.seq.wrapping_add(1);
        self.packets = self.packets.wrapping_add(1);
        self.octets = self
            .octets
            .wrapping_add((prefix.len() + payload.len()) as u32);
        b.freeze()
    }

    /// An RTCP compound packet: a sender report (no report blocks) and an SDES with a CNAME, as
    /// RFC 3550 §6.1 requires. `ntp` is the wall-clock time as seconds and 2^-32 fractions since
    /// 1900; `rtp_time` the same instant on the RTP clock.
    pub fn sender_report(&self, ntp: u64, rtp_time: u32, cname: &str) -> Bytes {
        let mut b = BytesMut::with_capacity(64);
        // SR: V=2, RC=0, PT=200, length 6 (words minus one).
        b.put_u8(0x80);
        b.put_u8(200);
        b.put_u16(6);
        b.put_u32(self.ssrc);
        b.put_u64(ntp);
        b.put_u32(rtp_time);
        b.put_u32(self.packets);
        b.put_u32(self.octets);
        // SDES: one chunk, CNAME item, padded to a 32-bit boundary with at least one zero.
        let cname = &cname.as_bytes()[..cname.len().min(255)];
        let chunk = 4 + 2 + cname.len() + 1;
        let padded = chunk.div_ceil(4) * 4;
        b.put_u8(0x81);
        b.put_u8(202);
        b.put_u16((padded / 4) as u16);
        b.put_u32(self.ssrc);
        b.put_u8(1); // CNAME
        b.put_u8(cname.len() as u8);
        b.put_slice(cname);
        b.put_bytes(0, padded - (4 + 2 + cname.len()));
        b.freeze()
    }
}

/// Seconds between the NTP epoch (1900) and the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// A time since the Unix epoch as a 64-bit NTP timestamp.
pub fn ntp_timestamp(since_unix: std::time::Duration) -> u64 {
    let secs = since_unix.as_secs() + NTP_UNIX_OFFSET;
    let frac = (u64::from(since_unix.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// An interleaved frame (RFC 2326 §10.12): `$`, the channel, the length, the packet.
pub fn interleave(out: &mut BytesMut, channel: u8, packet: &[u8]) {
    out.reserve(4 + packet.len());
    out.put_u8(b'$');
    out.put_u8(channel);
    out.put_u16(packet.len() as u16);
    out.put_slice(packet);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reassemble what `packetize` made, as a receiver does (RFC 6184 §5.8).
    fn depacketize(packets: &[Bytes]) -> Vec<Vec<u8>> {
        let mut nals = Vec::new();
        let mut fu: Option<Vec<u8>> = None;
        for p in packets {
            let payload = &p[RTP_HEADER..];
            match payload[0] & 0x1f {
                FU_A => {
                    let (ind, hdr) = (payload[0], payload[1]);
                    if hdr & 0x80 != 0 {
                        fu = Some(vec![(ind & 0xe0) | (hdr & 0x1f)]);
                    }
                    let buf = fu.as_mut().expect("FU-A start first");
                    buf.extend_from_slice(&payload[2..]);
                    if hdr & 0x40 != 0 {
                        nals.push(fu.take().expect("open FU-A"));
                    }
                }
                _ => nals.push(payload.to_vec()),
            }
        }
        nals
    }

    fn annexb(nals: &[Vec<u8>]) -> Vec<u8> {
        nals.iter()
            .flat_map(|n| [0, 0, 0, 1].iter().chain(n.iter()).copied())
            .collect()
    }

    #[test]
    fn small_nals_go_whole_and_the_last_packet_has_the_marker() {
        let nals = vec![vec![0x67, 1, 2, 3], vec![0x68, 4], vec![0x65, 9, 9, 9]];
        let mut s = RtpSender::new(0x1234_5678, 65534);
        let mut out = Vec::new();
        assert_eq!(s.packetize(&annexb(&nals), 90_000, |p| out.push(p)), 3);
        assert_eq!(depacketize(&out), nals);
        let seqs: Vec<u16> = out
            .iter()
            .map(|p| u16::from_be_bytes([p[2], p[3]]))
            .collect();
        assert_eq!(seqs, [65534, 65535, 0], "sequence numbers wrap");
        let markers: Vec<bool> = out.iter().map(|p| p[1] & 0x80 != 0).collect();
        assert_eq!(markers, [false, false, true]);
        for p in &out {
            assert_eq!(p[0], 0x80);
            assert_eq!(p[1] & 0x7f, PAYLOAD_TYPE);
            assert_eq!(&p[4..8], &90_000u32.to_be_bytes());
            assert_eq!(&p[8..12], &0x1234_5678u32.to_be_bytes());
        }
    }

    #[test]
    fn a_large_nal_is_cut_into_fu_a_fragments_that_reassemble() {
        let mut idr = vec![0x65];
        idr.extend((0..5000u32).map(|i| (i * 7) as u8));
        let nals = vec![vec![0x67, 0x42, 0xc0, 0x1f], idr];
        let mut s = RtpSender::new(1, 0);
        let mut out = Vec::new();
        let n = s.packetize(&annexb(&nals), 0, |p| out.push(p));
        assert_eq!(n, 1 + 5000usize.div_ceil(MAX_PAYLOAD - 2));
        assert!(out.iter().all(|p| p.len() <= RTP_HEADER + MAX_PAYLOAD));
        assert_eq!(depacketize(&out), nals);
        assert_eq!(out[1][RTP_HEADER] & 0x1f, FU_A);
        assert_eq!(
            out[1][RTP_HEADER] & 0x60,
            0x60,
            "NRI kept in the FU indicator"
        );
        assert!(out.last().is_some_and(|p| p[1] & 0x80 != 0));
        assert_eq!(out.iter().filter(|p| p[1] & 0x80 != 0).count(), 1);
        assert_eq!(s.packets(), n as u32);
    }

    #[test]
    fn empty_input_makes_no_packets() {
        let mut s = RtpSender::new(1, 0);
        assert_eq!(s.packetize(&[], 0, |_| panic!("no packet")), 0);
        assert_eq!(s.packetize(&[0, 0, 1], 0, |_| panic!("no packet")), 0);
    }

    #[test]
    fn sender_report_is_a_well_formed_compound_packet() {
        let mut s = RtpSender::new(0xdead_beef, 7);
        s.packetize(&[0, 0, 0, 1, 0x65, 1, 2, 3], 1000, |_| {});
        let sr = s.sender_report(0x1122_3344_5566_7788, 4242, "snaprtcd");
        assert_eq!(sr.len() % 4, 0);
        assert_eq!(&sr[..4], &[0x80, 200, 0, 6]);
        assert_eq!(&sr[4..8], &0xdead_beefu32.to_be_bytes());
        assert_eq!(&sr[8..16], &0x1122_3344_5566_7788u64.to_be_bytes());
        assert_eq!(&sr[16..20], &4242u32.to_be_bytes());
        assert_eq!(&sr[20..24], &1u32.to_be_bytes(), "packet count");
        assert_eq!(&sr[24..28], &4u32.to_be_bytes(), "payload octets");
        let sdes = &sr[28..];
        assert_eq!(sdes[1], 202);
        let words = u16::from_be_bytes([sdes[2], sdes[3]]) as usize;
        assert_eq!(sdes.len(), 4 + words * 4);
        assert_eq!(&sdes[10..18], b"snaprtcd");
    }

    #[test]
    fn ntp_time_of_the_unix_epoch_and_a_half_second() {
        let t = ntp_timestamp(std::time::Duration::from_millis(1500));
        assert_eq!(t >> 32, NTP_UNIX_OFFSET + 1);
        assert_eq!(t & 0xffff_ffff, 1 << 31);
    }

    #[test]
    fn interleaved_frame_has_dollar_channel_and_length() {
        let mut out = BytesMut::new();
        interleave(&mut out, 1, &[9, 8, 7]);
        assert_eq!(&out[..], &[b'$', 1, 0, 3, 9, 8, 7]);
    }
}
