//! Where work goes: a generation when it arrives (the backend with the lowest expected wait,
//! a reload counted where another profile is loaded), when its backend is taken out of
//! rotation, and when a backend is idle while others have a queue; and where a request that
//! is not a generation goes.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{BackendId, PassThroughRouting, Routing};

use crate::access::Caller;

use super::{Queues, Refused, Scheduler, Waiter, Work};

/// Which backend a request that is not a generation goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    /// `/progress`, `/interrupt`, `/skip`: the backend running this client's generation.
    ClientsGeneration,
    /// Anything else: the first healthy backend, or round robin.
    Any,
}

impl Scheduler {
    /// Healthy and allowed to serve `waiter`'s profile.
    fn takes(&self, queues: &Queues, backend: BackendId, waiter: &Waiter) -> bool {
        queues.lane(backend).in_rotation() && self.config().backend(backend).serves(waiter.profile)
    }

    /// The backends that may take `waiter`: not excluded for it, not `skip`, the one it is
    /// pinned to if any, healthy and serving its profile.
    fn candidates<'a>(
        &'a self,
        queues: &'a Queues,
        waiter: &'a Waiter,
        skip: Option<BackendId>,
    ) -> impl Iterator<Item = BackendId> + 'a {
        queues.ids().filter(move |id| {
            Some(*id) != skip
                && waiter.pinned.is_none_or(|p| p == *id)
                && !waiter.excluded.contains(id)
                && self.takes(queues, *id, waiter)
        })
    }

    /// Puts a waiter on the best backend, or refuses it.
    pub(super) fn place(
        self: &Arc<Self>,
        queues: &mut Queues,
        waiter: Waiter,
    ) -> Result<(), Refused> {
        let config = self.config();
        let settings = &config.scheduler;
        let total: usize = queues.lanes.iter().map(|l| l.waiting.len()).sum();
        let candidates: Vec<BackendId> = self.candidates(queues, &waiter, None).collect();
        if candidates.is_empty() {
            return Err(self.no_backend(waiter.profile));
        }
        let with_room: Vec<BackendId> = candidates
            .iter()
            .copied()
            .filter(|id| queues.lane(*id).waiting.len() < settings.queue_per_backend)
            .collect();
        if with_room.is_empty() || total >= settings.queue_total {
            let retry_after = candidates
                .iter()
                .map(|id| self.expected_wait(queues, *id))
                .fold(Duration::MAX, Duration::min)
                .max(Duration::from_secs(1));
            return Err(Refused::QueueFull {
                waiting: total,
                retry_after: Duration::from_secs(retry_after.as_secs_f64().ceil() as u64),
            });
        }
        let chosen = match settings.routing {
            Routing::Random => with_room[queues.rng.usize(..with_room.len())],
            Routing::Affinity => {
                let cost = |id: BackendId| {
                    let reload = match waiter.profile {
                        Some(p) if queues.lane(id).loaded != Some(p) => {
                            queues.estimates.reload(Some(p))
                        }
                        _ => Duration::ZERO,
                    };
                    self.expected_wait(queues, id)
                        + reload.div_f64(self.config().backend(id).weight)
                };
                with_room
                    .iter()
                    .copied()
                    .min_by_key(|id| cost(*id))
                    .unwrap_or(with_room[0])
            }
        };
        queues.lane_mut(chosen).waiting.push_back(waiter);
        self.dispatch(queues, chosen);
        self.publish_lengths(queues);
        Ok(())
    }

    /// Time until a new arrival on `backend` would start: what runs, and what waits.
    pub(super) fn expected_wait(&self, queues: &Queues, backend: BackendId) -> Duration {
        let weight = self.config().backend(backend).weight;
        walk_lane(queues, backend, |_| {}).div_f64(weight)
    }

    /// When each waiter of `backend` is expected to start, in queue order.
    pub(super) fn expected_starts(&self, queues: &Queues, backend: BackendId) -> Vec<Duration> {
        let weight = self.config().backend(backend).weight;
        let mut starts = Vec::with_capacity(queues.lane(backend).waiting.len());
        walk_lane(queues, backend, |start| starts.push(start.div_f64(weight)));
        starts
    }

    /// Re-places a waiter taken from a backend out of rotation; tells it when nowhere is left.
    pub(super) fn place_moved(
        self: &Arc<Self>,
        queues: &mut Queues,
        waiter: Waiter,
        from: BackendId,
    ) -> Result<(), Refused> {
        let best = self
            .candidates(queues, &waiter, Some(from))
            .min_by_key(|id| self.expected_wait(queues, *id));
        let Some(backend) = best else {
            let refused = self.no_backend(waiter.profile);
            let _ = waiter.grant.send(Err(refused.clone()));
            return Err(refused);
        };
        queues.retries += 1;
        self.metrics.retry();
        // No queue limits: the work was accepted already. Arrival order is kept: it goes
        // behind those that arrived before it.
        let waiting = &mut queues.lane_mut(backend).waiting;
        let position = waiting
            .iter()
            .position(|w| w.arrived > waiter.arrived)
            .unwrap_or(waiting.len());
        waiting.insert(position, waiter);
        self.dispatch(queues, backend);
        Ok(())
    }

    /// A free backend with nothing queued takes a waiter from another one: the oldest of its
    /// loaded profile (no reload), else the oldest whose wait where it is would be longer
    /// than a reload here. With `max_bypass = 0`, simply the oldest it may serve.
    pub(super) fn steal(&self, queues: &mut Queues, here: BackendId) -> bool {
        if !queues.lane(here).in_rotation() {
            return false;
        }
        let taking = if self.config().scheduler.max_bypass == 0 {
            Taking::Oldest
        } else {
            Taking::LoadedFirst
        };
        let loaded_here = queues.lane(here).loaded;
        let mut best: Option<Stealable> = None;
        for from in queues.ids().filter(|id| *id != here) {
            let lane = queues.lane(from);
            let mut ahead = lane.running.as_ref().map_or(Duration::ZERO, |r| {
                queues
                    .estimates
                    .duration(r.profile)
                    .saturating_sub(r.started.elapsed())
            });
            for (index, w) in lane.waiting.iter().enumerate() {
                let wait_there = ahead;
                ahead += queues.estimates.duration(w.profile);
                if w.pinned.is_some() || w.excluded.contains(&here) || !self.takes(queues, here, w)
                {
                    continue;
                }
                let matches =
                    w.profile.is_none() || loaded_here.is_none() || w.profile == loaded_here;
                if taking == Taking::LoadedFirst
                    && !matches
                    && wait_there <= queues.estimates.reload(w.profile)
                {
                    continue;
                }
                let candidate = Stealable {
                    from,
                    index,
                    matches,
                    arrived: w.arrived,
                };
                if best
                    .as_ref()
                    .is_none_or(|b| candidate.better_than(b, taking))
                {
                    best = Some(candidate);
                }
            }
        }
        let Some(Stealable { from, index, .. }) = best else {
            return false;
        };
        let Some(waiter) = queues.lane_mut(from).waiting.remove(index) else {
            return false;
        };
        queues.lane_mut(here).waiting.push_back(waiter);
        true
    }

    /// Where a request that is not a generation goes. `/progress`, `/interrupt` and `/skip`
    /// follow the client's running generation: the backend running one from the same
    /// address, else the only busy backend; everything else (and those, failing that) goes
    /// to the first healthy backend, or round robin over the healthy ones.
    pub fn pass_through_backend(&self, follow: Follow, client: &Caller) -> BackendId {
        // On every request: no allocation, and no lock when no generation is to be followed
        // and the first backend in rotation is wanted.
        let nothing_to_follow = follow == Follow::Any || !self.is_active();
        if nothing_to_follow && self.config().scheduler.pass_through == PassThroughRouting::First {
            let first = self.first_in_rotation.load(Ordering::Acquire);
            return BackendId(if first == usize::MAX { 0 } else { first });
        }
        let mut queues = self.lock();
        if follow == Follow::ClientsGeneration {
            let running = || {
                queues
                    .lanes
                    .iter()
                    .enumerate()
                    .filter_map(|(i, l)| l.running.as_ref().map(|r| (BackendId(i), &r.client)))
            };
            let from_client = |c: &Caller| client.addr.is_some() && c.addr == client.addr;
            if let Some((id, _)) = running().find(|(_, c)| from_client(c)) {
                return id;
            }
            let mut busy = running();
            if let (Some((only, _)), None) = (busy.next(), busy.next()) {
                return only;
            }
        }
        let healthy = queues.lanes.iter().filter(|l| l.in_rotation()).count();
        let nth = match (self.config().scheduler.pass_through, healthy) {
            (_, 0) => return BackendId(0),
            (PassThroughRouting::First, _) => 0,
            (PassThroughRouting::RoundRobin, n) => {
                queues.round_robin = queues.round_robin.wrapping_add(1);
                queues.round_robin % n
            }
        };
        queues
            .lanes
            .iter()
            .enumerate()
            .filter(|(_, l)| l.in_rotation())
            .nth(nth)
            .map_or(BackendId(0), |(i, _)| BackendId(i))
    }
}

