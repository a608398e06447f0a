//! The Annex-B splitter (`snaprtcd::picture::annexb::AccessUnitSplitter`) fed a stream in
//! random pieces, as pipe reads from an `exec` source arrive, and the SPS/PPS inserter after it.
//!
//! Input: byte 0 picks the access-unit limit (64 B to 128 KiB), byte 1 the largest piece
//! (1 B to 32 KiB), the rest is the stream; piece sizes come from a generator seeded by both.
//! Invariants, besides not panicking: every access unit is non-empty, within the limit and
//! starts with a start code; no more bytes come out than went in; the inserter keeps an IDR an
//! IDR and, once it knows both parameter sets, puts them in front of every IDR.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snaprtcd::picture::annexb::{
    is_idr, nal, nal_type, nal_units, AccessUnitSplitter, ParamSetInserter,
};

fn check(au: &[u8], limit: usize, inserter: &mut ParamSetInserter, total: &mut usize) {
    assert!(!au.is_empty(), "empty access unit");
    assert!(
        au.len() <= limit,
        "access unit of {} bytes over {limit}",
        au.len()
    );
    assert!(
        au.starts_with(&[0, 0, 1]) || au.starts_with(&[0, 0, 0, 1]),
        "access unit without a start code: {:02x?}",
        &au[..au.len().min(8)]
    );
    *total += au.len();
    let idr = is_idr(au);
    let (out, keyframe) = inserter.process(bytes::Bytes::copy_from_slice(au));
    assert_eq!(keyframe, idr);
    assert!(out.len() >= au.len());
    if idr && inserter.ready() {
        let types: Vec<_> = nal_units(&out).into_iter().filter_map(nal_type).collect();
        assert!(
            types.contains(&nal::SPS) && types.contains(&nal::PPS),
            "IDR sent without parameter sets: {types:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let [a, b, stream @ ..] = data else {
        return;
    };
    // The splitter never goes below 64 bytes, whatever it is asked for.
    let limit = 64usize << (a % 12);
    let max_piece = 1usize << (b % 16);
    let mut splitter = AccessUnitSplitter::new(limit);
    let mut inserter = ParamSetInserter::new();
    let mut state = u32::from_le_bytes([*a, *b, 0x5a, 0xa5]);
    let (mut rest, mut total) = (stream, 0usize);
    while !rest.is_empty() {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = (1 + (state >> 8) as usize % max_piece).min(rest.len());
        let (piece, tail) = rest.split_at(n);
        rest = tail;
        splitter.handle_input(piece);
        while let Some(au) = splitter.poll_access_unit() {
            check(&au, limit, &mut inserter, &mut total);
        }
    }
    if let Some(au) = splitter.finish() {
        check(&au, limit, &mut inserter, &mut total);
    }
    while let Some(au) = splitter.poll_access_unit() {
        check(&au, limit, &mut inserter, &mut total);
    }
    assert!(
        total <= stream.len(),
        "{total} bytes out of {}",
        stream.len()
    );
});
