//! The ledger's hash chain: each namespace's events, in commit order, each
//! linked to the one before by SHA-256.
//!
//! An event at position `n` (1, 2, 3, … per namespace) stores
//!
//! ```text
//! digest(n) = SHA-256(digest(n - 1) ‖ canonical(event n))      digest(0) = 32 zero bytes
//! ```
//!
//! where `‖` joins the 32 raw bytes of the previous digest and the canonical
//! bytes. SHA-256 because a third party can recompute it with nothing but a
//! standard library (Python's `hashlib`), which BLAKE3 would not allow.
//!
//! ## The canonical encoding (version 1)
//!
//! A compact JSON object, UTF-8, keys sorted, no whitespace — exactly what
//! Python's `json.dumps(obj, sort_keys=True, separators=(",", ":"),
//! ensure_ascii=False).encode("utf-8")` produces — with these 20 keys:
//!
//! | key | value |
//! |---|---|
//! | `action`, `agent_id`, `consumer_id`, `namespace`, `request_id` | string |
//! | `task_id`, `model`, `source` | string or `null` |
//! | `tokens_in`, `tokens_out`, `cache_read_tokens`, `cache_write_tokens`, `duration_ms`, `api_calls`, `units` | integer |
//! | `cost_nanos` | integer nano-USD (1 USD = 10⁹) as the caller recorded it, or `null` (unknown, or filled in by the store's pricing) |
//! | `timestamp_us` | integer microseconds since 1970-01-01T00:00:00Z |
//! | `artifact_digest` | lowercase hex string or `null` |
//! | `metadata` | the stored metadata text (the redacted object as JSON, keys sorted, no whitespace) as a JSON **string**, or `null` |
//! | `v` | `1`, the encoding's version |
//!
//! Strings escape only `"`, `\` and the control characters U+0000–U+001F
//! (`\b \t \n \f \r` by name, the rest as `\u00xx`, lowercase hex); every
//! other character is written as itself in UTF-8. Metadata is embedded as
//! text so that nobody has to re-serialise it (float spellings differ
//! between JSON libraries).
//!
//! A cost filled in by the store's pricing is not covered: it is derived
//! from the counts (which are) and a price table, and `reprice` may
//! legitimately recompute it.

use super::event::UsageEvent;
use sha2::{Digest as _, Sha256};

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// The digest before a namespace's first event.
pub const GENESIS: Digest = [0; 32];

/// The canonical encoding's version, written as `"v"`.
pub const ENCODING_VERSION: u32 = 1;

/// Bytes that a JSON string must escape (`"`, `\` and U+0000–U+001F).
const ESCAPED: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// How many leading bytes of `s`, in whole 8-byte words, need no escape
/// (word at a time: most identifiers have nothing to escape). A word may be
/// flagged that has nothing to escape; the byte loop after it decides.
fn plain_prefix(s: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero_byte = |v: u64| v.wrapping_sub(ONES) & !v & HIGH != 0;
    let mut at = 0;
    for word in s.chunks_exact(8) {
        let w = u64::from_le_bytes(word.try_into().expect("8 bytes"));
        let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGH != 0;
        if below_space
            || has_zero_byte(w ^ (ONES * u64::from(b'"')))
            || has_zero_byte(w ^ (ONES * u64::from(b'\\')))
        {
            break;
        }
        at += 8;
    }
    at
}

/// Writes `s` (UTF-8, or any bytes a tampered row holds) as a JSON string,
/// escaping what Python's `json.dumps(..., ensure_ascii=False)` escapes and
/// nothing else.
fn push_str(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let mut plain = 0;
    let start = plain_prefix(s);
    for (i, &b) in s.iter().enumerate().skip(start) {
        if !ESCAPED[usize::from(b)] {
            continue;
        }
        out.extend_from_slice(&s[plain..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 15)]);
            }
        }
        plain = i + 1;
    }
    out.extend_from_slice(&s[plain..]);
    out.push(b'"');
}

