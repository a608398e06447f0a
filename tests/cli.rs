//! The command line: check-config, print-config, list-devices, snapshot, --version, PORT.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test, with its line
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

#[test]
fn list_devices_prints_a_table_or_says_there_are_none_and_exits_0() {
    let out = Command::new(bin()).arg("list-devices").output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let has_nodes = std::fs::read_dir("/dev").is_ok_and(|d| {
        d.flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("video"))
    });
    if has_nodes {
        // Nodes may all be metadata/output nodes: either answer is fine, never an empty one.
        assert!(
            text.starts_with("DEVICE") || text == "no V4L2 capture devices found\n",
            "{text}"
        );
    } else {
        assert_eq!(text, "no V4L2 capture devices found\n");
    }
}

fn testsrc_config(dir: &TempDir, width: u32, height: u32) -> std::path::PathBuf {
    let path = dir.path("c.toml");
    std::fs::write(
        &path,
        format!("[camera]\nsource = \"testsrc\"\nwidth = {width}\nheight = {height}\n"),
    )
    .unwrap();
    path
}

fn jpeg_size(jpeg: &[u8]) -> (usize, usize) {
    let mut dec = zune_jpeg::JpegDecoder::new(zune_jpeg::zune_core::bytestream::ZCursor::new(jpeg));
    dec.decode().expect("a decodable JPEG");
    let info = dec.info().unwrap();
    (info.width as usize, info.height as usize)
}

#[test]
fn snapshot_writes_a_jpeg_of_the_configured_size() {
    let dir = TempDir::new("cli");
    let config = testsrc_config(&dir, 352, 288);
    let file = dir.path("still.jpg");
    let out = Command::new(bin())
        .arg("--config")
        .arg(&config)
        .args(["snapshot", "-o"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jpeg = std::fs::read(&file).unwrap();
    assert_eq!(jpeg_size(&jpeg), (352, 288));
    assert!(
        out.stdout.is_empty(),
        "nothing on stdout when writing a file"
    );
}

#[test]
fn snapshot_to_stdout_with_dash() {
    let dir = TempDir::new("cli");
    let config = testsrc_config(&dir, 160, 120);
    let out = Command::new(bin())
        .arg("--config")
        .arg(&config)
        .args(["snapshot", "-o", "-"])
        .current_dir(&dir.0)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(jpeg_size(&out.stdout), (160, 120));
    assert!(!dir.path("snapshot.jpg").exists());
}

#[test]
fn snapshot_defaults_to_snapshot_jpg() {
    let dir = TempDir::new("cli");
    let config = testsrc_config(&dir, 160, 120);
    let out = Command::new(bin())
        .arg("--config")
        .arg(&config)
        .arg("snapshot")
        .current_dir(&dir.0)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        jpeg_size(&std::fs::read(dir.path("snapshot.jpg")).unwrap()),
        (160, 120)
    );
}

#[test]
fn snapshot_of_a_missing_camera_fails_naming_the_device() {
    let dir = TempDir::new("cli");
    let path = dir.path("c.toml");
    std::fs::write(
        &path,
        "[camera]\nsource = \"v4l2\"\ndevice = \"/dev/video-missing-42\"\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .arg("--config")
        .arg(&path)
        .args(["snapshot", "-o"])
        .arg(dir.path("x.jpg"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/dev/video-missing-42"), "{err}");
    assert!(!dir.path("x.jpg").exists());
}
