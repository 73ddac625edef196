//! The client of a Redis URL, TLS included: `rediss://` verifies the server
//! against the operating system's trust store, or against the CA
//! certificates of the PEM file named by the URL's `ssl_ca_certs` query
//! parameter (redis-py's name); the redis crate's `#insecure` fragment skips
//! verification, and only a URL that says so gets that.

use crate::error::{CoreError, CoreResult};
use crate::tls::{ca_file, provider, take_query_params};
use redis::{Client, TlsCertificates};
use std::path::Path;

const CA_PARAMETER: &str = "ssl_ca_certs";

/// The client of `url`; `argument` names the URL in errors, which show it
/// as `shown` (without its password).
pub(crate) fn client(url: &str, shown: &str, argument: &'static str) -> CoreResult<Client> {
    let bad = |what: String| CoreError::InvalidArgument(argument, format!("{shown}: {what}"));
    let (url, taken) = take_query_params(url, &[CA_PARAMETER]);
    let Some((_, path)) = taken.into_iter().next_back() else {
        if url.starts_with("rediss://") {
            provider();
        }
        return Client::open(url).map_err(|e| bad(e.to_string()));
    };
    if !url.starts_with("rediss://") {
        return Err(bad(format!("{CA_PARAMETER} needs a rediss:// URL")));
    }
    provider();
    // Read and checked here, so a wrong path is a clear error now and not a
    // failed handshake later.
    let certificates = TlsCertificates {
        client_tls: None,
        root_cert: Some(ca_file(Path::new(&path), argument)?),
    };
    Client::build_with_tls(url, certificates).map_err(|e| bad(e.to_string()))
}
