//! The shared etcd connection (one etcd-client `Client`, made on first use), the bounded
//! jittered backoff, and the key layout.

use std::time::Duration;

use std::future::Future;
use std::pin::Pin;

use etcd_client::{Client, ConnectOptions, Txn, TxnResponse};
use rand::Rng;
use succession_core::Result;
use tokio::sync::Mutex;

use crate::config::EtcdSessionConfig;
use crate::error;
pub(crate) use crate::machine::{parse_epoch, Backoff, Layout};

/// HTTP/2 keep-alive ping interval. etcd drops streams of clients that ping more often
/// than every 5 s ("too many pings"); 10 s stays clear of that and still finds a dead
/// connection (e.g. a silent partition) within interval + timeout.
const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// One etcd-client `Client`, connected lazily (no I/O before the first request) and then
/// shared by every task of one election or record. The client reconnects by itself after
/// an etcd restart; streams opened on it do not survive one and are reopened by their users.
pub(crate) struct Connection {
    pub(crate) config: EtcdSessionConfig,
    client: Mutex<Option<Client>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("endpoints", &self.config.endpoints)
            .finish()
    }
}

impl Connection {
    pub(crate) fn new(config: EtcdSessionConfig) -> Self {
        Connection {
            config,
            client: Mutex::new(None),
        }
    }

    /// The client, connecting on first use. Without credentials this does no I/O; with
    /// credentials it authenticates (bounded by connect + request timeout).
    pub(crate) async fn client(&self) -> Result<Client> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = &self.config;
        // No `with_timeout`: etcd-client applies it to streams too (watch, keep-alive),
        // which would cut a long wait for a predecessor. Unary requests are bounded by
        // `error::request` instead.
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(c.connect_timeout)
            .with_keep_alive(H2_KEEPALIVE_INTERVAL, H2_KEEPALIVE_TIMEOUT)
            .with_keep_alive_while_idle(false);
        if let (Some(user), Some(password)) = (&c.user, &c.password) {
            opts = opts
                .with_user(user.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        #[cfg(feature = "tls")]
        if let Some(tls) = c.tls.as_deref() {
            opts = opts.with_tls(tls_options(tls));
        }
        let client = error::request_in(
            "connect",
            c.connect_timeout + c.request_timeout,
            Box::pin(Client::connect(c.endpoints.clone(), Some(opts))),
            c.tls.as_deref(),
        )
        .await?;
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Run one unary request with the configured request timeout. The request is boxed at
    /// once, so that the (large) etcd-client future never sits in the state of the caller's
    /// future: a campaign task stays small while it waits.
    pub(crate) fn request<'a, T, F>(
        &'a self,
        op: &'a str,
        fut: F,
    ) -> Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>
    where
        T: Send + 'a,
        F: Future<Output = std::result::Result<T, etcd_client::Error>> + Send + 'a,
    {
        Box::pin(error::request_in(
            op,
            self.config.request_timeout,
            fut,
            self.config.tls.as_deref(),
        ))
    }

    /// One txn (connecting first if needed) as a boxed request that owns its client clone,
    /// so that the caller's future holds neither a `Client` (3.5 KiB) nor its futures.
    pub(crate) fn txn<'a>(
        &'a self,
        op: &'a str,
        txn: Txn,
    ) -> Pin<Box<dyn Future<Output = Result<TxnResponse>> + Send + 'a>> {
        Box::pin(async move {
            let mut c = self.client().await?;
            error::request_in(
                op,
                self.config.request_timeout,
                c.txn(txn),
                self.config.tls.as_deref(),
            )
            .await
        })
    }
}

/// etcd-client's TLS options for `tls` (PEM data is parsed when the client is made; a
/// malformed file fails `connect` with an error naming TLS).
#[cfg(feature = "tls")]
fn tls_options(tls: &crate::config::TlsSettings) -> etcd_client::TlsOptions {
    use etcd_client::{Certificate, Identity, TlsOptions};
    let mut t = TlsOptions::new();
    if let Some(ca) = &tls.ca_pem {
        t = t.ca_certificate(Certificate::from_pem(ca));
    }
    if let Some((cert, key)) = &tls.identity_pem {
        t = t.identity(Identity::from_pem(cert, key));
    }
    if let Some(name) = &tls.domain_name {
        t = t.domain_name(name.clone());
    }
    t
}

/// Run `op` until it succeeds, retrying with the participation backoff for `ttl` while
/// `deadline` has not passed (`what` names it in the debug log); the last error after it.
/// For clean-ups that are worth doing until the store would do them itself (a lease
/// expiring on its own).
pub(crate) async fn retry_until<F, Fut>(
    deadline: tokio::time::Instant,
    ttl: Duration,
    what: &str,
    mut op: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut backoff = Backoff::for_ttl(ttl);
    loop {
        match op().await {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "{what} failed; retrying");
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                tokio::time::sleep(backoff.next_delay(rand::random()).min(left)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A lease id of our own choosing: random, positive, never 0 (0 asks etcd to choose).
pub(crate) fn random_lease_id() -> i64 {
    rand::thread_rng().gen_range(1..=i64::MAX)
}

/// Milliseconds since the Unix epoch by the wall clock (0 if the clock is before 1970).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_go_layout() {
        let l = Layout::new("/svc/leader");
        assert_eq!(l.epoch_key, "/svc/leader");
        assert_eq!(
            l.candidate_key(0x694d7a1b2c3d4e5f),
            "/svc/leader/694d7a1b2c3d4e5f"
        );
        assert_eq!(l.candidate_key(255), "/svc/leader/ff");
        assert!(random_lease_id() > 0);
    }

    #[test]
    fn backoff_is_bounded_and_jittered() {
        let mut b = Backoff::new(Duration::from_millis(50), Duration::from_millis(400));
        let waits: Vec<Duration> = (0..10).map(|_| b.next_delay(rand::random())).collect();
        assert!(
            waits.iter().all(|w| *w <= Duration::from_millis(400)),
            "{waits:?}"
        );
        assert!(waits[0] >= Duration::from_millis(25));
        assert!(waits[9] >= Duration::from_millis(200));
        b.reset();
        assert!(b.next_delay(rand::random()) <= Duration::from_millis(50));
    }

    #[test]
    fn epoch_values_parse() {
        assert_eq!(parse_epoch(b"1732000000000").unwrap(), 1_732_000_000_000);
        assert!(parse_epoch(b"x").is_err());
    }
}
