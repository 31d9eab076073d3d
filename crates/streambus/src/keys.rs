//! Every Redis key name streambus builds, in one place.
//!
//! Helper keys of a stream (its dead-letter stream, idempotency markers) carry a
//! hash tag so that on Redis Cluster they live in the stream's slot: a script or
//! MULTI that touches the stream and its dead-letter stream is then valid there.
//! `aurora:alerts` hashes like `{aurora:alerts}:dlq`, because the slot of a key with
//! a `{tag}` is the slot of the tag.

use crate::error::{Error, ErrorKind, Result};

/// The part of `key` that Redis Cluster hashes: the text between the first `{`
/// and the next `}` when that is not empty, else the whole key.
pub fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{') {
        if let Some(len) = key[open + 1..].find('}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// A prefix that makes a helper key share the slot of `stream`: the stream's own
/// hash tag when it has one, else the whole stream name in braces.
fn slot_prefix(stream: &str) -> String {
    let tag = hash_tag(stream);
    if tag.len() == stream.len() {
        format!("{{{stream}}}")
    } else {
        // The stream already has a tag: keep the full name for uniqueness and
        // rely on its tag, which comes first in the name.
        stream.to_owned()
    }
}

/// The dead-letter stream of `stream`: `{<stream>}:dlq`.
pub fn dead_letter(stream: &str) -> String {
    format!("{}:dlq", slot_prefix(stream))
}

/// The idempotency marker of an envelope id processed by `group` on `stream`.
pub fn idempotency(stream: &str, group: &str, envelope_id: &str) -> String {
    format!("{}:idem:{group}:{envelope_id}", slot_prefix(stream))
}

/// The key of partition `index` of the logical stream `stream`: `<stream>:p<index>`.
/// Each partition hashes to its own slot; its helper keys follow it there.
pub fn partition(stream: &str, index: u32) -> String {
    format!("{stream}:p{index}")
}

/// The owner lease of `group` on one partition (`partition_key`, which has its
/// own hash tag): `<partition_key>:lease:<group>`, in the partition's slot, so
/// that a script may check it and acknowledge on the partition atomically.
pub fn partition_lease(partition_key: &str, group: &str) -> String {
    format!("{}:lease:{group}", slot_prefix(partition_key))
}

/// The member registry of `group` on the logical stream `stream`: one sorted
/// set (member token to last-seen time), `{<stream>}:members:<group>`, so that
/// a member reads every live member with one command on one slot.
pub fn partition_members(stream: &str, group: &str) -> String {
    format!("{}:members:{group}", slot_prefix(stream))
}

/// The Redis Cluster slot of a key (CRC16/XMODEM of its hash tag, mod 16384).
pub fn slot(key: &str) -> u16 {
    crc16(hash_tag(key).as_bytes()) % 16_384
}

/// CRC16/XMODEM, the hash of Redis Cluster slots (see [`slot`]).
#[doc(hidden)]
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Longest stream or group name accepted; Redis allows more, but names this long
/// are a mistake and make every key and metric label unwieldy.
pub const MAX_NAME_LEN: usize = 512;

/// Checks a stream, group or consumer name: not empty, no control characters,
/// not too long.
pub fn validate_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("{what} name is empty"),
        ));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "{what} name is {} bytes long; at most {MAX_NAME_LEN} are allowed",
                name.len()
            ),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("{what} name {name:?} contains control characters"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dlq_shares_the_stream_slot() {
        assert_eq!(dead_letter("aurora:alerts"), "{aurora:alerts}:dlq");
        assert_eq!(slot("aurora:alerts"), slot(&dead_letter("aurora:alerts")));
        assert_eq!(slot("{orders}:p1"), slot(&dead_letter("{orders}:p1")));
        assert_eq!(
            slot("x"),
            slot(&idempotency(
                "x",
                "g",
                "3b241101-e2bb-4255-8caf-4136c566a962"
            ))
        );
    }

    #[test]
    fn known_slots() {
        // Values from `CLUSTER KEYSLOT` on a real server.
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(slot("123456789"), 0x31C3);
    }

    #[test]
    fn hash_tags() {
        assert_eq!(hash_tag("{a}b"), "a");
        assert_eq!(hash_tag("a{}b"), "a{}b");
        assert_eq!(hash_tag("a{b"), "a{b");
        assert_eq!(hash_tag("a{b}{c}"), "b");
    }

    #[test]
    fn names() {
        assert!(validate_name("stream", "aurora:alerts").is_ok());
        assert!(validate_name("stream", "").is_err());
        assert!(validate_name("stream", "a\nb").is_err());
        assert!(validate_name("stream", &"x".repeat(600)).is_err());
    }
}
