//! TLS for the daemon's own outgoing connections: a remote hub (`https://`) and TURN over TLS
//! (`turns:`). rustls with the process's aws-lc-rs provider, checking servers against the
//! system's root certificates (rustls-native-certs: `SSL_CERT_FILE` and `SSL_CERT_DIR` are
//! honoured). The Redis backplane's `rediss://` is the redis crate's, configured the same way
//! by its `tokio-rustls-comp` feature.

use std::sync::Arc;

use tokio_rustls::TlsConnector;
use tracing::{debug, warn};

/// Why no client configuration could be made.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsError {
    /// The system has no root certificate rustls can use.
    #[error(
        "{door}: no system root certificates to check the server with (install ca-certificates)"
    )]
    NoRoots {
        /// Which connection wanted TLS.
        door: String,
    },
    /// rustls refused the configuration.
    #[error("{door}: TLS setup failed: {source}")]
    Setup {
        /// Which connection wanted TLS.
        door: String,
        /// What rustls said.
        source: rustls::Error,
    },
}

/// A client configuration for `door` (named in logs and errors, e.g. `"remote hub"`).
pub fn client_connector(door: &str) -> Result<TlsConnector, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        warn!(door, error = %e, "reading a system root certificate failed");
    }
    // A root the system has but rustls cannot parse is skipped, as browsers do.
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    debug!(door, added, ignored, "system root certificates");
    if added == 0 {
        return Err(TlsError::NoRoots { door: door.into() });
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Setup {
            door: door.into(),
            source,
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}
