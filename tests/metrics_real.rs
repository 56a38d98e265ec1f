//! The metrics each backend records, read through a recorder installed in this test binary,
//! against real ZooKeeper and etcd servers. Series are told apart by their `election`
//! label (each test uses its own path), so the tests may run in parallel.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, SharedString, Unit};
use succession::etcd::{EtcdConfig, EtcdElection};
use succession::zk::{ZkConfig, ZkElection};
use succession::{Election, ElectionExt, Role};
use succession_testkit::{shared_etcd, unique_path, ZkServer};

/// A recorder that keeps every series for reading (nothing is reset on read).
#[derive(Default)]
struct Capture {
    counters: Mutex<HashMap<Key, Arc<AtomicU64>>>,
    gauges: Mutex<HashMap<Key, Arc<AtomicU64>>>,
    histograms: Mutex<HashMap<Key, Arc<Samples>>>,
}

#[derive(Default)]
struct Samples(Mutex<Vec<f64>>);

impl HistogramFn for Samples {
    fn record(&self, value: f64) {
        self.0.lock().unwrap().push(value);
    }
}

impl metrics::Recorder for &'static Capture {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut c = self.counters.lock().unwrap();
        Counter::from_arc(c.entry(key.clone()).or_default().clone())
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let mut g = self.gauges.lock().unwrap();
        Gauge::from_arc(g.entry(key.clone()).or_default().clone())
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let mut h = self.histograms.lock().unwrap();
        Histogram::from_arc(h.entry(key.clone()).or_default().clone())
    }
}

fn capture() -> &'static Capture {
    static CAPTURE: OnceLock<&'static Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let c: &'static Capture = Box::leak(Box::default());
        metrics::set_global_recorder(c).expect("the only recorder of this test binary");
        c
    })
}

fn matches(key: &Key, name: &str, labels: &[(&str, &str)]) -> bool {
    key.name() == name
        && labels
            .iter()
            .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v))
}

/// Sum of the counters `name` with all of `labels`.
fn counter(name: &str, labels: &[(&str, &str)]) -> u64 {
    let c = capture().counters.lock().unwrap();
    c.iter()
        .filter(|(k, _)| matches(k, name, labels))
        .map(|(_, v)| v.load(Ordering::SeqCst))
        .sum()
}

/// The gauge `name` with all of `labels` (exactly one series must match).
fn gauge(name: &str, labels: &[(&str, &str)]) -> f64 {
    let g = capture().gauges.lock().unwrap();
    let found: Vec<f64> = g
        .iter()
        .filter(|(k, _)| matches(k, name, labels))
        .map(|(_, v)| f64::from_bits(v.load(Ordering::SeqCst)))
        .collect();
    assert_eq!(found.len(), 1, "one series of {name} {labels:?}");
    found[0]
}

/// Every sample of the histogram `name` with all of `labels`.
fn samples(name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    let h = capture().histograms.lock().unwrap();
    h.iter()
        .filter(|(k, _)| matches(k, name, labels))
        .flat_map(|(_, v)| v.0.lock().unwrap().clone())
        .collect()
}

fn zk_participant(connect: &str, path: &str, id: &str) -> Arc<ZkElection> {
    let cfg = ZkConfig::builder(connect, path, id)
        .session_timeout(Duration::from_secs(4))
        .connection_timeout(Duration::from_millis(1000))
        .build()
        .expect("config");
    Arc::new(ZkElection::new(cfg).expect("participant"))
}