fn push_opt_str(out: &mut Vec<u8>, s: Option<&[u8]>) {
    match s {
        Some(s) => push_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// Decimal digits, without going through `fmt` (this runs for every
/// integer of every event chained or verified).
fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

fn push_i64(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    push_u64(out, n.unsigned_abs());
}

fn push_opt_u64(out: &mut Vec<u8>, n: Option<u64>) {
    match n {
        Some(n) => push_u64(out, n),
        None => out.extend_from_slice(b"null"),
    }
}

/// The fields the encoding covers, borrowed from an event or straight from
/// a stored row (so that `verify` builds no event per row). Text is bytes:
/// a stored value that is not UTF-8 (tampered) encodes as it is and fails
/// the digest rather than the read.
#[derive(Clone, Copy, Debug)]
pub struct Canonical<'a> {
    pub agent_id: &'a [u8],
    pub consumer_id: &'a [u8],
    pub task_id: Option<&'a [u8]>,
    pub namespace: &'a [u8],
    pub action: &'a [u8],
    pub model: Option<&'a [u8]>,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub duration_ms: u64,
    pub api_calls: u64,
    pub units: u64,
    pub cost_nanos: Option<u64>,
    pub timestamp_us: i64,
    pub request_id: &'a [u8],
    pub source: Option<&'a [u8]>,
    pub metadata: Option<&'a [u8]>,
    pub artifact_digest: Option<&'a [u8]>,
}

impl<'a> Canonical<'a> {
    /// The fields of an event as the caller recorded it (`cost_nanos` is
    /// the caller's cost: `None` for a cost the store's pricing filled in).
    pub fn of(e: &'a UsageEvent) -> Canonical<'a> {
        let opt = |s: &'a Option<String>| s.as_deref().map(str::as_bytes);
        Canonical {
            agent_id: e.agent_id.as_bytes(),
            consumer_id: e.consumer_id.as_bytes(),
            task_id: opt(&e.task_id),
            namespace: e.namespace.as_bytes(),
            action: e.action.as_bytes(),
            model: opt(&e.model),
            tokens_in: e.tokens_in,
            tokens_out: e.tokens_out,
            cache_read_tokens: e.cache_read_tokens,
            cache_write_tokens: e.cache_write_tokens,
            duration_ms: e.duration_ms,
            api_calls: e.api_calls,
            units: e.units,
            cost_nanos: e.cost_nanos,
            timestamp_us: e.timestamp_us,
            request_id: e.request_id.as_bytes(),
            source: opt(&e.source),
            metadata: opt(&e.metadata),
            artifact_digest: opt(&e.artifact_digest),
        }
    }

    /// Appends the canonical bytes to `out`, keys in sorted order.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"action\":");
        push_str(out, self.action);
        out.extend_from_slice(b",\"agent_id\":");
        push_str(out, self.agent_id);
        out.extend_from_slice(b",\"api_calls\":");
        push_u64(out, self.api_calls);
        out.extend_from_slice(b",\"artifact_digest\":");
        push_opt_str(out, self.artifact_digest);
        out.extend_from_slice(b",\"cache_read_tokens\":");
        push_u64(out, self.cache_read_tokens);
        out.extend_from_slice(b",\"cache_write_tokens\":");
        push_u64(out, self.cache_write_tokens);
        out.extend_from_slice(b",\"consumer_id\":");
        push_str(out, self.consumer_id);
        out.extend_from_slice(b",\"cost_nanos\":");
        push_opt_u64(out, self.cost_nanos);
        out.extend_from_slice(b",\"duration_ms\":");
        push_u64(out, self.duration_ms);
        out.extend_from_slice(b",\"metadata\":");
        push_opt_str(out, self.metadata);
        out.extend_from_slice(b",\"model\":");
        push_opt_str(out, self.model);
        out.extend_from_slice(b",\"namespace\":");
        push_str(out, self.namespace);
        out.extend_from_slice(b",\"request_id\":");
        push_str(out, self.request_id);
        out.extend_from_slice(b",\"source\":");
        push_opt_str(out, self.source);
        out.extend_from_slice(b",\"task_id\":");
        push_opt_str(out, self.task_id);
        out.extend_from_slice(b",\"timestamp_us\":");
        push_i64(out, self.timestamp_us);
        out.extend_from_slice(b",\"tokens_in\":");
        push_u64(out, self.tokens_in);
        out.extend_from_slice(b",\"tokens_out\":");
        push_u64(out, self.tokens_out);
        out.extend_from_slice(b",\"units\":");
        push_u64(out, self.units);
        out.extend_from_slice(b",\"v\":");
        push_u64(out, u64::from(ENCODING_VERSION));
        out.push(b'}');
    }

    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(PAYLOAD_CAPACITY);
        self.write(&mut out);
        out
    }
}

