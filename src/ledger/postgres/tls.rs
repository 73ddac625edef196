//! TLS to PostgreSQL as libpq reads it from a DSN: `sslmode` (`disable`,
//! `prefer` (the default, as libpq's), `require`, `verify-ca`,
//! `verify-full`) and `sslrootcert` (a PEM file of CA certificates, or
//! `system` for the operating system's trust store). tokio-postgres knows
//! neither `verify-*` nor `sslrootcert`, so both are taken out of the DSN
//! here and become the rustls verifier of every connection.
//!
//! As in libpq, `prefer` and `require` encrypt without checking the server's
//! certificate (unless `require` is given a `sslrootcert`: then, as libpq,
//! it checks the chain like `verify-ca`); `verify-ca` checks the chain and
//! `verify-full` the host name too.

use crate::error::{CoreError, CoreResult};
use crate::tls::{provider, roots_from_file, system_roots, take_query_params};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};
use std::path::PathBuf;
use std::sync::Arc;
use tokio_postgres::config::{Host, SslMode as WireMode};
use tokio_postgres::Config;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The DSN options read here rather than by tokio-postgres.
const TLS_OPTIONS: [&str; 2] = ["sslmode", "sslrootcert"];
const MODES: &str = "disable, prefer, require, verify-ca or verify-full";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> CoreResult<SslMode> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(CoreError::InvalidArgument(
                    "sslmode",
                    format!("must be {MODES}, got {other:?}"),
                ))
            }
        })
    }

    /// What tokio-postgres does on the wire: whether TLS may be skipped.
    fn wire(self) -> WireMode {
        match self {
            SslMode::Disable => WireMode::Disable,
            SslMode::Prefer => WireMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => WireMode::Require,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum RootCert {
    File(PathBuf),
    System,
}

/// The TLS options of a DSN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TlsOptions {
    mode: SslMode,
    root_cert: Option<RootCert>,
}

/// Takes `sslmode` and `sslrootcert` out of `dsn` (a `postgresql://` URL or
/// libpq `key=value` pairs): the DSN tokio-postgres is given, and the
/// options. A DSN this cannot read is returned whole, for tokio-postgres to
/// report.
pub(crate) fn split_dsn(dsn: &str) -> CoreResult<(String, TlsOptions)> {
    let is_url = dsn.starts_with("postgresql://") || dsn.starts_with("postgres://");
    let (rest, taken) = if is_url {
        take_query_params(dsn, &TLS_OPTIONS)
    } else {
        match keyword_pairs(dsn) {
            Some(pairs) => {
                let (taken, kept): (Vec<_>, Vec<_>) = pairs
                    .into_iter()
                    .partition(|(key, _)| TLS_OPTIONS.contains(&key.as_str()));
                let rest = kept
                    .iter()
                    .map(|(key, value)| format!("{key}='{}'", quoted(value)))
                    .collect::<Vec<_>>()
                    .join(" ");
                (rest, taken)
            }
            None => (dsn.to_string(), Vec::new()),
        }
    };
    let mut mode = SslMode::Prefer;
    let mut root_cert = None;
    for (key, value) in taken {
        if key == "sslmode" {
            mode = SslMode::parse(&value)?;
        } else if value == "system" {
            root_cert = Some(RootCert::System);
        } else if value.is_empty() {
            root_cert = None;
        } else {
            root_cert = Some(RootCert::File(PathBuf::from(value)));
        }
    }
    if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && root_cert.is_none() {
        return Err(CoreError::InvalidArgument(
            "sslrootcert",
            "sslmode=verify-ca and verify-full need the CA certificates to trust: \
             sslrootcert=<path of a PEM file> or sslrootcert=system"
                .into(),
        ));
    }
    Ok((rest, TlsOptions { mode, root_cert }))
}

/// Sets `config`'s wire mode for `options`, and returns the connector of
/// its every connection. As in libpq, a Unix socket never uses TLS (the
/// server offers none there).
pub(crate) fn apply(config: &mut Config, options: &TlsOptions) -> CoreResult<MakeRustlsConnect> {
    let hosts = config.get_hosts();
    let local = !hosts.is_empty() && hosts.iter().all(|h| matches!(h, Host::Unix(_)));
    config.ssl_mode(if local {
        WireMode::Disable
    } else {
        options.mode.wire()
    });
    connector(options)
}

fn connector(options: &TlsOptions) -> CoreResult<MakeRustlsConnect> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| CoreError::Store(format!("PostgreSQL TLS: {e}")))?;
    let roots = match (&options.root_cert, options.mode) {
        (_, SslMode::Disable | SslMode::Prefer) | (None, _) => None,
        (Some(RootCert::File(path)), _) => Some(roots_from_file(path, "sslrootcert")?),
        (Some(RootCert::System), _) => Some(system_roots("sslrootcert")?),
    };
    let chain = match roots {
        None => None,
        Some(roots) => Some(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| CoreError::InvalidArgument("sslrootcert", e.to_string()))?,
        ),
    };
    let config = match chain {
        Some(webpki) if options.mode == SslMode::VerifyFull => builder.with_webpki_verifier(webpki),
        chain => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(LaxVerifier { chain, provider })),
    }
    .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// The verifier of `prefer`, `require` and `verify-ca`: the certificate's
