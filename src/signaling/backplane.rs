//! The wire format of ASP.NET Core SignalR's Redis backplane, for group messages: channel names
//! and the MessagePack envelope. Pure: bytes in, bytes out; no Redis, no tokio.
//!
//! With this format snaprtcd instances and the original .NET SnapRTC server can share one Redis
//! (a migration, or a mixed fleet). It follows dotnet/aspnetcore
//! `src/SignalR/server/StackExchangeRedis/src/Internal/RedisChannels.cs` (channel names) and
//! `src/SignalR/server/StackExchangeRedis/src/Internal/RedisProtocol.cs` (`WriteInvocation`,
//! `ReadInvocation`, `WriteHubMessage`, `ReadSerializedHubMessage`):
//!
//! - a group's channel is `{prefix}:group:{group}` (`RedisChannels.Group`); the .NET server's
//!   prefix is its hub class's full name, after the connection's `ChannelPrefix`;
//! - a message published there is a MessagePack array of at least two items (more are
//!   ignored, as `ReadInvocation` ignores them):
//!   1. an array of `str`: the connection ids that must not receive it (`OthersInGroup`,
//!      `GroupExcept`);
//!   2. a map from a protocol name (`str`) to the hub message serialized in that protocol
//!      (`bin`). For the `json` protocol that is one JSON record with its `0x1E` terminator,
//!      exactly what a client is sent.
//!
//! **Left out**, because the SnapRTC relay does not need them: the `{prefix}:all`,
//! `{prefix}:connection:{id}` and `{prefix}:user:{id}` channels (the hub only ever sends to a
//! session's group), group management over `{prefix}:internal:groups` and its acks on
//! `{prefix}:internal:ack:{server}` (each instance subscribes to the groups its own members
//! are in), and client results (`{prefix}:internal:return:{server}`; the 4-item envelope that
//! carries an invocation id and a return channel is read, and its last two items ignored).
//! Only the `json` serialization is written; others in a received map are skipped.

use bytes::Bytes;

use super::hub::SessionId;

/// The protocol name of the SignalR JSON hub protocol, the key of its serialization.
pub const JSON_PROTOCOL: &str = "json";

/// `{prefix}:group:{session}`: where a session's messages are published.
pub fn group_channel(prefix: &str, session: &SessionId) -> String {
    format!("{prefix}:group:{session}")
}

/// The session a group channel belongs to (`None` for another prefix, another kind of channel,
/// or a name that is not a valid session id).
pub fn session_of_channel(prefix: &str, channel: &str) -> Option<SessionId> {
    let group = channel.strip_prefix(prefix)?.strip_prefix(":group:")?;
    SessionId::parse(group).ok()
}

/// One message on a group channel: who must not get it, and the hub message per protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Connection ids that must not receive the message (the sender, and any member the
    /// publisher delivered to itself).
    pub excluded: Vec<String>,
    /// The hub message serialized per protocol: `(protocol name, bytes)`.
    pub serialized: Vec<(String, Bytes)>,
}

/// Why an envelope could not be read (or, for a message over 4 GiB, written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Larger than the budget (`[signaling] max_payload_bytes`), refused before reading.
    #[error("backplane message of {size} bytes is over the budget of {max}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The budget.
        max: usize,
    },
    /// The envelope array has fewer than its two items.
    #[error("insufficient items in the invocation array ({0})")]
    Insufficient(u32),
    /// The bytes end inside an item, or an item is of the wrong MessagePack type.
    #[error("malformed backplane message: {0}")]
    Malformed(&'static str),
}

impl Envelope {
    /// A message serialized for the JSON protocol only: `record` is one JSON hub message with
    /// its `0x1E` terminator.
    pub fn json(excluded: Vec<String>, record: Bytes) -> Envelope {
        Envelope {
            excluded,
            serialized: vec![(JSON_PROTOCOL.to_owned(), record)],
        }
    }

    /// Whether `instance` published this: it excludes one of that instance's connection ids
    /// (`{instance}.{member}`), as every message an instance publishes excludes its sender.
    pub fn is_from(&self, instance: &str) -> bool {
        self.excluded.iter().any(|id| {
            id.strip_prefix(instance)
                .is_some_and(|rest| rest.starts_with('.'))
        })
    }

