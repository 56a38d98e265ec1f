//! `succession run -- CMD`: run CMD only while this participant leads.
//!
//! CMD runs under a guard process (`succession::process`): its own process group, every
//! descendant re-parented to the guard, the whole tree signalled and reaped on loss, resign
//! or exit, SIGKILL no later than the election's takeover bound, and the tree killed by the
//! guard if `run` itself dies.

use std::process::{ExitCode, ExitStatus};
use std::time::Duration;

use succession::process::{GuardedChild, LeaderCommand, Outcome, Stopped};
use succession::ElectionExt;

use crate::args::Settings;
use crate::events::{self, Emitter, V};

pub async fn run(
    s: Settings,
    grace: Duration,
    restart: bool,
    cmd: Vec<String>,
    mut stop: crate::Shutdown,
) -> Result<ExitCode, String> {
    // Should a guard be killed alone (SIGKILL, OOM killer), the command's orphans come
    // here rather than to init, and are killed before we give up our place.
    succession::process::adopt_orphans().map_err(|e| format!("cannot become a subreaper: {e}"))?;
    let recorder = crate::install_metrics(&s)?;
    let built = crate::backend::build(&s)?;
    let e = built.election.clone();
    let em = Emitter::new(e.id());
    let follower = events::follow_status(em.clone(), e.status(), built.layer);
    let extra = crate::supervised::follow_events(&built, em.clone());
    let health = crate::serve_health(&s, recorder, &e, &em).await?;
    let mut tasks: Vec<_> = extra.into_iter().chain(health).collect();
    tasks.push(follower);
    let joined = crate::join(&e, &s, &mut stop).await?;
    if !joined {
        return Ok(crate::finish(&e, &em, tasks, ExitCode::SUCCESS).await);
    }
    'lead: loop {
        let lead = loop {
            tokio::select! {
                _ = stop.recv() => return Ok(crate::finish(&e, &em, tasks, ExitCode::SUCCESS).await),
                r = e.wait_for_leadership(Duration::from_secs(3600)) => match r {
                    Ok(l) => break l,
                    Err(err) if err.kind() == succession::ErrorKind::Timeout => continue,
                    Err(err) => return Err(format!("election ended: {err}")),
                },
            }
        };
        let layer = crate::supervised::active_layer(&built);
        loop {
            let term = lead.term().to_string();
            let command = LeaderCommand::new(&cmd[0])
                .args(&cmd[1..])
                .env("SUCCESSION_TERM", &term)
                .env("SUCCESSION_LAYER", &layer)
                .env("SUCCESSION_ID", e.id());
            let child = GuardedChild::spawn(&command)
                .map_err(|err| format!("cannot start {}: {err}", cmd[0]))?;
            let pid = child.pid();
            em.emit(
                "started",
                &[("pid", V::N(pid.into())), ("term", V::S(&term))],
            );
            eprintln!(
                "succession: leading (term {term}); started {} as pid {pid}",
                cmd[0]
            );
            let outcome = match child.until_lost(&*e, &lead, grace, stop.recv()).await {
                Ok(o) => o,
                Err(err) => {
                    // The guard is gone without having stopped the tree: kill what is left
                    // of it (our orphans now) while we still hold our place.
                    let left = tokio::task::spawn_blocking(|| {
                        succession::process::kill_orphans(Duration::from_secs(5))
                    })
                    .await
                    .unwrap_or(usize::MAX);
                    return Err(format!(
                        "stopping {}: {err}{}",
                        cmd[0],
                        if left > 0 {
                            "; some of its processes could not be killed"
                        } else {
                            ""
                        }
                    ));
                }
            };
            match outcome {
                Outcome::LeadershipLost(st) => {
                    stopped(&em, pid, &st, "leadership lost");
                    // Killed by the guard's own deadline (contact not confirmed in time)
                    // while the election still says we lead: start again only once contact
                    // is fresh (or after the loss), not in a hot loop.
                    while lead.is_current() {
                        let c = e.contact();
                        let fresh = c.last.is_some_and(|l| {
                            l + c.safe_for > std::time::Instant::now() + Duration::from_millis(500)
                        });
                        if fresh {
                            break;
                        }
                        tokio::select! {
                            _ = lead.lost() => break,
                            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                            _ = stop.recv() => {
                                return Ok(crate::finish(&e, &em, tasks, ExitCode::SUCCESS).await)
                            }
                        }
                    }
                    continue 'lead;
                }
                Outcome::Cancelled(st) => {
                    stopped(&em, pid, &st, "signal received");
                    return Ok(crate::finish(&e, &em, tasks, ExitCode::SUCCESS).await);
                }
                Outcome::Exited { status, rest } => {
                    stopped(&em, pid, &rest, "command exited");
                    eprintln!("succession: {} exited: {status}", cmd[0]);
                    if restart && lead.is_current() {
                        continue;
                    }
                    if restart {
                        continue 'lead;
                    }
                    let code = exit_code(status);
                    return Ok(crate::finish(&e, &em, tasks, code).await);
                }
                _ => return Err("unexpected outcome of the command".into()),
            }
        }
    }
}

/// `stopped`: every process of the command's tree is gone (reaped), with how.
fn stopped(em: &Emitter, pid: u32, st: &Stopped, reason: &str) {
    let code = st.status.map(|s| s.into_raw_code());
    em.emit(
        "stopped",
        &[
            ("pid", V::N(pid.into())),
            ("reason", V::S(reason)),
            ("killed", V::B(st.killed)),
            ("took_ms", V::N(st.took.as_millis() as u64)),
            ("status", code.as_deref().map(V::S).unwrap_or(V::Null)),
        ],
    );
}

trait RawCode {
    fn into_raw_code(self) -> String;
}

impl RawCode for ExitStatus {
    /// `exit:N` or `signal:N`.
    fn into_raw_code(self) -> String {
        use std::os::unix::process::ExitStatusExt;
        match (self.code(), self.signal()) {
            (Some(c), _) => format!("exit:{c}"),
            (None, Some(sig)) => format!("signal:{sig}"),
            _ => "unknown".into(),
        }
    }
}

fn exit_code(status: ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => ExitCode::from(c.clamp(0, 255) as u8),
        (None, Some(sig)) => ExitCode::from((128 + sig).clamp(0, 255) as u8),
        _ => ExitCode::from(1),
    }
}
