//! H.264 Annex-B byte streams: NAL units behind `00 00 01` / `00 00 00 01` start codes.
//!
//! [`AccessUnitSplitter`] turns a byte stream that arrives in arbitrary pieces (pipe reads) into
//! whole access units (one picture each). [`ParamSetInserter`] makes sure every IDR is preceded
//! by SPS and PPS, as Safari/iOS and late joiners need, even when a camera sends them only once.
//! Both are pure: bytes in, bytes out; they never panic on bad input.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

/// NAL unit types used here (ITU-T H.264 table 7-1).
pub mod nal {
    /// A slice of a non-IDR picture.
    pub const SLICE: u8 = 1;
    /// A slice of an IDR picture (a decoder can start here).
    pub const IDR: u8 = 5;
    /// Supplemental enhancement information.
    pub const SEI: u8 = 6;
    /// Sequence parameter set (picture size, profile).
    pub const SPS: u8 = 7;
    /// Picture parameter set.
    pub const PPS: u8 = 8;
    /// Access unit delimiter.
    pub const AUD: u8 = 9;
}

const START_CODE: [u8; 4] = [0, 0, 0, 1];

/// Positions of NAL units in `buf`: `(start_code_start, payload_start)` for each start code.
fn start_codes(buf: &[u8], from: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut i = from;
    std::iter::from_fn(move || {
        while i + 3 <= buf.len() {
            if buf[i + 2] > 1 {
                i += 3;
                continue;
            }
            if buf[i] == 0 && buf[i + 1] == 0 && buf[i + 2] == 1 {
                let sc = if i > 0 && buf[i - 1] == 0 { i - 1 } else { i };
                let payload = i + 3;
                i = payload;
                return Some((sc, payload));
            }
            i += 1;
        }
        None
    })
}

/// The NAL units of one Annex-B buffer, without their start codes.
pub fn nal_units(buf: &[u8]) -> Vec<&[u8]> {
    let codes: Vec<(usize, usize)> = start_codes(buf, 0).collect();
    let mut out = Vec::with_capacity(codes.len());
    for (k, &(_, payload)) in codes.iter().enumerate() {
        let end = codes.get(k + 1).map_or(buf.len(), |&(sc, _)| sc);
        if payload < end {
            out.push(&buf[payload..end]);
        }
    }
    out
}

/// `nal_unit_type` of a NAL unit (first byte after the start code).
pub fn nal_type(nal: &[u8]) -> Option<u8> {
    nal.first().map(|b| b & 0x1f)
}

/// True if the access unit holds an IDR slice.
pub fn is_idr(au: &[u8]) -> bool {
    nal_units(au).iter().any(|n| nal_type(n) == Some(nal::IDR))
}

fn is_vcl(t: u8) -> bool {
    (1..=5).contains(&t)
}

/// A NAL unit that begins an access unit whatever came before it (H.264 7.4.1.2.3): an AUD,
/// SPS, PPS, SEI or types 14..=18, or the first slice of a picture. `nal` starts at the NAL
/// header; `None` while its first two bytes are not there yet.
fn begins_access_unit(nal: &[u8]) -> Option<bool> {
    let t = nal_type(nal)?;
    if is_vcl(t) {
        // `first_mb_in_slice == 0` (Exp-Golomb `0` is a single 1 bit): a new picture.
        return nal.get(1).map(|b| b & 0x80 != 0);
    }
    Some(matches!(
        t,
        nal::AUD | nal::SPS | nal::PPS | nal::SEI | 14..=18
    ))
}

/// Splits an Annex-B byte stream into access units, whatever the read boundaries.
///
/// An access unit ends where the next one starts: at an AUD, SPS, PPS or SEI that follows a
/// picture's slices, or at a slice with `first_mb_in_slice == 0`. An access unit is therefore
/// emitted when the first NAL unit of the next one is complete (one picture of latency) or at
/// [`finish`](Self::finish).
///
/// Memory is bounded by `max_au_bytes` while buffering, not after: as soon as the unit being
/// read (with the unit after it, if begun) holds more, it is dropped and counted, the bytes up
/// to the next access-unit boundary are skipped, and units are dropped until the next IDR (the
/// pictures between refer to the lost one, so no decoder could use them).
#[derive(Debug)]
pub struct AccessUnitSplitter {
    buf: BytesMut,
    /// Where to resume looking for start codes in `buf`.
    scan: usize,
    /// Start of the NAL unit being read (its start code), if one started.
    nal_start: Option<usize>,
    /// The current access unit already holds a slice.
    au_has_vcl: bool,
    ready: std::collections::VecDeque<Bytes>,
    max_au_bytes: usize,
    /// An oversize unit was dropped: skipping bytes until an access unit begins.
    resyncing: bool,
    /// An oversize unit was dropped: units are dropped until one holds an IDR.
    needs_idr: bool,
    dropped: u64,
}