    /// The JSON record (with its terminator), if the message has a `json` serialization.
    pub fn json_record(&self) -> Option<&Bytes> {
        self.serialized
            .iter()
            .find(|(protocol, _)| protocol == JSON_PROTOCOL)
            .map(|(_, bytes)| bytes)
    }

    /// The bytes to publish, as `RedisProtocol.WriteInvocation` writes them (2 items; the
    /// smallest MessagePack header for each length, as MessagePack-CSharp chooses). Fails only
    /// for a string or blob over 4 GiB, which MessagePack cannot frame.
    pub fn encode(&self) -> Result<Vec<u8>, EnvelopeError> {
        let lengths = self.excluded.iter().map(String::len).chain(
            self.serialized
                .iter()
                .flat_map(|(protocol, bytes)| [protocol.len(), bytes.len()]),
        );
        let size: usize = lengths.clone().map(|n| n + 5).sum::<usize>() + 16;
        let counts = [self.excluded.len(), self.serialized.len()];
        if lengths.chain(counts).any(|n| u32::try_from(n).is_err()) {
            return Err(EnvelopeError::TooLarge {
                size,
                max: u32::MAX as usize,
            });
        }
        let mut out = Vec::with_capacity(size);
        self.write_to(&mut out)
            .map_err(|_| EnvelopeError::Malformed("cannot write"))?;
        Ok(out)
    }

    /// The MessagePack items, every length already checked to fit in a `u32`.
    fn write_to(&self, out: &mut Vec<u8>) -> Result<(), rmp::encode::ValueWriteError> {
        use rmp::encode::{write_array_len, write_bin, write_map_len, write_str};
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        write_array_len(out, 2)?;
        write_array_len(out, count(self.excluded.len()))?;
        for id in &self.excluded {
            write_str(out, id)?;
        }
        write_map_len(out, count(self.serialized.len()))?;
        for (protocol, bytes) in &self.serialized {
            write_str(out, protocol)?;
            write_bin(out, bytes)?;
        }
        Ok(())
    }

    /// Read a message from another instance, as `RedisProtocol.ReadInvocation` does. `data`
    /// comes from outside: it is refused over `max_bytes` before any of it is read, no count in
    /// it is trusted beyond the bytes that are there, and nothing in it can panic.
    pub fn decode(data: &[u8], max_bytes: usize) -> Result<Envelope, EnvelopeError> {
        if data.len() > max_bytes {
            return Err(EnvelopeError::TooLarge {
                size: data.len(),
                max: max_bytes,
            });
        }
        let mut rd = Reader(data);
        let items = rd.array_len()?;
        if items < 2 {
            return Err(EnvelopeError::Insufficient(items));
        }
        let ids = rd.array_len()?;
        let ids = rd.count(ids)?;
        let mut excluded = Vec::with_capacity(ids);
        for _ in 0..ids {
            excluded.push(rd.str()?.to_owned());
        }
        let entries = rd.map_len()?;
        let entries = rd.count(entries)?;
        let mut serialized = Vec::with_capacity(entries);
        for _ in 0..entries {
            let protocol = rd.str()?.to_owned();
            let bytes = Bytes::copy_from_slice(rd.bin()?);
            serialized.push((protocol, bytes));
        }
        // Items after the second (a client result's invocation id and return channel) and any
        // bytes after them are ignored, as the .NET reader ignores them.
        Ok(Envelope {
            excluded,
            serialized,
        })
    }
}

