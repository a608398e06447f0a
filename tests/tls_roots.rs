//! `tls::client_connector` on a system with no usable root certificate: an error that names
//! the connection that wanted TLS, not a configuration that fails every handshake later. Its
//! own test binary: it sets `SSL_CERT_FILE` and `SSL_CERT_DIR` for the whole process.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test, with its line
mod common;

#[test]
fn no_usable_root_certificate_is_an_error_naming_the_door() {
    let dir = common::TempDir::new("tls-roots");
    let empty = dir.path("empty.pem");
    std::fs::write(&empty, "").unwrap();
    std::env::set_var("SSL_CERT_FILE", &empty);
    std::env::set_var("SSL_CERT_DIR", &dir.0);
    match snaprtcd::tls::client_connector("remote hub") {
        Err(e @ snaprtcd::tls::TlsError::NoRoots { .. }) => assert_eq!(
            e.to_string(),
            "remote hub: no system root certificates to check the server with (install ca-certificates)"
        ),
        Err(e) => panic!("expected no roots, got {e}"),
        Ok(_) => panic!("a TLS configuration with no root certificate"),
    }
}
