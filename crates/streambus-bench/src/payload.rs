//! The one payload every phase sends: the reference envelope (`id` UUID,
//! `timestamp`, `data`) with a 200-byte JSON `data`.
//!
//! `data` carries the time the message was made (nanoseconds since the bench's
//! epoch, as fixed-width text: JSON numbers may not have leading zeros), so a handler in this process can compute the end-to-end
//! latency without any shared table, and a sequence number; both fixed width, so
//! every message is exactly the same size.

use std::sync::OnceLock;
use std::time::Instant;

/// Bytes of the JSON `data` field.
pub const DATA_BYTES: usize = 200;

const HEAD: &str = "{\"t\":\"";
const SEQ: &str = "\",\"seq\":\"";
const MIDDLE: &str = "\",\"source\":\"streambus-bench\",\"severity\":\"high\",\"pad\":\"";
const TAIL: &str = "\"}";
/// Digits of the time field (u64::MAX has 20).
const T_DIGITS: usize = 20;
const SEQ_DIGITS: usize = 12;
const PAD: usize =
    DATA_BYTES - HEAD.len() - T_DIGITS - SEQ.len() - SEQ_DIGITS - MIDDLE.len() - TAIL.len();

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since the bench's epoch (monotonic).
pub fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// The 200-byte JSON `data` of a message made at `t_ns` with number `seq`.
pub fn data(t_ns: u64, seq: u64) -> String {
    let mut s = String::with_capacity(DATA_BYTES);
    s.push_str(HEAD);
    push_fixed(&mut s, t_ns, T_DIGITS);
    s.push_str(SEQ);
    push_fixed(&mut s, seq, SEQ_DIGITS);
    s.push_str(MIDDLE);
    s.extend(std::iter::repeat_n('x', PAD));
    s.push_str(TAIL);
    s
}

fn push_fixed(s: &mut String, n: u64, width: usize) {
    let digits = n.to_string();
    for _ in digits.len()..width {
        s.push('0');
    }
    s.push_str(&digits);
}

/// The time field of a `data` made by [`data`]; `None` for anything else.
pub fn sent_ns(data: &[u8]) -> Option<u64> {
    let field = data.get(HEAD.len()..HEAD.len() + T_DIGITS)?;
    if !data.starts_with(HEAD.as_bytes()) {
        return None;
    }
    field.iter().try_fold(0u64, |n, &c| {
        c.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(c - b'0')))
            .flatten()
    })
}

/// A whole reference envelope as XADD field/value pairs, for redis-benchmark
/// (fixed values: it sends the same command every time).
pub fn reference_fields() -> [(&'static str, String); 3] {
    [
        ("id", "3b241101-e2bb-4255-8caf-4136c566a962".to_owned()),
        ("timestamp", "2026-01-01T12:30:45.123456+00:00".to_owned()),
        ("data", data(0, 0)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_200_bytes_of_json_and_carries_its_time() {
        for (t, seq) in [(0, 0), (123_456_789, 42), (u64::MAX, 999_999_999_999)] {
            let d = data(t, seq);
            assert_eq!(d.len(), DATA_BYTES, "{d}");
            let v: serde_json::Value = serde_json::from_str(&d).unwrap();
            assert_eq!(v["seq"], format!("{seq:012}"));
            assert_eq!(sent_ns(d.as_bytes()), Some(t));
        }
        assert_eq!(sent_ns(b"{\"other\":1}"), None);
        // The same envelope shape as the library writes.
        let m = streambus::Message::json_text(data(1, 1)).unwrap();
        assert_eq!(
            m.byte_len(),
            reference_fields()
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
        );
    }
}
