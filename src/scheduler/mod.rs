//! Which backend runs a generation, and in which order each backend runs its queue.
//!
//! Every backend runs one piece of work at a time (Forge runs one generation at a time
//! anyway); the others wait here, in the proxy, not inside Forge. A request is placed when
//! it arrives: on the healthy backend allowed for its profile with the lowest expected wait,
//! counting a model reload where the backend has another profile loaded. A backend that
//! becomes free takes the oldest waiting request, or a later one of the profile it has
//! loaded when no request ahead of it has been passed over `max_bypass` times or waited
//! `max_wait`.
//!
//! - `placement` — where a request goes when it arrives, when its backend fails, when a
//!   backend is idle; and where a request that is not a generation goes.
//! - `order` — which waiter a free backend takes.
//! - `estimates` — how long a generation and a reload take, learned.
//!
//! One `std` mutex guards the queues; it is never held across `.await`.

mod estimates;
mod order;
mod placement;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::access::Caller;
use crate::admin::metrics::Metrics;
use crate::backend::health::{HealthCounter, HealthEvent, Transition};
use crate::config::{BackendId, Config, ProfileId};

use estimates::{Estimates, Learned, Switched};

pub use placement::Follow;

/// Why a generation gets no backend.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refused {
    #[error("the generation queue is full ({waiting} waiting); try again in {}s", .retry_after.as_secs())]
    QueueFull {
        waiting: usize,
        retry_after: Duration,
    },
    #[error("no healthy backend serves profile {profile}")]
    NoBackend { profile: String },
    #[error("key {key:?} has {waiting} generations waiting, its limit (access.keys max_queued); try again in {}s", .retry_after.as_secs())]
    KeyQueueFull {
        key: String,
        waiting: usize,
        retry_after: Duration,
    },
}

/// What holds a backend: a generation, or a client's options call. Either is the backend's
/// one critical section: nothing else is sent to it that changes options or generates
/// meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Work {
    Generation,
    Options,
}

/// One backend's queue, health and loaded profile.
struct Lane {
    health: HealthCounter,
    waiting: VecDeque<Waiter>,
    running: Option<Running>,
    /// The profile of the work dispatched last: what Forge has loaded.
    loaded: Option<ProfileId>,
    /// Gone from the configuration: takes no new work, finishes what it has.
    retired: bool,
    /// Taken out of rotation by an admin: takes no new work, finishes what runs.
    drained: bool,
}

impl Lane {
    fn new() -> Self {
        Lane {
            health: HealthCounter::default(),
            waiting: VecDeque::new(),
            running: None,
            loaded: None,
            retired: false,
            drained: false,
        }
    }

    /// May take new work: healthy, still configured, not drained.
    fn in_rotation(&self) -> bool {
        !self.retired && !self.drained && self.health.is_healthy()
    }
}

struct Waiter {
    ticket: u64,
    work: Work,
    profile: Option<ProfileId>,
    /// The one backend it must run on (a client's options call for that backend).
    pinned: Option<BackendId>,
    arrived: Instant,
    bypassed: u32,
    client: Caller,
    /// Backends this request already failed on (before it was sent): never placed there.
    excluded: Vec<BackendId>,
    grant: oneshot::Sender<Result<Grant, Refused>>,
}

struct Running {
    ticket: u64,
    work: Work,
    profile: Option<ProfileId>,
    started: Instant,
    client: Caller,
    /// Its client went away; the backend stays held until Forge has finished.
    client_left: bool,
}

struct Queues {
    lanes: Vec<Lane>,
    next_ticket: u64,
    estimates: Estimates,
    round_robin: usize,
    rng: fastrand::Rng,
    reorders: u64,
    retries: u64,
    /// The most times any request has been passed over.
    max_bypassed: u32,
}

impl Queues {
    fn lane(&self, id: BackendId) -> &Lane {
        &self.lanes[id.0]
    }

    fn lane_mut(&mut self, id: BackendId) -> &mut Lane {
        &mut self.lanes[id.0]
    }

