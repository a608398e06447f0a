//! Messages from other instances on the Redis backplane
//! (`snaprtcd::signaling::backplane::Envelope::decode`, ASP.NET Core SignalR's MessagePack
//! envelope), and the JSON record inside, as the hub reads it (`Outbound::from_remote_record`).
//!
//! The input is the message. Invariants, besides not panicking: over the budget it is refused
//! unread; a message that decodes holds no more bytes than it came in, and encodes back to an
//! envelope that decodes to the same thing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snaprtcd::signaling::backplane::{Envelope, EnvelopeError};
use snaprtcd::signaling::hub::Outbound;

/// A small budget, so that the fuzzer also reaches the refusal.
const BUDGET: usize = 4096;

fuzz_target!(|data: &[u8]| {
    match Envelope::decode(data, BUDGET) {
        Err(EnvelopeError::TooLarge { size, max }) => {
            assert!(data.len() > BUDGET && size == data.len() && max == BUDGET)
        }
        Err(_) => {}
        Ok(envelope) => {
            assert!(data.len() <= BUDGET);
            let held: usize = envelope.excluded.iter().map(String::len).sum::<usize>()
                + envelope
                    .serialized
                    .iter()
                    .map(|(p, b)| p.len() + b.len())
                    .sum::<usize>();
            assert!(held <= data.len(), "{held} bytes out of {}", data.len());
            let again = envelope.encode().expect("a decoded envelope encodes");
            assert_eq!(Envelope::decode(&again, usize::MAX).as_ref(), Ok(&envelope));
            if let Some(record) = envelope.json_record() {
                let _ = Outbound::from_remote_record(record);
            }
        }
    }
});
