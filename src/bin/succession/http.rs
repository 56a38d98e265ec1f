//! `--health-addr`: a minimal HTTP/1.1 server for probes and scrapers.
//!
//! * `GET /healthz`: 200 `ok: ...` or 503 `unhealthy: ...` from
//!   [`LeaderHealthCheck`](succession::health::LeaderHealthCheck) (a liveness probe: only a
//!   leader that lost contact with its store beyond the safe bound is unhealthy).
//! * `GET /metrics`: every succession metric in the Prometheus text format.
//! * `GET /status`: the participant's role, health and term as one JSON object.
//!
//! One request per connection (`Connection: close`); requests larger than 8 KiB or slower
//! than 5 s are dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use succession::health::LeaderHealthCheck;
use succession::Election;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::events::{quote, Emitter, V};

/// Install the Prometheus recorder (once per process) and describe succession's metrics.
/// Must run before the election is built, so that its initial gauges are recorded.
pub fn install_metrics() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    succession::metrics::describe();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// Bind `addr` and serve in the background; prints a `health_listening` event with the
/// bound address (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    metrics: PrometheusHandle,
    election: Arc<dyn Election>,
    tolerance: Duration,
    em: &Emitter,
) -> Result<JoinHandle<()>, String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on --health-addr {addr}: {e}"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("--health-addr {addr}: {e}"))?;
    em.emit("health_listening", &[("addr", V::S(&bound.to_string()))]);
    let check = LeaderHealthCheck::new(election).tolerance(tolerance);
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let check = check.clone();
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), answer(stream, &check, &metrics))
                        .await;
            });
        }
    }))
}

async fn answer(
    mut stream: TcpStream,
    check: &LeaderHealthCheck,
    metrics: &PrometheusHandle,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 8192 {
            return respond(&mut stream, 431, "text/plain", "request too large\n").await;
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" && method != "HEAD" {
        return respond(&mut stream, 405, "text/plain", "only GET is served here\n").await;
    }
    match path {
        "/healthz" | "/livez" => {
            let r = check.report();
            let code = if r.is_healthy() { 200 } else { 503 };
            respond(&mut stream, code, "text/plain", &format!("{r}\n")).await
        }
        "/metrics" => {
            respond(
                &mut stream,
                200,
                "text/plain; version=0.0.4",
                &metrics.render(),
            )
            .await
        }
        "/status" => {
            let r = check.report();
            let term = r.term.map(|t| t.to_string());
            let body = format!(
                "{{\"healthy\":{},\"role\":{},\"term\":{},\"contact_age_ms\":{},\"safe_for_ms\":{},\"reason\":{}}}\n",
                r.healthy,
                quote(r.role),
                term.as_deref().map_or("null".into(), quote),
                r.contact_age
                    .map_or("null".into(), |a| a.as_millis().to_string()),
                r.safe_for.as_millis(),
                quote(&r.reason)
            );
            respond(&mut stream, 200, "application/json", &body).await
        }
        _ => {
            respond(
                &mut stream,
                404,
                "text/plain",
                "not found; try /healthz, /metrics or /status\n",
            )
            .await
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    code: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
