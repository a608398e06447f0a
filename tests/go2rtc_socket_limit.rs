//! go2rtc WebSockets (`/api/ws`) are bounded by `[server] max_viewers`: one over it gets 503
//! with `Retry-After` before the upgrade, and a slot is free again once a socket closes. Without
//! the token (`auth = "token"`) the upgrade is 401, before a slot is taken.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test, with its line
mod common;

use std::time::Duration;

use common::Daemon;
use tokio_tungstenite::tungstenite::Error;

const TIMEOUT: Duration = Duration::from_secs(10);

fn status(result: Result<impl Sized, Error>) -> u16 {
    match result {
        Ok(_) => 101,
        Err(Error::Http(r)) => r.status().as_u16(),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn sockets_over_max_viewers_get_503_and_slots_come_back() {
    let mut d =
        Daemon::start("[server]\nlisten = \"127.0.0.1:0\"\nrtc_udp_port = 0\nmax_viewers = 2\n");
    let url = d.ws_url("/api/ws?src=camera");
    let (mut a, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let (_b, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let over = tokio_tungstenite::connect_async(&url).await;
    let Err(Error::Http(r)) = &over else {
        panic!("a third socket was not refused: {over:?}");
    };
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(r.headers()["retry-after"], "5");

    a.close(None).await.unwrap();
    d.wait_for_log("go2rtc websocket closed", TIMEOUT);
    assert_eq!(status(tokio_tungstenite::connect_async(&url).await), 101);
}

#[tokio::test]
async fn without_the_token_the_upgrade_is_401() {
    let dir = common::TempDir::new("go2rtc-token");
    let token = dir.path("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let d = Daemon::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nrtc_udp_port = 0\nmax_viewers = 1\n\
         auth = \"token\"\nauth_token_file = \"{}\"\n",
        token.display()
    ));
    let url = d.ws_url("/api/ws?src=camera");
    for _ in 0..3 {
        assert_eq!(status(tokio_tungstenite::connect_async(&url).await), 401);
    }
    // The refusals took no slot: the one there is still takes the token.
    let with = d.ws_url("/api/ws?src=camera&access_token=s3cret");
    assert_eq!(status(tokio_tungstenite::connect_async(&with).await), 101);
}
