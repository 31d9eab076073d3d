//! Property tests of `redis+sentinel://` URLs (untrusted input: a CLI flag,
//! an environment variable): no input may panic, and no password, of Redis or
//! of the sentinels, may show in what is printed about the URL.

use proptest::prelude::*;
use streambus::Client;

/// A sentinel URL built of the pieces its parser looks at, mixed with
/// `%` sequences, multi-byte characters and arbitrary text.
fn sentinel_url() -> impl Strategy<Value = String> {
    let scheme = prop_oneof![Just("redis+sentinel://"), Just("rediss+sentinel://")];
    let piece = prop_oneof![
        Just("u:p@".to_owned()),
        Just("h:26379".to_owned()),
        Just(",".to_owned()),
        Just("/".to_owned()),
        Just("/mymaster".to_owned()),
        Just("?db=".to_owned()),
        Just("&sentinel_username=".to_owned()),
        Just("?sentinel_password=".to_owned()),
        Just("#insecure".to_owned()),
        Just("[::1]".to_owned()),
        Just("@".to_owned()),
        Just(":".to_owned()),
        "[%€éü0-9a-fA-F]{1,6}",
        "\\PC{0,8}",
    ];
    (scheme, proptest::collection::vec(piece, 0..10))
        .prop_map(|(scheme, pieces)| format!("{scheme}{}", pieces.concat()))
}

proptest! {
    #[test]
    fn sentinel_url_parser_never_panics(url in sentinel_url()) {
        if let Ok(client) = Client::open(&url) {
            let _ = client.display_url();
        }
    }

    #[test]
    fn sentinel_passwords_never_show(
        pass in "[a-zA-Z0-9]{8,16}",
        sentinel_pass in "[a-zA-Z0-9@/]{8,16}",
    ) {
        let url = format!(
            "redis+sentinel://bob:{pass}@s1:26379,s2/mymaster?db=1&sentinel_password={sentinel_pass}"
        );
        let client = Client::open(&url).unwrap();
        let shown = format!("{} {client:?}", client.display_url());
        prop_assert!(!shown.contains(&pass), "{}", shown);
        prop_assert!(!shown.contains(&sentinel_pass), "{}", shown);
        // An error message names the URL masked too.
        let bad = format!("{url}&nope=1");
        let e = Client::open(&bad).unwrap_err().to_string();
        prop_assert!(!e.contains(&pass) && !e.contains(&sentinel_pass), "{}", e);
    }
}
