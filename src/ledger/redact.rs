//! Secrets never reach the ledger: values under sensitive keys, and values
//! that look like credentials, are replaced before an event is stored.
//!
//! Keys are compared normalised: `accessToken`, `Access-Token`, `access.token`
//! and `"access token"` are all `access_token`. A string that carries a
//! credential anywhere (every occurrence is examined) is replaced whole.

use serde_json::{Map, Value};

pub const REDACTED: &str = "[REDACTED]";

/// Normalised keys whose values are always redacted, whole.
const SECRET_KEYS: &[&str] = &[
    "authorization",
    "proxy_authorization",
    "www_authenticate",
    "api_key",
    "apikey",
    "x_api_key",
    "token",
    "secret",
    "password",
    "passwd",
    "pwd",
    "passphrase",
    "cookie",
    "cookies",
    "set_cookie",
    "private_key",
    "privatekey",
    "credentials",
    "credential",
    "session_id",
    "sessionid",
    "jwt",
    "bearer",
    "signature",
    "sig",
    "dsn",
    "connection_string",
];

/// Keys that often name a group of fields: a plain value under them is
/// redacted, an object or list is examined key by key.
const GROUP_KEYS: &[&str] = &["auth", "session"];

/// Last words that mark a key as sensitive (`refresh_token`, `client_secret`…).
const SECRET_LAST_WORDS: &[&str] = &[
    "token",
    "secret",
    "password",
    "passwd",
    "passphrase",
    "cookie",
    "jwt",
    "credential",
    "credentials",
    "apikey",
    "signature",
];

/// Last two words that mark a key as sensitive (`aws_secret_access_key`…).
const SECRET_LAST_PAIRS: &[(&str, &str)] = &[
    ("api", "key"),
    ("private", "key"),
    ("secret", "key"),
    ("access", "key"),
    ("signing", "key"),
    ("encryption", "key"),
    ("key", "id"),
    ("session", "id"),
];

/// Query-string names whose values are credentials.
const SECRET_QUERY_NAMES: &[&str] = &[
    "access_token",
    "refresh_token",
    "id_token",
    "api_key",
    "apikey",
    "key",
    "token",
    "sig",
    "signature",
    "password",
    "secret",
    "client_secret",
    "auth",
    "x_amz_signature",
    "x_amz_credential",
    "x_amz_security_token",
];

/// `accessToken`, `Access-Token`, `access.token`, `access token` → `access_token`.
pub fn normalize_key(key: &str) -> String {
    let chars: Vec<char> = key.trim().chars().collect();
    let mut out = String::with_capacity(key.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if !c.is_alphanumeric() {
            if !out.is_empty() && !out.ends_with('_') {
                out.push('_');
            }
            continue;
        }
        if c.is_uppercase() && i > 0 {
            let prev = chars[i - 1];
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            let boundary =
                prev.is_lowercase() || prev.is_ascii_digit() || (prev.is_uppercase() && next_lower);
            if boundary && !out.is_empty() && !out.ends_with('_') {
                out.push('_');
            }
        }
        out.extend(c.to_lowercase());
    }
    while out.ends_with('_') {
        out.pop();
    }
    out
}

fn is_secret_name(normalized: &str) -> bool {
    if SECRET_KEYS.contains(&normalized) {
        return true;
    }
    let words: Vec<&str> = normalized.split('_').collect();
    let last = words[words.len() - 1];
    if words.len() > 1 && SECRET_LAST_WORDS.contains(&last) {
        return true;
    }
    words.len() > 1
        && SECRET_LAST_PAIRS
            .iter()
            .any(|(a, b)| words[words.len() - 2] == *a && last == *b)
}

pub fn is_sensitive_key(key: &str) -> bool {
    let normalized = normalize_key(key);
    is_secret_name(&normalized) || GROUP_KEYS.contains(&normalized.as_str())
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | '+' | '~')
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
    ("AIza", 39),
    ("hf_", 30),
    ("npm_", 30),
    ("xai-", 30),
    ("gsk_", 30),
];

