//! `UsageEvent`: one billable action, validated on construction.

use super::redact::redact;
use crate::error::{CoreError, CoreResult};
use crate::usage::MAX_COUNT;
use serde::{Deserialize, Serialize};

pub const MAX_ID_CHARS: usize = 256;
/// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z: the times every
/// reader (Python's `datetime`, ISO 8601 text) can represent.
pub const MIN_TIMESTAMP_US: i64 = -62_135_596_800_000_000;
pub const MAX_TIMESTAMP_US: i64 = 253_402_300_799_999_999;
pub const DEFAULT_ACTION: &str = "llm.request";
pub const DEFAULT_NAMESPACE: &str = "default";

/// One billable action. Timestamps are integer UTC microseconds; cost is
/// integer nano-USD, or `None` when unknown (never a silent zero).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEvent {
    pub agent_id: String,
    pub consumer_id: String,
    pub task_id: Option<String>,
    pub namespace: String,
    pub action: String,
    pub model: Option<String>,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub duration_ms: u64,
    pub api_calls: u64,
    pub units: u64,
    pub cost_nanos: Option<u64>,
    pub timestamp_us: i64,
    pub request_id: String,
    pub source: Option<String>,
    /// Canonical JSON (sorted keys) of the metadata object, already redacted.
    pub metadata: Option<String>,
    /// Lowercase hex digest of what the action produced (a document, an
    /// answer…), covered by the ledger's hash chain.
    #[serde(default)]
    pub artifact_digest: Option<String>,
}

pub(crate) fn check_id(field: &'static str, value: &str) -> CoreResult<()> {
    if value.is_empty() {
        return Err(CoreError::InvalidArgument(
            field,
            "must not be empty".into(),
        ));
    }
    let chars = value.chars().count();
    if chars > MAX_ID_CHARS {
        return Err(CoreError::InvalidArgument(
            field,
            format!("must be at most {MAX_ID_CHARS} characters, got {chars}"),
        ));
    }
    if value.contains('\0') {
        return Err(CoreError::InvalidArgument(
            field,
            "must not contain NUL bytes".into(),
        ));
    }
    Ok(())
}

fn check_optional_id(field: &'static str, value: &Option<String>) -> CoreResult<()> {
    value.as_deref().map_or(Ok(()), |v| check_id(field, v))
}

/// Lowercase hex, an even number of 32 to 128 digits (128- to 512-bit digests).
fn check_artifact_digest(value: &Option<String>) -> CoreResult<()> {
    let Some(hex) = value.as_deref() else {
        return Ok(());
    };
    let ok = (32..=128).contains(&hex.len())
        && hex.len() % 2 == 0
        && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if ok {
        Ok(())
    } else {
        Err(CoreError::InvalidArgument(
            "artifact_digest",
            format!("must be lowercase hex with an even number of 32 to 128 digits, got {hex:?}"),
        ))
    }
}

/// `[a-z][a-z0-9_.:-]{0,63}`
pub fn is_action(action: &str) -> bool {
    let mut chars = action.chars();
    matches!(chars.next(), Some('a'..='z'))
        && action.len() <= 64
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '.' | ':' | '-'))
}

/// An optional field's bytes for the fingerprint; `None` is a value no text can be.
fn opt_bytes(v: &Option<String>) -> &[u8] {
    v.as_deref().map_or(b"\0none", str::as_bytes)
}

/// A new time-ordered request id (UUIDv7).
pub fn new_request_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn contains_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(contains_nul),
        serde_json::Value::Object(map) => {
            map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v))
        }
        _ => false,
    }
}

/// Parses metadata JSON, checks it is an object, redacts secrets and
/// returns it canonical (sorted keys, compact).
pub fn canonical_metadata(json: &str) -> CoreResult<String> {
    let value: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| CoreError::InvalidArgument("metadata", format!("is not valid JSON: {e}")))?;
    canonical_metadata_value(value)
}

/// `canonical_metadata` of a value already parsed.
pub fn canonical_metadata_value(mut value: serde_json::Value) -> CoreResult<String> {
    if !value.is_object() {
        return Err(CoreError::InvalidArgument(
            "metadata",
            "must be a JSON object (a dict)".into(),
        ));
    }
    if contains_nul(&value) {
        return Err(CoreError::InvalidArgument(
            "metadata",
            "must not contain NUL characters".into(),
        ));
    }
    redact(&mut value);
    Ok(value.to_string())
}

impl UsageEvent {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> CoreResult<()> {
        check_id("agent_id", &self.agent_id)?;
        check_id("consumer_id", &self.consumer_id)?;
        check_id("namespace", &self.namespace)?;
        check_id("request_id", &self.request_id)?;
        check_optional_id("task_id", &self.task_id)?;
        check_optional_id("model", &self.model)?;
        check_optional_id("source", &self.source)?;
        check_artifact_digest(&self.artifact_digest)?;
        if !(MIN_TIMESTAMP_US..=MAX_TIMESTAMP_US).contains(&self.timestamp_us) {
            return Err(CoreError::InvalidArgument(
                "timestamp",
                "must fall between the years 1 and 9999 in UTC".into(),
            ));
        }
        if !is_action(&self.action) {
            return Err(CoreError::InvalidArgument(
                "action",
                format!(
                    "must match [a-z][a-z0-9_.:-]{{0,63}} (e.g. \"llm.request\"), got {:?}",
                    self.action
                ),
            ));
        }
        for (field, value) in [
            ("tokens_in", self.tokens_in),
            ("tokens_out", self.tokens_out),
            ("cache_read_tokens", self.cache_read_tokens),
            ("cache_write_tokens", self.cache_write_tokens),
            ("duration_ms", self.duration_ms),
            ("api_calls", self.api_calls),
            ("units", self.units),
            ("cost", self.cost_nanos.unwrap_or(0)),
        ] {
            if value > MAX_COUNT {
                return Err(CoreError::InvalidArgument(
                    field,
                    "must be at most 2**63 - 1".into(),
                ));
            }
        }
        Ok(())
    }

