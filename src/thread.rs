//! One owner for a blocking thread: it has a name and a cancellation token, and dropping the
//! owner cancels the token and joins the thread, logging a panic with the thread's name. The
//! capture and media threads both live in one of these.

use std::thread::JoinHandle;

use tokio_util::sync::CancellationToken;

/// The thread panicked; `message` is the panic payload when it was a string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {thread} thread panicked: {message}")]
pub struct Panicked {
    /// The thread's name.
    pub thread: String,
    /// What the panic said.
    pub message: String,
}

/// A named thread that is cancelled and joined when its owner is dropped (or [`join`]ed).
///
/// [`join`]: Self::join
#[derive(Debug)]
pub struct OwnedThread {
    name: String,
    cancel: CancellationToken,
    handle: Option<JoinHandle<()>>,
}

impl OwnedThread {
    /// Start `body` on a thread called `name`. `body` must return soon after `cancel` fires
    /// (or its inputs close); the owner cancels `cancel` before it joins.
    pub fn spawn(
        name: &str,
        cancel: CancellationToken,
        body: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<Self> {
        let handle = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(body)?;
        Ok(Self {
            name: name.to_owned(),
            cancel,
            handle: Some(handle),
        })
    }

    /// The thread's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Cancel the thread and wait for it. A panic is logged and returned.
    pub fn join(mut self) -> Result<(), Panicked> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), Panicked> {
        self.cancel.cancel();
        let Some(handle) = self.handle.take() else {
            return Ok(());
        };
        if handle.thread().id() == std::thread::current().id() {
            // Dropped on its own thread: it ends when this returns; joining would deadlock.
            return Ok(());
        }
        handle.join().map_err(|payload| {
            let message = panic_message(payload.as_ref());
            tracing::error!(thread = %self.name, panic = %message, "thread panicked");
            Panicked {
                thread: self.name.clone(),
                message,
            }
        })
    }
}

impl Drop for OwnedThread {
    fn drop(&mut self) {
        // Already logged inside.
        let _ = self.stop();
    }
}

/// The text of a panic payload (`panic!("…")` gives a `&str` or a `String`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(not a string)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_cancels_and_waits() {
        let cancel = CancellationToken::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let token = cancel.clone();
        let t = OwnedThread::spawn("worker", cancel, move || {
            while !token.is_cancelled() {
                std::thread::yield_now();
            }
            let _ = tx.send("stopped");
        })
        .expect("spawn");
        assert_eq!(t.name(), "worker");
        assert_eq!(t.join(), Ok(()));
        assert_eq!(rx.try_recv(), Ok("stopped"));
    }

    #[test]
    fn a_panic_is_reported_with_the_threads_name() {
        let t = OwnedThread::spawn("capture", CancellationToken::new(), || panic!("boom"))
            .expect("spawn");
        assert_eq!(
            t.join(),
            Err(Panicked {
                thread: "capture".into(),
                message: "boom".into()
            })
        );
    }

    #[test]
    fn drop_joins() {
        let cancel = CancellationToken::new();
        let token = cancel.clone();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = done.clone();
        let t = OwnedThread::spawn("worker", cancel, move || {
            while !token.is_cancelled() {
                std::thread::yield_now();
            }
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        })
        .expect("spawn");
        drop(t);
        assert!(done.load(std::sync::atomic::Ordering::SeqCst));
    }
}
