//! Hash slots: [`slot_for_key`], as `CLUSTER KEYSLOT` computes it.

/// Number of hash slots of a Redis Cluster.
pub(super) const SLOTS: u16 = 16384;

/// The hash slot of `key` (CRC16 of the key, or of its `{hash tag}`,
/// modulo 16384), as `CLUSTER KEYSLOT` computes it.
pub fn slot_for_key(key: impl AsRef<[u8]>) -> u16 {
    let key = key.as_ref();
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16_xmodem(hashed) % SLOTS
}

/// CRC16-CCITT (XMODEM), the checksum Redis Cluster uses for slots.
fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.0.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(slot_for_key("foo"), 12182);
        assert_eq!(slot_for_key("bar"), 5061);
        assert_eq!(
            slot_for_key("{user1000}.following"),
            slot_for_key("user1000")
        );
        // An empty first tag hashes the whole key; only the first `{` counts.
        assert_eq!(
            slot_for_key("foo{}{bar}"),
            crc16_xmodem(b"foo{}{bar}") % SLOTS
        );
        assert_eq!(slot_for_key("foo{{bar}}zap"), slot_for_key("{bar"));
    }
}