impl AccessUnitSplitter {
    /// A splitter that drops access units larger than `max_au_bytes` (at least 64).
    pub fn new(max_au_bytes: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            scan: 0,
            nal_start: None,
            au_has_vcl: false,
            ready: Default::default(),
            max_au_bytes: max_au_bytes.max(64),
            resyncing: false,
            needs_idr: false,
            dropped: 0,
        }
    }

    /// Access units dropped: too large, or after a dropped one and before the next IDR.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Feed the next piece of the stream.
    pub fn handle_input(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        loop {
            if self.resyncing && !self.resync() {
                return;
            }
            self.split_buffered();
            if self.buf.len() <= self.max_au_bytes {
                return;
            }
            // A unit far too large, or a stream without start codes: never buffer more.
            self.drop_oversize();
        }
    }

    /// Complete every NAL unit whose end is in the buffer, emitting the access units they end.
    fn split_buffered(&mut self) {
        loop {
            let current = self.nal_start;
            let next =
                start_codes(&self.buf, self.scan).find(|&(sc, _)| current.is_none_or(|s| sc > s));
            let Some((sc, payload)) = next else {
                break;
            };
            let shift = match current {
                Some(start) => self.complete_nal(start, sc),
                None => {
                    // Bytes before the first start code are not H.264; forget them.
                    let _ = self.buf.split_to(sc);
                    sc
                }
            };
            self.nal_start = Some(sc - shift);
            self.scan = payload - shift;
        }
        // A start code may straddle this read and the next one.
        self.scan = self.scan.max(self.buf.len().saturating_sub(2));
    }

    /// The unit being buffered is over the limit: drop it and skip to the next boundary.
    fn drop_oversize(&mut self) {
        self.dropped += 1;
        // The NAL unit being read may begin the next access unit: then keep it.
        let keep_from = match self.nal_start {
            Some(start) if start > 0 && self.au_has_vcl && self.nal_begins_access_unit(start) => {
                start
            }
            _ => self.buf.len().saturating_sub(3),
        };
        let _ = self.buf.split_to(keep_from);
        self.scan = 0;
        self.nal_start = None;
        self.au_has_vcl = false;
        self.resyncing = true;
        self.needs_idr = true;
    }

    /// Whether the NAL unit whose start code is at `start` begins an access unit.
    fn nal_begins_access_unit(&self, start: usize) -> bool {
        start_codes(&self.buf, start)
            .next()
            .and_then(|(_, payload)| begins_access_unit(&self.buf[payload..]))
            .unwrap_or(false)
    }

    /// Skip bytes up to the next NAL unit that begins an access unit; true once `buf` starts
    /// there. Keeps at most a start code's worth of bytes while none is found.
    fn resync(&mut self) -> bool {
        // The first start code whose NAL unit begins an access unit or is not all here yet.
        let found = start_codes(&self.buf, 0).find_map(|(sc, payload)| {
            match begins_access_unit(&self.buf[payload..]) {
                Some(false) => None,
                Some(true) => Some((sc, true)),
                None => Some((sc, false)),
            }
        });
        match found {
            Some((sc, begins)) => {
                let _ = self.buf.split_to(sc);
                // When its header is still to come, look again from this start code.
                self.resyncing = !begins;
                begins
            }
            None => {
                let _ = self.buf.split_to(self.buf.len().saturating_sub(3));
                false
            }
        }
    }

    fn reset(&mut self) {
        self.buf.clear();
        self.scan = 0;
        self.nal_start = None;
        self.au_has_vcl = false;
        self.resyncing = false;
        self.needs_idr = false;
    }

    /// The NAL unit at `start..end` (start code included) is complete. Returns how far the
    /// buffer's indices moved down (an access unit before it was emitted).
    fn complete_nal(&mut self, start: usize, end: usize) -> usize {
        let sc_len = if self.buf.get(start + 2) == Some(&1) {
            3
        } else {
            4
        };
        let nal = &self.buf[(start + sc_len).min(end)..end];
        let Some(t) = nal_type(nal) else {
            return 0;
        };
        let starts_new = self.au_has_vcl && begins_access_unit(nal).unwrap_or(false);
        let shift = if starts_new && start > 0 {
            self.emit(start);
            start
        } else {
            0
        };
        if is_vcl(t) {
            self.au_has_vcl = true;
        }
        shift
    }

    fn emit(&mut self, upto: usize) {
        let au = self.buf.split_to(upto).freeze();
        self.au_has_vcl = false;
        if au.is_empty() {
            return;
        }
        if au.len() > self.max_au_bytes {
            // Complete in one read but too large: the pictures after it refer to it.
            self.dropped += 1;
            self.needs_idr = true;
            return;
        }
        if self.needs_idr && !is_idr(&au) {
            self.dropped += 1;
            return;
        }
        self.needs_idr = false;
        self.ready.push_back(au);
    }

    /// The next complete access unit, if any.
    pub fn poll_access_unit(&mut self) -> Option<Bytes> {
        self.ready.pop_front()
    }

    /// The stream ended: whatever is buffered is the last access unit.
    pub fn finish(&mut self) -> Option<Bytes> {
        if let Some(start) = self.nal_start.take() {
            let end = self.buf.len();
            self.complete_nal(start, end);
        }
        let len = self.buf.len();
        if len > 0 && self.au_has_vcl {
            self.emit(len);
        }
        self.reset();
        self.ready.pop_front()
    }
}

