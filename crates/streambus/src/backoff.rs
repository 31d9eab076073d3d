//! Backoff: how long to wait before the next attempt. Pure functions of the
//! attempt number (and, for jitter, a random number), tested without real time.

use std::time::Duration;

/// Exponential backoff: `base * factor^(attempt - 1)`, capped at `max`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// Delay after the first failure.
    pub base: Duration,
    /// Growth per further failure (2.0 doubles).
    pub factor: f64,
    /// Upper bound of any delay.
    pub max: Duration,
}

impl Default for Backoff {
    /// 1 s, doubling, at most 5 min.
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(1),
            factor: 2.0,
            max: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// A backoff from `base` to `max`, doubling.
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            factor: 2.0,
            max,
        }
    }

    /// The delay before attempt `attempt + 1` after `attempt` failed attempts
    /// (`attempt` ≥ 1; 0 gives no delay).
    pub fn delay(&self, attempt: u32) -> Duration {
        if attempt == 0 {
            return Duration::ZERO;
        }
        let exp = self
            .factor
            .max(1.0)
            .powi(attempt.saturating_sub(1).min(1000) as i32);
        let secs = self.base.as_secs_f64() * exp;
        if !secs.is_finite() || secs >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// [`Backoff::delay`] with "equal jitter": a delay `d` becomes a value in
    /// `[d/2, d]`, chosen by `unit` in `[0, 1)`, so that many clients that failed
    /// together do not retry together.
    pub fn delay_with_jitter(&self, attempt: u32, unit: f64) -> Duration {
        let d = self.delay(attempt);
        d / 2 + d.mul_f64(unit.clamp(0.0, 1.0) / 2.0)
    }
}

/// A small, fast pseudo-random source for jitter (xorshift64*): not for anything
/// that needs unpredictability.
#[derive(Clone, Debug)]
pub struct Jitter(u64);

impl Jitter {
    /// Seeded from the clock, the process id and the address of a local, so that
    /// processes and instances differ.
    pub fn new() -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        let local = 0u8;
        let addr = &local as *const u8 as u64;
        Jitter((t ^ (u64::from(std::process::id()) << 32) ^ addr.rotate_left(17)) | 1)
    }

    /// The next number in `[0, 1)`.
    pub fn next_unit(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Default for Jitter {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps() {
        let b = Backoff {
            base: Duration::from_millis(100),
            factor: 2.0,
            max: Duration::from_secs(1),
        };
        let ms = |a| b.delay(a).as_millis();
        assert_eq!(
            [ms(0), ms(1), ms(2), ms(3), ms(4), ms(5), ms(60)],
            [0, 100, 200, 400, 800, 1000, 1000]
        );
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_in_range() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let mut j = Jitter::new();
        for attempt in 1..10 {
            for _ in 0..100 {
                let u = j.next_unit();
                assert!((0.0..1.0).contains(&u));
                let d = b.delay_with_jitter(attempt, u);
                assert!(d >= b.delay(attempt) / 2 && d <= b.delay(attempt));
            }
        }
    }
}
