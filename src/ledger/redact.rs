//! Secrets never reach the ledger: values under sensitive keys, and values
//! that look like credentials, are replaced before an event is stored.

use serde_json::Value;

pub const REDACTED: &str = "[REDACTED]";

/// Keys whose values are always redacted (compared lower-case, `-` as `_`).
const SENSITIVE_KEYS: &[&str] = &[
    "authorization",
    "proxy_authorization",
    "api_key",
    "apikey",
    "x_api_key",
    "token",
    "secret",
    "password",
    "passwd",
    "cookie",
    "set_cookie",
    "private_key",
    "credentials",
    "session_id",
];

/// Suffixes that mark a key as sensitive (`access_token`, `client_secret`…).
const SENSITIVE_SUFFIXES: &[&str] = &[
    "_token",
    "_secret",
    "_password",
    "_api_key",
    "_apikey",
    "_key_id",
];

pub fn is_sensitive_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase().replace('-', "_");
    SENSITIVE_KEYS.contains(&key.as_str()) || SENSITIVE_SUFFIXES.iter().any(|s| key.ends_with(s))
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | '+')
}

/// Prefixes of provider keys and tokens, with the minimum length of a real one.
const KEY_PREFIXES: &[(&str, usize)] = &[
    ("sk-", 20),
    ("sk_live_", 16),
    ("sk_test_", 16),
    ("rk_live_", 16),
    ("pk_live_", 16),
    ("ghp_", 20),
    ("gho_", 20),
    ("ghu_", 20),
    ("ghs_", 20),
    ("ghr_", 20),
    ("github_pat_", 20),
    ("glpat-", 20),
    ("xoxb-", 15),
    ("xoxp-", 15),
    ("xoxa-", 15),
    ("xoxr-", 15),
    ("xoxs-", 15),
    ("AIza", 39),
    ("hf_", 30),
];

fn looks_like_credential(word: &str) -> bool {
    if KEY_PREFIXES
        .iter()
        .any(|(prefix, min)| word.starts_with(prefix) && word.len() >= *min)
    {
        return true;
    }
    // AWS access key ids.
    if (word.starts_with("AKIA") || word.starts_with("ASIA"))
        && word.len() == 20
        && word
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
    {
        return true;
    }
    // JSON Web Tokens: three base64url parts, the first a JSON object.
    let parts: Vec<&str> = word.split('.').collect();
    parts.len() == 3 && word.starts_with("eyJ") && parts.iter().all(|p| p.len() >= 4)
}

/// Does this text carry a bearer/basic credential or a provider key anywhere?
pub fn looks_secret(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    for scheme in ["bearer ", "basic "] {
        if let Some(pos) = lower.find(scheme) {
            let rest = text[pos + scheme.len()..].trim_start();
            if rest.chars().take_while(|c| is_token_char(*c)).count() >= 8 {
                return true;
            }
        }
    }
    text.split(|c: char| !is_token_char(c))
        .any(looks_like_credential)
}

/// Redacts in place; returns how many values were replaced.
pub fn redact(value: &mut Value) -> usize {
    match value {
        Value::Object(map) => {
            let mut n = 0;
            for (key, v) in map.iter_mut() {
                if is_sensitive_key(key) && !v.is_null() {
                    *v = Value::String(REDACTED.into());
                    n += 1;
                } else {
                    n += redact(v);
                }
            }
            n
        }
        Value::Array(items) => items.iter_mut().map(redact).sum(),
        Value::String(s) if looks_secret(s) => {
            *s = REDACTED.into();
            1
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sensitive_keys_are_redacted_at_any_depth_and_case() {
        let mut v = json!({
            "Authorization": "anything",
            "nested": {"X-API-Key": "abc", "list": [{"access_token": "t"}, {"Password": 123}]},
            "max_tokens": 100,
            "model": "gpt-4o",
            "cookie": null,
        });
        assert_eq!(redact(&mut v), 4);
        assert_eq!(v["Authorization"], REDACTED);
        assert_eq!(v["nested"]["X-API-Key"], REDACTED);
        assert_eq!(v["nested"]["list"][0]["access_token"], REDACTED);
        assert_eq!(v["nested"]["list"][1]["Password"], REDACTED);
        assert_eq!(v["max_tokens"], 100);
        assert_eq!(v["model"], "gpt-4o");
    }

    #[test]
    fn values_that_look_like_credentials_are_redacted() {
        for secret in [
            "Bearer abcdefghijklmnop",
            "header was 'Authorization: Bearer eyJhbGciOi.eyJzdWIiOi.sig12345'",
            "sk-proj-abcdefghijklmnopqrstuvwxyz",
            "key=sk-ant-api03-abcdefghijklmnopqrstu",
            "AKIAABCDEFGHIJKLMNOP",
            "ghp_abcdefghijklmnopqrstuvwxyz0123",
            "xoxb-1234567890-abcdef",
        ] {
            assert!(looks_secret(secret), "{secret}");
        }
        for benign in [
            "hello world",
            "sk-short",
            "task-123",
            "Bearer",
            "gpt-4o-mini",
        ] {
            assert!(!looks_secret(benign), "{benign}");
        }
    }
}
