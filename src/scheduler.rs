//! Which backend runs a generation, and in which order each backend runs its queue.
//!
//! Every backend runs one generation at a time (Forge does anyway); the others wait here,
//! in the proxy, not inside Forge. A request is placed when it arrives: on the healthy
//! backend allowed for its profile with the lowest expected wait, counting a model reload
//! where the backend has another profile loaded. A backend that becomes free takes the
//! oldest waiting request, or a later one of the profile it has loaded when no request
//! ahead of it has been passed over `max_bypass` times or waited `max_wait`.
//!
//! One `std` mutex guards the queues; it is never held across `.await`.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::config::{self, Routing};
use crate::metrics::Metrics;

/// Before the first generations are measured: a generation.
const INITIAL_DURATION: Duration = Duration::from_secs(10);
/// Until a reload has been measured it is taken to cost this share of the profile's
/// generation (an estimate in the backends' own time scale, not a fixed number of seconds).
/// A reload moves weights where a generation samples many steps, so below one: with nothing
/// learned, an idle backend, even one that must reload, is preferred to a queue.
const PRIOR_RELOAD_SHARE: f64 = 0.25;
/// Weight of a new measurement in the running estimates.
const LEARNING_RATE: f64 = 0.3;

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
}

/// One backend's queue and state.
struct Lane {
    healthy: bool,
    /// Why the backend is unhealthy, or the last check's note.
    health_note: String,
    failures: u32,
    successes: u32,
    /// Profiles it may serve (empty: all).
    serves: Vec<usize>,
    weight: f64,
    waiting: VecDeque<Waiter>,
    running: Option<Running>,
    /// The profile of the generation dispatched last: what Forge has loaded.
    loaded: Option<usize>,
}

struct Waiter {
    ticket: u64,
    work: Work,
    profile: Option<usize>,
    /// The one backend it must run on (a client's options call for that backend).
    pinned: Option<usize>,
    arrived: Instant,
    bypassed: u32,
    client: Option<IpAddr>,
    /// Backends this request already failed on (before it was sent): never placed there.
    excluded: Vec<usize>,
    grant: oneshot::Sender<Result<Grant, Refused>>,
}

struct Running {
    ticket: u64,
    work: Work,
    profile: Option<usize>,
    started: Instant,
    client: Option<IpAddr>,
    /// Its client went away; the backend stays held until Forge has finished.
    client_left: bool,
}

/// What holds a backend: a generation, or a client's options call that changes its
/// checkpoint (with the memory the proxy adds). Either is the backend's one critical
/// section: nothing else is sent to it that changes options or generates meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Work {
    Generation,
    Options,
}

/// Which backend a request that is not a generation goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    /// `/progress`, `/interrupt`, `/skip`: the backend running this client's generation.
    ClientsGeneration,
    /// Anything else: the first healthy backend, or round robin.
    Any,
}

struct Queues {
    lanes: Vec<Lane>,
    next_ticket: u64,
    /// Running estimates per profile (index) of a generation's duration, and of a reload.
    durations: Vec<Option<f64>>,
    reload: Option<f64>,
    round_robin: usize,
    rng: u64,
    reorders: u64,
    retries: u64,
    /// The most times any request has been passed over.
    max_bypassed: u32,
}

