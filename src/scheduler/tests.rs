//! The scheduler's rules, each under its own test, time paused where it matters.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::admin::metrics::Metrics;
use crate::backend::health::HealthEvent;
use crate::config::{from_toml_str, BackendId, ProfileId};

/// A client known by nothing.
fn anyone() -> Caller {
    Caller::default()
}

/// A client known by its address.
fn from(addr: &str) -> Caller {
    Caller {
        addr: Some(addr.parse().unwrap()),
        ..Caller::default()
    }
}

fn scheduler(extra: &str) -> Arc<Scheduler> {
    let toml = format!(
        "[[backends]]\nurl = \"http://a:1\"\n[[backends]]\nurl = \"http://b:1\"\nprofiles = [\"sd15\", \"sdxl\"]\n{extra}"
    );
    Scheduler::new(Arc::new(from_toml_str(&toml).unwrap()), Metrics::new())
}

const FLUX: Option<ProfileId> = Some(ProfileId(0));
const SDXL: Option<ProfileId> = Some(ProfileId(1));
const SD15: Option<ProfileId> = Some(ProfileId(2));

async fn grant(ticket: Ticket) -> Grant {
    ticket.granted().await.unwrap().0
}

#[tokio::test]
async fn idle_backend_starts_at_once_and_profiles_go_where_allowed() {
    let s = scheduler("");
    let flux = grant(s.enqueue(FLUX, &anyone(), &[]).unwrap()).await;
    assert_eq!(flux.backend(), BackendId(0), "only backend 0 serves flux");
    let sd = grant(s.enqueue(SD15, &anyone(), &[]).unwrap()).await;
    assert_eq!(sd.backend(), BackendId(1), "backend 0 is busy");
    let refused = s.enqueue(FLUX, &anyone(), &[BackendId(0)]).err();
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
    let first = grant(s.enqueue(SD15, &anyone(), &[BackendId(0)]).unwrap()).await;
    let a = s.enqueue(SDXL, &anyone(), &[BackendId(0)]).unwrap();
    let b = s.enqueue(SD15, &anyone(), &[BackendId(0)]).unwrap();
    let c = s.enqueue(SD15, &anyone(), &[BackendId(0)]).unwrap();
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
    let first = grant(s.enqueue(SD15, &anyone(), &[BackendId(0)]).unwrap()).await;
    let a = s.enqueue(SDXL, &anyone(), &[BackendId(0)]).unwrap();
    let b = s.enqueue(SD15, &anyone(), &[BackendId(0)]).unwrap();
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
    let running = grant(s.enqueue(FLUX, &anyone(), &[]).unwrap()).await;
    let waiting = s.enqueue(FLUX, &anyone(), &[]).unwrap();
    assert_eq!(s.snapshot().backends[0].queue.len(), 1);
    drop(waiting);
    assert!(s.snapshot().backends[0].queue.is_empty());
    drop(running);
    assert!(s.snapshot().backends[0].running.is_none());
}

