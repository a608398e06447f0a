//! `systemctl reload` (SIGHUP): an invalid config keeps the daemon running on the old one and
//! the log names file:line; a valid one is taken.

mod common;

use std::time::Duration;

use common::Daemon;

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn sighup_with_a_broken_config_keeps_running_and_names_file_and_line() {
    let mut d = Daemon::start("");
    let path = d.dir.path("snaprtcd.toml");
    let good = std::fs::read_to_string(&path).expect("read config");
    std::fs::write(&path, format!("{good}\n[snapshot]\nquality = \"high\"\n")).expect("write");
    d.signal("HUP");
    let line = d.wait_for_log("reload rejected", WAIT);
    let place = format!("{}:", path.display());
    assert!(line.contains(&place), "names the file: {line}");
    let after = line.split(&place).nth(1).unwrap_or_default();
    assert!(
        after
            .split(':')
            .next()
            .is_some_and(|n| n.parse::<u32>().is_ok()),
        "file is followed by a line number: {line}"
    );
    assert_eq!(
        d.http("GET /health HTTP/1.1\r\nHost: x\r\n\r\n").status,
        200
    );

    // Fixed file: taken, and the daemon still serves.
    std::fs::write(&path, format!("{good}\n[snapshot]\nquality = 40\n")).expect("write");
    d.signal("HUP");
    d.wait_for_log("config reloaded", WAIT);
    assert!(d.child.try_wait().expect("wait").is_none(), "still running");
    assert_eq!(
        d.http("GET /health HTTP/1.1\r\nHost: x\r\n\r\n").status,
        200
    );
}