pub struct Scheduler {
    config: config::Scheduler,
    metrics: Metrics,
    /// Backend URLs, for metric labels.
    urls: Vec<String>,
    profile_names: Vec<String>,
    health: config::Health,
    queues: Mutex<Queues>,
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

/// The right to run one generation on `backend`; dropping it frees the backend.
pub struct Grant {
    scheduler: Arc<Scheduler>,
    backend: usize,
    ticket: u64,
    profile: Option<usize>,
    /// The backend had another profile loaded: this generation pays a reload.
    pub switches_profile: bool,
    /// Set once the grant is in a waiter's hands; an undelivered grant frees nothing.
    armed: bool,
}

impl Lane {
    /// Healthy and allowed to serve `profile` (`None`: any profile will do).
    fn takes(&self, profile: Option<usize>) -> bool {
        self.healthy && profile.is_none_or(|p| self.serves.is_empty() || self.serves.contains(&p))
    }
}

impl Scheduler {
    pub fn new(config: &config::Config, metrics: Metrics) -> Arc<Self> {
        let lanes = config
            .backends
            .iter()
            .map(|b| Lane {
                healthy: true,
                health_note: "not checked yet".to_owned(),
                failures: 0,
                successes: 0,
                serves: b.profiles.clone(),
                weight: b.weight,
                waiting: VecDeque::new(),
                running: None,
                loaded: None,
            })
            .collect();
        Arc::new(Self {
            config: config.scheduler.clone(),
            metrics,
            urls: config.backends.iter().map(|b| b.url.clone()).collect(),
            profile_names: config.profiles.iter().map(|p| p.name.clone()).collect(),
            health: config.health.clone(),
            queues: Mutex::new(Queues {
                lanes,
                next_ticket: 1,
                durations: vec![None; config.profiles.len()],
                reload: None,
                round_robin: 0,
                rng: 0x9e37_79b9_7f4a_7c15,
                reorders: 0,
                retries: 0,
                max_bypassed: 0,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Places a generation of `profile` (`None`: decided by the backend's checkpoint) on a
    /// backend other than those in `exclude`.
    pub fn enqueue(
        self: &Arc<Self>,
        profile: Option<usize>,
        client: Option<IpAddr>,
        exclude: &[usize],
    ) -> Result<Ticket, Refused> {
        let mut queues = self.lock();
        let (waiter, receiver) = new_waiter(&mut queues, Work::Generation, profile, client);
        let id = waiter.ticket;
        let waiter = Waiter {
            excluded: exclude.to_vec(),
            ..waiter
        };
        self.place(&mut queues, waiter)?;
        Ok(self.ticket(id, receiver))
    }

    /// Queues a client's options call on `backend`, whatever its queue length (the call
    /// takes milliseconds); it waits its turn like a generation, is never moved to another
    /// backend, and holds `backend` while it runs.
    pub fn enqueue_on(
        self: &Arc<Self>,
        backend: usize,
        profile: Option<usize>,
        client: Option<IpAddr>,
    ) -> Ticket {
        let mut queues = self.lock();
        let (waiter, receiver) = new_waiter(&mut queues, Work::Options, profile, client);
        let id = waiter.ticket;
        if let Some(lane) = queues.lanes.get_mut(backend) {
            lane.waiting.push_back(Waiter {
                pinned: Some(backend),
                ..waiter
            });
            self.dispatch(&mut queues, backend);
            self.publish_lengths(&queues);
        }
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

    /// Puts a waiter on the best lane, or refuses it.
    fn place(self: &Arc<Self>, queues: &mut Queues, waiter: Waiter) -> Result<(), Refused> {
        let total: usize = queues.lanes.iter().map(|l| l.waiting.len()).sum();
        let candidates: Vec<usize> = candidates(queues, &waiter, None).collect();
        if candidates.is_empty() {
            return Err(self.no_backend(waiter.profile));
        }
        let with_room: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|i| queues.lanes[*i].waiting.len() < self.config.queue_per_backend)
            .collect();
        if with_room.is_empty() || total >= self.config.queue_total {
            let retry_after = candidates
                .iter()
                .map(|i| self.expected_wait(queues, *i))
                .fold(Duration::MAX, Duration::min)
                .max(Duration::from_secs(1));
            return Err(Refused::QueueFull {
                waiting: total,
                retry_after: Duration::from_secs(retry_after.as_secs_f64().ceil() as u64),
            });
        }
        let chosen = match self.config.routing {
            Routing::Random => {
                queues.rng ^= queues.rng << 13;
                queues.rng ^= queues.rng >> 7;
                queues.rng ^= queues.rng << 17;
                with_room[(queues.rng % with_room.len() as u64) as usize]
            }
            Routing::Affinity => {
                let cost = |i: usize| {
                    let lane = &queues.lanes[i];
                    let reload = match waiter.profile {
                        Some(p) if lane.loaded != Some(p) => self.reload_estimate(queues, Some(p)),
                        _ => Duration::ZERO,
                    };
                    self.expected_wait(queues, i) + reload.div_f64(lane.weight)
                };
                with_room
                    .iter()
                    .copied()
                    .min_by(|a, b| cost(*a).cmp(&cost(*b)))
                    .unwrap_or(with_room[0])
            }
        };
        queues.lanes[chosen].waiting.push_back(waiter);
        self.dispatch(queues, chosen);
        self.publish_lengths(queues);
        Ok(())
    }

    /// No backend may take `profile`.
    fn no_backend(&self, profile: Option<usize>) -> Refused {
        Refused::NoBackend {
            profile: profile.map_or("(any)".to_owned(), |p| self.profile_names[p].clone()),
        }
    }

    fn publish_lengths(&self, queues: &Queues) {
        for (lane, url) in queues.lanes.iter().zip(&self.urls) {
            self.metrics.queue_length(url, lane.waiting.len() as u64);
        }
    }

    /// Time until a new arrival on `lane` would start: what runs, and what waits.
    fn expected_wait(&self, queues: &Queues, lane: usize) -> Duration {
        let l = &queues.lanes[lane];
        let running = l.running.as_ref().map_or(Duration::ZERO, |r| {
            self.duration_estimate(queues, r.profile)
                .saturating_sub(r.started.elapsed())
        });
        let mut loaded = l
            .running
            .as_ref()
            .map_or(l.loaded, |r| r.profile.or(l.loaded));
        let mut waiting = Duration::ZERO;
        for w in &l.waiting {
            waiting += self.duration_estimate(queues, w.profile);
            if w.profile.is_some() && w.profile != loaded {
                waiting += self.reload_estimate(queues, w.profile);
                loaded = w.profile;
            }
        }
        (running + waiting).div_f64(l.weight)
    }

    /// A generation of `profile`: what was learned for it, else the average of what was
    /// learned for the others (the backends' own time scale), else [`INITIAL_DURATION`].
    fn duration_estimate(&self, queues: &Queues, profile: Option<usize>) -> Duration {
        let learned = profile.and_then(|p| queues.durations[p]).or_else(|| {
            let (sum, count) = queues
                .durations
                .iter()
                .flatten()
                .fold((0.0, 0u32), |(sum, count), d| (sum + d, count + 1));
            (count > 0).then(|| sum / f64::from(count))
        });
        learned.map_or(INITIAL_DURATION, Duration::from_secs_f64)
    }

    /// A model reload to `profile`: what was learned of reloads, else a share of the
    /// profile's generation ([`PRIOR_RELOAD_SHARE`]).
    fn reload_estimate(&self, queues: &Queues, profile: Option<usize>) -> Duration {
        queues.reload.map_or_else(
            || {
                self.duration_estimate(queues, profile)
                    .mul_f64(PRIOR_RELOAD_SHARE)
            },
            Duration::from_secs_f64,
        )
    }

    /// Starts the next generation on a free lane, if one waits.
    fn dispatch(self: &Arc<Self>, queues: &mut Queues, lane: usize) {
        if queues.lanes[lane].running.is_some() {
            return;
        }
        loop {
            let Some(index) = self.pick(&queues.lanes[lane]) else {
                if self.steal(queues, lane) {
                    continue;
                }
                return;
            };
            if index > 0 {
                queues.reorders += 1;
                self.metrics.reload_avoided(&self.urls[lane]);
            }
            let l = &mut queues.lanes[lane];
            let mut most = 0;
            for w in l.waiting.iter_mut().take(index) {
                w.bypassed += 1;
                most = most.max(w.bypassed);
            }
            queues.max_bypassed = queues.max_bypassed.max(most);
            let l = &mut queues.lanes[lane];
            let Some(waiter) = l.waiting.remove(index) else {
                return;
            };
            let switches_profile =
                matches!((waiter.profile, l.loaded), (Some(p), Some(q)) if p != q);
            l.running = Some(Running {
                ticket: waiter.ticket,
                work: waiter.work,
                profile: waiter.profile,
                started: Instant::now(),
                client: waiter.client,
                client_left: false,
            });
            if waiter.profile.is_some() {
                l.loaded = waiter.profile;
            }
            let grant = Grant {
                scheduler: self.clone(),
                backend: lane,
                ticket: waiter.ticket,
                profile: waiter.profile,
                switches_profile,
                armed: true,
            };
            match waiter.grant.send(Ok(grant)) {
                Ok(()) => return,
                Err(Ok(mut undelivered)) => {
                    // The client left between its removal check and now: free the lane
                    // here, under the lock, and offer it to the next waiter.
                    undelivered.armed = false;
                    queues.lanes[lane].running = None;
                }
                Err(Err(_)) => queues.lanes[lane].running = None,
            }
        }
    }

    /// A free lane with nothing queued takes a waiter from another lane: the oldest of its
    /// loaded profile (no reload), else the oldest one whose wait where it is would be
    /// longer than a reload here. With `max_bypass = 0`, simply the oldest it may serve.
    fn steal(&self, queues: &mut Queues, lane: usize) -> bool {
        let here = &queues.lanes[lane];
        if !here.healthy {
            return false;
        }
        let fifo = self.config.max_bypass == 0;
        let mut best: Option<(usize, usize, bool, Instant)> = None;
        for (o, other) in queues.lanes.iter().enumerate() {
            if o == lane {
                continue;
            }
            let mut ahead = other.running.as_ref().map_or(Duration::ZERO, |r| {
                self.duration_estimate(queues, r.profile)
                    .saturating_sub(r.started.elapsed())
            });
            for (i, w) in other.waiting.iter().enumerate() {
                let wait_there = ahead;
                ahead += self.duration_estimate(queues, w.profile);
                if w.pinned.is_some() || w.excluded.contains(&lane) || !here.takes(w.profile) {
                    continue;
                }
                let reload = self.reload_estimate(queues, w.profile);
                let matches =
                    w.profile.is_none() || here.loaded.is_none() || w.profile == here.loaded;
                if !fifo && !matches && wait_there <= reload {
                    continue;
                }
                let better = match best {
                    None => true,
                    Some((_, _, best_matches, best_arrived)) if fifo || matches == best_matches => {
                        w.arrived < best_arrived
                    }
                    Some((_, _, best_matches, _)) => matches && !best_matches,
                };
                if better {
                    best = Some((o, i, matches, w.arrived));
                }
            }
        }
        let Some((from, index, _, _)) = best else {
            return false;
        };
        let Some(waiter) = queues.lanes[from].waiting.remove(index) else {
            return false;
        };
        queues.lanes[lane].waiting.push_back(waiter);
        true
    }

    /// The waiter a free lane takes: the first of the loaded profile, unless someone ahead
    /// of it can no longer be passed over; else the oldest.
    fn pick(&self, lane: &Lane) -> Option<usize> {
        if lane.waiting.is_empty() {
            return None;
        }
        for (i, w) in lane.waiting.iter().enumerate() {
            let matches = w.profile.is_none() || lane.loaded.is_none() || w.profile == lane.loaded;
            if matches {
                return Some(i);
            }
            let waited_too_long = self
                .config
                .max_wait
                .is_some_and(|limit| w.arrived.elapsed() >= limit);
            if w.bypassed >= self.config.max_bypass || waited_too_long {
                return Some(i);
            }
        }
        Some(0)
    }

    /// A generation finished on `backend` (its grant was dropped): learn, then go on.
    fn release(self: &Arc<Self>, backend: usize, ticket: u64) {
        let mut queues = self.lock();
        let lane = &mut queues.lanes[backend];
        if lane.running.as_ref().is_some_and(|r| r.ticket == ticket) {
            lane.running = None;
        }
        self.dispatch(&mut queues, backend);
        self.publish_lengths(&queues);
    }

    /// Records how long a generation took, to estimate the next ones.
    fn learn(&self, profile: Option<usize>, took: Duration, switched: bool) {
        let mut queues = self.lock();
        let seconds = took.as_secs_f64();
        let blend = |old: Option<f64>, new: f64| {
            Some(old.map_or(new, |old| old + LEARNING_RATE * (new - old)))
        };
        match (profile, switched) {
            (Some(p), false) => queues.durations[p] = blend(queues.durations[p], seconds),
            (Some(p), true) => {
                let usual = queues.durations[p].unwrap_or(seconds);
                let reload = (seconds - usual).max(0.0);
                queues.reload = blend(queues.reload, reload);
                if queues.durations[p].is_none() {
                    queues.durations[p] = Some(seconds);
                }
            }
            (None, _) => {}
        }
    }

    /// Removes a waiter whose client went away.
    fn cancel(&self, ticket: u64) {
        let mut queues = self.lock();
        for lane in &mut queues.lanes {
            lane.waiting.retain(|w| w.ticket != ticket);
        }
        self.publish_lengths(&queues);
    }

    /// A health observation for `backend`. `immediate` (a refused connection) turns it
    /// unhealthy at once; otherwise the configured thresholds apply. Waiters of a backend
    /// that turns unhealthy move to the others.
    pub fn report_health(
        self: &Arc<Self>,
        backend: usize,
        ok: bool,
        note: String,
        immediate: bool,
    ) {
        let mut queues = self.lock();
        let lane = &mut queues.lanes[backend];
        lane.health_note = note;
        if ok {
            lane.failures = 0;
            lane.successes += 1;
            if !lane.healthy && lane.successes >= self.health.healthy_after {
                lane.healthy = true;
                tracing::info!(backend, "backend is healthy again");
                // Idle: it takes work queued on the others at once, not at the next arrival.
                self.dispatch(&mut queues, backend);
            }
            return;
        }
        lane.successes = 0;
        lane.failures += 1;
        // Without active checks nothing would bring a backend back: keep it in rotation.
        let can_return = self.health.interval.is_some();
        if can_return && lane.healthy && (immediate || lane.failures >= self.health.unhealthy_after)
        {
            lane.healthy = false;
            tracing::warn!(backend, reason = %lane.health_note, "backend is unhealthy: no new work");
            let moving: Vec<Waiter> = lane.waiting.drain(..).collect();
            for waiter in moving {
                let sender_profile = waiter.profile;
                let mut waiter = waiter;
                // Keep its place in time: it has been waiting already.
                waiter.bypassed = 0;
                let ticket = waiter.ticket;
                if let Err(refused) = self.place_moved(&mut queues, waiter, backend) {
                    tracing::warn!(ticket, profile = ?sender_profile, error = %refused, "queued generation could not move");
                }
            }
        }
    }

    /// Re-places a waiter taken from an unhealthy lane; tells it when nowhere is left.
    fn place_moved(
        self: &Arc<Self>,
        queues: &mut Queues,
        waiter: Waiter,
        from: usize,
    ) -> Result<(), Refused> {
        // `place` consumes the waiter; on refusal the waiter must still hear about it, so
        // check the candidates first with the same rules.
        if candidates(queues, &waiter, Some(from)).next().is_none() {
            let refused = self.no_backend(waiter.profile);
            let _ = waiter.grant.send(Err(refused.clone()));
            return Err(refused);
        }
        queues.retries += 1;
        self.metrics.retry();
        self.place_unbounded(queues, waiter, from);
        Ok(())
    }

    /// Like `place`, without queue limits (the work was already accepted).
    fn place_unbounded(self: &Arc<Self>, queues: &mut Queues, waiter: Waiter, from: usize) {
        let best =
            candidates(queues, &waiter, Some(from)).min_by_key(|i| self.expected_wait(queues, *i));
        if let Some(lane) = best {
            // Arrival order is kept: it goes behind those that arrived before it.
            let position = queues.lanes[lane]
                .waiting
                .iter()
                .position(|w| w.arrived > waiter.arrived)
                .unwrap_or(queues.lanes[lane].waiting.len());
            queues.lanes[lane].waiting.insert(position, waiter);
            self.dispatch(queues, lane);
        }
    }

    /// A client's checkpoint change made `backend` load `profile`.
    pub fn note_loaded(&self, backend: usize, profile: usize) {
        self.lock().lanes[backend].loaded = Some(profile);
    }

    pub fn is_healthy(&self, backend: usize) -> bool {
        self.lock().lanes[backend].healthy
    }

    /// Counts a retry on another backend (the first one failed before the request was sent).
    pub fn note_retry(&self) {
        self.lock().retries += 1;
        self.metrics.retry();
    }

    /// Where a request that is not a generation goes. `/progress`, `/interrupt` and `/skip`
    /// follow the client's running generation: the backend running one from the same
    /// address, else the only busy backend; everything else (and those, failing that) goes
    /// to the first healthy backend, or round robin over the healthy ones.
    pub fn pass_through_backend(&self, follow: Follow, client: Option<IpAddr>) -> usize {
        // On every request: no allocation, one short lock.
        let mut queues = self.lock();
        if follow == Follow::ClientsGeneration {
            let running = || {
                queues
                    .lanes
                    .iter()
                    .enumerate()
                    .filter_map(|(i, l)| l.running.as_ref().map(|r| (i, r.client)))
            };
            if let Some((i, _)) = running().find(|(_, c)| client.is_some() && *c == client) {
                return i;
            }
            let mut busy = running();
            if let (Some((only, _)), None) = (busy.next(), busy.next()) {
                return only;
            }
        }
        let healthy = queues.lanes.iter().filter(|l| l.healthy).count();
        let nth = match (self.config.pass_through, healthy) {
            (_, 0) => return 0,
            (config::PassThroughRouting::First, _) => 0,
            (config::PassThroughRouting::RoundRobin, n) => {
                queues.round_robin = queues.round_robin.wrapping_add(1);
                queues.round_robin % n
            }
        };
        (0..queues.lanes.len())
            .filter(|i| queues.lanes[*i].healthy)
            .nth(nth)
            .unwrap_or(0)
    }

    /// For `/proxy/status` and metrics.
    pub fn snapshot(&self) -> SchedulerStatus {
        let queues = self.lock();
        let name = |p: Option<usize>| p.map(|p| self.profile_names[p].clone());
        SchedulerStatus {
            backends: queues
                .lanes
                .iter()
                .map(|l| LaneStatus {
                    healthy: l.healthy,
                    health: l.health_note.clone(),
                    loaded_profile: name(l.loaded),
                    running: l.running.as_ref().map(|r| RunningStatus {
                        work: r.work,
                        profile: name(r.profile),
                        for_ms: r.started.elapsed().as_millis() as u64,
                        client_left: r.client_left,
                    }),
                    queue: l
                        .waiting
                        .iter()
                        .map(|w| WaitingStatus {
                            work: w.work,
                            profile: name(w.profile),
                            waited_ms: w.arrived.elapsed().as_millis() as u64,
                            bypassed: w.bypassed,
                        })
                        .collect(),
                })
                .collect(),
            estimates: Estimates {
                duration_s: self
                    .profile_names
                    .iter()
                    .zip(&queues.durations)
                    .filter_map(|(n, d)| d.map(|d| (n.clone(), d)))
                    .collect(),
                reload_s: queues.reload,
            },
            reloads_avoided: queues.reorders,
            retries: queues.retries,
            max_bypassed: queues.max_bypassed,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SchedulerStatus {
    pub backends: Vec<LaneStatus>,
    pub estimates: Estimates,
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
    pub loaded_profile: Option<String>,
    pub running: Option<RunningStatus>,
    pub queue: Vec<WaitingStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunningStatus {
    pub work: Work,
    pub profile: Option<String>,
    pub for_ms: u64,
    /// The client went away; Forge is finishing the work, the backend stays held.
    pub client_left: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct WaitingStatus {
    pub work: Work,
    pub profile: Option<String>,
    pub waited_ms: u64,
    pub bypassed: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Estimates {
    /// Learned duration of a generation per profile, in seconds.
    pub duration_s: std::collections::BTreeMap<String, f64>,
    /// Learned cost of a model reload, in seconds.
    pub reload_s: Option<f64>,
}

/// A new waiter, arriving now, and where its grant will come.
fn new_waiter(
    queues: &mut Queues,
    work: Work,
    profile: Option<usize>,
    client: Option<IpAddr>,
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

/// The lanes that may take `waiter`: not excluded for it, not `skip`, healthy and serving
/// its profile.
fn candidates<'a>(
    queues: &'a Queues,
    waiter: &'a Waiter,
    skip: Option<usize>,
) -> impl Iterator<Item = usize> + 'a {
    (0..queues.lanes.len()).filter(move |i| {
        Some(*i) != skip
            && waiter.pinned.is_none_or(|p| p == *i)
            && !waiter.excluded.contains(i)
            && queues.lanes[*i].takes(waiter.profile)
    })
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
    pub fn backend(&self) -> usize {
        self.backend
    }

    /// The generation finished (response headers in hand) after `took`.
    pub fn completed(&self, took: Duration) {
        self.scheduler
            .learn(self.profile, took, self.switches_profile);
    }

    /// The prepare stage decided the profile (from the backend's checkpoint, when the
    /// request named none): the backend runs it, and has it loaded afterwards.
    pub fn planned(&mut self, profile: usize) {
        let mut queues = self.scheduler.lock();
        let lane = &mut queues.lanes[self.backend];
        if self.profile != Some(profile) {
            self.switches_profile = lane.loaded.is_some_and(|loaded| loaded != profile);
        }
        if let Some(running) = lane.running.as_mut().filter(|r| r.ticket == self.ticket) {
            running.profile = Some(profile);
        }
        lane.loaded = Some(profile);
        self.profile = Some(profile);
    }

    /// The client of this work went away: `/proxy/status` shows the backend still held.
    pub fn note_client_left(&self) {
        let mut queues = self.scheduler.lock();
        if let Some(running) = queues.lanes[self.backend]
            .running
            .as_mut()
            .filter(|r| r.ticket == self.ticket)
        {
            running.client_left = true;
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
mod tests {
    use super::*;
    use crate::config::from_toml_str;

    fn scheduler(extra: &str) -> Arc<Scheduler> {
        let toml = format!(
            "[[backends]]\nurl = \"http://a:1\"\n[[backends]]\nurl = \"http://b:1\"\nprofiles = [\"sd15\", \"sdxl\"]\n{extra}"
        );
        Scheduler::new(&from_toml_str(&toml).unwrap(), Metrics::new())
    }

    const FLUX: Option<usize> = Some(0);
    const SDXL: Option<usize> = Some(1);
    const SD15: Option<usize> = Some(2);

    async fn grant(ticket: Ticket) -> Grant {
        ticket.granted().await.unwrap().0
    }

    #[tokio::test]
    async fn idle_backend_starts_at_once_and_profiles_go_where_allowed() {
        let s = scheduler("");
        let flux = grant(s.enqueue(FLUX, None, &[]).unwrap()).await;
        assert_eq!(flux.backend(), 0, "only backend 0 serves flux");
        let sd = grant(s.enqueue(SD15, None, &[]).unwrap()).await;
        assert_eq!(sd.backend(), 1, "backend 0 is busy");
        let refused = s.enqueue(FLUX, None, &[0]).err();
        assert_eq!(
            refused,
            Some(Refused::NoBackend {
                profile: "flux".into()
            })
        );
    }

    #[tokio::test]
    async fn a_free_backend_prefers_its_loaded_profile_within_max_bypass() {
        let s = scheduler("[scheduler]\nmax_bypass = 1\n");
        // Backend 1 only: one lane to watch.
        let first = grant(s.enqueue(SD15, None, &[0]).unwrap()).await;
        let a = s.enqueue(SDXL, None, &[0]).unwrap();
        let b = s.enqueue(SD15, None, &[0]).unwrap();
        let c = s.enqueue(SD15, None, &[0]).unwrap();
        drop(first);
        // b (sd15, loaded) goes before a (sdxl): a is passed over once.
        let b = grant(b).await;
        let status = s.snapshot();
        assert_eq!(status.backends[1].queue[0].bypassed, 1);
        drop(b);
        // a may not be passed over again: it goes before c.
        let a = grant(a).await;
        assert_eq!(s.snapshot().backends[1].queue.len(), 1);
        drop(a);
        drop(grant(c).await);
        assert_eq!(s.snapshot().reloads_avoided, 1);
    }

    #[tokio::test]
    async fn max_bypass_zero_is_first_come_first_served() {
        let s = scheduler("[scheduler]\nmax_bypass = 0\n");
        let first = grant(s.enqueue(SD15, None, &[0]).unwrap()).await;
        let a = s.enqueue(SDXL, None, &[0]).unwrap();
        let b = s.enqueue(SD15, None, &[0]).unwrap();
        drop(first);
        let a = grant(a).await;
        assert_eq!(
            s.snapshot().backends[1]
                .running
                .as_ref()
                .unwrap()
                .profile
                .as_deref(),
            Some("sdxl")
        );
        drop(a);
        drop(grant(b).await);
        assert_eq!(s.snapshot().reloads_avoided, 0);
    }

    #[tokio::test]
    async fn a_client_that_leaves_leaves_the_queue() {
        let s = scheduler("");
        let running = grant(s.enqueue(FLUX, None, &[]).unwrap()).await;
        let waiting = s.enqueue(FLUX, None, &[]).unwrap();
        assert_eq!(s.snapshot().backends[0].queue.len(), 1);
        drop(waiting);
        assert!(s.snapshot().backends[0].queue.is_empty());
        drop(running);
        assert!(s.snapshot().backends[0].running.is_none());
    }

    #[tokio::test]
    async fn full_queues_refuse_with_retry_after() {
        let s = scheduler("[scheduler]\nqueue_per_backend = 1\nqueue_total = 5\n");
        let _running = grant(s.enqueue(FLUX, None, &[]).unwrap()).await;
        let _waiting = s.enqueue(FLUX, None, &[]).unwrap();
        match s.enqueue(FLUX, None, &[]) {
            Err(Refused::QueueFull {
                waiting,
                retry_after,
            }) => {
                assert_eq!(waiting, 1);
                assert!(retry_after >= Duration::from_secs(1));
            }
            other => panic!("expected a full queue, got {:?}", other.map(|_| ())),
        }
    }

    #[tokio::test]
    async fn a_backend_that_comes_back_takes_work_queued_elsewhere() {
        let s = scheduler("");
        s.report_health(1, false, "connection refused".into(), true);
        let running = grant(s.enqueue(SD15, None, &[]).unwrap()).await;
        assert_eq!(running.backend(), 0);
        let waiting = s.enqueue(SD15, None, &[]).unwrap();
        assert_eq!(s.snapshot().backends[0].queue.len(), 1);
        s.report_health(1, true, "check answered 200".into(), false);
        let moved = tokio::time::timeout(Duration::from_secs(1), grant(waiting))
            .await
            .expect("the backend that came back takes the queued generation");
        assert_eq!(moved.backend(), 1);
        drop(running);
    }

    #[tokio::test]
    async fn waiters_of_an_unhealthy_backend_move_to_a_healthy_one() {
        let s = scheduler("");
        let on_a = grant(s.enqueue(SD15, None, &[1]).unwrap()).await;
        let on_b = grant(s.enqueue(SD15, None, &[0]).unwrap()).await;
        // Both busy with sd15: equal waits, the first backend gets it.
        let waiting = s.enqueue(SD15, None, &[]).unwrap();
        assert_eq!(s.snapshot().backends[0].queue.len(), 1);
        s.report_health(0, false, "connection refused".into(), true);
        assert!(!s.is_healthy(0));
        assert_eq!(
            s.snapshot().backends[1].queue.len(),
            1,
            "moved to backend 1"
        );
        drop(on_b);
        assert_eq!(grant(waiting).await.backend(), 1);
        drop(on_a);
        s.report_health(0, true, "ok".into(), false);
        assert!(s.is_healthy(0));
        assert_eq!(s.snapshot().retries, 1);
    }

    #[tokio::test]
    async fn affinity_prefers_the_backend_with_the_profile_loaded() {
        let s = scheduler("");
        drop(grant(s.enqueue(SDXL, None, &[1]).unwrap()).await); // backend 0 has sdxl
        drop(grant(s.enqueue(SD15, None, &[0]).unwrap()).await); // backend 1 has sd15
        assert_eq!(
            grant(s.enqueue(SD15, None, &[]).unwrap()).await.backend(),
            1
        );
        assert_eq!(
            grant(s.enqueue(SDXL, None, &[]).unwrap()).await.backend(),
            0
        );
    }

    #[tokio::test]
    async fn progress_follows_the_clients_generation_and_the_rest_goes_first_or_round_robin() {
        let s = scheduler("");
        let alice: IpAddr = "10.0.0.1".parse().unwrap();
        let bob: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(
            s.pass_through_backend(Follow::ClientsGeneration, Some(alice)),
            0
        );
        let running = grant(s.enqueue(SD15, Some(alice), &[0]).unwrap()).await;
        assert_eq!(running.backend(), 1);
        // The only busy backend, for anyone; the options call goes to the first healthy one.
        assert_eq!(
            s.pass_through_backend(Follow::ClientsGeneration, Some(bob)),
            1
        );
        assert_eq!(s.pass_through_backend(Follow::Any, Some(alice)), 0);
        let other = grant(s.enqueue(FLUX, Some(bob), &[]).unwrap()).await;
        assert_eq!(other.backend(), 0);
        assert_eq!(
            s.pass_through_backend(Follow::ClientsGeneration, Some(alice)),
            1
        );
        assert_eq!(
            s.pass_through_backend(Follow::ClientsGeneration, Some(bob)),
            0
        );

        let round_robin = scheduler("[scheduler]\npass_through = \"round_robin\"\n");
        let picks: Vec<usize> = (0..4)
            .map(|_| round_robin.pass_through_backend(Follow::Any, None))
            .collect();
        assert_eq!(picks, [1, 0, 1, 0]);
        round_robin.report_health(1, false, "down".into(), true);
        assert_eq!(round_robin.pass_through_backend(Follow::Any, None), 0);
    }

    #[tokio::test]
    async fn a_free_backend_takes_work_queued_behind_a_busy_one() {
        tokio::time::pause();
        for config in ["[scheduler]\nmax_bypass = 0\n", ""] {
            let s = scheduler(config);
            let flux = grant(s.enqueue(FLUX, None, &[1]).unwrap()).await;
            let sd = grant(s.enqueue(SD15, None, &[0]).unwrap()).await;
            // Nothing learned: it waits behind the sd15 backend (10 s) rather than on the
            // flux one (10 s + a reload, a quarter of a generation until one is measured)...
            let waiting = s.enqueue(SD15, None, &[]).unwrap();
            assert_eq!(s.snapshot().backends[1].queue.len(), 1);
            drop(flux);
            // ...and once the flux backend is free, an unknown wait is longer than a reload
            // there: first come first served and affinity alike take it at once.
            let now = s.snapshot();
            assert_eq!(
                now.backends[0].running.as_ref().unwrap().profile.as_deref(),
                Some("sd15"),
                "{config}"
            );
            assert!(now.backends[1].queue.is_empty());
            assert_eq!(grant(waiting).await.backend(), 0);
            drop(sd);
        }
    }

    #[tokio::test]
    async fn affinity_keeps_work_behind_a_short_wait_when_a_reload_costs_more() {
        tokio::time::pause();
        let s = scheduler("");
        // Learned: an sd15 generation takes 1 s, a reload 30 s.
        {
            let mut queues = s.lock();
            queues.durations[2] = Some(1.0);
            queues.reload = Some(30.0);
        }
        let flux = grant(s.enqueue(FLUX, None, &[1]).unwrap()).await;
        let sd = grant(s.enqueue(SD15, None, &[0]).unwrap()).await;
        let waiting = s.enqueue(SD15, None, &[]).unwrap();
        drop(flux);
        // Its wait behind sd15 (under 1 s) is shorter than a reload on the flux backend.
        let now = s.snapshot();
        assert!(now.backends[0].running.is_none());
        assert_eq!(now.backends[1].queue.len(), 1);
        drop(sd);
        assert_eq!(grant(waiting).await.backend(), 1);
    }

    #[tokio::test]
    async fn max_wait_ends_reordering_past_a_request_that_waited_too_long() {
        tokio::time::pause();
        for (config, first) in [
            ("[scheduler]\nmax_bypass = 100\nmax_wait = \"5s\"\n", "sdxl"),
            (
                "[scheduler]\nmax_bypass = 100\nmax_wait = \"60s\"\n",
                "sd15",
            ),
        ] {
            let s = scheduler(config);
            let running = grant(s.enqueue(SD15, None, &[0]).unwrap()).await;
            let older = s.enqueue(SDXL, None, &[0]).unwrap();
            let loaded = s.enqueue(SD15, None, &[0]).unwrap();
            tokio::time::advance(Duration::from_secs(6)).await;
            drop(running);
            let now = s.snapshot();
            assert_eq!(
                now.backends[1].running.as_ref().unwrap().profile.as_deref(),
                Some(first),
                "{config}"
            );
            drop((older, loaded));
        }
    }

    /// Eight generations, flux and sd15 in turn, on two idle backends that serve both;
    /// each runs for its profile's time. Answers (backend, profile) in the order they ran,
    /// and when the last one ended.
    async fn burst(s: &Arc<Scheduler>) -> (Vec<(usize, &'static str)>, Duration) {
        let started = Instant::now();
        let ran = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..8 {
            let (profile, name, seconds) = if i % 2 == 0 {
                (FLUX, "flux", 4)
            } else {
                (SD15, "sd15", 1)
            };
            let ticket = s.enqueue(profile, None, &[]).unwrap();
            let ran = ran.clone();
            tasks.push(tokio::spawn(async move {
                let (grant, _) = ticket.granted().await.unwrap();
                ran.lock().unwrap().push((grant.backend(), name));
                tokio::time::sleep(Duration::from_secs(seconds)).await;
                grant.completed(Duration::from_secs(seconds));
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let ran = ran.lock().unwrap().clone();
        (ran, started.elapsed())
    }

    #[tokio::test]
    async fn a_cold_burst_uses_every_idle_backend() {
        tokio::time::pause();
        let s = Scheduler::new(
            &from_toml_str(
                "[[backends]]\nurl = \"http://a:1\"\n[[backends]]\nurl = \"http://b:1\"\n",
            )
            .unwrap(),
            Metrics::new(),
        );
        let (ran, took) = burst(&s).await;
        let flux_on = |backend: usize| ran.iter().filter(|r| **r == (backend, "flux")).count();
        assert!(
            flux_on(0) > 0 && flux_on(1) > 0,
            "flux ran on both backends: {ran:?}"
        );
        // All four flux generations on one backend would take 16 s.
        assert!(took < Duration::from_secs(16), "{took:?}: {ran:?}");
    }

    #[tokio::test]
    async fn a_backend_never_takes_a_request_that_failed_on_it() {
        let s = scheduler("[scheduler]\nmax_bypass = 0\n");
        let flux = grant(s.enqueue(FLUX, None, &[1]).unwrap()).await;
        let sd = grant(s.enqueue(SD15, None, &[0]).unwrap()).await;
        let retried = s.enqueue(SD15, None, &[0]).unwrap();
        drop(flux);
        assert_eq!(
            s.snapshot().backends[1].queue.len(),
            1,
            "backend 0 is excluded for it"
        );
        drop(sd);
        assert_eq!(grant(retried).await.backend(), 1);
    }
}
