//! lz-string's `decompressFromEncodedURIComponent`, with an output budget, and
//! `compressToEncodedURIComponent` for what the daemon sends. Pure.
//!
//! SnapRTC pages pack their signals with the npm `lz-string` (1.5). Its LZW codes can each name
//! the entry the previous code just created, so every code decodes to one character more than
//! the last: 64 KB of input asks for ~4·10⁸ characters. This decoder stops as soon as the output
//! would pass `max_units`, and keeps its dictionary as ranges into the output (every LZW entry is
//! a substring of what was already decoded), so it holds at most `max_units` UTF-16 units plus
//! 8 bytes per dictionary entry; the dictionary grows by at most two entries per code and each
//! code emits at least one unit. Work is linear in input plus output.
//!
//! It differs from the JavaScript only on input that library would mis-decode: a character
//! outside the URI alphabet, input that ends before the end marker, or an impossible code is an
//! error here (the JavaScript reads such characters as zero bits or returns `""`/`null`).

/// `compressToEncodedURIComponent`'s alphabet: six bits per character. The JavaScript never
/// writes the 65th, `$`, and reads it as 64, whose low six bits are zero.
const URI_ALPHABET: &[u8; 65] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+-$";

/// The bits each input character carries.
const BITS_PER_CHAR: u32 = 6;

use std::collections::{HashMap, HashSet};

/// Why a payload could not be decompressed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LzError {
    /// A byte that `compressToEncodedURIComponent` never writes.
    #[error("byte 0x{byte:02x} at offset {offset} is not in lz-string's URI alphabet")]
    BadChar {
        /// The byte found.
        byte: u8,
        /// Its offset in the input.
        offset: usize,
    },
    /// The input ended before the end-of-stream code.
    #[error("input ends before lz-string's end marker")]
    Truncated,
    /// A code that names no dictionary entry.
    #[error("code {code} names no dictionary entry (the dictionary has {size})")]
    BadCode {
        /// The code read.
        code: u32,
        /// Entries in the dictionary then.
        size: usize,
    },
    /// The output would pass the budget.
    #[error("decodes to more than {limit} characters")]
    TooLong {
        /// The budget, in UTF-16 code units.
        limit: usize,
    },
}

/// Reads the input's bits the way lz-string wrote them: each character's six bits from the
/// highest, each value's bits from the lowest.
struct BitReader<'a> {
    input: &'a [u8],
    /// Next character to load.
    next: usize,
    /// The loaded character's value.
    value: u32,
    /// Mask of the next bit of `value`; 0 when a new character must be loaded.
    mask: u32,
}

impl<'a> BitReader<'a> {
    fn new(input: &'a [u8]) -> Self {
        Self {
            input,
            next: 0,
            value: 0,
            mask: 0,
        }
    }

    /// A value of `n` bits (n ≤ 31).
    fn read(&mut self, n: u32) -> Result<u32, LzError> {
        let mut bits = 0;
        for i in 0..n {
            if self.mask == 0 {
                self.load()?;
            }
            if self.value & self.mask != 0 {
                bits |= 1 << i;
            }
            self.mask >>= 1;
        }
        Ok(bits)
    }

    fn load(&mut self) -> Result<(), LzError> {
        let offset = self.next;
        let &byte = self.input.get(offset).ok_or(LzError::Truncated)?;
        // The JavaScript turns spaces back into '+' (a form decoder may have made them spaces).
        let wanted = if byte == b' ' { b'+' } else { byte };
        let value = URI_ALPHABET
            .iter()
            .position(|&c| c == wanted)
            .ok_or(LzError::BadChar { byte, offset })?;
        self.value = value as u32 & 0x3f;
        self.mask = 1 << (BITS_PER_CHAR - 1);
        self.next += 1;
        Ok(())
    }
}

/// How wide codes are: they grow by a bit each time the dictionary doubles, counted the way
/// lz-string counts (one step per entry added, the stream's first literal included).
struct CodeWidth {
    bits: u32,
    /// Entries still to add before the next bit.
    enlarge_in: u64,
}

impl CodeWidth {
    /// One dictionary entry added.
    fn count_one(&mut self) {
        self.enlarge_in -= 1;
        if self.enlarge_in == 0 {
            self.enlarge_in = 1 << self.bits;
            self.bits += 1;
        }
    }
}

/// A dictionary entry: `len` units of the output from `start`.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    len: usize,
}

/// The output so far, never longer than its budget.
struct Output {
    units: Vec<u16>,
    limit: usize,
}