/// Room for a typical payload (about 400 bytes without metadata).
pub const PAYLOAD_CAPACITY: usize = 512;

/// The canonical bytes of an event as the caller recorded it (`cost_nanos`
/// is the caller's cost: `None` for a cost the store's pricing filled in).
pub fn canonical(e: &UsageEvent) -> Vec<u8> {
    Canonical::of(e).to_vec()
}

/// `SHA-256(previous ‖ payload)`.
pub fn link(previous: &Digest, payload: &[u8]) -> Digest {
    let mut hasher = Sha256::new();
    hasher.update(previous);
    hasher.update(payload);
    hasher.finalize().into()
}

/// Lowercase hex.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

/// A digest from 64 hex digits (either case).
pub fn digest_from_hex(text: &str) -> Option<Digest> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = GENESIS;
    for (i, pair) in bytes.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// A stored digest column: exactly 32 bytes, or `None`.
pub fn digest_from_slice(bytes: &[u8]) -> Option<Digest> {
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::event::tests::event;

    #[test]
    fn encoding_is_sorted_compact_json() {
        let mut e = event("agent", 1_767_225_600_000_001, 12);
        e.request_id = "r-1".into();
        e.metadata = Some(r#"{"a":1,"b":"x"}"#.into());
        e.artifact_digest = Some("ab".repeat(16));
        let text = String::from_utf8(canonical(&e)).unwrap();
        assert_eq!(
            text,
            format!(
                concat!(
                    r#"{{"action":"llm.request","agent_id":"agent","api_calls":1,"artifact_digest":"{}","#,
                    r#""cache_read_tokens":0,"cache_write_tokens":0,"consumer_id":"consumer","cost_nanos":1000,"#,
                    r#""duration_ms":5,"metadata":"{{\"a\":1,\"b\":\"x\"}}","model":"gpt-4o","namespace":"default","#,
                    r#""request_id":"r-1","source":null,"task_id":null,"timestamp_us":1767225600000001,"#,
                    r#""tokens_in":12,"tokens_out":10,"units":0,"v":1}}"#
                ),
                "ab".repeat(16)
            )
        );
        let keys: Vec<String> =
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&text)
                .unwrap()
                .keys()
                .cloned()
                .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert_eq!(keys.len(), 20);
    }

    #[test]
    fn strings_escape_like_python_json() {
        let mut e = event("a\"\\\u{1}\n\u{7f}é😀", 0, 0);
        e.cost_nanos = None;
        let text = String::from_utf8(canonical(&e)).unwrap();
        // json.dumps("a\"\\\x01\n\x7fé😀", ensure_ascii=False)
        assert!(
            text.contains("\"agent_id\":\"a\\\"\\\\\\u0001\\n\u{7f}é😀\""),
            "{text}"
        );
        assert!(text.contains("\"cost_nanos\":null"));
        for c in (0u8..0x20)
            .map(char::from)
            .chain(['"', '\\', '\u{7f}', 'é'])
        {
            let mut e = event("a", 0, 0);
            e.agent_id = format!("x{c}y");
            let text = String::from_utf8(canonical(&e)).unwrap();
            let expected = serde_json::Value::String(e.agent_id.clone()).to_string();
            assert!(
                text.contains(&format!("\"agent_id\":{expected}")),
                "{c:?}: {text}"
            );
            serde_json::from_str::<serde_json::Value>(&text).unwrap();
        }
    }

    #[test]
    fn escapes_are_found_at_every_offset_of_long_strings() {
        for c in (0u8..0x20)
            .map(char::from)
            .chain(['"', '\\', '\u{7f}', 'é', '😀', ' ', '!', '#', '[', ']'])
        {
            for at in 0..24 {
                let mut text = "abcdefghijklmnopqrstuvwx".to_string();
                text.insert(at, c);
                let mut out = Vec::new();
                push_str(&mut out, text.as_bytes());
                let expected = serde_json::Value::String(text.clone()).to_string();
                assert_eq!(String::from_utf8(out).unwrap(), expected, "{c:?} at {at}");
            }
        }
    }

    #[test]
    fn integers_are_written_in_decimal() {
        for n in [0, 1, 9, 10, 99, 12_345, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
        for n in [i64::MIN, -1, 0, 1_767_225_600_000_001, i64::MAX] {
            let mut out = Vec::new();
            push_i64(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
    }

    #[test]
    fn every_field_changes_the_digest() {
        let base = event("a", 5, 1);
        let payload = canonical(&base);
        let digest = link(&GENESIS, &payload);
        assert_eq!(digest, link(&GENESIS, &canonical(&base.clone())));
        type Change = Box<dyn Fn(&mut UsageEvent)>;
        let variants: Vec<Change> = vec![
            Box::new(|e| e.agent_id.push('x')),
            Box::new(|e| e.consumer_id.push('x')),
            Box::new(|e| e.task_id = Some("t".into())),
            Box::new(|e| e.namespace.push('x')),
            Box::new(|e| e.action = "tool.call".into()),
            Box::new(|e| e.model = None),
            Box::new(|e| e.tokens_in += 1),
            Box::new(|e| e.tokens_out += 1),
            Box::new(|e| e.cache_read_tokens += 1),
            Box::new(|e| e.cache_write_tokens += 1),
            Box::new(|e| e.duration_ms += 1),
            Box::new(|e| e.api_calls += 1),
            Box::new(|e| e.units += 1),
            Box::new(|e| e.cost_nanos = Some(1_001)),
            Box::new(|e| e.timestamp_us += 1),
            Box::new(|e| e.request_id.push('x')),
            Box::new(|e| e.source = Some("s".into())),
            Box::new(|e| e.metadata = Some("{}".into())),
            Box::new(|e| e.artifact_digest = Some("00".repeat(16))),
        ];
        for (i, change) in variants.iter().enumerate() {
            let mut e = base.clone();
            change(&mut e);
            assert_ne!(link(&GENESIS, &canonical(&e)), digest, "field {i}");
        }
        // The previous digest is covered too.
        assert_ne!(link(&digest, &payload), digest);
    }

    #[test]
    fn sha256_of_known_input() {
        // hashlib.sha256(bytes(32) + b"abc").hexdigest()
        assert_eq!(
            to_hex(&link(&GENESIS, b"abc")),
            "365aa7d8f7f9402c4b9434502b4cc89ddb09fe50d7cd95b493b834c62d5a5370"
        );
    }

    #[test]
    fn hex_round_trips() {
        let d = link(&GENESIS, b"x");
        assert_eq!(digest_from_hex(&to_hex(&d)), Some(d));
        assert_eq!(digest_from_hex(&to_hex(&d).to_uppercase()), Some(d));
        assert_eq!(digest_from_hex("zz"), None);
        assert_eq!(digest_from_hex(&"g".repeat(64)), None);
        assert_eq!(digest_from_slice(&[0; 31]), None);
    }
}