#[tokio::test]
async fn full_queues_refuse_with_retry_after() {
    let s = scheduler("[scheduler]\nqueue_per_backend = 1\nqueue_total = 5\n");
    let _running = grant(s.enqueue(FLUX, &anyone(), &[]).unwrap()).await;
    let _waiting = s.enqueue(FLUX, &anyone(), &[]).unwrap();
    match s.enqueue(FLUX, &anyone(), &[]) {
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
    s.report_health(
        BackendId(1),
        HealthEvent::Refused("connection refused".into()),
    );
    let running = grant(s.enqueue(SD15, &anyone(), &[]).unwrap()).await;
    assert_eq!(running.backend(), BackendId(0));
    let waiting = s.enqueue(SD15, &anyone(), &[]).unwrap();
    assert_eq!(s.snapshot().backends[0].queue.len(), 1);
    s.report_health(
        BackendId(1),
        HealthEvent::Passed("check answered 200".into()),
    );
    let moved = tokio::time::timeout(Duration::from_secs(1), grant(waiting))
        .await
        .expect("the backend that came back takes the queued generation");
    assert_eq!(moved.backend(), BackendId(1));
    drop(running);
}

#[tokio::test]
async fn waiters_of_an_unhealthy_backend_move_to_a_healthy_one() {
    let s = scheduler("");
    let on_a = grant(s.enqueue(SD15, &anyone(), &[BackendId(1)]).unwrap()).await;
    let on_b = grant(s.enqueue(SD15, &anyone(), &[BackendId(0)]).unwrap()).await;
    // Both busy with sd15: equal waits, the first backend gets it.
    let waiting = s.enqueue(SD15, &anyone(), &[]).unwrap();
    assert_eq!(s.snapshot().backends[0].queue.len(), 1);
    s.report_health(
        BackendId(0),
        HealthEvent::Refused("connection refused".into()),
    );
    assert!(!s.is_healthy(BackendId(0)));
    assert_eq!(
        s.snapshot().backends[1].queue.len(),
        1,
        "moved to backend 1"
    );
    drop(on_b);
    assert_eq!(grant(waiting).await.backend(), BackendId(1));
    drop(on_a);
    s.report_health(BackendId(0), HealthEvent::Passed("ok".into()));
    assert!(s.is_healthy(BackendId(0)));
    assert_eq!(s.snapshot().retries, 1);
}

#[tokio::test]
async fn affinity_prefers_the_backend_with_the_profile_loaded() {
    let s = scheduler("");
    drop(grant(s.enqueue(SDXL, &anyone(), &[BackendId(1)]).unwrap()).await); // backend 0 has sdxl
    drop(grant(s.enqueue(SD15, &anyone(), &[BackendId(0)]).unwrap()).await); // backend 1 has sd15
    assert_eq!(
        grant(s.enqueue(SD15, &anyone(), &[]).unwrap())
            .await
            .backend(),
        BackendId(1)
    );
    assert_eq!(
        grant(s.enqueue(SDXL, &anyone(), &[]).unwrap())
            .await
            .backend(),
        BackendId(0)
    );
}

#[tokio::test]
async fn progress_follows_the_clients_generation_and_the_rest_goes_first_or_round_robin() {
    let s = scheduler("");
    let alice = from("10.0.0.1");
    let bob = from("10.0.0.2");
    assert_eq!(
        s.pass_through_backend(Follow::ClientsGeneration, &alice),
        BackendId(0)
    );
    let running = grant(s.enqueue(SD15, &alice, &[BackendId(0)]).unwrap()).await;
    assert_eq!(running.backend(), BackendId(1));
    // The only busy backend, for anyone; the options call goes to the first healthy one.
    assert_eq!(
        s.pass_through_backend(Follow::ClientsGeneration, &bob),
        BackendId(1)
    );
    assert_eq!(s.pass_through_backend(Follow::Any, &alice), BackendId(0));
    let other = grant(s.enqueue(FLUX, &bob, &[]).unwrap()).await;
    assert_eq!(other.backend(), BackendId(0));
    assert_eq!(
        s.pass_through_backend(Follow::ClientsGeneration, &alice),
        BackendId(1)
    );
    assert_eq!(
        s.pass_through_backend(Follow::ClientsGeneration, &bob),
        BackendId(0)
    );

    let round_robin = scheduler("[scheduler]\npass_through = \"round_robin\"\n");
    let picks: Vec<usize> = (0..4)
        .map(|_| round_robin.pass_through_backend(Follow::Any, &anyone()).0)
        .collect();
    assert_eq!(picks, [1, 0, 1, 0]);
    round_robin.report_health(BackendId(1), HealthEvent::Refused("down".into()));
    assert_eq!(
        round_robin.pass_through_backend(Follow::Any, &anyone()),
        BackendId(0)
    );
}

#[tokio::test]
async fn a_free_backend_takes_work_queued_behind_a_busy_one() {
    tokio::time::pause();
    for config in ["[scheduler]\nmax_bypass = 0\n", ""] {
        let s = scheduler(config);
        let flux = grant(s.enqueue(FLUX, &anyone(), &[BackendId(1)]).unwrap()).await;
        let sd = grant(s.enqueue(SD15, &anyone(), &[BackendId(0)]).unwrap()).await;
        // Nothing learned: it waits behind the sd15 backend (10 s) rather than on the
        // flux one (10 s + a reload, a quarter of a generation until one is measured)...
        let waiting = s.enqueue(SD15, &anyone(), &[]).unwrap();
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
        assert_eq!(grant(waiting).await.backend(), BackendId(0));
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
        queues.estimates.set(ProfileId(2), 1.0, 30.0);
    }
    let flux = grant(s.enqueue(FLUX, &anyone(), &[BackendId(1)]).unwrap()).await;
    let sd = grant(s.enqueue(SD15, &anyone(), &[BackendId(0)]).unwrap()).await;
    let waiting = s.enqueue(SD15, &anyone(), &[]).unwrap();
    drop(flux);
    // Its wait behind sd15 (under 1 s) is shorter than a reload on the flux backend.
    let now = s.snapshot();
    assert!(now.backends[0].running.is_none());
    assert_eq!(now.backends[1].queue.len(), 1);
    drop(sd);
    assert_eq!(grant(waiting).await.backend(), BackendId(1));
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
        let running = grant(s.enqueue(SD15, &anyone(), &[BackendId(0)]).unwrap()).await;
        let older = s.enqueue(SDXL, &anyone(), &[BackendId(0)]).unwrap();
        let loaded = s.enqueue(SD15, &anyone(), &[BackendId(0)]).unwrap();
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
async fn burst(s: &Arc<Scheduler>) -> (Vec<(BackendId, &'static str)>, Duration) {
    let started = Instant::now();
    let ran = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (profile, name, seconds) = if i % 2 == 0 {
            (FLUX, "flux", 4)
        } else {
            (SD15, "sd15", 1)
        };
        let ticket = s.enqueue(profile, &anyone(), &[]).unwrap();
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
        Arc::new(
            from_toml_str(
                "[[backends]]\nurl = \"http://a:1\"\n[[backends]]\nurl = \"http://b:1\"\n",
            )
            .unwrap(),
        ),
        Metrics::new(),
    );
    let (ran, took) = burst(&s).await;
    let flux_on = |backend: usize| {
        ran.iter()
            .filter(|r| **r == (BackendId(backend), "flux"))
            .count()
    };
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
    let flux = grant(s.enqueue(FLUX, &anyone(), &[BackendId(1)]).unwrap()).await;
    let sd = grant(s.enqueue(SD15, &anyone(), &[BackendId(0)]).unwrap()).await;
    let retried = s.enqueue(SD15, &anyone(), &[BackendId(0)]).unwrap();
    drop(flux);
    assert_eq!(
        s.snapshot().backends[1].queue.len(),
        1,
        "backend 0 is excluded for it"
    );
    drop(sd);
    assert_eq!(grant(retried).await.backend(), BackendId(1));
}

#[tokio::test]
async fn pass_through_follows_rotation_and_a_clients_generation_with_or_without_the_lock() {
    let s = scheduler("");
    let me = from("10.0.0.7");
    assert_eq!(s.pass_through_backend(Follow::Any, &me), BackendId(0));
    assert_eq!(
        s.pass_through_backend(Follow::ClientsGeneration, &me),
        BackendId(0)
    );
    s.set_drained(BackendId(0), true).unwrap();
    assert_eq!(s.pass_through_backend(Follow::Any, &me), BackendId(1));
    // My generation runs on backend 1 (backend 0 is drained): my progress follows it, and
    // is answered by Forge, not as queued.
    let mine = grant(s.enqueue(SD15, &me, &[]).unwrap()).await;
    assert_eq!(mine.backend(), BackendId(1));
    assert_eq!(
        s.pass_through_backend(Follow::ClientsGeneration, &me),
        BackendId(1)
    );
    assert_eq!(s.queued_for(&me), None);
    s.set_drained(BackendId(0), false).unwrap();
    assert_eq!(s.pass_through_backend(Follow::Any, &me), BackendId(0));
    // A second one of mine waits behind the first: the first still runs, so polls follow it.
    let second = s.enqueue_on(BackendId(1), SD15, &me);
    assert_eq!(
        s.pass_through_backend(Follow::ClientsGeneration, &me),
        BackendId(1)
    );
    drop(mine);
    let second = grant(second).await;
    drop(second);
    assert_eq!(
        s.pass_through_backend(Follow::ClientsGeneration, &me),
        BackendId(0)
    );
}
