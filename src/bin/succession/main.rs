//! `succession`: leader election from the command line. See `succession --help`.

mod args;
mod backend;
mod events;
mod generate;
mod http;
mod observe;
mod run;
mod supervised;
mod ui;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use succession::Election;
use tokio::signal::unix::{signal, SignalKind};

use args::{Cli, Command, Settings};
use events::Emitter;

fn main() -> ExitCode {
    let cli = match ui::parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    // Human-readable logs on stderr; RUST_LOG=succession_zk=debug etc. for more. Colours
    // only on a terminal, and never with NO_COLOR set (https://no-color.org).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ui::colour())
        .with_target(true)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("succession: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("succession: {}", ui::in_cli_terms(&msg));
            ExitCode::from(2)
        }
    }
}

async fn dispatch(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        Command::Completions(c) => return generate::completions(c.shell),
        Command::Man => return generate::man(),
        _ => {}
    }
    let stop = Shutdown::install()?;
    match cli.command {
        Command::Campaign(common) => campaign(common.resolve()?, stop).await,
        Command::Observe(o) => {
            let interval = o.interval()?;
            observe::observe(o.common.resolve()?, interval, stop).await
        }
        Command::Run(r) => {
            let grace = r.grace()?;
            let s = r.common.resolve()?;
            run::run(s, grace, r.restart, r.command, stop).await
        }
        Command::Completions(_) | Command::Man => unreachable!("handled above"),
    }
}

/// SIGINT/SIGTERM handlers, installed at start (before anything can be printed), so a
/// signal always leads to a clean resign.
pub struct Shutdown {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Shutdown {
    pub fn install() -> Result<Shutdown, String> {
        let int =
            signal(SignalKind::interrupt()).map_err(|e| format!("cannot handle SIGINT: {e}"))?;
        let term =
            signal(SignalKind::terminate()).map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
        Ok(Shutdown { int, term })
    }

    /// Resolves at the next SIGINT or SIGTERM.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

/// Join within the startup timeout, or explain why not. `Ok(false)`: a signal came first
/// (the election is closed).
pub async fn join(
    e: &Arc<dyn Election>,
    s: &Settings,
    stop: &mut Shutdown,
) -> Result<bool, String> {
    let joined = tokio::select! {
        r = tokio::time::timeout(s.startup_timeout, e.join()) => r,
        _ = stop.recv() => return Ok(false),
    };
    match joined {
        Ok(Ok(())) => Ok(true),
        Ok(Err(err)) => {
            let _ = tokio::time::timeout(CLOSE_BOUND, e.close()).await;
            Err(format!("cannot join the election: {err}"))
        }
        Err(_) => {
            let st = e.status().borrow().clone();
            let _ = tokio::time::timeout(CLOSE_BOUND, e.close()).await;
            Err(format!(
                "could not join the election within {} (--startup-timeout): {}",
                humantime::format_duration(s.startup_timeout),
                st.health.reason
            ))
        }
    }
}

async fn campaign(s: Settings, mut stop: Shutdown) -> Result<ExitCode, String> {
    let recorder = install_metrics(&s)?;
    let built = backend::build(&s)?;
    let e = built.election.clone();
    let em = Emitter::new(e.id());
    let follower = events::follow_status(em.clone(), e.status(), built.layer);
    let extra = supervised::follow_events(&built, em.clone());
    let health = serve_health(&s, recorder, &e, &em).await?;
    eprintln!("succession: joining {} as {}", s.backend, e.id());
    let mut tasks: Vec<_> = extra.into_iter().chain(health).collect();
    tasks.push(follower);
    if join(&e, &s, &mut stop).await? {
        stop.recv().await;
        eprintln!("succession: signal received; resigning");
    }
    Ok(finish(&e, &em, tasks, ExitCode::SUCCESS).await)
}

/// How long leaving the election may take once we stopped acting: leadership is dropped
/// (published) at once, the store cleanup (deleting our node, revoking our lease) is best
/// effort within this bound; what it leaves is removed by the store when our session or
/// lease expires.
pub const CLOSE_BOUND: Duration = Duration::from_secs(2);

/// Leave the election within [`CLOSE_BOUND`], print `closed`, and exit with `code`
/// whatever the stores' state (a failed cleanup is a warning, not a failure).
pub async fn finish(
    e: &Arc<dyn Election>,
    em: &Emitter,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    code: ExitCode,
) -> ExitCode {
    match tokio::time::timeout(CLOSE_BOUND, e.close()).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => eprintln!(
            "succession: warning: leaving the election: {err}; the store drops our place when our session or lease expires"
        ),
        Err(_) => eprintln!(
            "succession: warning: leaving the election did not finish within {} (store unreachable?); the store drops our place when our session or lease expires",
            humantime::format_duration(CLOSE_BOUND)
        ),
    }
    // Let the status follower print the last transitions (it ends at `Closed`).
    let mut tasks = tasks;
    if let Some(follower) = tasks.pop() {
        let _ = tokio::time::timeout(Duration::from_millis(500), follower).await;
    }
    for t in tasks {
        t.abort();
    }
    em.emit("closed", &[]);
    code
}

/// With `--health-addr`: install the metrics recorder (before building the election).
pub fn install_metrics(
    s: &Settings,
) -> Result<Option<metrics_exporter_prometheus::PrometheusHandle>, String> {
    match s.health_addr {
        Some(_) => http::install_metrics().map(Some),
        None => Ok(None),
    }
}

/// Start the `--health-addr` server when asked for.
pub async fn serve_health(
    s: &Settings,
    recorder: Option<metrics_exporter_prometheus::PrometheusHandle>,
    e: &Arc<dyn Election>,
    em: &Emitter,
) -> Result<Option<tokio::task::JoinHandle<()>>, String> {
    match (s.health_addr, recorder) {
        (Some(addr), Some(metrics)) => {
            http::serve(addr, metrics, e.clone(), s.health_tolerance, em)
                .await
                .map(Some)
        }
        _ => Ok(None),
    }
}