impl Scheduler {
    /// The backend running a generation of `client`'s key (one from its address first):
    /// where its `interrupt` or `skip` goes. `None`: none of its generations runs.
    pub fn running_for_key(&self, client: &Caller) -> Option<BackendId> {
        let queues = self.lock();
        let mine = |r: &&super::Running| r.work == Work::Generation && client.same_key(&r.client);
        let running = || {
            queues
                .lanes
                .iter()
                .enumerate()
                .filter_map(|(i, l)| l.running.as_ref().filter(mine).map(|r| (BackendId(i), r)))
        };
        running()
            .find(|(_, r)| r.client.addr == client.addr)
            .or_else(|| running().next())
            .map(|(id, _)| id)
    }

    /// Where `client`'s generation waits, when one waits and none of its runs (the client
    /// as progress routing knows it, by address): the work ahead of it on its backend and
    /// the expected wait.
    pub fn queued_for(&self, client: &Caller) -> Option<(usize, Duration)> {
        client.addr?;
        if !self.is_active() {
            return None;
        }
        let queues = self.lock();
        let mine = |c: &Caller| c.addr == client.addr;
        let running = queues
            .lanes
            .iter()
            .filter_map(|l| l.running.as_ref())
            .any(|r| r.work == Work::Generation && mine(&r.client));
        if running {
            return None;
        }
        queues.lanes.iter().enumerate().find_map(|(i, lane)| {
            let index = lane
                .waiting
                .iter()
                .position(|w| w.work == Work::Generation && mine(&w.client))?;
            let ahead = index + usize::from(lane.running.is_some());
            let wait = self.expected_starts(&queues, BackendId(i))[index];
            Some((ahead, wait))
        })
    }

