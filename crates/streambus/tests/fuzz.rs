//! Property tests over everything that parses untrusted input: the envelope
//! decoder, entry ids, durations, sizes, timestamps, Redis URLs and their
//! percent-encoded query values. No input may panic; valid
//! values must round-trip. They run in CI with proptest's default case count
//! (bounded time); `PROPTEST_CASES=100000 cargo test --test fuzz` runs longer.

use proptest::prelude::*;
use streambus::config::{format_duration, parse_bytes, parse_duration, percent_decode};
use streambus::envelope::{format_timestamp, parse_timestamp, Envelope};
use streambus::TlsOptions;
use streambus::{Client, ConnectOptions, EntryId, Fields, Message, StartId};

/// Field names that matter to the decoder, mixed with arbitrary ones.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("id".to_owned()),
        Just("data".to_owned()),
        Just("timestamp".to_owned()),
        Just("type".to_owned()),
        Just("key".to_owned()),
        Just("traceparent".to_owned()),
        ".{0,12}",
    ]
}

/// Values: arbitrary bytes, and JSON-ish text.
fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        "[\\[\\]{}\",:0-9a-z \\\\]{0,40}".prop_map(String::into_bytes),
        Just(b"{\"a\":1}".to_vec()),
    ]
}

/// Redis URLs: a scheme (or none), then pieces that the URL parser, the
/// password masking and the TLS query (`?ca=…&cert=…&key=…&insecure`) look
/// at, mixed with `%` sequences, multi-byte characters and arbitrary text.
/// Paths stay short and odd, so that no piece names a file that exists.
fn redis_url() -> impl Strategy<Value = String> {
    let scheme = prop_oneof![
        Just(""),
        Just("redis://"),
        Just("rediss://"),
        Just("redis+cluster://"),
        Just("rediss+cluster://"),
        Just("redis+unix://"),
        Just("http://"),
    ];
    let piece = prop_oneof![
        Just("%".to_owned()),
        Just("%€".to_owned()),
        Just("%e2%82".to_owned()),
        Just("%zz".to_owned()),
        Just("%+1".to_owned()),
        Just("?ca=".to_owned()),
        Just("?cert=".to_owned()),
        Just("&key=".to_owned()),
        Just("&insecure".to_owned()),
        Just("?insecure=1".to_owned()),
        Just("#".to_owned()),
        Just("@".to_owned()),
        Just(":".to_owned()),
        Just(",".to_owned()),
        Just("/".to_owned()),
        Just("[::1]".to_owned()),
        Just("u:p@h:6379".to_owned()),
        "[%€éü日本0-9a-fA-F]{1,6}",
        "\\PC{0,8}",
        ".{0,8}",
    ];
    (scheme, proptest::collection::vec(piece, 0..10))
        .prop_map(|(scheme, pieces)| format!("{scheme}{}", pieces.concat()))
}

