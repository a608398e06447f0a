//! The hub's built-in capture member answers SnapRTC offers through the RTC engine. `rtc` and
//! `signaling` do not import each other, so the daemon, which builds both, joins them here.

use std::future::Future;
use std::pin::Pin;

use crate::rtc::{RtcHandle, ViewerKind};
use crate::signaling::capture::{Answerer, Connected, EngineAnswer};
use crate::signaling::hub::SessionId;

/// The viewer goes away on its own when the initiator does (silence timeout).
impl Answerer for RtcHandle {
    fn answer(
        &self,
        offer: String,
        session: SessionId,
    ) -> Pin<Box<dyn Future<Output = Result<EngineAnswer, String>> + Send>> {
        let rtc = self.clone();
        Box::pin(async move {
            let kind = ViewerKind::SnapRtc {
                session: session.to_string(),
            };
            let answer = rtc.answer(offer, kind).await.map_err(|e| e.to_string())?;
            let connected = rtc.connected(answer.id);
            Ok(EngineAnswer {
                sdp: answer.sdp,
                connected: Connected::new(connected),
            })
        })
    }
}
