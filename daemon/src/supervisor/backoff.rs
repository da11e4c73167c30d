//! How long to wait before starting a process again after one crashed: 1 s, doubling up
//! to 60 s while processes keep dying young (under 10 s), back to 1 s once one lived
//! 10 s. An app that cannot start is then tried a handful of times a minute, never in a
//! fork loop, and one that crashes now and then is back within a second.

use std::time::Duration;

const FIRST: Duration = Duration::from_secs(1);
const MOST: Duration = Duration::from_secs(60);
/// A process that lived this long was healthy: its crash starts the backoff afresh.
const HEALTHY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff { next: FIRST }
    }
}

impl Backoff {
    /// The delay before the next start, after a process that `lived` this long crashed
    /// (or could not even be forked: `lived` zero).
    pub fn after_crash(&mut self, lived: Duration) -> Duration {
        if lived >= HEALTHY {
            self.next = FIRST;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(MOST);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_a_minute_and_resets_after_a_healthy_life() {
        let mut b = Backoff::default();
        let young = Duration::from_millis(300);
        let delays: Vec<u64> = (0..9).map(|_| b.after_crash(young).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(b.after_crash(Duration::from_secs(10)).as_secs(), 1);
        assert_eq!(b.after_crash(young).as_secs(), 2);
    }
}