/// A cursor over untrusted MessagePack bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn array_len(&mut self) -> Result<u32, EnvelopeError> {
        rmp::decode::read_array_len(&mut self.0)
            .map_err(|_| EnvelopeError::Malformed("expected an array"))
    }

    fn map_len(&mut self) -> Result<u32, EnvelopeError> {
        rmp::decode::read_map_len(&mut self.0)
            .map_err(|_| EnvelopeError::Malformed("expected a map of protocol to message"))
    }

    /// A count from a header, believed only as far as the bytes left could hold that many
    /// items (each takes at least one byte), so it never sizes an allocation on its own.
    fn count(&self, n: u32) -> Result<usize, EnvelopeError> {
        let n = usize::try_from(n).map_err(|_| EnvelopeError::Malformed("count"))?;
        if n > self.0.len() {
            return Err(EnvelopeError::Malformed("more items than bytes"));
        }
        Ok(n)
    }

    /// `n` bytes, if they are there.
    fn take(&mut self, n: u32) -> Result<&'a [u8], EnvelopeError> {
        let n = usize::try_from(n).map_err(|_| EnvelopeError::Malformed("length"))?;
        if n > self.0.len() {
            return Err(EnvelopeError::Malformed("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn str(&mut self) -> Result<&'a str, EnvelopeError> {
        let n = rmp::decode::read_str_len(&mut self.0)
            .map_err(|_| EnvelopeError::Malformed("expected a string"))?;
        std::str::from_utf8(self.take(n)?).map_err(|_| EnvelopeError::Malformed("invalid UTF-8"))
    }

    /// A `bin`, or `nil` (read as empty, as the .NET reader does).
    fn bin(&mut self) -> Result<&'a [u8], EnvelopeError> {
        if self.0.first() == Some(&0xc0) {
            self.0 = &self.0[1..];
            return Ok(&[]);
        }
        let n = rmp::decode::read_bin_len(&mut self.0)
            .map_err(|_| EnvelopeError::Malformed("expected binary data"))?;
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 262_144;
    /// What the .NET JSON protocol writes for `Clients.Group(s).SendAsync("signalStart")`.
    const START: &[u8] = b"{\"type\":1,\"target\":\"signalStart\",\"arguments\":[]}\x1e";

    fn concat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn channel_names_are_the_dotnet_ones() {
        let s = SessionId::parse("room-1").unwrap();
        assert_eq!(
            group_channel("SignalingHub", &s),
            "SignalingHub:group:room-1"
        );
        assert_eq!(
            session_of_channel("SignalingHub", "SignalingHub:group:room-1"),
            Some(s)
        );
        assert_eq!(session_of_channel("SignalingHub", "SignalingHub:all"), None);
        assert_eq!(
            session_of_channel("SignalingHub", "Other:group:room-1"),
            None
        );
        assert_eq!(
            session_of_channel("SignalingHub", "SignalingHub:group:a b"),
            None
        );
    }

    /// `WriteInvocation("signalStart", [], excludedConnectionIds: null)` with the JSON protocol.
    #[test]
    fn golden_group_send_without_exclusions() {
        let golden = concat(&[
            &[0x92],       // fixarray, 2 items: the envelope
            &[0x90],       // fixarray, 0 items: no excluded connection ids
            &[0x81],       // fixmap, 1 entry
            &[0xa4],       // fixstr, 4 bytes
            b"json",       // the protocol name
            &[0xc4, 0x31], // bin8, 49 bytes: the JSON record and its 0x1E
            START,
        ]);
        let envelope = Envelope::json(Vec::new(), Bytes::from_static(START));
        assert_eq!(envelope.encode().unwrap(), golden);
        assert_eq!(Envelope::decode(&golden, MAX).unwrap(), envelope);
    }

    /// `OthersInGroup`: the sender's connection id excluded; a `signalCapture(payload)`.
    #[test]
    fn golden_others_in_group_with_a_payload() {
        let record: &[u8] =
            b"{\"type\":1,\"target\":\"signalCapture\",\"arguments\":[\"N4Ig\"]}\x1e";
        let golden = concat(&[
            &[0x92],
            &[0x91, 0xa2], // fixarray of 1; fixstr of 2
            b"c1",
            &[0x81, 0xa4],
            b"json",
            &[0xc4, 0x39], // bin8, 57 bytes
            record,
        ]);
        let envelope = Envelope::json(vec!["c1".into()], Bytes::from_static(record));
        assert_eq!(envelope.encode().unwrap(), golden);
        let back = Envelope::decode(&golden, MAX).unwrap();
        assert_eq!(back.excluded, ["c1"]);
        assert_eq!(back.json_record().map(|b| &b[..]), Some(record));
    }

    /// Longer strings and blobs take the 8- and 16-bit headers MessagePack-CSharp writes
    /// (`str8` from 32 bytes, `bin16` from 256).
    #[test]
    fn golden_longer_ids_and_records_use_str8_and_bin16() {
        let id = "x".repeat(40);
        let mut record = vec![b' '; 300];
        record[299] = 0x1e;
        let golden = concat(&[
            &[0x92, 0x91],
            &[0xd9, 40], // str8, 40 bytes
            id.as_bytes(),
            &[0x81, 0xa4],
            b"json",
            &[0xc5, 0x01, 0x2c], // bin16, 300 bytes
            &record,
        ]);
        let envelope = Envelope::json(vec![id], Bytes::from(record));
        assert_eq!(envelope.encode().unwrap(), golden);
        assert_eq!(Envelope::decode(&golden, MAX).unwrap(), envelope);
    }

    /// A .NET server with the MessagePack protocol added sends both serializations, and a
    /// client-result invocation has 4 items; the JSON one is found, the extra items ignored.
    #[test]
    fn golden_dotnet_envelope_with_two_protocols_and_a_return_channel() {
        let golden = concat(&[
            &[0x94, 0x90], // 4 items; no exclusions
            &[0x82],       // fixmap, 2 entries
            &[0xab],       // fixstr, 11 bytes
            b"messagepack",
            &[0xc4, 0x03, 0x93, 0x01, 0x80], // bin8, 3 bytes (not read)
            &[0xa4],
            b"json",
            &[0xc4, 0x31],
            START,
            &[0xa1, b'7'], // the invocation id
            &[0xbd],       // fixstr, 29 bytes: the return channel
            b"SignalingHub:internal:return:",
        ]);
        let envelope = Envelope::decode(&golden, MAX).unwrap();
        assert!(envelope.excluded.is_empty());
        assert_eq!(envelope.serialized.len(), 2);
        assert_eq!(envelope.json_record().map(|b| &b[..]), Some(START));
    }

    #[test]
    fn bad_envelopes_are_errors() {
        let ok = Envelope::json(vec!["a".into()], Bytes::from_static(START))
            .encode()
            .unwrap();
        assert_eq!(
            Envelope::decode(&ok, ok.len() - 1),
            Err(EnvelopeError::TooLarge {
                size: ok.len(),
                max: ok.len() - 1
            })
        );
        for cut in 0..ok.len() {
            assert!(Envelope::decode(&ok[..cut], MAX).is_err(), "cut at {cut}");
        }
        assert_eq!(
            Envelope::decode(&[0x91, 0x90], MAX),
            Err(EnvelopeError::Insufficient(1))
        );
        // An array header claiming 2^32-1 ids in a few bytes allocates nothing.
        let huge = [0x92, 0xdd, 0xff, 0xff, 0xff, 0xff, 0xa1, b'a'];
        assert_eq!(
            Envelope::decode(&huge, MAX),
            Err(EnvelopeError::Malformed("more items than bytes"))
        );
        // A bin claiming more bytes than there are.
        let short = [
            0x92, 0x90, 0x81, 0xa4, b'j', b's', b'o', b'n', 0xc6, 0, 1, 0, 0, 1,
        ];
        assert_eq!(
            Envelope::decode(&short, MAX),
            Err(EnvelopeError::Malformed("truncated"))
        );
        // An excluded id that is a number, not a string.
        assert!(Envelope::decode(&[0x92, 0x91, 0x01, 0x80], MAX).is_err());
        // Invalid UTF-8 in a string.
        assert!(Envelope::decode(&[0x92, 0x91, 0xa1, 0xff, 0x80], MAX).is_err());
        // nil for the serialized bytes is read as empty, as .NET does.
        let nil = [0x92, 0x90, 0x81, 0xa4, b'j', b's', b'o', b'n', 0xc0];
        assert_eq!(
            Envelope::decode(&nil, MAX)
                .unwrap()
                .json_record()
                .map(|b| b.len()),
            Some(0)
        );
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Envelope::decode(&data, 256);
        }

        #[test]
        fn envelope_like_bytes_never_panic(
            head in proptest::sample::select(vec![0x92u8, 0x94, 0x91, 0xdc, 0xdd]),
            data in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let mut bytes = vec![head];
            bytes.extend(data);
            let _ = Envelope::decode(&bytes, MAX);
        }

        #[test]
        fn encode_then_decode_is_the_same(
            excluded in proptest::collection::vec("[a-zA-Z0-9_.-]{0,60}", 0..8),
            record in proptest::collection::vec(any::<u8>(), 0..2000),
        ) {
            let envelope = Envelope::json(excluded, Bytes::from(record));
            let bytes = envelope.encode().unwrap();
            prop_assert_eq!(Envelope::decode(&bytes, MAX).unwrap(), envelope);
        }
    }
}
