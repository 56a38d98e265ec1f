//! A TCP forwarder to partition ONE client from a server.

use crate::error::{Error, Result};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forward,
    Blackhole,
    Cut,
    /// Not listening: connections are refused.
    Refuse,
    /// The next connection gets the upstream's first frame only, then everything is refused.
    OneFrame,
}

#[derive(Debug)]
struct State {
    mode: watch::Sender<Mode>,
    delay_nanos: AtomicU64,
    active: AtomicUsize,
    accepted: AtomicUsize,
}

/// A TCP forwarder `127.0.0.1:<random port>` -> `upstream`. Give the client
/// [`addr`](Self::addr) instead of the server's address, then [`cut`](Self::cut),
/// [`blackhole`](Self::blackhole), [`refuse`](Self::refuse),
/// [`one_frame_then_refuse`](Self::one_frame_then_refuse), [`restore`](Self::restore) or
/// [`set_delay`](Self::set_delay) to fail just that client's link while the server runs on.
///
/// Runs on the tokio runtime it was started in; dropping it closes every connection.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    upstream: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free 127.0.0.1 port and forwards every connection to `upstream`
    /// (`"127.0.0.1:PORT"`; an `http://` prefix is ignored, so an etcd endpoint works too).
    pub async fn start(upstream: &str) -> Result<TcpProxy> {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| Error::io("bind the proxy on 127.0.0.1", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("proxy local_addr", e))?;
        let state = Arc::new(State {
            mode: watch::channel(Mode::Forward).0,
            delay_nanos: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, upstream.clone(), state.clone()));
        Ok(TcpProxy {
            addr,
            upstream,
            state,
            task,
        })
    }

    /// `"127.0.0.1:PORT"` to give the client instead of the server's address.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// `"http://127.0.0.1:PORT"`, [`addr`](Self::addr) as an etcd endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The upstream address this proxy forwards to.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// Drops every current connection (the client sees EOF) and closes each new one right
    /// after accepting it, until [`restore`](Self::restore).
    pub fn cut(&self) {
        self.state.mode.send_replace(Mode::Cut);
    }

    /// Keeps connections open but forwards no byte in either direction, and accepts new
    /// connections without connecting them upstream: a silent partition, like a pulled
    /// cable. Bytes already sent wait in buffers and flow after [`restore`](Self::restore).
    pub fn blackhole(&self) {
        self.state.mode.send_replace(Mode::Blackhole);
    }

    /// Drops every current connection and stops listening: new connections are REFUSED
    /// (like a server that is down, where [`cut`](Self::cut) accepts and closes them).
    /// Until [`restore`](Self::restore), which listens on the same port again (a few
    /// milliseconds later: the proxy's task binds it).
    pub fn refuse(&self) {
        self.state.mode.send_replace(Mode::Refuse);
    }

    /// A server that dies right after accepting a handshake: drops every current
    /// connection, accepts the NEXT one, forwards what the client sends but only the first
    /// length-prefixed frame of the upstream's reply (4-byte big-endian length, then the
    /// body: for ZooKeeper, the connect response), closes that connection, and refuses
    /// every later one (as [`refuse`](Self::refuse)) until [`restore`](Self::restore).
    pub fn one_frame_then_refuse(&self) {
        self.state.mode.send_replace(Mode::OneFrame);
    }

    /// Forwards again (new connections after a cut; stalled ones after a blackhole).
    pub fn restore(&self) {
        self.state.mode.send_replace(Mode::Forward);
    }

    /// Adds `d` of latency to every chunk forwarded, in both directions (`ZERO` removes it).
    pub fn set_delay(&self, d: Duration) {
        self.state
            .delay_nanos
            .store(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    /// Connections currently open through the proxy.
    pub fn active_connections(&self) -> usize {
        self.state.active.load(Ordering::Relaxed)
    }

    /// Connections accepted since start (including ones closed by a cut).
    pub fn accepted_connections(&self) -> usize {
        self.state.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        // The accept task owns the JoinSet of connection tasks: aborting it aborts them all.
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, upstream: String, state: Arc<State>) {
    let Ok(addr) = listener.local_addr() else {
        return;
    };
    let mut listener = Some(listener);
    let mut modes = state.mode.subscribe();
    let mut conns = JoinSet::new();
    loop {
        let mode = *modes.borrow_and_update();
        if mode == Mode::Refuse {
            listener = None;
        } else if listener.is_none() {
            match rebind(addr) {
                Ok(l) => listener = Some(l),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        tokio::select! {
            accepted = async { listener.as_ref().expect("listening").accept().await }, if listener.is_some() => {
                let Ok((client, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                state.accepted.fetch_add(1, Ordering::Relaxed);
                let _ = client.set_nodelay(true);
                let now = *state.mode.borrow();
                match now {
                    Mode::Cut | Mode::Refuse => drop(client),
                    Mode::OneFrame => {
                        // Refuse from now on; this connection gets its one frame.
                        state.mode.send_replace(Mode::Refuse);
                        conns.spawn(one_frame(client, upstream.clone(), state.clone()));
                    }
                    Mode::Forward | Mode::Blackhole => {
                        conns.spawn(connection(client, upstream.clone(), state.clone()));
                    }
                }
            }
            changed = modes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Listen on `addr` again (after [`Mode::Refuse`]).
fn rebind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// [`Mode::OneFrame`]'s connection: the client's bytes go upstream; of the upstream's, only
/// its first length-prefixed frame comes back; then both sides are closed.
async fn one_frame(mut client: TcpStream, upstream: String, state: Arc<State>) {
    state.active.fetch_add(1, Ordering::Relaxed);
    let _guard = ActiveGuard(state.clone());
    let Ok(up) = TcpStream::connect(&upstream).await else {
        return;
    };
    let _ = up.set_nodelay(true);
    let (mut ur, mut uw) = up.into_split();
    let (mut cr, mut cw) = client.split();
    let mut from_client = vec![0u8; 16 * 1024];
    let forward = async {
        loop {
            match cr.read(&mut from_client).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if uw.write_all(&from_client[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let first = async {
        let mut len = [0u8; 4];
        ur.read_exact(&mut len).await?;
        let mut body = vec![0u8; u32::from_be_bytes(len).min(1 << 20) as usize];
        ur.read_exact(&mut body).await?;
        cw.write_all(&len).await?;
        cw.write_all(&body).await?;
        cw.shutdown().await
    };
    let sent = tokio::select! {
        _ = forward => false,
        r = first => r.is_ok(),
    };
    drop((ur, uw));
    if sent {
        // Closed gracefully (FIN after the frame): closing a socket with unread input
        // would reset it, and a reset can discard the frame before the client reads it.
        // Drain until the client closes its side (bounded).
        let mut sink = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Ok(n) = cr.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }
}

struct ActiveGuard(Arc<State>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Waits while blackholed; `true` once forwarding, `false` on a cut.
async fn wait_forward(rx: &mut watch::Receiver<Mode>) -> bool {
    loop {
        match *rx.borrow_and_update() {
            Mode::Forward => return true,
            Mode::Cut | Mode::Refuse | Mode::OneFrame => return false,
            Mode::Blackhole => {}
        }
        if rx.changed().await.is_err() {
            return false;
        }
    }
}

/// Resolves when the proxy is cut, refuses, or gives only one frame (or is dropped).
async fn wait_cut(mut rx: watch::Receiver<Mode>) {
    let _ = rx
        .wait_for(|m| matches!(m, Mode::Cut | Mode::Refuse | Mode::OneFrame))
        .await;
}

async fn connection(client: TcpStream, upstream: String, state: Arc<State>) {
    state.active.fetch_add(1, Ordering::Relaxed);
    let _guard = ActiveGuard(state.clone());
    let mut rx = state.mode.subscribe();
    if !wait_forward(&mut rx).await {
        return;
    }
    let up = tokio::select! {
        up = TcpStream::connect(&upstream) => match up {
            Ok(up) => up,
            Err(_) => return,
        },
        _ = wait_cut(state.mode.subscribe()) => return,
    };
    let _ = up.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (ur, uw) = up.into_split();
    let both = async {
        tokio::join!(
            pump(cr, uw, state.clone(), state.mode.subscribe()),
            pump(ur, cw, state.clone(), state.mode.subscribe())
        )
    };
    tokio::select! {
        _ = both => {}
        _ = wait_cut(state.mode.subscribe()) => {}
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: Arc<State>,
    mut rx: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !wait_forward(&mut rx).await {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        let delay = state.delay_nanos.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_nanos(delay)).await;
        }
        // A blackhole that began while we read holds this chunk too.
        if !wait_forward(&mut rx).await {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
