//! What TLS to PostgreSQL and to Redis share: the one crypto provider
//! (rustls' `ring`, which builds with a C compiler alone), the CA
//! certificates a connection trusts, and the TLS parameters carried in a
//! connection URL's query.

use crate::error::{CoreError, CoreResult};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;
use std::path::Path;
use std::sync::Arc;

/// The crypto provider of every TLS connection. Also made the process
/// default, which the redis crate's TLS set-up reads.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Fails only when a provider is installed already, which then serves.
    let _ = CryptoProvider::install_default(provider.as_ref().clone());
    provider
}

/// The PEM file of CA certificates at `path`, read and checked: a file
/// with no certificate is an error, not a store that trusts nothing.
/// `argument` names the option that gave the path in errors.
pub(crate) fn ca_file(path: &Path, argument: &'static str) -> CoreResult<Vec<u8>> {
    certificates_in(path, argument).map(|(pem, _)| pem)
}

fn certificates_in(
    path: &Path,
    argument: &'static str,
) -> CoreResult<(Vec<u8>, Vec<CertificateDer<'static>>)> {
    let bad = |what: String| CoreError::InvalidArgument(argument, what);
    let pem =
        std::fs::read(path).map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            bad(format!(
                "{} is not a PEM certificate file: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(bad(format!("{} holds no PEM certificate", path.display())));
    }
    Ok((pem, certs))
}

/// The CA certificates in the PEM file at `path`, as a trust store.
pub(crate) fn roots_from_file(path: &Path, argument: &'static str) -> CoreResult<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in certificates_in(path, argument)?.1 {
        roots.add(cert).map_err(|e| {
            CoreError::InvalidArgument(argument, format!("{}: {e}", path.display()))
        })?;
    }
    Ok(roots)
}

/// The operating system's trust store.
pub(crate) fn system_roots(argument: &'static str) -> CoreResult<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if roots.is_empty() {
        return Err(CoreError::InvalidArgument(
            argument,
            "the system trust store has no certificate".into(),
        ));
    }
    Ok(roots)
}

/// Splits the query parameters named in `names` out of `url`: returns the
/// URL without them and their percent-decoded `(name, value)` pairs, in
/// order. The query starts at the first `?` after the credentials (a
/// password may hold a literal `?`) and ends at a `#`.
pub(crate) fn take_query_params(url: &str, names: &[&str]) -> (String, Vec<(String, String)>) {
    let after_credentials = url.rfind('@').or_else(|| url.find("://")).unwrap_or(0);
    let Some(start) = url[after_credentials..]
        .find('?')
        .map(|i| after_credentials + i)
    else {
        return (url.to_string(), Vec::new());
    };
    let end = url[start..].find('#').map_or(url.len(), |i| start + i);
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    for pair in url[start + 1..end].split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(key);
        if names.contains(&key.as_str()) {
            taken.push((key, percent_decode(value)));
        } else if !pair.is_empty() {
            kept.push(pair);
        }
    }
    let mut rest = url[..start].to_string();
    if !kept.is_empty() {
        rest.push('?');
        rest.push_str(&kept.join("&"));
    }
    rest.push_str(&url[end..]);
    (rest, taken)
}

/// `%XX` escapes decoded (a `+` stays a `+`, as libpq reads it); a
/// malformed escape is kept as it stands.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |at: usize| (bytes.get(at).copied()).and_then(|b| (b as char).to_digit(16));
        match bytes[i] {
            b'%' => {
                if let (Some(high), Some(low)) = (hex(i + 1), hex(i + 2)) {
                    out.push((high * 16 + low) as u8);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_taken_out_and_the_rest_kept() {
        let (rest, taken) = take_query_params(
            "postgresql://u:p?w@h:5/db?sslmode=verify-full&application_name=x&sslrootcert=%2Ftmp%2Fca.pem",
            &["sslmode", "sslrootcert"],
        );
        assert_eq!(rest, "postgresql://u:p?w@h:5/db?application_name=x");
        assert_eq!(
            taken,
            vec![
                ("sslmode".to_string(), "verify-full".to_string()),
                ("sslrootcert".to_string(), "/tmp/ca.pem".to_string())
            ]
        );
        let (rest, taken) =
            take_query_params("rediss://h:1/0?ssl_ca_certs=/a#insecure", &["ssl_ca_certs"]);
        assert_eq!(rest, "rediss://h:1/0#insecure");
        assert_eq!(taken, vec![("ssl_ca_certs".to_string(), "/a".to_string())]);
        let (rest, taken) = take_query_params("redis://h:1/0", &["ssl_ca_certs"]);
        assert_eq!((rest.as_str(), taken.len()), ("redis://h:1/0", 0));
    }

    #[test]
    fn percent_escapes_decode_and_bad_ones_stay() {
        assert_eq!(percent_decode("a%20b+c%2"), "a b+c%2");
    }
}