    fn ids(&self) -> impl Iterator<Item = BackendId> + use<> {
        (0..self.lanes.len()).map(BackendId)
    }
}

pub struct Scheduler {
    /// The proxy's configuration: backends (profiles served, weight, URL), profiles, health
    /// thresholds and the scheduler's own settings, read where they are needed. Replaced
    /// only under the queues' lock ([`Scheduler::reconfigure`]), so one locked step sees one
    /// configuration.
    config: ArcSwap<Config>,
    metrics: Metrics,
    queues: Mutex<Queues>,
    /// Counts every change of a queue, a running work, a backend's health or rotation:
    /// `/proxy/events` sends the status again when it moves.
    changes: tokio::sync::watch::Sender<u64>,
    /// Kept with every change, under the lock, for the requests that need no more: the
    /// works running or waiting in all, and the first backend in rotation (`usize::MAX`:
    /// none). A progress poll while nothing runs, and any pass-through request with
    /// `pass_through = "first"`, are placed without taking the lock.
    active: AtomicUsize,
    first_in_rotation: AtomicUsize,
}

/// A place in a backend's queue; dropping it (the client went away) leaves the queue.
pub struct Ticket {
    scheduler: Arc<Scheduler>,
    id: u64,
    queued_at: Instant,
    receiver: oneshot::Receiver<Result<Grant, Refused>>,
    /// The answer came: the waiter is no longer queued, nothing to cancel on drop.
    settled: bool,
}

/// The right to run one piece of work on `backend`; dropping it frees the backend.
pub struct Grant {
    scheduler: Arc<Scheduler>,
    /// The configuration `profile` and `had` are of (a reload may come while it runs).
    config: Arc<Config>,
    backend: BackendId,
    ticket: u64,
    profile: Option<ProfileId>,
    /// What the backend had loaded when it took this work.
    had: Option<ProfileId>,
    /// The backend had another profile loaded: this generation pays a reload.
    pub switches_profile: bool,
    /// Set once the grant is in a waiter's hands; an undelivered grant frees nothing.
    armed: bool,
}

impl Scheduler {
    pub fn new(config: Arc<Config>, metrics: Metrics) -> Arc<Self> {
        let lanes = config.backends.iter().map(|_| Lane::new()).collect();
        let estimates = Estimates::new(config.profiles.len());
        let scheduler = Arc::new(Self {
            config: ArcSwap::new(config),
            metrics,
            changes: tokio::sync::watch::Sender::new(0),
            active: AtomicUsize::new(0),
            first_in_rotation: AtomicUsize::new(usize::MAX),
            queues: Mutex::new(Queues {
                lanes,
                next_ticket: 1,
                estimates,
                round_robin: 0,
                rng: fastrand::Rng::with_seed(0x9e37_79b9_7f4a_7c15),
                reorders: 0,
                retries: 0,
                max_bypassed: 0,
            }),
        });
        // Every backend's queue length and rotation from the start.
        scheduler.publish_lengths(&scheduler.lock());
        scheduler
    }

    fn lock(&self) -> MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn config(&self) -> arc_swap::Guard<Arc<Config>> {
        self.config.load()
    }