/// ZooKeeper: a handover is timed at the successor; a wiped server is counted as a lost
/// session and a repair; leadership gains, losses, the term and health are recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_metrics_time_the_handover_and_count_the_wipe_repair() {
    capture();
    let mut server = ZkServer::start().await.expect("zookeeper");
    let path = unique_path("metrics-zk");
    let l = [("backend", "zk"), ("election", path.as_str())];
    let a = zk_participant(&server.addr(), &path, "a");
    let b = zk_participant(&server.addr(), &path, "b");
    a.join().await.expect("join a");
    a.wait_for_leadership(Duration::from_secs(10))
        .await
        .expect("a leads");
    b.join().await.expect("join b");
    assert_eq!(gauge("succession_is_leader", &l), 1.0);
    assert_eq!(
        counter(
            "succession_leadership_changes_total",
            &[l[0], l[1], ("change", "gained")]
        ),
        1
    );
    assert!(samples("succession_handover_seconds", &l).is_empty());

    // Graceful handover: b times it from the deletion event of a's node to leading.
    a.close().await.expect("close a");
    let lead = b
        .wait_for_leadership(Duration::from_secs(10))
        .await
        .expect("b leads");
    let handovers = samples("succession_handover_seconds", &l);
    assert_eq!(handovers.len(), 1, "{handovers:?}");
    assert!(handovers[0] > 0.0 && handovers[0] < 5.0, "{handovers:?}");
    assert_eq!(
        counter(
            "succession_leadership_changes_total",
            &[l[0], l[1], ("change", "lost")]
        ),
        1,
        "a's leadership ended"
    );
    assert_eq!(
        gauge("succession_term_sequence", &l),
        lead.term().sequence() as f64
    );
    assert_eq!(counter("succession_session_expirations_total", &l), 0);
    assert_eq!(
        counter("succession_repairs_total", &l),
        0,
        "a closing leader never re-creates its node"
    );

    // Wipe: b finds its session unknown to the restarted server and repairs.
    server.stop().await.expect("stop");
    server.wipe().expect("wipe");
    server.restart().await.expect("restart empty");
    let again = b
        .wait_for_leadership(Duration::from_secs(20))
        .await
        .expect("b leads again after the wipe");
    assert!(again.term() > lead.term());
    assert!(counter("succession_session_expirations_total", &l) >= 1);
    assert!(counter("succession_repairs_total", &l) >= 1);
    assert_eq!(gauge("succession_is_leader", &l), 1.0);
    assert_eq!(gauge("succession_health", &l), 2.0);
    assert_eq!(
        gauge("succession_term_sequence", &l),
        again.term().sequence() as f64
    );
    b.close().await.expect("close b");
    assert_eq!(gauge("succession_is_leader", &l), 0.0);
}

/// etcd: a lease revoked under the leader is counted as a lost lease and a lost
/// leadership; the participant campaigns again and leads with a new term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_metrics_count_a_lease_revoked_under_the_leader() {
    capture();
    let etcd = shared_etcd().await;
    let prefix = unique_path("metrics-etcd");
    let l = [("backend", "etcd"), ("election", prefix.as_str())];
    let cfg = EtcdConfig::builder()
        .endpoints([etcd.endpoint()])
        .prefix(&prefix)
        .id("a")
        .ttl(Duration::from_secs(3))
        .build()
        .expect("config");
    let a = EtcdElection::new(cfg).expect("participant");
    a.join().await.expect("join");
    let first = a
        .wait_for_leadership(Duration::from_secs(10))
        .await
        .expect("leads");
    let lease = a.lease().expect("a lease").id;
    let mut admin = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .expect("admin client");
    admin.lease_revoke(lease).await.expect("revoke");
    first.lost().await;
    let again = a
        .wait_for_leadership(Duration::from_secs(10))
        .await
        .expect("leads again with a new lease");
    assert!(again.term() > first.term());
    assert_eq!(counter("succession_lease_losses_total", &l), 1);
    assert_eq!(
        counter(
            "succession_leadership_changes_total",
            &[l[0], l[1], ("change", "lost")]
        ),
        1
    );
    assert_eq!(
        counter(
            "succession_leadership_changes_total",
            &[l[0], l[1], ("change", "gained")]
        ),
        2
    );
    assert_eq!(gauge("succession_is_leader", &l), 1.0);
    assert!(matches!(a.status().borrow().role, Role::Leader { .. }));
    // Contact: the latest answered renewal is recent and safe for TTL minus the margin.
    let c = a.contact();
    assert!(c.last.is_some_and(|t| t.elapsed() < Duration::from_secs(3)));
    assert!(
        c.safe_for >= Duration::from_secs(2) && c.safe_for < Duration::from_secs(3),
        "{c:?}"
    );
    a.close().await.expect("close");
}