/// Reads the bits of an RBSP (a NAL unit's payload with emulation-prevention bytes removed).
struct BitReader {
    bytes: Vec<u8>,
    pos: usize,
}

impl BitReader {
    /// `payload`: the NAL unit after its header byte.
    fn new(payload: &[u8]) -> Self {
        let mut bytes = Vec::with_capacity(payload.len());
        let mut zeros = 0;
        for &b in payload {
            if zeros >= 2 && b == 3 {
                zeros = 0;
                continue;
            }
            zeros = if b == 0 { zeros + 1 } else { 0 };
            bytes.push(b);
        }
        Self { bytes, pos: 0 }
    }

    fn bit(&mut self) -> Option<u32> {
        let byte = *self.bytes.get(self.pos / 8)?;
        let bit = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Some(u32::from(bit))
    }

    fn bits(&mut self, n: u32) -> Option<u32> {
        (0..n).try_fold(0u32, |acc, _| Some(acc << 1 | self.bit()?))
    }

    /// Unsigned Exp-Golomb; `None` past the end or beyond 32 bits.
    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        let rest = self.bits(zeros)?;
        Some(((1u64 << zeros) - 1 + u64::from(rest)).min(u64::from(u32::MAX)) as u32)
    }

    /// Signed Exp-Golomb (only skipped here).
    fn se(&mut self) -> Option<()> {
        self.ue().map(drop)
    }
}

/// Profiles whose SPS carries chroma format, bit depths and scaling matrices (H.264 7.3.2.1.1).
const HIGH_PROFILES: [u32; 13] = [100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135];

/// The picture size an SPS announces, after cropping: `(width, height)` in pixels. `sps` is the
/// NAL unit without its start code (header byte first). `None` if it is not a well-formed SPS.
/// A decoder allocates for this size, so it is read before anything is decoded.
pub fn sps_dimensions(sps: &[u8]) -> Option<(u32, u32)> {
    if nal_type(sps)? != nal::SPS {
        return None;
    }
    let mut r = BitReader::new(sps.get(1..)?);
    let profile_idc = r.bits(8)?;
    r.bits(16)?; // constraint flags, level_idc
    r.ue()?; // seq_parameter_set_id
    let chroma_format_idc = if HIGH_PROFILES.contains(&profile_idc) {
        skip_high_profile_fields(&mut r)?
    } else {
        1
    };
    r.ue()?; // log2_max_frame_num_minus4
    skip_pic_order_cnt(&mut r)?;
    r.ue()?; // max_num_ref_frames
    r.bit()?; // gaps_in_frame_num_value_allowed_flag
    let width_mbs = u64::from(r.ue()?) + 1;
    let height_map_units = u64::from(r.ue()?) + 1;
    let frame_mbs_only = u64::from(r.bit()?);
    if frame_mbs_only == 0 {
        r.bit()?; // mb_adaptive_frame_field_flag
    }
    r.bit()?; // direct_8x8_inference_flag
    let mut width = width_mbs * 16;
    let mut height = height_map_units * 16 * (2 - frame_mbs_only);
    if r.bit()? == 1 {
        let (unit_x, unit_y) = match chroma_format_idc {
            1 => (2, 2 * (2 - frame_mbs_only)),
            2 => (2, 2 - frame_mbs_only),
            _ => (1, 2 - frame_mbs_only),
        };
        let (left, right) = (u64::from(r.ue()?), u64::from(r.ue()?));
        let (top, bottom) = (u64::from(r.ue()?), u64::from(r.ue()?));
        width = width.saturating_sub((left + right) * unit_x);
        height = height.saturating_sub((top + bottom) * unit_y);
    }
    Some((
        width.min(u64::from(u32::MAX)) as u32,
        height.min(u64::from(u32::MAX)) as u32,
    ))
}

