//! The command line: check-config, print-config, --version, PORT.
mod common;

use std::process::Command;

use common::{bin, TempDir};

#[test]
fn version_prints_the_crate_version() {
    let out = Command::new(bin()).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("snaprtcd {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_config_accepts_the_shipped_config() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config/snaprtcd.toml");
    let out = Command::new(bin())
        .args(["check-config", shipped])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_config_names_file_line_column_and_key_and_exits_2() {
    let dir = TempDir::new("cli");
    let path = dir.path("bad.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"0.0.0.0:8080\"\n\n[signaling]\nkeepalive = \"forever\"\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!("{}:5:13: ", path.display())),
        "{err}"
    );

    std::fs::write(&path, "[signaling]\nmax_sesions = 5\n").unwrap();
    let out = Command::new(bin())
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "{}:2:1: max_sesions: unknown field",
            path.display()
        )),
        "{err}"
    );
}

#[test]
fn check_config_uses_dash_dash_config_and_reports_a_missing_file() {
    let out = Command::new(bin())
        .args(["--config", "/nonexistent/snaprtcd.toml", "check-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("/nonexistent/snaprtcd.toml: cannot read")
    );
}

#[test]
fn print_config_fills_defaults_and_applies_port() {
    let dir = TempDir::new("cli");
    let path = dir.path("c.toml");
    std::fs::write(&path, "[signaling]\nkeepalive = \"5s\"\n").unwrap();
    let out = Command::new(bin())
        .arg("--config")
        .arg(&path)
        .arg("print-config")
        .env("PORT", "9123")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let printed: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(printed["server"]["listen"].as_str(), Some("0.0.0.0:9123"));
    assert_eq!(printed["signaling"]["keepalive"].as_str(), Some("5s"));
    assert_eq!(
        printed["signaling"]["max_sessions"].as_integer(),
        Some(10000)
    );
    assert_eq!(printed["camera"]["source"].as_str(), Some("auto"));
}

#[test]
fn invalid_config_stops_the_daemon_before_binding() {
    let dir = TempDir::new("cli");
    let path = dir.path("c.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"127.0.0.1:0\"\ncors_origins = [\"example.com\"]\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(":3:16: server.cors_origins:"), "{err}");
    assert!(!err.contains("http listening"));
}

#[test]
fn bad_port_env_is_an_error() {
    let out = Command::new(bin())
        .arg("print-config")
        .env("PORT", "eighty")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PORT"));
}