    pub fn total_tokens(&self) -> u64 {
        self.tokens_in.saturating_add(self.tokens_out)
    }

    /// A stable 64-bit digest of everything but the identity
    /// `(namespace, request_id)`: equal content, equal fingerprint, across
    /// processes and versions (FNV-1a over a fixed encoding).
    pub fn fingerprint(&self) -> i64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for b in bytes.iter().chain(std::iter::once(&0xff)) {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        eat(self.agent_id.as_bytes());
        eat(self.consumer_id.as_bytes());
        eat(opt_bytes(&self.task_id));
        eat(self.action.as_bytes());
        eat(opt_bytes(&self.model));
        for n in [
            self.tokens_in,
            self.tokens_out,
            self.cache_read_tokens,
            self.cache_write_tokens,
            self.duration_ms,
            self.api_calls,
            self.units,
            self.cost_nanos.map_or(u64::MAX, |c| c),
            self.timestamp_us as u64,
        ] {
            eat(&n.to_le_bytes());
        }
        eat(opt_bytes(&self.source));
        eat(opt_bytes(&self.metadata));
        // Absent, it adds nothing: fingerprints of events without one are unchanged.
        if let Some(digest) = &self.artifact_digest {
            eat(digest.as_bytes());
        }
        h as i64
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn event(agent: &str, ts_us: i64, tokens_in: u64) -> UsageEvent {
        UsageEvent {
            agent_id: agent.into(),
            consumer_id: "consumer".into(),
            task_id: None,
            namespace: DEFAULT_NAMESPACE.into(),
            action: DEFAULT_ACTION.into(),
            model: Some("gpt-4o".into()),
            tokens_in,
            tokens_out: 10,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
            duration_ms: 5,
            api_calls: 1,
            units: 0,
            cost_nanos: Some(1_000),
            timestamp_us: ts_us,
            request_id: new_request_id(),
            source: None,
            metadata: None,
            artifact_digest: None,
        }
    }

    #[test]
    fn validation_names_the_field() {
        let mut e = event("a", 0, 1);
        assert!(e.validate().is_ok());
        e.agent_id = String::new();
        assert!(matches!(
            e.validate(),
            Err(CoreError::InvalidArgument("agent_id", _))
        ));
        let mut e = event("a", 0, 1);
        e.consumer_id = "x".repeat(257);
        assert!(matches!(
            e.validate(),
            Err(CoreError::InvalidArgument("consumer_id", _))
        ));
        let mut e = event("a", 0, 1);
        e.action = "LLM".into();
        assert!(matches!(
            e.validate(),
            Err(CoreError::InvalidArgument("action", _))
        ));
        let mut e = event("a", 0, 1);
        e.task_id = Some("a\0b".into());
        assert!(matches!(
            e.validate(),
            Err(CoreError::InvalidArgument("task_id", _))
        ));
    }

    #[test]
    fn artifact_digest_is_lowercase_even_hex() {
        for ok in ["ab".repeat(16), "0f".repeat(32), "a".repeat(128)] {
            let mut e = event("a", 0, 1);
            e.artifact_digest = Some(ok.clone());
            assert!(e.validate().is_ok(), "{ok}");
        }
        for bad in [
            "ab".repeat(15),
            "a".repeat(33),
            "AB".repeat(16),
            "g".repeat(32),
            "a".repeat(130),
        ] {
            let mut e = event("a", 0, 1);
            e.artifact_digest = Some(bad.clone());
            assert!(
                matches!(
                    e.validate(),
                    Err(CoreError::InvalidArgument("artifact_digest", _))
                ),
                "{bad}"
            );
        }
        let a = event("a", 0, 1);
        let mut b = a.clone();
        b.artifact_digest = Some("ab".repeat(16));
        assert_ne!(a.fingerprint(), b.fingerprint());
    }

    #[test]
    fn actions_follow_the_identifier_pattern() {
        for ok in ["llm.request", "tool:search", "a", "memory.recall-v2"] {
            assert!(is_action(ok), "{ok}");
        }
        for bad in ["", "1abc", "Tool", "a b", &"a".repeat(65)] {
            assert!(!is_action(bad), "{bad}");
        }
    }

    #[test]
    fn fingerprint_ignores_identity_and_sees_content() {
        let a = event("a", 5, 1);
        let mut b = a.clone();
        b.request_id = "other".into();
        b.namespace = "other".into();
        assert_eq!(a.fingerprint(), b.fingerprint());
        b.tokens_out += 1;
        assert_ne!(a.fingerprint(), b.fingerprint());
        let mut c = a.clone();
        c.model = None;
        assert_ne!(a.fingerprint(), c.fingerprint());
    }

    #[test]
    fn metadata_is_canonical_and_redacted() {
        let m = canonical_metadata(r#"{"b": 1, "a": {"api_key": "k"}}"#).unwrap();
        assert_eq!(m, r#"{"a":{"api_key":"[REDACTED]"},"b":1}"#);
        assert!(canonical_metadata("[1]").is_err());
        assert!(canonical_metadata("{").is_err());
    }
}
