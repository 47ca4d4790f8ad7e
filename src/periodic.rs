//! The one polling timer: the certificate files and `--config` are looked at on it.

use std::{future::Future, pin::Pin, time::Duration};

/// Ticks every `interval` until `shutdown` resolves: `while ticker.tick().await { ... }`.
pub struct Ticker<S> {
    interval: Duration,
    shutdown: Pin<Box<S>>,
}

impl<S: Future<Output = ()>> Ticker<S> {
    pub fn new(interval: Duration, shutdown: S) -> Self {
        Self {
            interval,
            shutdown: Box::pin(shutdown),
        }
    }

    /// Waits one interval; false once shutdown has begun (work in progress has finished by then).
    pub async fn tick(&mut self) -> bool {
        tokio::select! {
            () = &mut self.shutdown => false,
            () = tokio::time::sleep(self.interval) => true,
        }
    }
}