impl Output {
    fn reserve(&self, more: usize) -> Result<(), LzError> {
        if self.units.len() + more > self.limit {
            return Err(LzError::TooLong { limit: self.limit });
        }
        Ok(())
    }

    /// Append one unit; its span.
    fn push(&mut self, unit: u16) -> Result<Span, LzError> {
        self.reserve(1)?;
        let start = self.units.len();
        self.units.push(unit);
        Ok(Span { start, len: 1 })
    }

    /// Append a copy of `span`, then `extra` units of it again from its start (0 or 1: the
    /// LZW case where a code names the entry being made, `w + w[0]`); the span of the copy.
    fn repeat(&mut self, span: Span, extra: usize) -> Result<Span, LzError> {
        self.reserve(span.len + extra)?;
        let start = self.units.len();
        self.units
            .extend_from_within(span.start..span.start + span.len);
        self.units
            .extend_from_within(span.start..span.start + extra);
        Ok(Span {
            start,
            len: span.len + extra,
        })
    }
}

/// Decompress `input` (a `compressToEncodedURIComponent` string) into UTF-16 code units, failing
/// as soon as the output would exceed `max_units`.
pub fn decompress_from_encoded_uri_component(
    input: &str,
    max_units: usize,
) -> Result<Vec<u16>, LzError> {
    let mut bits = BitReader::new(input.as_bytes());
    let mut out = Output {
        units: Vec::new(),
        limit: max_units,
    };
    // Codes 0, 1 and 2 mean "an 8-bit character follows", "a 16-bit one follows", "end";
    // dictionary entries start at 3.
    let first = match bits.read(2)? {
        0 => bits.read(8)?,
        1 => bits.read(16)?,
        2 => return Ok(out.units),
        code => return Err(LzError::BadCode { code, size: 3 }),
    };
    let mut w = out.push(first as u16)?;
    let mut dictionary = vec![Span { start: 0, len: 0 }; 3];
    dictionary.push(w);
    let mut width = CodeWidth {
        bits: 3,
        enlarge_in: 4,
    };
    loop {
        let code = bits.read(width.bits)?;
        let entry = match code {
            0 | 1 => {
                let unit = bits.read(if code == 0 { 8 } else { 16 })?;
                let entry = out.push(unit as u16)?;
                dictionary.push(entry);
                width.count_one();
                entry
            }
            2 => return Ok(out.units),
            code => match dictionary.get(code as usize) {
                Some(&span) => out.repeat(span, 0)?,
                None if code as usize == dictionary.len() => out.repeat(w, 1)?,
                None => {
                    return Err(LzError::BadCode {
                        code,
                        size: dictionary.len(),
                    })
                }
            },
        };
        // `w + entry[0]`: `entry` was written right after `w`, so that is one span too.
        dictionary.push(Span {
            start: w.start,
            len: w.len + 1,
        });
        w = entry;
        width.count_one();
        // The dictionary is bounded by the output budget, so this only trips on a budget
        // beyond any config's reach; it keeps `read` within 31 bits whatever the budget.
        if width.bits > 31 {
            return Err(LzError::TooLong { limit: max_units });
        }
    }
}

/// Writes values the way lz-string does: each value's bits from the lowest, into characters of
/// six bits from the highest.
struct BitWriter {
    out: String,
    value: usize,
    used: u32,
}

impl BitWriter {
    fn write(&mut self, bits: u32, n: u32) {
        for i in 0..n {
            self.value = (self.value << 1) | ((bits >> i) & 1) as usize;
            self.used += 1;
            if self.used == BITS_PER_CHAR {
                self.out.push(char::from(URI_ALPHABET[self.value]));
                (self.value, self.used) = (0, 0);
            }
        }
    }

    /// Pad the last character with zeros: always at least one bit, as the JavaScript does
    /// (so a stream that ends on a character boundary gets one more `A`).
    fn finish(mut self) -> String {
        loop {
            self.value <<= 1;
            if self.used == BITS_PER_CHAR - 1 {
                self.out.push(char::from(URI_ALPHABET[self.value]));
                return self.out;
            }
            self.used += 1;
        }
    }
}

/// The LZW state of the compressor: codes and when the code width grows.
struct Codes {
    /// `(code of w, next unit)` → code of `w + unit`.
    pairs: HashMap<(u32, u16), u32>,
    /// Each unit seen → its code.
    units: HashMap<u16, u32>,
    /// Units whose code was assigned but not yet sent as a literal.
    unsent: HashSet<u16>,
    size: u32,
    width: CodeWidth,
}

