//! Abuse: an lz-string payload whose every code names the dictionary entry being made (what
//! compressing "aaaa…" gives) decodes to ~3.9e8 characters from 64 KB. Sent as `SignalCapture`
//! into a session the built-in capture member answers, it must cost the daemon less than
//! 32 MiB of peak RSS, and the initiator must get an error signal rather than silence.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test, with its line
mod common;

use common::signalr::{Client, Read};
use common::Daemon;
use serde_json::json;

/// `compressToEncodedURIComponent`'s alphabet.
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+-";

/// About `chars` characters of lz-string: an 'a', then codes that each name the entry being
/// made, then the end code. Written directly (compressing the text would take as long as
/// expanding it).
fn lz_bomb(chars: usize) -> String {
    let mut out = String::new();
    let (mut value, mut used) = (0usize, 0);
    let mut write = |out: &mut String, bits: u32, n: u32| {
        for i in 0..n {
            value = (value << 1) | ((bits >> i) & 1) as usize;
            used += 1;
            if used == 6 {
                out.push(ALPHABET[value] as char);
                (value, used) = (0, 0);
            }
        }
    };
    write(&mut out, 0, 2);
    write(&mut out, u32::from(b'a'), 8);
    let (mut size, mut num_bits, mut enlarge_in) = (4u32, 3u32, 4u32);
    while out.len() + 4 < chars {
        write(&mut out, size, num_bits);
        size += 1;
        enlarge_in -= 1;
        if enlarge_in == 0 {
            enlarge_in = 1 << num_bits;
            num_bits += 1;
        }
    }
    write(&mut out, 2, num_bits);
    write(&mut out, 0, 5);
    out
}

#[tokio::test]
async fn an_expanding_lz_payload_costs_under_32_mib_and_the_initiator_gets_an_error() {
    let d = Daemon::start("");
    let mut init = Client::open(d.addr).await;
    init.invoke("0", "Sync", json!(["bomb", false])).await;
    assert_eq!(
        init.read_non_ping().await,
        Read::Record(json!({"type":3,"invocationId":"0"}))
    );
    assert_eq!(
        init.read_non_ping().await,
        Read::Record(json!({"type":1,"target":"signalStart","arguments":[]}))
    );
    let before = d.peak_rss_kib();

    // 65 000 characters: ~28 000 codes (~4·10⁸ characters decoded), within the default 64 KiB
    // record limit.
    let bomb = lz_bomb(65_000);
    init.invoke("1", "SignalCapture", json!(["bomb", bomb]))
        .await;
    // The relay's Completion, then the capture member's error signal. A hang fails here
    // (`read` gives up after its timeout).
    let mut error = None;
    while error.is_none() {
        match init.read_non_ping().await {
            Read::Record(v) if v["target"] == "signalInitiator" => {
                let packed = v["arguments"][0].as_str().expect("a string payload");
                let units = lz_str::decompress_from_encoded_uri_component(packed).expect("lz");
                let signal: serde_json::Value =
                    serde_json::from_str(&String::from_utf16(&units).unwrap()).unwrap();
                error = Some(signal);
            }
            Read::Record(v) => assert_eq!(v, json!({"type":3,"invocationId":"1"})),
            Read::Closed => panic!("the hub closed the initiator's connection"),
        }
    }
    let error = error.unwrap();
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(
        error["error"],
        "payload decodes to more than 262144 bytes (signaling.max_payload_bytes)"
    );

    let after = d.peak_rss_kib();
    let grew = after.saturating_sub(before);
    println!("peak RSS {before} KiB before the payload, {after} KiB after (+{grew} KiB)");
    assert!(
        grew < 32 * 1024,
        "peak RSS grew by {grew} KiB ({before} -> {after} KiB)"
    );
    // The session still works: a real offer is answered.
    let offer = lz_str::compress_to_encoded_uri_component(r#"{"type":"offer","sdp":"bad sdp"}"#);
    init.send_call("SignalCapture", json!(["bomb", offer]))
        .await;
    let Read::Record(v) = init.read_non_ping().await else {
        panic!("closed")
    };
    assert_eq!(v["target"], "signalInitiator", "{v}");
}