/// The high profiles' chroma format, bit depths and scaling lists; returns chroma_format_idc.
fn skip_high_profile_fields(r: &mut BitReader) -> Option<u32> {
    let chroma_format_idc = r.ue()?;
    if chroma_format_idc == 3 {
        r.bit()?; // separate_colour_plane_flag
    }
    r.ue()?; // bit_depth_luma_minus8
    r.ue()?; // bit_depth_chroma_minus8
    r.bit()?; // qpprime_y_zero_transform_bypass_flag
    if r.bit()? == 1 {
        skip_scaling_lists(r, if chroma_format_idc == 3 { 12 } else { 8 })?;
    }
    Some(chroma_format_idc)
}

/// pic_order_cnt_type and the fields that depend on it.
fn skip_pic_order_cnt(r: &mut BitReader) -> Option<()> {
    match r.ue()? {
        0 => {
            r.ue()?; // log2_max_pic_order_cnt_lsb_minus4
        }
        1 => {
            r.bit()?; // delta_pic_order_always_zero_flag
            r.se()?; // offset_for_non_ref_pic
            r.se()?; // offset_for_top_to_bottom_field
            for _ in 0..r.ue()?.min(255) {
                r.se()?; // offset_for_ref_frame
            }
        }
        _ => {}
    }
    Some(())
}

fn skip_scaling_lists(r: &mut BitReader, count: usize) -> Option<()> {
    for i in 0..count {
        if r.bit()? == 0 {
            continue;
        }
        let size = if i < 6 { 16 } else { 64 };
        let (mut last, mut next) = (8i64, 8i64);
        for _ in 0..size {
            if next != 0 {
                let code = i64::from(r.ue()?);
                let delta = if code % 2 == 1 {
                    (code + 1) / 2
                } else {
                    -code / 2
                };
                next = (last + delta + 256).rem_euclid(256);
            }
            if next != 0 {
                last = next;
            }
        }
    }
    Some(())
}

/// The largest picture any SPS in these access units announces (by area), if any has one.
pub fn largest_sps_dimensions<'a>(
    access_units: impl IntoIterator<Item = &'a Bytes>,
) -> Option<(u32, u32)> {
    access_units
        .into_iter()
        .flat_map(|au| {
            nal_units(au)
                .into_iter()
                .filter_map(sps_dimensions)
                .collect::<Vec<_>>()
        })
        .max_by_key(|&(w, h)| u64::from(w) * u64::from(h))
}

/// Keeps the latest SPS and PPS and puts them before every IDR that lacks them.
#[derive(Debug, Default)]
pub struct ParamSetInserter {
    sps: Option<Bytes>,
    pps: Option<Bytes>,
}

impl ParamSetInserter {
    /// An inserter that has seen no parameter sets yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether both parameter sets have been seen (a decoder can start at the next IDR).
    pub fn ready(&self) -> bool {
        self.sps.is_some() && self.pps.is_some()
    }

    /// The access unit as it must be sent, and whether it is a keyframe (IDR).
    pub fn process(&mut self, au: Bytes) -> (Bytes, bool) {
        match self.scan(&au) {
            Scan::AsIs { idr } => (au, idr),
            Scan::Insert => (Bytes::from(self.with_param_sets(&au)), true),
        }
    }

    /// [`process`](Self::process) for an access unit in a buffer the caller reuses: it is
    /// copied once, into the `Arc<[u8]>` every consumer shares (str0m's writers take one).
    pub fn process_shared(&mut self, au: &[u8]) -> (Arc<[u8]>, bool) {
        match self.scan(au) {
            Scan::AsIs { idr } => (Arc::from(au), idr),
            Scan::Insert => (Arc::from(self.with_param_sets(au)), true),
        }
    }

