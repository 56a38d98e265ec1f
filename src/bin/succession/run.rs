//! `succession run -- CMD`: run CMD only while this participant leads.

use std::process::{ExitCode, ExitStatus, Stdio};
use std::time::Duration;

use succession::ElectionExt;
use tokio::process::{Child, Command};

use crate::args::Settings;
use crate::events::{self, Emitter};

pub async fn run(
    s: Settings,
    grace: Duration,
    restart: bool,
    cmd: Vec<String>,
    mut stop: crate::Shutdown,
) -> Result<ExitCode, String> {
    let recorder = crate::install_metrics(&s)?;
    let built = crate::backend::build(&s)?;
    let e = built.election.clone();
    let em = Emitter::new(e.id());
    let follower = events::follow_status(em.clone(), e.status(), built.layer);
    let extra = crate::supervised::follow_events(&built, em.clone());
    let health = crate::serve_health(&s, recorder, &e, &em).await?;
    let joined = crate::join(&e, &s, &mut stop).await?;
    let finish = |code: ExitCode| {
        let e = e.clone();
        let em = em.clone();
        async move {
            let r = e.close().await;
            let _ = tokio::time::timeout(Duration::from_secs(2), follower).await;
            for t in extra.into_iter().chain(health) {
                t.abort();
            }
            em.emit("closed", &[]);
            r.map_err(|err| format!("close: {err}")).map(|_| code)
        }
    };
    if !joined {
        return finish(ExitCode::SUCCESS).await;
    }
    'lead: loop {
        let lead = loop {
            tokio::select! {
                _ = stop.recv() => return finish(ExitCode::SUCCESS).await,
                r = e.wait_for_leadership(Duration::from_secs(3600)) => match r {
                    Ok(l) => break l,
                    Err(err) if err.kind() == succession::ErrorKind::Timeout => continue,
                    Err(err) => return Err(format!("election ended: {err}")),
                },
            }
        };
        let layer = crate::supervised::active_layer(&built);
        loop {
            let mut child = spawn(&cmd, &lead.term().to_string(), &layer, e.id())?;
            eprintln!(
                "succession: leading (term {}); started {:?} as pid {}",
                lead.term(),
                cmd,
                child.id().unwrap_or(0)
            );
            tokio::select! {
                status = child.wait() => {
                    let status = status.map_err(|err| format!("waiting for {:?}: {err}", cmd[0]))?;
                    eprintln!("succession: {:?} exited: {status}", cmd[0]);
                    if restart && lead.is_current() {
                        continue;
                    }
                    if restart {
                        continue 'lead;
                    }
                    return finish(exit_code(status)).await;
                }
                _ = lead.lost() => {
                    eprintln!("succession: leadership lost; stopping {:?}", cmd[0]);
                    stop_child(&mut child, grace).await;
                    continue 'lead;
                }
                _ = stop.recv() => {
                    eprintln!("succession: signal received; stopping {:?} and resigning", cmd[0]);
                    stop_child(&mut child, grace).await;
                    return finish(ExitCode::SUCCESS).await;
                }
            }
        }
    }
}

fn spawn(cmd: &[String], term: &str, layer: &str, id: &str) -> Result<Child, String> {
    Command::new(&cmd[0])
        .args(&cmd[1..])
        .env("SUCCESSION_TERM", term)
        .env("SUCCESSION_LAYER", layer)
        .env("SUCCESSION_ID", id)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| format!("cannot start {:?}: {err}", cmd[0]))
}

/// SIGTERM, wait up to `grace`, then SIGKILL.
async fn stop_child(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on the pid of our own, not yet reaped child.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
        if tokio::time::timeout(grace, child.wait()).await.is_ok() {
            return;
        }
        eprintln!("succession: child {pid} ignored SIGTERM for {grace:?}; SIGKILL");
    }
    let _ = child.kill().await;
}

fn exit_code(status: ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => ExitCode::from(c.clamp(0, 255) as u8),
        (None, Some(sig)) => ExitCode::from((128 + sig).clamp(0, 255) as u8),
        _ => ExitCode::from(1),
    }
}
