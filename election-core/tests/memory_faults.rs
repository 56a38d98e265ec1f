//! Fault injection on the in-memory backend: wipe, outage, suspended participants. Each
//! scenario is checked by the leadership checker.

use std::sync::Arc;
use std::time::Duration;

use succession_core::conformance::{self, LeadershipChecker};
use succession_core::memory::MemoryStore;
use succession_core::{CasOutcome, CasRecord, Election, ElectionExt, ErrorKind, HealthLevel, Role};

const BOUND: Duration = Duration::from_secs(3);

async fn three(store: &MemoryStore, checker: &LeadershipChecker) -> Vec<Arc<dyn Election>> {
    let mut v: Vec<Arc<dyn Election>> = Vec::new();
    for id in ["a", "b", "c"] {
        let e: Arc<dyn Election> = Arc::new(store.election(id).unwrap());
        checker.watch(e.as_ref());
        e.join().await.unwrap();
        v.push(e);
    }
    v
}

async fn one_leader(es: &[Arc<dyn Election>]) -> usize {
    conformance::one_leader(es, BOUND).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_wipe_reelects_with_a_higher_term() {
    let store = MemoryStore::new();
    let checker = LeadershipChecker::new();
    let es = three(&store, &checker).await;
    let before = es[one_leader(&es).await].leadership().unwrap().term();
    store.wipe();
    let i = one_leader(&es).await;
    let after = es[i].leadership().unwrap().term();
    assert!(after > before, "{after} > {before}");
    assert_eq!(store.entries().len(), 3, "everyone repaired its place");
    checker.assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_outage_suspends_everyone_then_reelects() {
    let store = MemoryStore::with_session_timeout(Duration::from_millis(200));
    let checker = LeadershipChecker::new();
    let es = three(&store, &checker).await;
    one_leader(&es).await;
    store.set_available(false);
    for e in &es {
        assert_eq!(e.status().borrow().role, Role::Suspended);
        assert_eq!(e.health_level(), HealthLevel::Degraded);
    }
    assert_eq!(
        es[0].leader().await.unwrap_err().kind(),
        ErrorKind::Connection
    );
    // After the session timeout, places expire: Unhealthy.
    for e in &es {
        e.wait_for_status(BOUND, |s| s.health.level == HealthLevel::Unhealthy)
            .await
            .unwrap();
    }
    store.set_available(true);
    one_leader(&es).await;
    for e in &es {
        assert_eq!(e.health_level(), HealthLevel::Healthy);
    }
    checker.assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_suspended_leader_is_replaced_after_session_timeout() {
    let store = MemoryStore::with_session_timeout(Duration::from_millis(200));
    let checker = LeadershipChecker::new();
    let a = Arc::new(store.election("a").unwrap());
    let b = Arc::new(store.election("b").unwrap());
    checker.watch(a.as_ref());
    checker.watch(b.as_ref());
    a.join().await.unwrap();
    b.join().await.unwrap();
    a.wait_for_leadership(BOUND).await.unwrap();
    a.suspend();
    assert_eq!(
        a.status().borrow().role,
        Role::Suspended,
        "suspended at once"
    );
    assert!(!b.is_leader(), "b waits for a's session to expire");
    b.wait_for_leadership(BOUND).await.unwrap();
    a.resume();
    a.wait_for_status(BOUND, |s| matches!(s.role, Role::Follower { .. }))
        .await
        .unwrap();
    assert_eq!(store.entries(), vec!["b", "a"]);
    checker.assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_record_compare_and_swap_detects_conflicts() {
    let store = MemoryStore::new();
    let r = store.record("mode");
    assert_eq!(r.read().await.unwrap(), None);
    let v1 = match r.compare_and_swap(None, b"primary".to_vec()).await.unwrap() {
        CasOutcome::Swapped(v) => v,
        other => panic!("{other:?}"),
    };
    match r.compare_and_swap(None, b"x".to_vec()).await.unwrap() {
        CasOutcome::Conflict(Some(cur)) => assert_eq!(cur.value, b"primary"),
        other => panic!("{other:?}"),
    }
    let waiter = {
        let r = r.clone();
        tokio::spawn(async move { r.changed(Some(v1)).await })
    };
    assert!(matches!(
        r.compare_and_swap(Some(v1), b"fallback".to_vec())
            .await
            .unwrap(),
        CasOutcome::Swapped(_)
    ));
    let seen = tokio::time::timeout(BOUND, waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(seen.unwrap().value, b"fallback");
    store.wipe();
    assert_eq!(r.read().await.unwrap(), None, "wipe loses records");
    store.set_available(false);
    assert_eq!(r.read().await.unwrap_err().kind(), ErrorKind::Connection);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_refuses_an_empty_id() {
    let err = MemoryStore::new().election(" ").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
}