    /// Remembers the parameter sets in `au`; whether it must have them put in front.
    fn scan(&mut self, au: &[u8]) -> Scan {
        let mut has_sps = false;
        let mut has_pps = false;
        let mut idr = false;
        for n in nal_units(au) {
            match nal_type(n) {
                Some(nal::SPS) => {
                    has_sps = true;
                    // Copied only when it changes (an encoder repeats the same ones per IDR).
                    if self.sps.as_deref() != Some(n) {
                        self.sps = Some(Bytes::copy_from_slice(n));
                    }
                }
                Some(nal::PPS) => {
                    has_pps = true;
                    if self.pps.as_deref() != Some(n) {
                        self.pps = Some(Bytes::copy_from_slice(n));
                    }
                }
                Some(nal::IDR) => idr = true,
                _ => {}
            }
        }
        // Without parameter sets known yet, a decoder cannot use this IDR either.
        if !idr || (has_sps && has_pps) || !self.ready() {
            return Scan::AsIs { idr };
        }
        Scan::Insert
    }

    /// `au` (an IDR) with the parameter sets it lacks put in front (after an AUD, if any).
    fn with_param_sets(&self, au: &[u8]) -> Vec<u8> {
        let nals = nal_units(au);
        let has = |t| nals.iter().any(|n| nal_type(n) == Some(t));
        let (sps, pps) = (
            self.sps.as_deref().unwrap_or_default(),
            self.pps.as_deref().unwrap_or_default(),
        );
        let mut out = Vec::with_capacity(au.len() + sps.len() + pps.len() + 8);
        // Keep an AUD first if there is one.
        let mut rest = au;
        if nals.first().and_then(|n| nal_type(n)) == Some(nal::AUD) {
            if let Some((sc, _)) = start_codes(au, 0).nth(1) {
                out.extend_from_slice(&au[..sc]);
                rest = &au[sc..];
            }
        }
        if !has(nal::SPS) {
            out.extend_from_slice(&START_CODE);
            out.extend_from_slice(sps);
        }
        if !has(nal::PPS) {
            out.extend_from_slice(&START_CODE);
            out.extend_from_slice(pps);
        }
        out.extend_from_slice(rest);
        out
    }
}