fn looks_like_credential(word: &str) -> bool {
    let word = word.trim_matches(|c| matches!(c, '.' | '=' | '/' | '+' | '~'));
    if KEY_PREFIXES
        .iter()
        .any(|(prefix, min)| word.starts_with(prefix) && word.len() >= *min)
    {
        return true;
    }
    // Slack tokens: xoxb-, xoxp-, xoxa-, xoxr-, xoxs-, xoxe-…
    let bytes = word.as_bytes();
    if word.len() >= 15
        && word.starts_with("xox")
        && bytes[3].is_ascii_alphabetic()
        && bytes[4] == b'-'
    {
        return true;
    }
    // AWS access key ids.
    if ["AKIA", "ASIA", "AGPA", "AIDA", "AROA"]
        .iter()
        .any(|p| word.starts_with(p))
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

/// Every occurrence of an authorization scheme followed by a credential
/// (`Bearer <token>`, `Basic\t<b64>`, `Token <key>`).
fn has_scheme_credential(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    for (scheme, min) in [("bearer", 8), ("basic", 8), ("digest", 8), ("token", 16)] {
        let mut from = 0;
        while let Some(pos) = lower[from..].find(scheme) {
            let start = from + pos;
            from = start + scheme.len();
            let word_start = start == 0 || !lower[..start].ends_with(|c: char| c.is_alphanumeric());
            let rest = &text[from..];
            let after = rest.trim_start_matches([' ', '\t', ':', '=']);
            let separated = after.len() < rest.len() && rest.starts_with([' ', '\t', ':', '=']);
            if word_start
                && separated
                && after.chars().take_while(|c| is_token_char(*c)).count() >= min
            {
                return true;
            }
        }
    }
    false
}

/// `scheme://user:password@host` anywhere in the text.
fn has_url_userinfo(text: &str) -> bool {
    let mut from = 0;
    while let Some(pos) = text[from..].find("://") {
        let start = from + pos + 3;
        from = start;
        let authority: &str = text[start..]
            .split(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
            .next()
            .unwrap_or("");
        if let Some((userinfo, _host)) = authority.rsplit_once('@') {
            if userinfo.contains(':') || userinfo.len() >= 16 {
                return true;
            }
        }
    }
    false
}

/// `?access_token=…`, `&sig=…`, `api-key=…` (after `?`, `&` or `;`).
fn has_secret_query_value(text: &str) -> bool {
    for (i, c) in text.char_indices() {
        if !matches!(c, '?' | '&' | ';') {
            continue;
        }
        let rest = &text[i + 1..];
        let Some(eq) = rest.find('=') else { continue };
        let name = &rest[..eq];
        if name.is_empty() || name.len() > 40 || name.contains(|c: char| c.is_whitespace()) {
            continue;
        }
        let value_len = rest[eq + 1..]
            .chars()
            .take_while(|c| !matches!(c, '&' | '#' | ';') && !c.is_whitespace())
            .count();
        let name = normalize_key(name);
        if value_len > 0 && (SECRET_QUERY_NAMES.contains(&name.as_str()) || is_secret_name(&name)) {
            return true;
        }
    }
    false
}

/// `password=…` / `api_key: …` inside free text.
fn has_named_secret(text: &str) -> bool {
    let mut words = text
        .split(|c: char| c.is_whitespace() || matches!(c, ',' | '{' | '}' | '"' | '\'' | '(' | ')'))
        .peekable();
    while let Some(word) = words.next() {
        let (name, value) = match word.split_once(['=', ':']) {
            Some((name, value)) if !value.is_empty() => (name, value.to_string()),
            Some((name, _)) => (
                name,
                words.peek().map(|w| w.to_string()).unwrap_or_default(),
            ),
            None => continue,
        };
        if value.chars().count() >= 6 && !name.is_empty() && is_secret_name(&normalize_key(name)) {
            return true;
        }
    }
    false
}

/// The shortest text any check below can find a credential in (`?sig=x`):
/// shorter ones, the bulk of metadata values, are passed without a scan.
const SHORTEST_SECRET: usize = 6;

/// Does this text carry a credential anywhere?
pub fn looks_secret(text: &str) -> bool {
    if text.len() < SHORTEST_SECRET {
        return false;
    }
    (text.contains("-----BEGIN") && text.contains("PRIVATE KEY"))
        || has_scheme_credential(text)
        || has_url_userinfo(text)
        || has_secret_query_value(text)
        || has_named_secret(text)
        || text
            .split(|c: char| !is_token_char(c))
            .any(looks_like_credential)
}

/// `["Authorization", "Bearer …"]`: a header as a `[name, value]` pair.
fn is_header_pair(items: &[Value]) -> bool {
    matches!(items, [Value::String(name), value] if !value.is_null() && is_sensitive_key(name))
}

/// Redacts in place; returns how many values were replaced.
pub fn redact(value: &mut Value) -> usize {
    match value {
        Value::Object(map) => redact_object(map),
        Value::Array(items) if is_header_pair(items) => {
            items[1] = Value::String(REDACTED.into());
            1
        }
        Value::Array(items) => items.iter_mut().map(redact).sum(),
        Value::String(s) if looks_secret(s) => {
            *s = REDACTED.into();
            1
        }
        _ => 0,
    }
}

fn redact_object(map: &mut Map<String, Value>) -> usize {
    let mut n = 0;
    // A key that is itself a credential is renamed (and its value dropped).
    if map.keys().any(|k| looks_secret(k)) {
        let entries = std::mem::take(map);
        for (key, value) in entries {
            if looks_secret(&key) {
                let mut name = REDACTED.to_string();
                let mut i = 1;
                while map.contains_key(&name) {
                    i += 1;
                    name = format!("{REDACTED}#{i}");
                }
                map.insert(name, Value::String(REDACTED.into()));
                n += 1;
            } else {
                map.insert(key, value);
            }
        }
    }
    for (key, v) in map.iter_mut() {
        if v.is_null() {
            continue;
        }
        let normalized = normalize_key(key);
        let group = GROUP_KEYS.contains(&normalized.as_str());
        if is_secret_name(&normalized) || (group && !(v.is_object() || v.is_array())) {
            if *v != Value::String(REDACTED.into()) {
                *v = Value::String(REDACTED.into());
                n += 1;
            }
        } else {
            n += redact(v);
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_shortest_secrets_are_found_and_shorter_texts_skip_the_scan() {
        for shortest in ["?sig=x", "&pwd=1", ";jwt=a"] {
            assert_eq!(shortest.len(), SHORTEST_SECRET);
            assert!(looks_secret(shortest), "{shortest}");
            for cut in 0..shortest.len() {
                assert!(!looks_secret(&shortest[..cut]));
            }
        }
    }

    #[test]
    fn keys_are_normalised_before_matching() {
        for (key, normal) in [
            ("accessToken", "access_token"),
            ("X-API-Key", "x_api_key"),
            ("APIKey", "api_key"),
            ("api.key", "api_key"),
            ("api key", "api_key"),
            ("aws_secret_access_key", "aws_secret_access_key"),
            ("clientSecret", "client_secret"),
        ] {
            assert_eq!(normalize_key(key), normal);
            assert!(is_sensitive_key(key), "{key}");
        }
        for benign in [
            "max_tokens",
            "tokenizer",
            "model",
            "total_tokens",
            "keyboard",
        ] {
            assert!(!is_sensitive_key(benign), "{benign}");
        }
    }

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
            "Bearer x then Bearer abcdefghijklmnop",
            "Bearer\tabcdefghijklmnop",
            "https://user:pw@example.com/x",
            "https://example.com/cb?state=1&access_token=abc",
            "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----",
        ] {
            assert!(looks_secret(secret), "{secret}");
        }
        for benign in [
            "hello world",
            "sk-short",
            "task-123",
            "Bearer",
            "gpt-4o-mini",
            "https://example.com/a?page=2",
            "used 1024 tokens",
        ] {
            assert!(!looks_secret(benign), "{benign}");
        }
    }
}
