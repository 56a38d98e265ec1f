//! Every state change is a tracing event carried inside the span of the participant (and,
//! for layer joins, of the layer) that made it, also from background tasks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use succession_core::conformance;
use succession_core::memory::MemoryStore;
use succession_core::{Election, ElectionExt, Supervisor, SupervisorEvent};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// One recorded event: its message and `event` field, and the names of its spans
/// (innermost first).
#[derive(Debug, Clone, Default)]
struct Seen {
    message: String,
    event: String,
    backend: String,
    spans: Vec<String>,
}

#[derive(Default)]
struct Fields(Seen);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.0.message = format!("{value:?}"),
            "event" => self.0.event = format!("{value:?}").trim_matches('"').to_owned(),
            "backend" => self.0.backend = format!("{value:?}").trim_matches('"').to_owned(),
            _ => {}
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.0.message = value.to_owned(),
            "event" => self.0.event = value.to_owned(),
            "backend" => self.0.backend = value.to_owned(),
            _ => {}
        }
    }
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Seen>>>);

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let mut f = Fields::default();
        event.record(&mut f);
        f.0.spans = ctx
            .event_scope(event)
            .map(|scope| scope.map(|s| s.name().to_owned()).collect())
            .unwrap_or_default();
        self.0.lock().unwrap().push(f.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_state_changes_are_traced_inside_participant_and_layer_spans() {
    let rec = Recorder::default();
    let subscriber = tracing_subscriber::registry().with(rec.clone());
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber here");

    let primary = MemoryStore::with_session_timeout(Duration::from_millis(150));
    let fallback = MemoryStore::with_session_timeout(Duration::from_millis(150));
    let sup = Arc::new(
        Supervisor::builder()
            .primary(Arc::new(primary.election("n0").unwrap()))
            .fallback(Arc::new(fallback.election("n0").unwrap()))
            .mode_record(Arc::new(fallback.record("mode")))
            .heartbeat_record(Arc::new(fallback.record("mode.heartbeat")))
            .primary_session_timeout(primary.session_timeout())
            .failover_after(Duration::from_millis(300))
            .failback_after(Duration::from_secs(60))
            .check_interval(Duration::from_millis(40))
            .layer_names("zk", "etcd")
            .build()
            .unwrap(),
    );
    let mut events = sup.events();
    sup.join().await.expect("join");
    sup.wait_for_leadership(Duration::from_secs(5))
        .await
        .expect("leads");
    primary.set_available(false);
    conformance::next_event(
        &mut events,
        Duration::from_secs(5),
        "failover",
        SupervisorEvent::is_failover,
    )
    .await;
    sup.wait_for_leadership(Duration::from_secs(5))
        .await
        .expect("leads through the fallback");
    sup.close().await.expect("close");

    let seen = rec.0.lock().unwrap().clone();
    let in_span = |s: &Seen, name: &str| s.spans.iter().any(|n| n == name);
    // Every role change of the supervisor is in its span (its state machine, also when
    // driven by join, resign or close), and names the election.
    let roles: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.message == "role changed" && s.backend == "supervisor")
        .collect();
    assert!(roles.len() >= 4, "{seen:#?}");
    for r in &roles {
        assert!(
            in_span(r, "supervisor"),
            "outside the supervisor's span: {r:?}"
        );
    }
    // The failover is an event with its kind, in the supervisor's span.
    assert!(
        seen.iter()
            .any(|s| s.event == "failover" && in_span(s, "supervisor")),
        "{seen:#?}"
    );
    // Layer joins run in a `layer` span inside the supervisor's.
    assert!(
        seen.iter().any(|s| s.message == "role changed"
            && s.backend == "memory"
            && s.spans.first().map(String::as_str) == Some("layer")
            && in_span(s, "supervisor")),
        "{seen:#?}"
    );
}
