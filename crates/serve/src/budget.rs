//! The server-wide budget of request bytes in flight.
//!
//! The queue is bounded in images, but a request holds memory long before it is queued:
//! its body while it arrives, the parsed tensor, the decoded images. Every one of those
//! is reserved here before it is read or allocated, for HTTP and gRPC alike, and released
//! when it is dropped; a reservation that would pass the limit is refused at once (HTTP
//! 503, gRPC `RESOURCE_EXHAUSTED`) rather than waited for, so that memory stays bounded
//! whatever the clients do (hold uploads open, open many streams, send huge bodies).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// The budget: at most `limit` bytes reserved at once.
pub struct Budget {
    limit: usize,
    used: AtomicUsize,
    metrics: Arc<Metrics>,
}

impl Budget {
    pub fn new(limit: usize, metrics: Arc<Metrics>) -> Arc<Budget> {
        metrics.inflight_limit(limit);
        Arc::new(Budget { limit, used: AtomicUsize::new(0), metrics })
    }

    /// A reservation of nothing, to grow as a body arrives.
    pub fn empty(self: &Arc<Self>) -> Reservation {
        Reservation { budget: self.clone(), bytes: 0 }
    }

    /// Reserves `bytes`, or refuses if the budget cannot hold them now.
    #[cfg(test)]
    pub fn reserve(self: &Arc<Self>, bytes: usize) -> Result<Reservation> {
        let mut r = self.empty();
        r.grow(bytes)?;
        Ok(r)
    }

    /// Bytes reserved now.
    #[cfg(test)]
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn take(&self, bytes: usize) -> Result<()> {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let next = used.checked_add(bytes).filter(|&n| n <= self.limit).ok_or_else(|| {
                self.metrics.inflight_refused();
                Error::Overloaded(format!(
                    "the server holds {used} bytes of requests in flight and this needs {bytes} more, over its \
                     limit of {} (--max-inflight-bytes); retry later",
                    self.limit
                ))
            })?;
            match self.used.compare_exchange_weak(used, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    self.metrics.inflight_bytes(bytes as i64);
                    return Ok(());
                }
                Err(now) => used = now,
            }
        }
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
        self.metrics.inflight_bytes(-(bytes as i64));
    }
}

/// Bytes held against the budget until dropped.
pub struct Reservation {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Reservation {
    /// Reserves `bytes` more, or refuses (keeping what is held).
    pub fn grow(&mut self, bytes: usize) -> Result<()> {
        if bytes > 0 {
            self.budget.take(bytes)?;
            self.bytes += bytes;
        }
        Ok(())
    }

    /// Holds at least `bytes` in all (grows if it holds less).
    pub fn ensure(&mut self, bytes: usize) -> Result<()> {
        self.grow(bytes.saturating_sub(self.bytes))
    }

    /// Gives back all but `bytes` (when a buffer it covered is dropped).
    pub fn shrink_to(&mut self, bytes: usize) {
        if bytes < self.bytes {
            self.budget.give_back(self.bytes - bytes);
            self.bytes = bytes;
        }
    }

    /// Moves what is held into a new reservation, leaving this one empty.
    pub fn take(&mut self) -> Reservation {
        let bytes = std::mem::take(&mut self.bytes);
        Reservation { budget: self.budget.clone(), bytes }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.shrink_to(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stay_within_the_limit_and_give_back_on_drop() {
        let budget = Budget::new(1000, Arc::new(Metrics::new("m")));
        let a = budget.reserve(600).unwrap();
        let e = budget.reserve(401).err().expect("over the limit");
        assert!(matches!(e, Error::Overloaded(_)), "{e}");
        assert_eq!(e.http_status(), 503);
        assert_eq!(e.grpc_code(), tonic::Code::ResourceExhausted);
        let mut b = budget.reserve(400).unwrap();
        assert_eq!(budget.used(), 1000);
        assert!(b.grow(1).is_err(), "a refused growth keeps what is held");
        assert_eq!((b.bytes(), budget.used()), (400, 1000));
        b.shrink_to(100);
        assert_eq!(budget.used(), 700);
        b.ensure(50).unwrap();
        assert_eq!(b.bytes(), 100, "ensure never shrinks");
        b.ensure(300).unwrap();
        assert_eq!(budget.used(), 900);
        drop(a);
        drop(b);
        assert_eq!(budget.used(), 0);
        assert!(budget.reserve(usize::MAX).is_err(), "an absurd size is refused, not wrapped");
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn concurrent_reservations_never_pass_the_limit() {
        let budget = Budget::new(10_000, Arc::new(Metrics::new("m")));
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for i in 0..20_000 {
                        if let Ok(r) = budget.reserve(1 + i % 3000) {
                            assert!(budget.used() <= 10_000);
                            drop(r);
                        }
                    }
                });
            }
        });
        assert_eq!(budget.used(), 0);
    }
}