/// What [`ParamSetInserter::scan`] found an access unit needs.
enum Scan {
    /// Sent as it is; `idr` says whether it is a keyframe.
    AsIs { idr: bool },
    /// An IDR that lacks SPS or PPS, which are known: they go in front.
    Insert,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(t: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, 0, 1, t];
        v.extend_from_slice(body);
        v
    }

    /// A stream of three access units: SPS PPS IDR | P | P(two slices).
    fn stream() -> (Vec<u8>, Vec<Vec<u8>>) {
        let au1 = [
            n(0x67, &[66, 0xc0, 31]),
            n(0x68, &[0xce]),
            n(0x65, &[0x88, 1, 2, 3]),
        ]
        .concat();
        let au2 = [n(0x09, &[0xf0]), n(0x41, &[0x9a, 4, 5])].concat();
        let au3 = [n(0x41, &[0x9a, 6]), n(0x41, &[0x40, 7])].concat();
        let all = [au1.clone(), au2.clone(), au3.clone()].concat();
        (all, vec![au1, au2, au3])
    }

    fn split_all(pieces: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut s = AccessUnitSplitter::new(1 << 20);
        let mut out = Vec::new();
        for p in pieces {
            s.handle_input(p);
            while let Some(au) = s.poll_access_unit() {
                out.push(au.to_vec());
            }
        }
        while let Some(au) = s.finish() {
            out.push(au.to_vec());
        }
        out
    }

    #[test]
    fn splits_access_units_in_one_read() {
        let (all, aus) = stream();
        assert_eq!(split_all(&[&all]), aus);
    }

    #[test]
    fn splits_access_units_at_every_read_boundary() {
        let (all, aus) = stream();
        for cut in 0..=all.len() {
            let (a, b) = all.split_at(cut);
            assert_eq!(split_all(&[a, b]), aus, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = all.chunks(1).collect();
        assert_eq!(split_all(&bytes), aus, "one byte a read");
    }

    #[test]
    fn garbage_before_the_first_start_code_is_skipped() {
        let (all, aus) = stream();
        let with_junk = [vec![7, 7, 7], all].concat();
        assert_eq!(split_all(&[&with_junk]), aus);
    }

    /// IDR | P too large | P | SPS PPS IDR | P, for a splitter capped at `OVERSIZE_CAP`.
    fn stream_with_an_oversize_unit() -> (Vec<u8>, Vec<Vec<u8>>) {
        let idr = [
            n(0x67, &[66, 0xc0, 31]),
            n(0x68, &[0xce]),
            n(0x65, &[0x88, 1]),
        ]
        .concat();
        let huge = [n(0x09, &[0xf0]), n(0x41, &[0x9a; 1000])].concat();
        let p = [n(0x09, &[0xf0]), n(0x41, &[0x9a, 2])].concat();
        let idr2 = [n(0x09, &[0x10]), idr.clone()].concat();
        let p2 = [n(0x09, &[0xf0]), n(0x41, &[0x9a, 3])].concat();
        let all = [idr.clone(), huge, p, idr2.clone(), p2.clone()].concat();
        (all, vec![idr, idr2, p2])
    }

    const OVERSIZE_CAP: usize = 200;

    fn split_capped(pieces: &[&[u8]]) -> (Vec<Vec<u8>>, u64, usize) {
        let mut s = AccessUnitSplitter::new(OVERSIZE_CAP);
        let (mut out, mut most_buffered) = (Vec::new(), 0);
        for p in pieces {
            s.handle_input(p);
            most_buffered = most_buffered.max(s.buf.len());
            while let Some(au) = s.poll_access_unit() {
                out.push(au.to_vec());
            }
        }
        while let Some(au) = s.finish() {
            out.push(au.to_vec());
        }
        (out, s.dropped(), most_buffered)
    }

    #[test]
    fn an_oversize_unit_is_dropped_and_the_stream_resumes_at_the_next_idr() {
        let (all, expected) = stream_with_an_oversize_unit();
        for cut in 0..=all.len() {
            let (a, b) = all.split_at(cut);
            let (out, dropped, _) = split_capped(&[a, b]);
            assert_eq!(out, expected, "cut at {cut}");
            // The big P, then the P that refers to it (no decoder could use it).
            assert_eq!(dropped, 2, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = all.chunks(1).collect();
        assert_eq!(split_capped(&bytes).0, expected, "one byte a read");
    }

    #[test]
    fn the_cap_holds_while_buffering_not_after() {
        let (all, _) = stream_with_an_oversize_unit();
        let pieces: Vec<&[u8]> = all.chunks(16).collect();
        let (_, _, most) = split_capped(&pieces);
        assert!(most <= OVERSIZE_CAP + 16, "buffered {most} bytes");
        // Bytes without a single start code: bounded too, and nothing comes out.
        let junk = vec![0x55u8; 10_000];
        let pieces: Vec<&[u8]> = junk.chunks(64).collect();
        let (out, _, most) = split_capped(&pieces);
        assert!(out.is_empty());
        assert!(most <= OVERSIZE_CAP + 64, "buffered {most} bytes");
    }

    /// Writes bits MSB first, with Exp-Golomb codes, for crafted SPS.
    #[derive(Default)]
    struct BitWriter {
        bits: Vec<u8>,
    }

    impl BitWriter {
        fn bits(&mut self, value: u32, n: u32) -> &mut Self {
            for i in (0..n).rev() {
                self.bits.push(((value >> i) & 1) as u8);
            }
            self
        }

        fn ue(&mut self, value: u32) -> &mut Self {
            let v = u64::from(value) + 1;
            let len = 64 - v.leading_zeros();
            self.bits(0, len - 1);
            for i in (0..len).rev() {
                self.bits.push(((v >> i) & 1) as u8);
            }
            self
        }

        /// Stop bit, padding, and the bytes.
        fn finish(&mut self) -> Vec<u8> {
            self.bits.push(1);
            while self.bits.len() % 8 != 0 {
                self.bits.push(0);
            }
            self.bits
                .chunks(8)
                .map(|c| c.iter().fold(0u8, |acc, b| acc << 1 | b))
                .collect()
        }
    }

    /// A Constrained Baseline SPS (NAL header first) for a `width_mbs` x `height_mbs` picture.
    fn crafted_sps(width_mbs: u32, height_mbs: u32) -> Vec<u8> {
        let mut w = BitWriter::default();
        w.bits(66, 8).bits(0xc0, 8).bits(51, 8); // profile, constraints, level 5.1
        w.ue(0).ue(0).ue(0).ue(0); // sps id, log2_max_frame_num-4, poc type 0, lsb-4
        w.ue(1).bits(0, 1); // max_num_ref_frames, gaps
        w.ue(width_mbs - 1).ue(height_mbs - 1);
        w.bits(1, 1).bits(1, 1).bits(0, 1).bits(0, 1); // frame_mbs_only, direct8x8, crop, vui
        [vec![0x67], w.finish()].concat()
    }

    #[test]
    fn sps_dimensions_are_read_with_cropping_and_emulation_prevention() {
        assert_eq!(sps_dimensions(&crafted_sps(512, 512)), Some((8192, 8192)));
        assert_eq!(sps_dimensions(&crafted_sps(80, 45)), Some((1280, 720)));
        // Emulation prevention: 00 00 03 inside the payload is 00 00.
        assert_eq!(
            BitReader::new(&[0, 0, 3, 1]).bytes,
            vec![0, 0, 1],
            "the 03 is dropped"
        );
        // Not an SPS, truncated, or junk: None, never a panic.
        assert_eq!(sps_dimensions(&[0x68, 0xce]), None);
        assert_eq!(sps_dimensions(&crafted_sps(80, 45)[..4]), None);
        assert_eq!(sps_dimensions(&[0x67, 0, 0, 0, 0, 0, 0, 0, 0]), None);
    }

    #[test]
    fn param_sets_are_inserted_before_idr_when_missing() {
        let (_, aus) = stream();
        let mut ins = ParamSetInserter::new();
        let (first, key) = ins.process(Bytes::from(aus[0].clone()));
        assert!(key);
        assert_eq!(first.to_vec(), aus[0], "already complete: untouched");
        let (p, key) = ins.process(Bytes::from(aus[1].clone()));
        assert!(!key);
        assert_eq!(p.to_vec(), aus[1]);
        let bare_idr = [n(0x09, &[0x10]), n(0x65, &[0x88, 9])].concat();
        let (idr, key) = ins.process(Bytes::from(bare_idr));
        assert!(key);
        let types: Vec<u8> = nal_units(&idr).iter().filter_map(|n| nal_type(n)).collect();
        assert_eq!(types, vec![nal::AUD, nal::SPS, nal::PPS, nal::IDR]);
        // The shared form gives the same bytes.
        let bare_idr = [n(0x09, &[0x10]), n(0x65, &[0x88, 9])].concat();
        let (shared, key) = ins.process_shared(&bare_idr);
        assert!(key);
        assert_eq!(&shared[..], &idr[..]);
        let (shared, key) = ins.process_shared(&aus[1]);
        assert!(!key);
        assert_eq!(&shared[..], &aus[1][..]);
    }

    proptest! {
        #[test]
        fn splitter_never_panics_and_never_loses_a_byte_of_good_streams(
            junk in proptest::collection::vec(any::<u8>(), 0..400),
            cuts in proptest::collection::vec(0usize..600, 0..8),
        ) {
            // Arbitrary bytes, arbitrary cuts: no panic, bounded output.
            let mut s = AccessUnitSplitter::new(256);
            let mut pos = 0;
            let mut cuts = cuts;
            cuts.sort();
            for c in cuts.into_iter().chain([junk.len()]) {
                let c = c.min(junk.len());
                if c >= pos {
                    s.handle_input(&junk[pos..c]);
                    pos = c;
                }
                while let Some(au) = s.poll_access_unit() {
                    prop_assert!(au.len() <= 256);
                }
            }
            while let Some(au) = s.finish() {
                prop_assert!(au.len() <= 256);
            }
            let _ = sps_dimensions(&[&[0x67][..], &junk].concat());
            let mut ins = ParamSetInserter::new();
            let _ = ins.process(Bytes::from(junk));
        }

        #[test]
        fn good_stream_survives_any_cuts(cuts in proptest::collection::vec(0usize..40, 0..10)) {
            let (all, aus) = stream();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(all.len())).collect();
            cuts.sort();
            let mut pieces = Vec::new();
            let mut pos = 0;
            for c in cuts.into_iter().chain([all.len()]) {
                pieces.push(&all[pos..c]);
                pos = c;
            }
            prop_assert_eq!(split_all(&pieces), aus);
        }
    }
}
