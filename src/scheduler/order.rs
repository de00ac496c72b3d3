//! Which waiter a free backend takes: the oldest, or a later one of the profile it has
//! loaded (no reload) unless a waiter ahead of it was passed over `max_bypass` times or has
//! waited `max_wait`; with nothing queued, work queued on another backend.

use std::sync::Arc;

use tokio::time::Instant;

use crate::config::BackendId;

use super::{Grant, Lane, Queues, Running, Scheduler};

impl Scheduler {
    /// Starts the next work on `backend` when it is free and something waits for it.
    pub(super) fn dispatch(self: &Arc<Self>, queues: &mut Queues, backend: BackendId) {
        if queues.lane(backend).running.is_some() {
            return;
        }
        loop {
            let Some(index) = self.pick(queues.lane(backend)) else {
                if self.steal(queues, backend) {
                    continue;
                }
                return;
            };
            if index > 0 {
                queues.reorders += 1;
                self.metrics
                    .reload_avoided(&self.config().backend(backend).url);
            }
            let lane = queues.lane_mut(backend);
            let mut most = 0;
            for passed in lane.waiting.iter_mut().take(index) {
                passed.bypassed += 1;
                most = most.max(passed.bypassed);
            }
            let Some(waiter) = lane.waiting.remove(index) else {
                return;
            };
            let had = lane.loaded;
            lane.running = Some(Running {
                ticket: waiter.ticket,
                work: waiter.work,
                profile: waiter.profile,
                started: Instant::now(),
                client: waiter.client.clone(),
                client_left: false,
            });
            if waiter.profile.is_some() {
                lane.loaded = waiter.profile;
            }
            queues.max_bypassed = queues.max_bypassed.max(most);
            let grant = Grant {
                scheduler: self.clone(),
                config: self.config.load_full(),
                backend,
                ticket: waiter.ticket,
                profile: waiter.profile,
                had,
                switches_profile: matches!((waiter.profile, had), (Some(p), Some(q)) if p != q),
                armed: true,
            };
            let Err(returned) = waiter.grant.send(Ok(grant)) else {
                return;
            };
            // The client left between its removal check and now: the grant frees nothing
            // when dropped; the backend is freed here, under the lock, for the next waiter.
            if let Ok(mut undelivered) = returned {
                undelivered.armed = false;
            }
            queues.lane_mut(backend).running = None;
        }
    }

    /// The waiter a free backend takes: the first of the loaded profile, unless someone
    /// ahead of it can no longer be passed over; else the oldest.
    fn pick(&self, lane: &Lane) -> Option<usize> {
        if lane.waiting.is_empty() {
            return None;
        }
        let settings = &self.config().scheduler;
        for (i, w) in lane.waiting.iter().enumerate() {
            let matches = w.profile.is_none() || lane.loaded.is_none() || w.profile == lane.loaded;
            if matches {
                return Some(i);
            }
            let waited_too_long = settings
                .max_wait
                .is_some_and(|limit| w.arrived.elapsed() >= limit);
            if w.bypassed >= settings.max_bypass || waited_too_long {
                return Some(i);
            }
        }
        Some(0)
    }
}