    /// Something `/proxy/status` shows changed.
    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Whether any work runs or waits (kept with every change; no lock taken).
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire) > 0
    }

    /// Moves on each change of what `/proxy/status` shows of queues, work and health.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Takes `backend` out of rotation (`drained`: its queued generations move to the
    /// others, the running one finishes) or puts it back.
    pub fn set_drained(self: &Arc<Self>, backend: BackendId, drained: bool) -> Result<(), String> {
        let mut queues = self.lock();
        let Some(lane) = queues.lanes.get_mut(backend.0) else {
            return Err(format!("no backend {}", backend.0));
        };
        if lane.retired {
            return Err("removed from the configuration".to_owned());
        }
        lane.drained = drained;
        if drained {
            let (stay, moving): (VecDeque<Waiter>, VecDeque<Waiter>) =
                lane.waiting.drain(..).partition(|w| w.pinned.is_some());
            lane.waiting = stay;
            for waiter in moving {
                let waiter = Waiter {
                    bypassed: 0,
                    ..waiter
                };
                if let Err(refused) = self.place_moved(&mut queues, waiter, backend) {
                    tracing::warn!(backend = %backend, error = %refused, "a generation queued on a drained backend could not move");
                }
            }
        } else {
            self.dispatch(&mut queues, backend);
        }
        self.publish_lengths(&queues);
        Ok(())
    }

    /// Places a generation of `profile` (`None`: decided by the backend's checkpoint) on a
    /// backend other than those in `exclude`.
    pub fn enqueue(
        self: &Arc<Self>,
        profile: Option<ProfileId>,
        client: &Caller,
        exclude: &[BackendId],
    ) -> Result<Ticket, Refused> {
        self.enqueue_as(&self.config.load_full(), profile, client, exclude)
    }

    /// [`Scheduler::enqueue`] for a request that chose `profile` in configuration `from`
    /// (a reload may have come since).
    pub fn enqueue_as(
        self: &Arc<Self>,
        from: &Config,
        profile: Option<ProfileId>,
        client: &Caller,
        exclude: &[BackendId],
    ) -> Result<Ticket, Refused> {
        let mut queues = self.lock();
        let profile = self.translate(from, profile);
        self.check_key_queue(&queues, client)?;
        let (waiter, receiver) = new_waiter(&mut queues, Work::Generation, profile, client.clone());
        let id = waiter.ticket;
        let waiter = Waiter {
            excluded: exclude.to_vec(),
            ..waiter
        };
        self.place(&mut queues, waiter)?;
        drop(queues);
        Ok(self.ticket(id, receiver))
    }

    /// Queues a client's options call on `backend`, whatever its queue length (the call
    /// takes milliseconds); it waits its turn like a generation, is never moved to another
    /// backend, and holds `backend` while it runs.
    pub fn enqueue_on(
        self: &Arc<Self>,
        backend: BackendId,
        profile: Option<ProfileId>,
        client: &Caller,
    ) -> Ticket {
        self.enqueue_on_as(&self.config.load_full(), backend, profile, client)
    }

    /// [`Scheduler::enqueue_on`] for a call that chose `profile` in configuration `from`.
    pub fn enqueue_on_as(
        self: &Arc<Self>,
        from: &Config,
        backend: BackendId,
        profile: Option<ProfileId>,
        client: &Caller,
    ) -> Ticket {
        let mut queues = self.lock();
        let profile = self.translate(from, profile);
        let (waiter, receiver) = new_waiter(&mut queues, Work::Options, profile, client.clone());
        let id = waiter.ticket;
        queues.lane_mut(backend).waiting.push_back(Waiter {
            pinned: Some(backend),
            ..waiter
        });
        self.dispatch(&mut queues, backend);
        self.publish_lengths(&queues);
        drop(queues);
        self.ticket(id, receiver)
    }

    /// The client's side of a waiter. Made once the waiter is placed, and outside the lock:
    /// dropping a ticket takes the lock to leave the queue.
    fn ticket(
        self: &Arc<Self>,
        id: u64,
        receiver: oneshot::Receiver<Result<Grant, Refused>>,
    ) -> Ticket {
        Ticket {
            scheduler: self.clone(),
            id,
            queued_at: Instant::now(),
            receiver,
            settled: false,
        }
    }

    /// `profile` of configuration `from` in the one the scheduler has: the same profile by
    /// name, `None` (whatever the backend has) when a reload removed it. Under the lock.
    fn translate(&self, from: &Config, profile: Option<ProfileId>) -> Option<ProfileId> {
        let here = self.config();
        if std::ptr::eq(from, &**here) {
            return profile;
        }
        profile.and_then(|p| here.profile_named(&from.profile(p).name))
    }

    /// A reloaded configuration: `config.backends` keeps every backend the scheduler knows at
    /// its index (those in `retired` finish their work and take no more) and adds new ones
    /// after them; profiles are matched by name.
    pub fn reconfigure(&self, config: Arc<Config>, retired: &[BackendId]) {
        let mut queues = self.lock();
        let old = self.config.load_full();
        let map = |p: Option<ProfileId>| p.and_then(|p| config.profile_named(&old.profile(p).name));
        for lane in &mut queues.lanes {
            lane.loaded = map(lane.loaded);
            if let Some(running) = lane.running.as_mut() {
                running.profile = map(running.profile);
            }
            for waiter in &mut lane.waiting {
                waiter.profile = map(waiter.profile);
            }
        }
        queues.estimates = queues.estimates.renamed(&old, &config);
        while queues.lanes.len() < config.backends.len() {
            let checked = config.health.interval.is_some();
            queues.lanes.push(Lane {
                health: if checked {
                    HealthCounter::joining()
                } else {
                    HealthCounter::default()
                },
                ..Lane::new()
            });
        }
        for id in retired {
            queues.lane_mut(*id).retired = true;
        }
        self.config.store(config);
        self.publish_lengths(&queues);
        // Waiters on a retired backend stay there (it drains its queue); idle new backends
        // take work queued elsewhere once their first health check passes.
    }

    /// No backend may take `profile`.
    fn no_backend(&self, profile: Option<ProfileId>) -> Refused {
        Refused::NoBackend {
            profile: profile.map_or("(any)".to_owned(), |p| {
                self.config().profile(p).name.clone()
            }),
        }
    }

    fn publish_lengths(&self, queues: &Queues) {
        self.changed();
        let active = queues
            .lanes
            .iter()
            .map(|l| l.waiting.len() + usize::from(l.running.is_some()))
            .sum();
        self.active.store(active, Ordering::Release);
        let first = queues
            .lanes
            .iter()
            .position(Lane::in_rotation)
            .unwrap_or(usize::MAX);
        self.first_in_rotation.store(first, Ordering::Release);
        let config = self.config();
        for (lane, backend) in queues.lanes.iter().zip(&config.backends) {
            self.metrics
                .queue_length(&backend.url, lane.waiting.len() as u64);
            self.metrics.in_rotation(&backend.url, lane.in_rotation());
        }
    }

    /// Work finished on `backend` (its grant was dropped): go on with the next.
    fn release(self: &Arc<Self>, backend: BackendId, ticket: u64) {
        let mut queues = self.lock();
        let lane = queues.lane_mut(backend);
        if lane.running.as_ref().is_some_and(|r| r.ticket == ticket) {
            lane.running = None;
        }
        self.dispatch(&mut queues, backend);
        self.publish_lengths(&queues);
    }

    /// Removes a waiter whose client went away.
    fn cancel(&self, ticket: u64) {
        let mut queues = self.lock();
        for lane in &mut queues.lanes {
            lane.waiting.retain(|w| w.ticket != ticket);
        }
        self.publish_lengths(&queues);
    }

    /// A health observation of `backend`. One that takes it out of rotation moves its waiters
    /// to the others; one that brings it back gives it work queued elsewhere at once.
    pub fn report_health(self: &Arc<Self>, backend: BackendId, event: HealthEvent) {
        let mut queues = self.lock();
        let lane = queues.lane_mut(backend);
        let transition = lane.health.observe(event, &self.config().health);
        match transition {
            None => {}
            Some(Transition::Recovered) => {
                tracing::info!(backend = %backend, "backend is healthy again");
                self.dispatch(&mut queues, backend);
            }
            Some(Transition::Lost) => {
                let reason = lane.health.note().to_owned();
                tracing::warn!(backend = %backend, reason = %reason, "backend is unhealthy: no new work");
                let moving: Vec<Waiter> = lane.waiting.drain(..).collect();
                for waiter in moving {
                    // Its place in time is kept: it has been waiting already.
                    let waiter = Waiter {
                        bypassed: 0,
                        ..waiter
                    };
                    let (ticket, profile) = (waiter.ticket, waiter.profile);
                    if let Err(refused) = self.place_moved(&mut queues, waiter, backend) {
                        tracing::warn!(ticket, profile = ?profile, error = %refused, "queued generation could not move");
                    }
                }
            }
        }
        if transition.is_some() {
            self.publish_lengths(&queues);
        }
    }

    /// Healthy and still configured: may take new work.
    /// (A backend a reload is adding has no lane for an instant: not yet.)
    pub fn is_healthy(&self, backend: BackendId) -> bool {
        self.lock()
            .lanes
            .get(backend.0)
            .is_some_and(Lane::in_rotation)
    }

    /// Gone from the configuration, with nothing running or waiting: its health checks stop.
    pub fn is_drained(&self, backend: BackendId) -> bool {
        let queues = self.lock();
        let lane = queues.lane(backend);
        lane.retired && lane.running.is_none() && lane.waiting.is_empty()
    }

    /// Counts a retry on another backend (the first one failed before the request was sent).
    pub fn note_retry(&self) {
        self.lock().retries += 1;
        self.metrics.retry();
    }

    /// For `/proxy/status` and metrics.
    pub fn snapshot(&self) -> SchedulerStatus {
        let queues = self.lock();
        let config = self.config();
        let name = |p: Option<ProfileId>| p.map(|p| config.profile(p).name.clone());
        SchedulerStatus {
            backends: queues
                .lanes
                .iter()
                .enumerate()
                .map(|(i, l)| (l, self.expected_starts(&queues, BackendId(i))))
                .map(|(l, starts)| LaneStatus {
                    healthy: l.health.is_healthy(),
                    health: l.health.note().to_owned(),
                    retired: l.retired,
                    drained: l.drained,
                    loaded_profile: name(l.loaded),
                    running: l.running.as_ref().map(|r| RunningStatus {
                        work: r.work,
                        profile: name(r.profile),
                        key: r.client.key_name().map(str::to_owned),
                        for_ms: r.started.elapsed().as_millis() as u64,
                        client_left: r.client_left,
                    }),
                    queue: l
                        .waiting
                        .iter()
                        .zip(starts)
                        .map(|(w, start)| WaitingStatus {
                            work: w.work,
                            profile: name(w.profile),
                            key: w.client.key_name().map(str::to_owned),
                            waited_ms: w.arrived.elapsed().as_millis() as u64,
                            expected_start_ms: start.as_millis() as u64,
                            bypassed: w.bypassed,
                        })
                        .collect(),
                })
                .collect(),
            estimates: queues.estimates.learned(&config),
            reloads_avoided: queues.reorders,
            retries: queues.retries,
            max_bypassed: queues.max_bypassed,
        }
    }
}

