//! A streaming Ogg demuxer for Ogg/Opus from an `exec` program: pages in, Opus packets out
//! (RFC 3533 framing, RFC 7845 header packets skipped). Bytes are buffered only up to one page
//! (at most 65 307 bytes by the format) and a packet is kept only up to [`MAX_PACKET`]; anything
//! else is dropped and counted, never grown.

use bytes::Bytes;
use std::collections::VecDeque;

/// Largest Opus packet kept (120 ms of six 1275-byte frames fits; RFC 6716 allows no more).
pub const MAX_PACKET: usize = 8 * 1024;
/// Largest Ogg page: a 27-byte header, 255 lacing values, 255 segments of 255 bytes.
const MAX_PAGE: usize = 27 + 255 + 255 * 255;
/// Packets waiting to be taken before more are dropped.
const MAX_QUEUED: usize = 64;

/// Ogg pages in, Opus packets out.
#[derive(Debug, Default)]
pub struct OggOpus {
    buf: Vec<u8>,
    /// The packet being assembled across segments (and pages).
    partial: Vec<u8>,
    /// The partial packet overflowed `MAX_PACKET`: skip up to its end.
    oversize: bool,
    packets: VecDeque<Bytes>,
    dropped: u64,
}

impl OggOpus {
    /// Feed bytes of the stream, as they come.
    pub fn handle_input(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        while self.page() {}
        if self.buf.len() > 2 * MAX_PAGE {
            // Never a page in all this: resynchronise on what comes next.
            self.buf.clear();
        }
    }

    /// The next Opus audio packet, if one is complete.
    #[must_use]
    pub fn poll_packet(&mut self) -> Option<Bytes> {
        self.packets.pop_front()
    }

    /// Packets dropped (too large, or not taken in time).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Parse one page from the front of the buffer; false when more bytes are needed.
    fn page(&mut self) -> bool {
        let Some(start) = self.buf.windows(4).position(|w| w == b"OggS") else {
            let keep = self.buf.len().min(3);
            self.buf.drain(..self.buf.len() - keep);
            return false;
        };
        self.buf.drain(..start);
        if self.buf.len() < 27 {
            return false;
        }
        if self.buf[4] != 0 {
            // Not version 0: not a page; look for the next capture pattern.
            self.buf.drain(..4);
            return true;
        }
        let segments = usize::from(self.buf[26]);
        if self.buf.len() < 27 + segments {
            return false;
        }
        let lacing: Vec<usize> = self.buf[27..27 + segments]
            .iter()
            .map(|&b| usize::from(b))
            .collect();
        let body: usize = lacing.iter().sum();
        let total = 27 + segments + body;
        if self.buf.len() < total {
            return false;
        }
        let continued = self.buf[5] & 1 != 0;
        if !continued {
            self.partial.clear();
            self.oversize = false;
        }
        let mut at = 27 + segments;
        for len in lacing {
            let seg = &self.buf[at..at + len];
            at += len;
            if !self.oversize {
                if self.partial.len() + seg.len() > MAX_PACKET {
                    self.oversize = true;
                    self.partial.clear();
                } else {
                    self.partial.extend_from_slice(seg);
                }
            }
            if len < 255 {
                let packet = std::mem::take(&mut self.partial);
                if std::mem::take(&mut self.oversize) {
                    self.dropped += 1;
                } else {
                    self.push(packet);
                }
            }
        }
        self.buf.drain(..total);
        true
    }

    fn push(&mut self, packet: Vec<u8>) {
        if packet.is_empty() || packet.starts_with(b"OpusHead") || packet.starts_with(b"OpusTags") {
            return;
        }
        if self.packets.len() >= MAX_QUEUED {
            self.dropped += 1;
            return;
        }
        self.packets.push_back(Bytes::from(packet));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One Ogg page holding `packets` (no CRC: the demuxer does not check it).
    fn page(packets: &[&[u8]], continued: bool) -> Vec<u8> {
        let mut lacing = Vec::new();
        let mut body = Vec::new();
        for p in packets {
            let mut n = p.len();
            while n >= 255 {
                lacing.push(255u8);
                n -= 255;
            }
            lacing.push(n as u8);
            body.extend_from_slice(p);
        }
        let mut out = b"OggS".to_vec();
        out.push(0);
        out.push(u8::from(continued));
        out.extend_from_slice(&[0; 20]);
        out.push(lacing.len() as u8);
        out.extend_from_slice(&lacing);
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn packets_come_out_whole_whatever_the_read_boundaries_and_headers_are_skipped() {
        let big = vec![7u8; 600];
        let mut stream = page(&[b"OpusHead\x01\x01"], false);
        stream.extend(page(&[b"OpusTags...."], false));
        stream.extend(page(&[b"\xfc\x01\x02", &big, b"\xfc\x03"], false));
        for chunk in [1, 3, 17, 4096] {
            let mut d = OggOpus::default();
            for piece in stream.chunks(chunk) {
                d.handle_input(piece);
            }
            let got: Vec<Bytes> = std::iter::from_fn(|| d.poll_packet()).collect();
            assert_eq!(got.len(), 3, "chunk {chunk}");
            assert_eq!(&got[0][..], b"\xfc\x01\x02");
            assert_eq!(got[1].len(), 600);
            assert_eq!(&got[2][..], b"\xfc\x03");
        }
    }

    #[test]
    fn oversized_packets_and_garbage_are_dropped_with_memory_bounded() {
        let mut d = OggOpus::default();
        d.handle_input(&vec![0x55; 300_000]);
        assert!(d.buf.len() <= 2 * MAX_PAGE);
        // A packet of 20 000 bytes spread over two pages is dropped; the next one comes through.
        let huge = vec![1u8; 255 * 40];
        let mut first = page(&[&huge], false);
        // Lacing of 40 × 255 means "continues": the second page carries the rest.
        first[26] = 40;
        first.truncate(27 + 40 + huge.len());
        d.handle_input(&first);
        d.handle_input(&page(&[&huge[..100], b"\xfc\x09"], true));
        assert_eq!(d.dropped(), 1);
        assert_eq!(&d.poll_packet().unwrap()[..], b"\xfc\x09");
        assert!(d.poll_packet().is_none());
    }
}