proptest! {
    #[test]
    fn url_parser_never_panics(url in redis_url(), any_text in ".{0,64}", insecure in any::<bool>()) {
        let _ = Client::open(&url);
        let _ = Client::open(&any_text);
        let options = ConnectOptions {
            tls: TlsOptions {
                insecure_skip_verify: insecure,
                ..Default::default()
            },
            ..Default::default()
        };
        let _ = Client::open_with(&url, options.clone());
        let _ = Client::open_with(&any_text, options);
    }

    #[test]
    fn percent_decoder_never_panics_and_keeps_plain_text(s in "\\PC{0,32}", b in "[%0-9a-fA-F€é+]{0,32}") {
        let _ = percent_decode(&s);
        let _ = percent_decode(&b);
        // Text without `%` comes back as it was.
        let plain: String = s.chars().filter(|c| *c != '%').collect();
        prop_assert_eq!(percent_decode(&plain), plain);
    }

    #[test]
    fn percent_encoding_round_trips(s in "\\PC{0,32}") {
        let encoded: String = s.bytes().map(|b| format!("%{b:02X}")).collect();
        prop_assert_eq!(percent_decode(&encoded), s.clone());
        let lower = encoded.to_lowercase();
        prop_assert_eq!(percent_decode(&lower), s);
    }

    #[test]
    fn envelope_decoder_never_panics(fields in proptest::collection::vec((name(), value()), 0..12)) {
        let fields = Fields::from_pairs(fields);
        if let Ok(Some(env)) = Envelope::from_fields(&fields) {
            // What it accepted is valid JSON and valid UTF-8.
            prop_assert!(env.data_value().is_ok());
            let _ = env.published_at();
        }
    }

    #[test]
    fn envelopes_round_trip(payload in "[a-z0-9 <>&\"']{0,50}", key in proptest::option::of("[a-z0-9-]{1,10}")) {
        let mut m = Message::json(&serde_json::json!({ "text": payload })).unwrap();
        if let Some(k) = &key {
            m = m.with_key(k.clone());
        }
        let env = Envelope::from_fields(&m.to_fields()).unwrap().unwrap();
        let data = env.data_value().unwrap();
        prop_assert_eq!(data["text"].as_str(), Some(payload.as_str()));
        prop_assert_eq!(env.key, key);
        prop_assert_eq!(env.id.as_str(), m.envelope_id().unwrap());
    }

    #[test]
    fn entry_id_parser_never_panics(s in ".{0,48}", b in proptest::collection::vec(any::<u8>(), 0..48)) {
        let _ = s.parse::<EntryId>();
        let _ = s.parse::<StartId>();
        let _ = EntryId::from_bytes(&b);
    }

    #[test]
    fn entry_ids_round_trip(ms in any::<u64>(), seq in any::<u64>()) {
        let id = EntryId::new(ms, seq);
        prop_assert_eq!(id.to_string().parse::<EntryId>().unwrap(), id);
        prop_assert_eq!(EntryId::from_bytes(id.to_string().as_bytes()).unwrap(), id);
        prop_assert!(id.next() >= id);
    }

    #[test]
    fn duration_and_size_parsers_never_panic(s in ".{0,32}", t in "[0-9.]{0,8}(ns|us|ms|s|m|h|d|x|){0,2}[0-9]{0,3}") {
        let _ = parse_duration(&s);
        let _ = parse_duration(&t);
        let _ = parse_bytes(&s);
        let _ = parse_bytes(&t);
    }

    #[test]
    fn durations_round_trip(ms in 0u64..10_000_000_000) {
        let d = std::time::Duration::from_millis(ms);
        let back = parse_duration(&format_duration(d)).unwrap();
        // format_duration rounds to its display precision.
        prop_assert!(back.abs_diff(d) <= std::time::Duration::from_secs(60), "{:?} {:?}", d, back);
    }

    #[test]
    fn timestamp_parser_never_panics(s in ".{0,40}", t in "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,12})?(Z|[+-][0-9]{2}(:?[0-9]{2})?)?") {
        let _ = parse_timestamp(&s);
        let _ = parse_timestamp(&t);
    }

    #[test]
    fn timestamps_round_trip(micros in 0u64..4_102_444_800_000_000) {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(micros);
        prop_assert_eq!(parse_timestamp(&format_timestamp(t)), Some(t));
    }
}

/// The case: a `%` followed by a multi-byte character panicked (a byte
/// index into a `&str`).
#[test]
fn a_percent_before_a_multi_byte_character_is_kept() {
    for url in [
        "rediss://h/?ca=%€",
        "rediss://h/?ca=%€€&insecure",
        "rediss://h?cert=a%é&key=%",
    ] {
        let e = Client::open(url).unwrap_err();
        // The CA (or certificate) file named by the query does not exist.
        assert!(e.to_string().contains("cannot read the TLS"), "{url}: {e}");
    }
    assert_eq!(percent_decode("%€"), "%€");
    assert_eq!(percent_decode("a%2"), "a%2");
    assert_eq!(percent_decode("%"), "%");
    assert_eq!(percent_decode("%+1%-1"), "%+1%-1");
    assert_eq!(percent_decode("%2Fetc%2fca%20dir"), "/etc/ca dir");
    assert_eq!(percent_decode("a+b"), "a+b");
    assert_eq!(percent_decode("%e2%82%ac"), "€");
    // Bytes that are not UTF-8 are replaced, not a panic.
    assert_eq!(percent_decode("%ff"), "\u{fffd}");
}
