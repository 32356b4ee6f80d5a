//! A body's idle timer: armed when the body waits for bytes, disarmed when
//! they come, one timer reused for every wait.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// How long a body may wait for its next bytes.
pub struct IdleTimer {
    idle: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl IdleTimer {
    /// A timer for waits of at most `idle`.
    pub fn new(idle: Duration) -> Self {
        IdleTimer {
            idle,
            sleep: None,
            armed: false,
        }
    }

    /// Bytes came (or the body ended): the next wait starts afresh.
    pub fn rest(&mut self) {
        self.armed = false;
    }

    /// The body is waiting: ready once it has waited `idle` since it began
    /// to. A wait too long to count never ends here.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.armed {
            let Some(deadline) = Instant::now().checked_add(self.idle) else {
                return Poll::Pending;
            };
            match &mut self.sleep {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = true;
        }
        match &mut self.sleep {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_wait_expires_and_bytes_start_it_afresh() {
        async fn expired(timer: &mut IdleTimer) -> bool {
            std::future::poll_fn(|cx| Poll::Ready(timer.poll_expired(cx).is_ready())).await
        }
        let mut timer = IdleTimer::new(Duration::from_secs(1));
        assert!(!expired(&mut timer).await);
        tokio::time::advance(Duration::from_millis(900)).await;
        assert!(!expired(&mut timer).await);
        timer.rest();
        tokio::time::advance(Duration::from_millis(900)).await;
        assert!(!expired(&mut timer).await, "bytes came: a new wait");
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(!expired(&mut timer).await);
        tokio::time::advance(Duration::from_millis(800)).await;
        assert!(expired(&mut timer).await);
        // A wait too long to count never expires, and never panics.
        let mut forever = IdleTimer::new(Duration::MAX);
        assert!(!expired(&mut forever).await);
    }
}