/// chain up to a trusted CA whatever host it names (`verify-ca`), or nothing
/// about it (`chain` is `None`). The handshake's signatures are checked
/// either way, so the session is encrypted to whoever holds the key.
/// webpki checks the name last, so a name error means the chain was good.
#[derive(Debug)]
struct LaxVerifier {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for LaxVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// libpq's `key=value` pairs: whitespace between pairs and around `=`, a
/// value bare or in single quotes, `\` escaping the next character. `None`
/// for text that is not such pairs.
fn keyword_pairs(dsn: &str) -> Option<Vec<(String, String)>> {
    let mut chars = dsn.chars().peekable();
    let mut pairs = Vec::new();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Some(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if key.is_empty() || chars.next() != Some('=') {
            return None;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next()? {
                    '\'' => break,
                    '\\' => value.push(chars.next()?),
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                value.push(if c == '\\' { chars.next()? } else { c });
            }
        }
        pairs.push((key, value));
    }
}

/// `value` for inside single quotes.
fn quoted(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\'', "\\'")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyword_dsns_lose_only_their_tls_options() {
        let (rest, options) = split_dsn(
            "host=h  port = 5 password='a b\\'c' sslmode=verify-full sslrootcert=/ca.pem",
        )
        .unwrap();
        assert_eq!(rest, "host='h' port='5' password='a b\\'c'");
        assert_eq!(options.mode, SslMode::VerifyFull);
        assert_eq!(options.root_cert, Some(RootCert::File("/ca.pem".into())));
    }

    #[test]
    fn url_dsns_lose_only_their_tls_options() {
        let (rest, options) =
            split_dsn("postgresql://u@h/db?sslmode=require&connect_timeout=3").unwrap();
        assert_eq!(rest, "postgresql://u@h/db?connect_timeout=3");
        assert_eq!((options.mode, options.root_cert), (SslMode::Require, None));
        let (_, options) =
            split_dsn("postgres://h/db?sslmode=verify-ca&sslrootcert=system").unwrap();
        assert_eq!(options.root_cert, Some(RootCert::System));
    }

    #[test]
    fn the_default_is_prefer_and_bad_modes_name_sslmode() {
        assert_eq!(split_dsn("host=h").unwrap().1.mode, SslMode::Prefer);
        let err = split_dsn("host=h sslmode=verify_full").unwrap_err();
        assert!(
            matches!(err, CoreError::InvalidArgument("sslmode", _)),
            "{err}"
        );
        let err = split_dsn("postgresql://h/db?sslmode=verify-full").unwrap_err();
        assert!(
            matches!(err, CoreError::InvalidArgument("sslrootcert", _)),
            "{err}"
        );
    }

    #[test]
    fn unreadable_keyword_text_is_left_whole() {
        assert_eq!(split_dsn("host='h").unwrap().0, "host='h");
        assert_eq!(split_dsn("=x").unwrap().0, "=x");
    }
}
