//! Redis Cluster hash slots: CRC16 (XMODEM) of the key, or of its hash tag
//! (the part between the first `{` and the next `}`, when not empty).

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= (byte as u16) << 8;
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

/// The hash slot of `key`.
pub(crate) fn of(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &bytes[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(bytes)) % 16384
}

#[cfg(test)]
mod tests {
    use super::of;

    #[test]
    fn slots_follow_the_hash_tag() {
        // Known values from the Redis Cluster specification's examples.
        assert_eq!(of("123456789"), 0x31C3);
        assert_eq!(of("usagewarden:{tenant}:a"), of("usagewarden:{tenant}:b"));
        assert_eq!(of("{user1000}.following"), of("{user1000}.followers"));
        // An empty tag does not count: the whole key is hashed.
        assert_eq!(of("foo{}{bar}"), super::crc16(b"foo{}{bar}") % 16384);
        assert_ne!(of("usagewarden:a"), of("usagewarden:b"));
    }
}
