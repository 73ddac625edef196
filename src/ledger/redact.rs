//! Secrets never reach the ledger: values under sensitive keys, and values
//! that look like credentials, are replaced before an event is stored.
//!
//! Keys are compared normalised: `accessToken`, `Access-Token`, `access.token`
//! and `"access token"` are all `access_token`. A string that carries a
//! credential anywhere (every occurrence is examined) is replaced whole.

use serde_json::{Map, Value};
use std::borrow::Cow;

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
    normalized(key).into_owned()
}

/// `normalize_key`, borrowing a key that is already normal (`model`,
/// `max_tokens`: most keys), so checking it allocates nothing.
fn normalized(key: &str) -> Cow<'_, str> {
    let bytes = key.as_bytes();
    let plain = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.first().is_some_and(plain)
        && bytes.last().is_some_and(plain)
        && bytes.iter().all(|b| plain(b) || *b == b'_')
        && !key.contains("__")
    {
        return Cow::Borrowed(key);
    }
    let key = key.trim();
    Cow::Owned(if key.is_ascii() {
        // Keys are nearly always ASCII: read them in place.
        let bytes = key.as_bytes();
        normalize_chars(bytes.len(), |i| bytes[i] as char, key.len())
    } else {
        let chars: Vec<char> = key.chars().collect();
        normalize_chars(chars.len(), |i| chars[i], key.len())
    })
}

/// `normalize_key` over `len` characters, the `i`th given by `at(i)`.
fn normalize_chars(len: usize, at: impl Fn(usize) -> char, bytes: usize) -> String {
    let mut out = String::with_capacity(bytes + 4);
    for i in 0..len {
        let c = at(i);
        if !c.is_alphanumeric() {
            if !out.is_empty() && !out.ends_with('_') {
                out.push('_');
            }
            continue;
        }
        if c.is_uppercase() && i > 0 {
            let prev = at(i - 1);
            let next_lower = i + 1 < len && at(i + 1).is_lowercase();
            let boundary =
                prev.is_lowercase() || prev.is_ascii_digit() || (prev.is_uppercase() && next_lower);
            if boundary && !out.is_empty() && !out.ends_with('_') {
                out.push('_');
            }
        }
        if c.is_ascii() {
            out.push(c.to_ascii_lowercase());
        } else {
            out.extend(c.to_lowercase());
        }
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
    let mut words = normalized.rsplit('_');
    let last = words.next().unwrap_or_default();
    let Some(before_last) = words.next() else {
        return false;
    };
    SECRET_LAST_WORDS.contains(&last)
        || SECRET_LAST_PAIRS
            .iter()
            .any(|(a, b)| before_last == *a && last == *b)
}

pub fn is_sensitive_key(key: &str) -> bool {
    let normalized = normalized(key);
    is_secret_name(&normalized) || GROUP_KEYS.contains(&&*normalized)
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
        let name = normalized(name);
        if value_len > 0 && (SECRET_QUERY_NAMES.contains(&&*name) || is_secret_name(&name)) {
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
        if value.chars().count() >= 6 && !name.is_empty() && is_secret_name(&normalized(name)) {
            return true;
        }
    }
    false
}

/// The shortest text any check below can find a credential in (`?sig=x`):
/// shorter ones, the bulk of metadata values, are passed without a scan.
const SHORTEST_SECRET: usize = 6;

/// The shortest word `looks_like_credential` takes for one (a JWT of three
/// four-character parts).
const SHORTEST_CREDENTIAL_WORD: usize = 14;

/// False only when no check of `looks_secret` can match: all but the
/// credential-shaped word need a `:`, `=`, space or tab, and that word needs
/// a run of `SHORTEST_CREDENTIAL_WORD` token characters. One pass over the
/// bytes settles most metadata values (routes, model names, ids).
fn may_hold_secret(text: &str) -> bool {
    let mut run = 0;
    for &b in text.as_bytes() {
        if matches!(b, b':' | b'=' | b' ' | b'\t') {
            return true;
        }
        if is_token_char(b as char) {
            run += 1;
            if run >= SHORTEST_CREDENTIAL_WORD {
                return true;
            }
        } else {
            run = 0;
        }
    }
    false
}

/// Does this text carry a credential anywhere?
pub fn looks_secret(text: &str) -> bool {
    text.len() >= SHORTEST_SECRET && may_hold_secret(text) && scan_for_secret(text)
}

/// Every check, on a text `may_hold_secret` let through.
fn scan_for_secret(text: &str) -> bool {
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
        let normalized = normalized(key);
        let group = GROUP_KEYS.contains(&&*normalized);
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

    /// Texts rich in what the checks look for: separators, prefixes, words.
    fn secretish_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let piece = prop_oneof![
            Just(":".to_string()),
            Just("=".to_string()),
            Just(" ".to_string()),
            Just("\t".to_string()),
            Just("://".to_string()),
            Just("@".to_string()),
            Just("?".to_string()),
            Just("&".to_string()),
            Just(".".to_string()),
            Just("Bearer".to_string()),
            Just("token".to_string()),
            Just("sk-".to_string()),
            Just("sk_live_".to_string()),
            Just("xoxb-".to_string()),
            Just("eyJ".to_string()),
            Just("AKIA".to_string()),
            Just("-----BEGIN".to_string()),
            Just("PRIVATE KEY".to_string()),
            Just("password".to_string()),
            Just("é".to_string()),
            "[A-Za-z0-9_/+~-]{1,24}",
        ];
        proptest::collection::vec(piece, 0..8).prop_map(|parts| parts.concat())
    }

    proptest::proptest! {
        #[test]
        fn the_one_pass_filter_never_hides_a_secret(text in secretish_text()) {
            if scan_for_secret(&text) {
                proptest::prop_assert!(may_hold_secret(&text), "{text:?}");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn a_key_borrowed_as_normal_is_normal(key in "[A-Za-z0-9_ .é-]{0,12}") {
            let chars: Vec<char> = key.trim().chars().collect();
            let full = normalize_chars(chars.len(), |i| chars[i], key.len());
            proptest::prop_assert_eq!(normalized(&key), full);
        }
    }

    #[test]
    fn the_shortest_credential_words_pass_the_filter() {
        for word in ["eyJa.bbbb.cccc", "xoxb-123456789a", "sk_live_abcdefgh"] {
            assert!(looks_secret(word), "{word}");
            assert!(!looks_secret(&word[..word.len() - 1]), "{word}");
        }
        assert_eq!("eyJa.bbbb.cccc".len(), SHORTEST_CREDENTIAL_WORD);
        // Short runs behind each separator the filter looks for.
        for text in [
            "Bearer abcdefgh",
            "Bearer\tabcdefgh",
            "Bearer:abcdefgh",
            "x?sig=1",
            "pwd: secret1",
            "a://u:p@h",
        ] {
            assert!(looks_secret(text), "{text}");
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