impl Codes {
    /// Send the phrase `w` (its code, and the unit when it is a single one).
    fn emit(&mut self, bits: &mut BitWriter, code: u32, single: Option<u16>) {
        match single.filter(|unit| self.unsent.remove(unit)) {
            Some(unit) => {
                if unit < 256 {
                    bits.write(0, self.width.bits);
                    bits.write(u32::from(unit), 8);
                } else {
                    bits.write(1, self.width.bits);
                    bits.write(u32::from(unit), 16);
                }
                self.width.count_one();
            }
            None => bits.write(code, self.width.bits),
        }
    }
}

/// `LZString.compressToEncodedURIComponent` of the UTF-16 text `units`, byte for byte.
pub fn compress_to_encoded_uri_component(units: &[u16]) -> String {
    let mut bits = BitWriter {
        out: String::new(),
        value: 0,
        used: 0,
    };
    let mut codes = Codes {
        pairs: HashMap::new(),
        units: HashMap::new(),
        unsent: HashSet::new(),
        size: 3,
        width: CodeWidth {
            bits: 2,
            enlarge_in: 2,
        },
    };
    // The phrase `w`: its code, and its unit when it is one unit long.
    let mut w: Option<(u32, Option<u16>)> = None;
    for &unit in units {
        let unit_code = *codes.units.entry(unit).or_insert_with(|| {
            codes.unsent.insert(unit);
            codes.size += 1;
            codes.size - 1
        });
        let Some((code, single)) = w else {
            w = Some((unit_code, Some(unit)));
            continue;
        };
        if let Some(&longer) = codes.pairs.get(&(code, unit)) {
            w = Some((longer, None));
            continue;
        }
        codes.emit(&mut bits, code, single);
        codes.width.count_one();
        codes.pairs.insert((code, unit), codes.size);
        codes.size += 1;
        w = Some((unit_code, Some(unit)));
    }
    if let Some((code, single)) = w {
        codes.emit(&mut bits, code, single);
        codes.width.count_one();
    }
    bits.write(2, codes.width.bits);
    bits.finish()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn decode(input: &str) -> Result<String, LzError> {
        decompress_from_encoded_uri_component(input, 1 << 20)
            .map(|units| String::from_utf16(&units).unwrap())
    }

    #[test]
    fn decodes_what_lz_str_encodes() {
        for text in [
            "",
            "a",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            r#"{"type":"offer","sdp":"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"}"#,
            "unicode: é ✓ 😀 \u{ffff} \u{10000}",
        ] {
            let packed = lz_str::compress_to_encoded_uri_component(text);
            assert_eq!(decode(&packed).as_deref(), Ok(text), "{packed}");
        }
    }

    #[test]
    fn the_budget_is_exact_and_enforced_while_decoding() {
        let text = "abcabcabcabcabcabcabcabc";
        let packed = lz_str::compress_to_encoded_uri_component(text);
        let units = decompress_from_encoded_uri_component(&packed, text.len()).unwrap();
        assert_eq!(units.len(), text.len());
        assert_eq!(
            decompress_from_encoded_uri_component(&packed, text.len() - 1),
            Err(LzError::TooLong {
                limit: text.len() - 1
            })
        );
    }

    /// Each code names the entry being made (`c == dictSize`), as compressing "aaaa…" gives:
    /// `codes` codes decode to about `codes²/2` characters. Written directly: compressing the
    /// text would take as long as decoding it.
    pub(crate) fn bomb(codes: u32) -> String {
        let mut out = String::new();
        let (mut value, mut used) = (0usize, 0);
        let mut write = |bits: u32, n: u32| {
            for i in 0..n {
                value = (value << 1) | ((bits >> i) & 1) as usize;
                used += 1;
                if used == BITS_PER_CHAR {
                    out.push(URI_ALPHABET[value] as char);
                    (value, used) = (0, 0);
                }
            }
        };
        write(0, 2);
        write(u32::from(b'a'), 8);
        let (mut size, mut num_bits, mut enlarge_in) = (4, 3, 4);
        for _ in 0..codes {
            write(size, num_bits);
            size += 1;
            enlarge_in -= 1;
            if enlarge_in == 0 {
                enlarge_in = 1 << num_bits;
                num_bits += 1;
            }
        }
        write(2, num_bits);
        write(0, BITS_PER_CHAR - 1);
        out
    }

    #[test]
    fn the_bomb_decodes_as_designed_under_a_big_enough_budget() {
        let units = decompress_from_encoded_uri_component(&bomb(100), 10_000).unwrap();
        assert_eq!(units.len(), 1 + (1..=100).map(|n| n + 1).sum::<usize>());
        assert!(units.iter().all(|&u| u == u16::from(b'a')));
    }

    #[test]
    fn a_quadratic_bomb_stops_at_the_budget() {
        // 27 779 codes (64 KiB of input) would decode to ~3.9e8 characters.
        let bomb = bomb(27_779);
        assert!(bomb.len() <= 65_536, "{}", bomb.len());
        let started = std::time::Instant::now();
        assert_eq!(
            decompress_from_encoded_uri_component(&bomb, 262_144),
            Err(LzError::TooLong { limit: 262_144 })
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    /// Vectors from the npm `lz-string` 1.5.0 (`tests/node/lz-vectors.mjs` writes them): random
    /// ASCII, SDP-like, non-BMP and arbitrary UTF-16 strings, lone surrogates included.
    #[test]
    fn matches_the_npm_lz_string_vectors_both_ways() {
        #[derive(serde::Deserialize)]
        struct Vector {
            units: Vec<u16>,
            packed: String,
        }
        #[derive(serde::Deserialize)]
        struct Vectors {
            vectors: Vec<Vector>,
        }
        let file: Vectors =
            serde_json::from_str(include_str!("../../tests/fixtures/lz-string-vectors.json"))
                .unwrap();
        assert!(file.vectors.len() > 100);
        for v in &file.vectors {
            assert_eq!(compress_to_encoded_uri_component(&v.units), v.packed);
            let decoded = decompress_from_encoded_uri_component(&v.packed, v.units.len());
            assert_eq!(decoded.as_ref(), Ok(&v.units), "{}", v.packed);
            if !v.units.is_empty() {
                let short = decompress_from_encoded_uri_component(&v.packed, v.units.len() - 1);
                assert_eq!(
                    short,
                    Err(LzError::TooLong {
                        limit: v.units.len() - 1
                    })
                );
            }
        }
    }

    #[test]
    fn malformed_input_is_an_error() {
        assert_eq!(decode(""), Err(LzError::Truncated));
        assert_eq!(
            decode("N4I%"),
            Err(LzError::BadChar {
                byte: b'%',
                offset: 3
            })
        );
        // A valid payload cut short.
        let packed = lz_str::compress_to_encoded_uri_component("hello world, hello world");
        assert_eq!(decode(&packed[..packed.len() / 2]), Err(LzError::Truncated));
        // First code 3 is not a thing; '-' is 63 = 0b111111.
        assert!(matches!(decode("----"), Err(LzError::BadCode { .. })));
        // '$' reads as zero bits, as in the JavaScript: "A" would be the same.
        assert_eq!(decode("$$$$"), decode("AAAA"));
    }

    #[test]
    fn spaces_read_as_plus_like_the_javascript() {
        let packed = lz_str::compress_to_encoded_uri_component("some text that packs with a +?");
        if packed.contains('+') {
            assert_eq!(
                decode(&packed.replace('+', " ")),
                decode(&packed),
                "{packed}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn agrees_with_lz_str_on_random_strings(s in "\\PC{0,400}") {
            let packed = lz_str::compress_to_encoded_uri_component(s.as_str());
            let ours = decompress_from_encoded_uri_component(&packed, 4096).unwrap();
            let theirs = lz_str::decompress_from_encoded_uri_component(&packed).unwrap();
            proptest::prop_assert_eq!(ours, theirs);
        }

        #[test]
        fn agrees_with_lz_str_on_random_utf16(units in proptest::collection::vec(proptest::num::u16::ANY, 0..300)) {
            let packed = lz_str::compress_to_encoded_uri_component(units.as_slice());
            let ours = decompress_from_encoded_uri_component(&packed, 4096).unwrap();
            proptest::prop_assert_eq!(ours, units);
        }

        #[test]
        fn compresses_like_lz_str(units in proptest::collection::vec(proptest::num::u16::ANY, 0..300), s in "\\PC{0,300}") {
            let ours = compress_to_encoded_uri_component(&units);
            proptest::prop_assert_eq!(&ours, &lz_str::compress_to_encoded_uri_component(units.as_slice()));
            proptest::prop_assert_eq!(decompress_from_encoded_uri_component(&ours, 4096).unwrap(), units);
            let wide: Vec<u16> = s.encode_utf16().collect();
            proptest::prop_assert_eq!(compress_to_encoded_uri_component(&wide), lz_str::compress_to_encoded_uri_component(s.as_str()));
        }

        #[test]
        fn never_panics_on_the_alphabet(s in "[A-Za-z0-9+$ -]{0,300}") {
            let _ = decompress_from_encoded_uri_component(&s, 4096);
        }
    }
}
