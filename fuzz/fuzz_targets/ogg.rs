//! Ogg/Opus from an `[audio] exec` program (`snaprtcd::audio::ogg::OggOpus`): the byte stream
//! is cut at the fuzzer's chosen read size.
//!
//! Invariants, besides not panicking: no packet is larger than `MAX_PACKET`, none is an Opus
//! header packet, and what the demuxer holds stays bounded whatever the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snaprtcd::audio::ogg::{OggOpus, MAX_PACKET};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, input)) = data.split_first() else {
        return;
    };
    let read = usize::from(chunk) + 1;
    let mut d = OggOpus::default();
    for piece in input.chunks(read) {
        d.handle_input(piece);
        while let Some(p) = d.poll_packet() {
            assert!(!p.is_empty() && p.len() <= MAX_PACKET, "{} bytes", p.len());
            assert!(!p.starts_with(b"OpusHead") && !p.starts_with(b"OpusTags"));
        }
    }
});