/// A new waiter, arriving now, and where its grant will come.
fn new_waiter(
    queues: &mut Queues,
    work: Work,
    profile: Option<ProfileId>,
    client: Caller,
) -> (Waiter, oneshot::Receiver<Result<Grant, Refused>>) {
    let (sender, receiver) = oneshot::channel();
    let ticket = queues.next_ticket;
    queues.next_ticket += 1;
    let waiter = Waiter {
        ticket,
        work,
        profile,
        pinned: None,
        arrived: Instant::now(),
        bypassed: 0,
        client,
        excluded: Vec::new(),
        grant: sender,
    };
    (waiter, receiver)
}

#[derive(Debug, Clone, Serialize)]
pub struct SchedulerStatus {
    pub backends: Vec<LaneStatus>,
    pub estimates: Learned,
    /// Generations taken ahead of older ones because their profile was loaded.
    pub reloads_avoided: u64,
    /// Generations moved to another backend (the first failed before the request was sent,
    /// or went unhealthy while they waited).
    pub retries: u64,
    /// The most times any request has been passed over (never above `max_bypass`).
    pub max_bypassed: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct LaneStatus {
    pub healthy: bool,
    pub health: String,
    /// Removed from the configuration by a reload: finishing its work, taking no more.
    pub retired: bool,
    /// Taken out of rotation by an admin.
    pub drained: bool,
    pub loaded_profile: Option<String>,
    pub running: Option<RunningStatus>,
    pub queue: Vec<WaitingStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunningStatus {
    pub work: Work,
    pub profile: Option<String>,
    /// The client key's name, when keys are configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub for_ms: u64,
    /// The client went away; Forge is finishing the work, the backend stays held.
    pub client_left: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct WaitingStatus {
    pub work: Work,
    pub profile: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub waited_ms: u64,
    /// From now, as the learned durations and reload cost expect it.
    pub expected_start_ms: u64,
    pub bypassed: u32,
}

impl Ticket {
    /// Waits for a backend; returns the grant and the time waited.
    pub async fn granted(mut self) -> Result<(Grant, Duration), Refused> {
        let waited = self.queued_at;
        let answer = (&mut self.receiver).await;
        // Whoever answered (or dropped the sender) has taken the waiter out of its lane.
        self.settled = true;
        match answer {
            Ok(result) => result.map(|grant| (grant, waited.elapsed())),
            Err(_) => Err(self.scheduler.no_backend(None)),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.settled {
            self.scheduler.cancel(self.id);
        }
    }
}

impl Grant {
    pub fn backend(&self) -> BackendId {
        self.backend
    }

    /// The generation finished (response headers in hand) after `took`.
    pub fn completed(&self, took: Duration) {
        let switched = if self.switches_profile {
            Switched::Yes
        } else {
            Switched::No
        };
        let mut queues = self.scheduler.lock();
        let profile = self.scheduler.translate(&self.config, self.profile);
        queues.estimates.learn(profile, took, switched);
    }

    /// The prepare stage decided the profile (from the backend's checkpoint, when the
    /// request named none): the backend runs it, and has it loaded afterwards. Answers the
    /// profile the backend had before.
    pub fn planned(&mut self, profile: ProfileId) -> Option<ProfileId> {
        let here = self.scheduler.config.load_full();
        self.planned_as(&here, profile)
    }

    /// [`Grant::planned`] for a profile of configuration `from`; the profile had before is
    /// answered in `from` too.
    pub fn planned_as(&mut self, from: &Config, profile: ProfileId) -> Option<ProfileId> {
        let mut queues = self.scheduler.lock();
        let here = self.scheduler.config.load_full();
        let had = self
            .had
            .and_then(|had| from.profile_named(&self.config.profile(had).name));
        let Some(profile) = self.scheduler.translate(from, Some(profile)) else {
            // Removed by a reload since the request chose it: nothing to learn or record.
            return had;
        };
        let before = self
            .had
            .and_then(|had| here.profile_named(&self.config.profile(had).name));
        self.switches_profile = before.is_some_and(|before| before != profile);
        let lane = queues.lane_mut(self.backend);
        if let Some(running) = lane.running.as_mut().filter(|r| r.ticket == self.ticket) {
            running.profile = Some(profile);
        }
        lane.loaded = Some(profile);
        self.scheduler.changed();
        self.had = before;
        self.profile = Some(profile);
        self.config = here;
        had
    }

    /// The backend unloaded its model: nothing is loaded.
    pub fn unloaded(&self) {
        let mut queues = self.scheduler.lock();
        queues.lane_mut(self.backend).loaded = None;
        self.scheduler.changed();
    }

    /// The client of this work went away: `/proxy/status` shows the backend still held.
    pub fn note_client_left(&self) {
        let mut queues = self.scheduler.lock();
        if let Some(running) = queues
            .lane_mut(self.backend)
            .running
            .as_mut()
            .filter(|r| r.ticket == self.ticket)
        {
            running.client_left = true;
            self.scheduler.changed();
        }
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        if self.armed {
            self.scheduler.release(self.backend, self.ticket);
        }
    }
}

#[cfg(test)]
mod tests;
