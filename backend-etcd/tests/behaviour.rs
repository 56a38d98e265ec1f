//! Behaviour of the etcd backend against real etcd: the Go-compatible layout, interop with
//! the real `etcdctl elect` both ways, clean close (checked with the lease list API) with one
//! LeaseRevoke, a handover without a second read (counted in etcd's `/metrics`) that still
//! notices our key or the epoch record changing, close during a campaign, the
//! compare-and-swap record, unreachable etcd and permission errors.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{
    close_all, config, grpc_calls_handled, joined, lease_ids, leftovers, raw_client, Ctl,
};
use etcd_client::{Compare, CompareOp, GetOptions, Txn};
use succession_core::conformance::LeadershipChecker;
use succession_core::{CasOutcome, CasRecord, Election, ElectionExt, ErrorKind, HealthLevel, Role};
use succession_etcd::{EtcdConfig, EtcdElection, EtcdRecord};
use succession_testkit::{shared_etcd, unique_path, EtcdServer};

const BOUND: Duration = Duration::from_secs(10);

async fn election(prefix: &str, id: &str) -> Arc<EtcdElection> {
    let etcd = shared_etcd().await;
    Arc::new(EtcdElection::new(config(&[etcd.endpoint()], prefix, id, 3)).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layout_matches_go_concurrency_election() {
    let etcd = shared_etcd().await;
    let prefix = unique_path("layout");
    let checker = LeadershipChecker::new();
    let es = joined(
        &[vec![etcd.endpoint()], vec![etcd.endpoint()]],
        &prefix,
        3,
        &checker,
    )
    .await;
    let term = es[0].wait_for_leadership(BOUND).await.unwrap().term();
    let client = raw_client(&etcd.endpoint()).await;
    let mut c = client.clone();
    let kvs = c
        .get(format!("{prefix}/"), Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let mut keys: Vec<(String, String, i64, i64)> = kvs
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_owned(),
                kv.value_str().unwrap().to_owned(),
                kv.lease(),
                kv.create_revision(),
            )
        })
        .collect();
    keys.sort_by_key(|k| k.3);
    assert_eq!(keys.len(), 2, "{keys:?}");
    for (i, (key, value, lease, _)) in keys.iter().enumerate() {
        let info = es[i].lease().expect("holds a lease");
        assert_eq!(*lease, info.id, "key attached to the participant's lease");
        assert_eq!(
            *key,
            format!("{prefix}/{:x}", info.id),
            "key = <prefix>/<lease hex>"
        );
        assert_eq!(value, es[i].id(), "value = participant id");
    }
    assert_eq!(
        term.sequence(),
        keys[0].3 as u64,
        "term sequence = create revision"
    );
    // The epoch record is the prefix key itself, outside the range `<prefix>/`.
    let epoch = c.get(prefix.clone(), None).await.unwrap();
    let epoch: u64 = epoch.kvs()[0].value_str().unwrap().parse().unwrap();
    assert_eq!(term.epoch(), epoch);
    close_all(&es).await;
    checker.assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_leaves_no_key_and_no_lease_behind() {
    let etcd = shared_etcd().await;
    let prefix = unique_path("clean");
    let client = raw_client(&etcd.endpoint()).await;
    let checker = LeadershipChecker::new();
    let eps = vec![etcd.endpoint()];
    let es = joined(&[eps.clone(), eps.clone(), eps], &prefix, 3, &checker).await;
    es[0].wait_for_leadership(BOUND).await.unwrap();
    let ours: Vec<i64> = es.iter().map(|e| e.lease().expect("lease").id).collect();
    // Positive control: while joined, the check sees every key and lease.
    let live = leftovers(&client, &prefix).await.unwrap();
    assert_eq!(live.len(), 6, "3 keys and 3 leases while joined: {live:?}");
    let granted = lease_ids(&client).await;
    assert!(
        ours.iter().all(|id| granted.contains(id)),
        "leases listed while joined"
    );
    // Close a follower, then the leader, then the last one.
    close_all(&[es[1].clone(), es[0].clone(), es[2].clone()]).await;
    let left = leftovers(&client, &prefix).await.unwrap();
    assert!(left.is_empty(), "left behind: {left:?}");
    let leases = lease_ids(&client).await;
    for id in ours {
        assert!(
            !leases.contains(&id),
            "lease {id:x} still granted after close"
        );
    }
    for e in &es {
        assert_eq!(e.status().borrow().role, Role::Closed);
        assert!(e.lease().is_none());
    }
    checker.assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_leader_sends_one_lease_revoke_and_hands_over() {
    // A server of its own: the count below must not see other tests' revokes.
    let etcd = EtcdServer::start().await.unwrap();
    let prefix = unique_path("one-revoke");
    let checker = LeadershipChecker::new();
    let eps = vec![etcd.endpoint()];
    let es = joined(&[eps.clone(), eps], &prefix, 3, &checker).await;
    es[0].wait_for_leadership(BOUND).await.unwrap();
    let client = raw_client(&etcd.endpoint()).await;
    let lease = es[0].lease().expect("the leader holds a lease").id;
    let before = grpc_calls_handled(&etcd.endpoint(), "LeaseRevoke").await;
    es[0].close().await.unwrap();
    // close() returns once the lease is revoked: it is gone already, and exactly one
    // LeaseRevoke reached etcd (the participation task does not send a second one).
    assert!(
        !lease_ids(&client).await.contains(&lease),
        "lease {lease:x} still granted after close() returned"
    );
    let after = grpc_calls_handled(&etcd.endpoint(), "LeaseRevoke").await;
    assert_eq!(
        after - before,
        1,
        "LeaseRevoke calls handled during close()"
    );
    es[1].wait_for_leadership(BOUND).await.unwrap();
    close_all(&es).await;
    checker.assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successor_leads_on_the_leaders_deletion_without_reading_the_queue_again() {
    // A server of its own: the counts below must not see other tests' requests.
    let etcd = EtcdServer::start().await.unwrap();
    let prefix = unique_path("no-reread");
    let checker = LeadershipChecker::new();
    let eps = vec![etcd.endpoint()];
    let es = joined(&[eps.clone(), eps], &prefix, 3, &checker).await;
    es[0].wait_for_leadership(BOUND).await.unwrap();
    // `join` returned: the second one has read the queue (the first leads) and watches it.
    assert!(matches!(
        es[1].status().borrow().role,
        Role::Follower { .. }
    ));
    let reads = |ep: String| async move {
        grpc_calls_handled(&ep, "Txn").await + grpc_calls_handled(&ep, "Range").await
    };
    let before = reads(etcd.endpoint()).await;
    es[0].close().await.unwrap();
    let term = es[1].wait_for_leadership(BOUND).await.unwrap().term();
    assert_eq!(
        reads(etcd.endpoint()).await - before,
        0,
        "reads (Txn or Range) between the leader's close and the successor leading"
    );
    // The term is the one a read would have given: the epoch record and our create revision.
    let mut c = raw_client(&etcd.endpoint()).await;
    let key = format!("{prefix}/{:x}", es[1].lease().expect("lease").id);
    let kv = c.get(key, None).await.unwrap();
    assert_eq!(term.sequence(), kv.kvs()[0].create_revision() as u64);
    let epoch = c.get(prefix.clone(), None).await.unwrap();
    assert_eq!(
        term.epoch(),
        epoch.kvs()[0].value_str().unwrap().parse::<u64>().unwrap()
    );
    close_all(&es).await;
    checker.assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_whose_key_was_deleted_does_not_lead_when_the_leader_leaves() {
    let etcd = shared_etcd().await;
    let prefix = unique_path("key-deleted");
    let checker = LeadershipChecker::new();
    let eps = vec![etcd.endpoint()];
    let es = joined(&[eps.clone(), eps.clone(), eps], &prefix, 3, &checker).await;
    es[0].wait_for_leadership(BOUND).await.unwrap();
    // Someone deletes the second one's key, and right after, the leader leaves: the second
    // one must not take the leader's deletion as its turn (its own key went first); the
    // third one, for which both keys ahead are now gone, leads.
    let mut c = raw_client(&etcd.endpoint()).await;
    let key = format!("{prefix}/{:x}", es[1].lease().expect("lease").id);
    let deleted = c.delete(key, None).await.unwrap();
    assert_eq!(deleted.deleted(), 1, "the second participant's key existed");
    es[0].close().await.unwrap();
    es[2].wait_for_leadership(BOUND).await.unwrap();
    // The second one campaigns again, behind the third.
    let mut status = es[1].status();
    let rejoined = status
        .wait_for(|s| matches!(&s.role, Role::Follower { leader: Some(l) } if l == es[2].id()));
    tokio::time::timeout(BOUND, rejoined)
        .await
        .expect("the second participant follows the third within the bound")
        .unwrap();
    close_all(&es[1..]).await;
    checker.assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successor_leads_with_the_new_epoch_when_the_epoch_record_was_replaced_while_it_waited() {
    let etcd = shared_etcd().await;
    let prefix = unique_path("epoch-replaced");
    let checker = LeadershipChecker::new();
    let eps = vec![etcd.endpoint()];
    let es = joined(&[eps.clone(), eps], &prefix, 3, &checker).await;
    let first = es[0].wait_for_leadership(BOUND).await.unwrap().term();
    // The epoch record is deleted while the second one waits; then the leader leaves. The
    // successor must not lead with the epoch it read before: its term must match the store.
    let mut c = raw_client(&etcd.endpoint()).await;
    c.delete(prefix.clone(), None).await.unwrap();
    es[0].close().await.unwrap();
    let term = es[1].wait_for_leadership(BOUND).await.unwrap().term();
    let epoch = c.get(prefix.clone(), None).await.unwrap();
    let stored: u64 = epoch
        .kvs()
        .first()
        .expect("the successor recreated the epoch record before leading")
        .value_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        term.epoch(),
        stored,
        "the term carries the epoch record now in etcd"
    );
    assert!(
        term.epoch() > first.epoch() && term > first,
        "{first} then {term}"
    );
    close_all(&es[1..]).await;
    checker.assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_during_a_campaign_cancels_it_and_removes_the_key() {
    let etcd = shared_etcd().await;
    let prefix = unique_path("cancel");
    let client = raw_client(&etcd.endpoint()).await;
    let checker = LeadershipChecker::new();
    let a = election(&prefix, "a").await;
    let b = election(&prefix, "b").await;
    checker.watch(a.as_ref());
    checker.watch(b.as_ref());
    a.join().await.unwrap();
    let lead = a.wait_for_leadership(BOUND).await.unwrap();
    b.join().await.unwrap();
    b.wait_for_status(
        BOUND,
        |s| matches!(&s.role, Role::Follower { leader: Some(l) } if l == "a"),
    )
    .await
    .unwrap();
    let b_lease = b.lease().unwrap().id;
    // b waits for a's key to be deleted; closing b cancels that wait at once.
    let started = std::time::Instant::now();
    b.close().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "close took {:?}",
        started.elapsed()
    );
    assert!(!lease_ids(&client).await.contains(&b_lease));
    let ids: Vec<String> = a
        .participants()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(ids, ["a"]);
    assert!(lead.is_current(), "a still leads with the same term");
    a.close().await.unwrap();
    assert!(leftovers(&client, &prefix).await.unwrap().is_empty());
    checker.assert_ok();
    assert_eq!(checker.grants(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_elect_listener_observes_our_leaders() {
    let etcd = shared_etcd().await;
    let prefix = unique_path("ctl-listen");
    let checker = LeadershipChecker::new();
    let eps = vec![etcd.endpoint()];
    let es = joined(&[eps.clone(), eps], &prefix, 3, &checker).await;
    es[0].wait_for_leadership(BOUND).await.unwrap();
    let mut listener = Ctl::spawn(&etcd.endpoint(), &["elect", "-l", &prefix]);
    listener.expect_line("p0").await;
    es[0].resign().await.unwrap();
    es[1].wait_for_leadership(BOUND).await.unwrap();
    listener.expect_line("p1").await;
    close_all(&es).await;
    checker.assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn we_observe_an_etcdctl_leader_and_follow_it() {
    let etcd = shared_etcd().await;
    let prefix = unique_path("ctl-lead");
    let mut ctl = Ctl::spawn(&etcd.endpoint(), &["elect", &prefix, "ctl-1"]);
    ctl.expect_line("ctl-1").await; // printed once elected
    let checker = LeadershipChecker::new();
    let a = election(&prefix, "a").await;
    checker.watch(a.as_ref());
    let leader = a.leader().await.unwrap().expect("etcdctl leads");
    assert_eq!(leader.id, "ctl-1");
    assert!(leader.is_leader);
    a.join().await.unwrap();
    a.wait_for_status(
        BOUND,
        |s| matches!(&s.role, Role::Follower { leader: Some(l) } if l == "ctl-1"),
    )
    .await
    .unwrap();
    assert!(!a.is_leader());
    ctl.interrupt().await; // etcdctl resigns
    a.wait_for_leadership(BOUND).await.unwrap();
    assert_eq!(a.leader().await.unwrap().unwrap().id, "a");
    a.close().await.unwrap();
    checker.assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_etcdctl_and_our_candidates_hand_over_in_queue_order() {
    let etcd = shared_etcd().await;
    let prefix = unique_path("ctl-mixed");
    let checker = LeadershipChecker::new();
    let ids =
        |ps: Vec<succession_core::Participant>| ps.into_iter().map(|p| p.id).collect::<Vec<_>>();
    // Queue: ctl-1 (etcdctl), a (ours), ctl-2 (etcdctl), b (ours).
    let mut ctl1 = Ctl::spawn(&etcd.endpoint(), &["elect", &prefix, "ctl-1"]);
    ctl1.expect_line("ctl-1").await;
    let a = election(&prefix, "a").await;
    checker.watch(a.as_ref());
    a.join().await.unwrap();
    // Watch the election range, so that we know when ctl-2's key is queued behind a.
    let mut raw = raw_client(&etcd.endpoint()).await;
    let mut puts = raw
        .watch(
            format!("{prefix}/"),
            Some(etcd_client::WatchOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let mut ctl2 = Ctl::spawn(&etcd.endpoint(), &["elect", &prefix, "ctl-2"]);
    tokio::time::timeout(BOUND, async {
        loop {
            let resp = puts.message().await.unwrap().expect("watch open");
            if resp.events().iter().any(|e| {
                e.event_type() == etcd_client::EventType::Put
                    && e.kv().is_some_and(|kv| kv.value() == b"ctl-2")
            }) {
                return;
            }
        }
    })
    .await
    .expect("ctl-2 queued its key");
    drop(puts);
    let b = election(&prefix, "b").await;
    checker.watch(b.as_ref());
    b.join().await.unwrap();
    assert_eq!(
        ids(b.participants().await.unwrap()),
        ["ctl-1", "a", "ctl-2", "b"]
    );
    assert!(!a.is_leader() && !b.is_leader());

    ctl1.interrupt().await;
    a.wait_for_leadership(BOUND).await.unwrap();
    assert!(!b.is_leader());
    a.resign().await.unwrap();
    // etcdctl says it was elected; b watches only its predecessor (ctl-2), leader() reads
    // the store live.
    ctl2.expect_line("ctl-2").await;
    assert_eq!(b.leader().await.unwrap().unwrap().id, "ctl-2");
    assert!(!b.is_leader());
    ctl2.interrupt().await;
    b.wait_for_leadership(BOUND).await.unwrap();
    close_all(&[a, b]).await;
    checker.assert_ok();
    assert_eq!(checker.grants(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_compare_and_swap_detects_conflicts_and_changes() {
    let etcd = shared_etcd().await;
    let key = format!("{}/mode", unique_path("record"));
    let cfg = config(&[etcd.endpoint()], "/unused", "r", 3);
    let r = EtcdRecord::new(&cfg, &key).unwrap();
    assert_eq!(r.read().await.unwrap(), None);
    let v1 = match r.compare_and_swap(None, b"primary".to_vec()).await.unwrap() {
        CasOutcome::Swapped(v) => v,
        other => panic!("{other:?}"),
    };
    assert_eq!(r.read().await.unwrap().unwrap().version, v1);
    match r.compare_and_swap(None, b"x".to_vec()).await.unwrap() {
        CasOutcome::Conflict(Some(cur)) => {
            assert_eq!((cur.value.as_slice(), cur.version), (&b"primary"[..], v1))
        }
        other => panic!("{other:?}"),
    }
    match r
        .compare_and_swap(Some(v1 + 1000), b"x".to_vec())
        .await
        .unwrap()
    {
        CasOutcome::Conflict(Some(cur)) => assert_eq!(cur.version, v1),
        other => panic!("{other:?}"),
    }
    // `changed` returns at once when the version already differs...
    assert_eq!(r.changed(None).await.unwrap().unwrap().version, v1);
    // ...and otherwise waits for the next write, by anyone (here: a second handle).
    let other = succession_etcd::EtcdElection::new(config(&[etcd.endpoint()], "/unused", "o", 3))
        .unwrap()
        .record(&key)
        .unwrap();
    let waiter = tokio::spawn(async move { r.changed(Some(v1)).await });
    let v2 = match other
        .compare_and_swap(Some(v1), b"fallback".to_vec())
        .await
        .unwrap()
    {
        CasOutcome::Swapped(v) => v,
        c => panic!("{c:?}"),
    };
    let seen = tokio::time::timeout(BOUND, waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (seen.value.as_slice(), seen.version),
        (&b"fallback"[..], v2)
    );
    assert!(v2 > v1);
    assert_eq!(
        EtcdRecord::new(&cfg, "relative").unwrap_err().kind(),
        ErrorKind::InvalidConfig
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_is_not_fooled_by_a_revision_reused_after_an_etcd_wipe() {
    // A server of its own: it is wiped.
    let mut etcd = EtcdServer::start().await.unwrap();
    let key = unique_path("wiped-record");
    let cfg = config(&[etcd.endpoint()], "/unused", "rec", 3);
    let rec = EtcdRecord::new(&cfg, &key).unwrap();
    let watcher = EtcdRecord::new(&cfg, &key).unwrap();
    let v = match rec
        .compare_and_swap(None, b"primary/1".to_vec())
        .await
        .unwrap()
    {
        CasOutcome::Swapped(v) => v,
        other => panic!("first write: {other:?}"),
    };
    let seen = watcher.read().await.unwrap().expect("the record exists");
    assert_eq!((seen.version, &seen.value[..]), (v, &b"primary/1"[..]));

    // Wipe: etcd counts revisions from 1 again. Someone writes a different record that lands
    // on the very revision our handles know as version `v`.
    etcd.stop().await.unwrap();
    etcd.wipe().unwrap();
    etcd.restart().await.unwrap();
    let mut c = raw_client(&etcd.endpoint()).await;
    let mut rev = c.get("/", None).await.unwrap().header().unwrap().revision();
    while rev + 1 < v as i64 {
        let put = c.put(format!("{key}-filler"), "x", None).await.unwrap();
        rev = put.header().unwrap().revision();
    }
    let put = c.put(key.clone(), "fallback/2", None).await.unwrap();
    assert_eq!(
        put.header().unwrap().revision(),
        v as i64,
        "the revision is reused"
    );
    // The old compare (mod revision only) would take the new record for the one we saw.
    let only_rev = Txn::new().when(vec![Compare::mod_revision(
        key.clone(),
        CompareOp::Equal,
        v as i64,
    )]);
    assert!(
        c.txn(only_rev).await.unwrap().succeeded(),
        "a compare of the mod revision alone matches the new record"
    );

    // Ours refuses the swap and reports the new record ...
    match rec
        .compare_and_swap(Some(v), b"primary/2".to_vec())
        .await
        .unwrap()
    {
        CasOutcome::Conflict(Some(now)) => assert_eq!(now.value, b"fallback/2"),
        other => panic!("a swap against the pre-wipe version must conflict: {other:?}"),
    }
    let stored = c.get(key.clone(), None).await.unwrap();
    assert_eq!(
        stored.kvs()[0].value(),
        b"fallback/2",
        "nothing overwritten"
    );
    // ... and `changed` sees it at once.
    let now = tokio::time::timeout(BOUND, watcher.changed(Some(v)))
        .await
        .expect("changed() returns at once for a different record at the same version")
        .unwrap()
        .expect("the record exists");
    assert_eq!(now.value, b"fallback/2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_etcd_keeps_a_degraded_candidate_that_closes_promptly() {
    // A port nobody listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = EtcdElection::new(config(
        &[format!("http://127.0.0.1:{port}")],
        "/nowhere",
        "a",
        2,
    ))
    .unwrap();
    let err = e.leader().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(err.is_retryable());
    let joining = tokio::time::timeout(Duration::from_millis(800), e.join()).await;
    assert!(
        joining.is_err(),
        "join keeps waiting while etcd is unreachable"
    );
    let s = e
        .wait_for_status(BOUND, |s| s.health.level == HealthLevel::Degraded)
        .await
        .unwrap();
    assert_eq!(s.role, Role::Candidate);
    assert!(s.health.reason.contains("retrying"), "{}", s.health.reason);
    let started = std::time::Instant::now();
    e.close().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "close took {:?}",
        started.elapsed()
    );
    assert_eq!(e.join().await.unwrap_err().kind(), ErrorKind::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_denied_fails_join_and_reports_unhealthy() {
    // Auth is server-wide: a dedicated server.
    let etcd = EtcdServer::start().await.unwrap();
    let mut c = raw_client(&etcd.endpoint()).await;
    c.user_add("root", "rootpw", None).await.unwrap();
    let _ = c.role_add("root").await;
    c.user_grant_role("root", "root").await.unwrap();
    c.user_add("limited", "pw", None).await.unwrap();
    c.role_add("other-only").await.unwrap();
    c.role_grant_permission(
        "other-only",
        etcd_client::Permission::read_write("/other/").with_prefix(),
    )
    .await
    .unwrap();
    c.user_grant_role("limited", "other-only").await.unwrap();
    c.auth_enable().await.unwrap();

    let base = || {
        EtcdConfig::builder()
            .endpoint(etcd.endpoint())
            .prefix("/election")
            .ttl(Duration::from_secs(2))
            .request_timeout(Duration::from_secs(2))
    };
    // A user without rights on the prefix.
    let e =
        EtcdElection::new(base().id("a").credentials("limited", "pw").build().unwrap()).unwrap();
    let err = tokio::time::timeout(BOUND, e.join())
        .await
        .expect("join fails in time")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(!err.is_retryable());
    assert_eq!(e.health_level(), HealthLevel::Unhealthy);
    e.close().await.unwrap();
    // A wrong password.
    let e = EtcdElection::new(
        base()
            .id("b")
            .credentials("limited", "wrong")
            .build()
            .unwrap(),
    )
    .unwrap();
    let err = e.leader().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    // No credentials at all.
    let e = EtcdElection::new(base().id("c").build().unwrap()).unwrap();
    let err = e.participants().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
}

/// A server with auth on: `root` (for the operator's actions) and `app`, whose role
/// `app-rw` may read and write the election prefix `/election` (its epoch record and keys).
async fn etcd_with_app_user() -> (EtcdServer, etcd_client::Client) {
    let etcd = EtcdServer::start().await.unwrap();
    let mut c = raw_client(&etcd.endpoint()).await;
    c.user_add("root", "rootpw", None).await.unwrap();
    let _ = c.role_add("root").await;
    c.user_grant_role("root", "root").await.unwrap();
    c.user_add("app", "pw", None).await.unwrap();
    c.role_add("app-rw").await.unwrap();
    c.role_grant_permission(
        "app-rw",
        etcd_client::Permission::read_write("/election").with_prefix(),
    )
    .await
    .unwrap();
    c.user_grant_role("app", "app-rw").await.unwrap();
    c.auth_enable().await.unwrap();
    let root = etcd_client::Client::connect(
        [etcd.endpoint()],
        Some(etcd_client::ConnectOptions::new().with_user("root", "rootpw")),
    )
    .await
    .unwrap();
    (etcd, root)
}

/// The operator takes the election prefix away from `app` (its requests are refused).
async fn revoke_app_rights(root: &mut etcd_client::Client) {
    root.role_revoke_permission(
        "app-rw",
        "/election",
        Some(etcd_client::RoleRevokePermissionOptions::new().with_prefix()),
    )
    .await
    .unwrap();
}

/// Found by the deterministic simulation: a leader whose key an operator deleted while
/// etcd refused its requests (its role had lost the prefix) kept leading through a backoff:
/// re-creating its watch was refused, which counts as a temporary failure (a failed step
/// keeps the role), and only the next refused txn made it unhealthy (which demotes). It
/// must step down on its own key's deletion, before asking anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_whose_key_is_deleted_while_its_requests_are_refused_steps_down_at_once() {
    let (etcd, mut root) = etcd_with_app_user().await;
    let cfg = EtcdConfig::builder()
        .endpoint(etcd.endpoint())
        .prefix("/election")
        .id("a")
        .ttl(Duration::from_secs(5))
        .request_timeout(Duration::from_secs(2))
        .credentials("app", "pw")
        .build()
        .unwrap();
    let e = EtcdElection::new(cfg).unwrap();
    e.join().await.unwrap();
    e.wait_for_leadership(BOUND).await.unwrap();
    let lease = e.lease().expect("a lease while leading").id;
    revoke_app_rights(&mut root).await;
    root.delete(format!("/election/{lease:x}"), None)
        .await
        .unwrap();
    // The deletion reaches the leader's watch (created before the revoke) at once; no
    // request of its own can succeed. The lease stays safe all along (renewals need no
    // key permission), so nothing but the watch can make it step down.
    let s = e
        .wait_for_status(Duration::from_secs(2), |s| !s.is_leader())
        .await
        .expect("the leader stepped down when its key was deleted");
    assert!(s.reason.contains("deleted"), "{}", s.reason);
    assert!(e.lease().is_some(), "the lease itself is fine");
    e.close().await.unwrap();
}

/// Found by the deterministic simulation: a key that a resign could not delete (etcd
/// refused) stayed under the shared session's lease, and the next join adopted it with its
/// old term, the same term granted twice. The next join must replace it (a higher term).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejoin_after_a_resign_whose_delete_was_refused_leads_with_a_higher_term() {
    let (etcd, mut root) = etcd_with_app_user().await;
    let session = succession_etcd::EtcdSession::new(
        succession_etcd::EtcdSessionConfig::builder()
            .endpoint(etcd.endpoint())
            .ttl(Duration::from_secs(2))
            .request_timeout(Duration::from_millis(500))
            .credentials("app", "pw")
            .build()
            .unwrap(),
    )
    .unwrap();
    let e = session.election("/election", "a").unwrap();
    e.join().await.unwrap();
    let first = e.wait_for_leadership(BOUND).await.unwrap().term();
    revoke_app_rights(&mut root).await;
    let err = e
        .resign()
        .await
        .expect_err("the delete of our key was refused");
    assert_eq!(e.status().borrow().role, Role::Idle, "{err}");
    root.role_grant_permission(
        "app-rw",
        etcd_client::Permission::read_write("/election").with_prefix(),
    )
    .await
    .unwrap();
    e.join().await.unwrap();
    let second = e.wait_for_leadership(BOUND).await.unwrap().term();
    assert!(
        second > first,
        "a new grant carries a higher term: {first} then {second}"
    );
    let keys = root
        .get("/election/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(keys.kvs().len(), 1, "the old key was replaced, not kept");
    session.close().await.unwrap();
}
