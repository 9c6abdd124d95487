//! Time as the engine sees it: a wall clock and an "awake" clock.
//!
//! * `wall` is `SystemTime`: token expiry and everything shown to the user.
//! * `awake` is monotonic time since the clock was made (tokio's `Instant`, so a test
//!   with a paused runtime controls it). On Linux and macOS the monotonic clock stops
//!   while the machine sleeps, which is exactly what the retry ceiling wants to count.
//!
//! Tests build a [`Clock::virtual_from`] whose wall clock advances with tokio's paused
//! time, and inject a sleep with [`Clock::jump_wall`]: the wall clock moves, the awake
//! clock does not, as after a real suspend.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// One reading of both clocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    pub wall: SystemTime,
    pub awake: Duration,
}

#[derive(Clone, Debug)]
pub struct Clock {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `None`: real `SystemTime::now()`; `Some(t)`: wall = t + awake elapsed.
    virtual_base: Option<SystemTime>,
    base: tokio::time::Instant,
    wall_offset_ms: AtomicI64,
}

impl Clock {
    pub fn system() -> Self {
        Self::make(None)
    }

    /// A clock whose wall time starts at `base_wall` and advances with tokio time.
    pub fn virtual_from(base_wall: SystemTime) -> Self {
        Self::make(Some(base_wall))
    }

    fn make(virtual_base: Option<SystemTime>) -> Self {
        Clock {
            inner: Arc::new(Inner {
                virtual_base,
                base: tokio::time::Instant::now(),
                wall_offset_ms: AtomicI64::new(0),
            }),
        }
    }

    pub fn now(&self) -> Now {
        Now {
            wall: self.wall(),
            awake: self.awake(),
        }
    }

    pub fn awake(&self) -> Duration {
        tokio::time::Instant::now().saturating_duration_since(self.inner.base)
    }

    pub fn wall(&self) -> SystemTime {
        let raw = match self.inner.virtual_base {
            Some(base) => base + self.awake(),
            None => SystemTime::now(),
        };
        let off = self.inner.wall_offset_ms.load(Ordering::Relaxed);
        if off >= 0 {
            raw + Duration::from_millis(off as u64)
        } else {
            raw.checked_sub(Duration::from_millis(off.unsigned_abs()))
                .unwrap_or(raw)
        }
    }

    /// The tokio instant at which the awake clock reads `awake`.
    pub fn instant_at(&self, awake: Duration) -> tokio::time::Instant {
        self.inner.base + awake
    }

    /// Move the wall clock forward without the awake clock: what a suspend looks like.
    pub fn jump_wall(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.inner.wall_offset_ms.fetch_add(ms, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn virtual_wall_follows_tokio_time_and_jumps() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let c = Clock::virtual_from(t0);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(c.now().wall, t0 + Duration::from_secs(5));
        assert_eq!(c.now().awake, Duration::from_secs(5));
        c.jump_wall(Duration::from_secs(3600));
        assert_eq!(c.now().wall, t0 + Duration::from_secs(3605));
        assert_eq!(c.now().awake, Duration::from_secs(5));
    }
}
