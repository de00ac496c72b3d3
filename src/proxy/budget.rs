//! Counted capacity the configuration sizes and a reload resizes: the bytes held for
//! inspection (`limits.max_inspected_total`), and (through [`resize`]) the connection slots.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// `limits.max_inspected_total`: the bytes of every body held for inspection at once,
/// counted in KiB as they arrive.
pub struct InspectBudget {
    kib: Arc<Semaphore>,
    limit: AtomicU64,
}

impl InspectBudget {
    pub fn new(limit: u64) -> Self {
        Self {
            kib: Arc::new(Semaphore::new(Self::kib(limit))),
            limit: AtomicU64::new(limit),
        }
    }

    fn kib(limit: u64) -> usize {
        usize::try_from(limit / 1024)
            .unwrap_or(Semaphore::MAX_PERMITS)
            .min(Semaphore::MAX_PERMITS)
    }

    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// A reloaded `limits.max_inspected_total`; bodies held now keep their share.
    pub fn resize(&self, limit: u64) {
        let old = self.limit.swap(limit, Ordering::Relaxed);
        resize(&self.kib, Self::kib(old), Self::kib(limit));
    }

    /// A share of `bytes`, at once or not at all.
    pub(super) fn take(&self, bytes: u64) -> Option<OwnedSemaphorePermit> {
        let kib = u32::try_from(bytes.div_ceil(1024)).ok()?;
        self.kib.clone().try_acquire_many_owned(kib).ok()
    }

    /// Bytes held now.
    pub fn held(&self) -> u64 {
        let total = self.limit() / 1024;
        total.saturating_sub(self.kib.available_permits() as u64) * 1024
    }
}

/// Changes the permits of `semaphore` from `from` to `to`: more are available at once; fewer
/// as those in use come back.
pub fn resize(semaphore: &Arc<tokio::sync::Semaphore>, from: usize, to: usize) {
    if to >= from {
        semaphore.add_permits(to - from);
        return;
    }
    let excess = from - to;
    let forgotten = semaphore.forget_permits(excess);
    if let Ok(rest) = u32::try_from(excess - forgotten) {
        if rest > 0 {
            let semaphore = semaphore.clone();
            tokio::spawn(async move {
                if let Ok(permits) = semaphore.acquire_many_owned(rest).await {
                    permits.forget();
                }
            });
        }
    }
}