    /// The shortest expected wait for a new generation on a healthy backend (zero when one
    /// is free or none is healthy): a Retry-After for a client refused for want of room.
    pub fn shortest_wait(&self) -> Duration {
        let queues = self.lock();
        queues
            .ids()
            .filter(|id| queues.lane(*id).in_rotation())
            .map(|id| self.expected_wait(&queues, id))
            .min()
            .unwrap_or_default()
    }

    /// Refuses a generation of a key that has `max_queued` waiting already.
    pub(super) fn check_key_queue(&self, queues: &Queues, client: &Caller) -> Result<(), Refused> {
        let Some(key) = &client.key else {
            return Ok(());
        };
        let Some(limit) = key.max_queued else {
            return Ok(());
        };
        let waiting = queues
            .lanes
            .iter()
            .flat_map(|l| l.waiting.iter())
            .filter(|w| w.work == Work::Generation && client.same_key(&w.client))
            .count();
        if waiting < limit {
            return Ok(());
        }
        let retry_after = queues
            .ids()
            .filter(|id| queues.lane(*id).in_rotation())
            .map(|id| self.expected_wait(queues, id))
            .fold(Duration::MAX, Duration::min)
            .clamp(Duration::from_secs(1), Duration::from_secs(3600));
        Err(Refused::KeyQueueFull {
            key: key.name.clone(),
            waiting,
            retry_after: Duration::from_secs(retry_after.as_secs_f64().ceil() as u64),
        })
    }
}

/// How a free backend chooses among the waiters of others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Taking {
    /// First come, first served (`max_bypass = 0`).
    Oldest,
    /// Affinity: of its loaded profile first, then the oldest.
    LoadedFirst,
}

/// A waiter another backend could take, and why.
struct Stealable {
    from: BackendId,
    index: usize,
    /// Of the profile the idle backend has loaded (no reload).
    matches: bool,
    arrived: tokio::time::Instant,
}

impl Stealable {
    /// First come first served compares arrival alone; affinity prefers no reload, then the
    /// older.
    fn better_than(&self, other: &Stealable, taking: Taking) -> bool {
        if taking == Taking::Oldest || self.matches == other.matches {
            self.arrived < other.arrived
        } else {
            self.matches
        }
    }
}

/// A backend's queue in time, in the estimates' units (before its weight): what runs, then
/// each waiter with a reload where its profile differs from the one before. Calls `start`
/// with when each waiter starts; answers when the last one ends.
fn walk_lane(queues: &Queues, backend: BackendId, mut start: impl FnMut(Duration)) -> Duration {
    let lane = queues.lane(backend);
    let estimates = &queues.estimates;
    let mut ahead = lane.running.as_ref().map_or(Duration::ZERO, |r| {
        estimates
            .duration(r.profile)
            .saturating_sub(r.started.elapsed())
    });
    let mut loaded = lane
        .running
        .as_ref()
        .map_or(lane.loaded, |r| r.profile.or(lane.loaded));
    for w in &lane.waiting {
        if w.profile.is_some() && w.profile != loaded {
            ahead += estimates.reload(w.profile);
            loaded = w.profile;
        }
        start(ahead);
        ahead += estimates.duration(w.profile);
    }
    ahead
}
