//! One JSON object per line on stdout, flushed at once:
//! `{"ts_ms":<unix ms>,"mono_ns":<CLOCK_MONOTONIC ns>,"event":"<name>","id":"<participant>", ...}`.
//! `mono_ns` lets a harness on the same machine order the events of many processes on one
//! clock that never steps (the soak's history checker does).

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use succession::{HealthLevel, Role, Status};
use tokio::sync::watch;

/// A field value.
pub enum V<'a> {
    S(&'a str),
    N(u64),
    B(bool),
    Null,
}

/// Writes events for one participant id.
#[derive(Clone)]
pub struct Emitter {
    id: Arc<str>,
    out: Arc<Mutex<std::io::Stdout>>,
}

impl Emitter {
    pub fn new(id: &str) -> Self {
        Emitter {
            id: id.into(),
            out: Arc::new(Mutex::new(std::io::stdout())),
        }
    }

    pub fn emit(&self, event: &str, fields: &[(&str, V<'_>)]) {
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let mono = mono_ns();
        let mut line = format!(
            "{{\"ts_ms\":{ts},\"mono_ns\":{mono},\"event\":{},\"id\":{}",
            quote(event),
            quote(&self.id)
        );
        for (k, v) in fields {
            line.push(',');
            line.push_str(&quote(k));
            line.push(':');
            match v {
                V::S(s) => line.push_str(&quote(s)),
                V::N(n) => line.push_str(&n.to_string()),
                V::B(b) => line.push_str(if *b { "true" } else { "false" }),
                V::Null => line.push_str("null"),
            }
        }
        line.push_str("}\n");
        let out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = out.lock();
        // A closed stdout (e.g. `| head`) must not kill the participant.
        let _ = out.write_all(line.as_bytes());
        let _ = out.flush();
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds (the same clock for every process on the machine).
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// JSON string literal.
pub fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            '\r' => q.push_str("\\r"),
            '\t' => q.push_str("\\t"),
            c if (c as u32) < 0x20 => q.push_str(&format!("\\u{:04x}", c as u32)),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

/// Turn a status stream into joined / elected / revoked / health events. `layer` names the
/// store in single-backend mode; `None` (supervised) emits only `joined`, since the
/// supervisor's own events carry leadership and per-layer health.
pub fn follow_status(
    em: Emitter,
    mut rx: watch::Receiver<Status>,
    layer: Option<&'static str>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut prev = rx.borrow_and_update().clone();
        let mut joined_before = false;
        loop {
            if rx.changed().await.is_err() {
                return;
            }
            let s = rx.borrow_and_update().clone();
            transition(&em, &prev, &s, layer, &mut joined_before);
            prev = s;
            if prev.role == Role::Closed {
                return;
            }
        }
    })
}

/// The events for one status change. `joined` is printed once, for the first time our
/// place is held; getting it back later (after a reconnect, a repair, a failover or a
/// failback) is a `rejoined` event with the reason.
pub fn transition(
    em: &Emitter,
    prev: &Status,
    s: &Status,
    layer: Option<&'static str>,
    joined_before: &mut bool,
) {
    if !prev.role.is_joined() && s.role.is_joined() {
        if *joined_before {
            em.emit("rejoined", &[("reason", V::S(&s.reason))]);
        } else {
            *joined_before = true;
            em.emit("joined", &[]);
        }
    }
    let Some(layer) = layer else {
        return;
    };
    if prev.health.level != s.health.level {
        em.emit(
            "health",
            &[
                ("layer", V::S(layer)),
                ("state", V::S(level(s.health.level))),
                ("reason", V::S(&s.health.reason)),
            ],
        );
    }
    let was_leader = prev.role.term();
    let now_leader = s.role.term();
    if was_leader.is_some() && was_leader != now_leader {
        em.emit("revoked", &[("reason", V::S(&s.reason))]);
    }
    if let Some(t) = now_leader {
        if was_leader != Some(t) {
            let term = t.to_string();
            em.emit("elected", &[("term", V::S(&term)), ("layer", V::S(layer))]);
        }
    }
}

pub fn level(l: HealthLevel) -> &'static str {
    l.name()
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(quote("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
    }
}
