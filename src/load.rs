//! How many HTTP requests this process has received: the HTTP layer counts them, and the
//! backfill reads the count to tell requests' load from its own (`backfill::share`).

use std::sync::atomic::{AtomicU64, Ordering};

/// Requests received since start-up, counted when the router first sees each one.
#[derive(Debug, Default)]
pub struct RequestCount {
    total: AtomicU64,
}

impl RequestCount {
    /// Counts one request.
    pub fn add_one(&self) {
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests counted so far.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_every_request() {
        let requests = RequestCount::default();
        assert_eq!(requests.total(), 0);
        requests.add_one();
        requests.add_one();
        assert_eq!(requests.total(), 2);
    }
}
