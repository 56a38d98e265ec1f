//! The shared etcd connection (one etcd-client `Client`, made on first use), the bounded
//! jittered backoff, and the key layout.

use std::time::Duration;

use std::future::Future;
use std::pin::Pin;

use etcd_client::{Client, ConnectOptions, Txn, TxnResponse};
use rand::Rng;
use succession_core::{Error, Result};
use tokio::sync::Mutex;

use crate::config::EtcdSessionConfig;
use crate::error;

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

/// Bounded, jittered exponential backoff ("full jitter"): the n-th wait is uniform in
/// `[cap_n / 2, cap_n]` with `cap_n = min(max, base * 2^n)`.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max: max.max(base),
            attempt: 0,
        }
    }

    /// The backoff for the participation loops of one election: 50 ms doubling up to
    /// `clamp(TTL / 4, 250 ms, 2 s)`, so retries stay well inside one lease period.
    pub(crate) fn for_ttl(ttl: Duration) -> Self {
        let max = (ttl / 4).clamp(Duration::from_millis(250), Duration::from_secs(2));
        Backoff::new(Duration::from_millis(50), max)
    }

    /// The next wait.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(16));
        let cap = exp.min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let lo = cap / 2;
        let jitter = rand::thread_rng().gen_range(0..=(cap - lo).as_micros() as u64);
        lo + Duration::from_micros(jitter)
    }

    /// Start again from the base delay (after a success).
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
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
                tokio::time::sleep(backoff.next_delay().min(left)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The Go `concurrency.Election` layout under one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// `<prefix>`: the epoch record (outside the election's key range).
    pub(crate) epoch_key: String,
    /// `<prefix>/`: the range of candidate keys.
    pub(crate) range: String,
}

impl Layout {
    pub(crate) fn new(prefix: &str) -> Self {
        Layout {
            epoch_key: prefix.to_owned(),
            range: format!("{prefix}/"),
        }
    }

    /// The candidate key of lease `lease`: `<prefix>/<lease id in lowercase hex>`, exactly
    /// as Go formats it (`fmt.Sprintf("%s%x", prefix+"/", leaseID)`).
    pub(crate) fn candidate_key(&self, lease: i64) -> String {
        format!("{}{:x}", self.range, lease)
    }

    /// The candidate key of participant `slot` of one session on this prefix: slot 0 is
    /// [`candidate_key`](Self::candidate_key); further participants of the same session on
    /// the same prefix use `<prefix>/<lease hex>_<slot>` (Go's readers order keys by create
    /// revision and read only the value, so they see these like any other candidate).
    pub(crate) fn slot_key(&self, lease: i64, slot: u32) -> String {
        if slot == 0 {
            self.candidate_key(lease)
        } else {
            format!("{}{:x}_{slot}", self.range, lease)
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

/// Parse an epoch record's value (decimal milliseconds).
pub(crate) fn parse_epoch(value: &[u8]) -> Result<u64> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .ok_or_else(|| {
            Error::new(
                succession_core::ErrorKind::Backend,
                format!(
                    "the epoch record holds {:?}, not a decimal number of milliseconds; \
                     something else wrote to the key of the election prefix itself",
                    String::from_utf8_lossy(value)
                ),
            )
        })
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
        let waits: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        assert!(
            waits.iter().all(|w| *w <= Duration::from_millis(400)),
            "{waits:?}"
        );
        assert!(waits[0] >= Duration::from_millis(25));
        assert!(waits[9] >= Duration::from_millis(200));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(50));
    }

    #[test]
    fn epoch_values_parse() {
        assert_eq!(parse_epoch(b"1732000000000").unwrap(), 1_732_000_000_000);
        assert!(parse_epoch(b"x").is_err());
    }
}
