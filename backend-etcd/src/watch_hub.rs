//! Watch streams shared by the elections of a session: a [`WatchHub`] owns ONE gRPC watch
//! stream and multiplexes the watchers of many elections on it, routing each response to the
//! election that created the watcher (by watch id).
//!
//! etcd acknowledges the watcher creations of one stream in request order, so the hub keeps
//! the routes of requested-but-unacknowledged watchers in a FIFO and binds each `created`
//! response to the front one. Every response of an election's watchers reaches that election
//! in stream order (one channel per election), so what an election concludes from the order
//! of events on its watchers (see `QueueWatch` in `election.rs`) holds as with a stream of its
//! own. A broken stream ends every watcher on it (each election is told and re-reads); the
//! next creation opens a new stream.
//!
//! A session uses one hub per [`ELECTIONS_PER_STREAM`] elections, so that a burst of events
//! (e.g. another session's close deleting hundreds of keys at one revision) stays well inside
//! what etcd buffers for one stream.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};

use etcd_client::{WatchOptions, WatchRequestSender, WatchResponse, WatchResponseStream};
use succession_core::{Error, ErrorKind};
use tokio::sync::{mpsc, Notify};
use tracing::Instrument;

use crate::conn::Connection;
use crate::error;

/// How many elections of a session share one watch stream.
pub(crate) const ELECTIONS_PER_STREAM: u64 = 256;

/// What an election's watchers receive.
pub(crate) enum WatchMsg {
    /// A response for one of its watchers (including the `created` acknowledgement), with
    /// the generation of the stream it came on (watch ids are per stream). Boxed: every
    /// election has a channel of these, whose first block holds 32 of them.
    Resp(Box<WatchResponse>, u32),
    /// The stream ended or failed: every watcher on it is gone.
    Ended(Box<Error>),
}

/// Where the responses of one election's watchers go: a small queue with one consumer (an
/// unbounded channel would cost about 1 KiB per election).
#[derive(Default)]
pub(crate) struct Inbox {
    queue: StdMutex<VecDeque<WatchMsg>>,
    notify: Notify,
    closed: AtomicBool,
}

impl Inbox {
    /// Queue `m`; false when the consumer is gone.
    fn send(&self, m: WatchMsg) -> bool {
        if self.is_closed() {
            return false;
        }
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(m);
        // Stores a permit when the consumer is not waiting: no wake-up is lost.
        self.notify.notify_one();
        true
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// The consumer is gone: refuse and drop everything from now on.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The next message (one consumer).
    pub(crate) async fn recv(&self) -> WatchMsg {
        loop {
            let next = self
                .queue
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front();
            if let Some(m) = next {
                return m;
            }
            self.notify.notified().await;
        }
    }
}

/// Where the responses of one election's watchers go.
pub(crate) type Route = Arc<Inbox>;

enum Cmd {
    Create {
        key: Vec<u8>,
        opts: Option<WatchOptions>,
        to: Route,
    },
    Cancel(u32, i64),
}

enum Req {
    Create(Vec<u8>, Option<WatchOptions>),
    Cancel(i64),
}

/// A handle on one shared watch stream (its task runs while a handle exists).
#[derive(Clone)]
pub(crate) struct WatchHub {
    cmds: mpsc::UnboundedSender<Cmd>,
}

impl WatchHub {
    fn start(conn: Arc<Connection>, index: usize) -> WatchHub {
        let (cmds, rx) = mpsc::unbounded_channel();
        let span = tracing::debug_span!("etcd_watch_hub", index);
        tokio::spawn(run(conn, rx).instrument(span));
        WatchHub { cmds }
    }

    /// Request a watcher on `key` whose responses go to `to`. Never blocks; the `created`
    /// acknowledgement (or [`WatchMsg::Ended`]) arrives on `to`.
    pub(crate) fn create(&self, key: impl Into<Vec<u8>>, opts: Option<WatchOptions>, to: &Route) {
        let cmd = Cmd::Create {
            key: key.into(),
            opts,
            to: to.clone(),
        };
        if let Err(mpsc::error::SendError(Cmd::Create { to, .. })) = self.cmds.send(cmd) {
            to.send(WatchMsg::Ended(Box::new(Error::new(
                ErrorKind::Connection,
                "the session's watch stream is gone",
            ))));
        }
    }

    /// Cancel watcher `id` of stream generation `generation` (its responses are no longer
    /// routed; nothing happens if that stream is gone).
    pub(crate) fn cancel(&self, generation: u32, id: i64) {
        let _ = self.cmds.send(Cmd::Cancel(generation, id));
    }
}

/// The hubs of one session, made on first use.
#[derive(Default)]
pub(crate) struct Hubs {
    hubs: StdMutex<Vec<WatchHub>>,
}

impl Hubs {
    /// The hub for one round of election `reg_id` when the session has `elections`: one
    /// stream per [`ELECTIONS_PER_STREAM`] elections, so the number of streams follows the
    /// largest number of elections the session had, not how many came and went. (All
    /// watchers of one round go to one hub; the next round may use another.)
    pub(crate) fn for_election(
        &self,
        conn: &Arc<Connection>,
        reg_id: u64,
        elections: usize,
    ) -> WatchHub {
        let streams = (elections as u64).div_ceil(ELECTIONS_PER_STREAM).max(1);
        let index = (reg_id % streams) as usize;
        let mut hubs = self.hubs.lock().unwrap_or_else(|p| p.into_inner());
        while hubs.len() <= index {
            let i = hubs.len();
            hubs.push(WatchHub::start(conn.clone(), i));
        }
        if hubs[index].cmds.is_closed() {
            hubs[index] = WatchHub::start(conn.clone(), index);
        }
        hubs[index].clone()
    }
}

struct Stream {
    requests: mpsc::UnboundedSender<Req>,
    responses: WatchResponseStream,
}

async fn open(
    conn: &Connection,
    key: Vec<u8>,
    opts: Option<WatchOptions>,
) -> succession_core::Result<Stream> {
    let client = conn.client().await?;
    let mut c = client.clone();
    let ws = conn
        .request("open the session's watch stream", c.watch(key, opts))
        .await?;
    let (mut sender, responses): (WatchRequestSender, WatchResponseStream) = ws.split();
    let (requests, mut rx) = mpsc::unbounded_channel::<Req>();
    // Requests go through a task of their own, so that the hub never waits on the request
    // channel while responses wait to be read.
    tokio::spawn(async move {
        while let Some(r) = rx.recv().await {
            let sent = match r {
                Req::Create(key, opts) => sender.watch(key, opts).await,
                Req::Cancel(id) => sender.cancel(id).await,
            };
            if sent.is_err() {
                return;
            }
        }
    });
    Ok(Stream {
        requests,
        responses,
    })
}

async fn run(conn: Arc<Connection>, mut cmds: mpsc::UnboundedReceiver<Cmd>) {
    let mut stream: Option<Stream> = None;
    // Generation of the current stream (watch ids restart with every stream).
    let mut generation: u32 = 0;
    let mut pending: VecDeque<Route> = VecDeque::new();
    let mut routes: HashMap<i64, Route> = HashMap::new();
    loop {
        let msg = tokio::select! {
            cmd = cmds.recv() => {
                let Some(cmd) = cmd else { return };
                match cmd {
                    Cmd::Create { key, opts, to } => match stream.as_ref() {
                        Some(s) => {
                            pending.push_back(to);
                            if s.requests.send(Req::Create(key, opts)).is_err() {
                                end(&mut stream, &mut pending, &mut routes, "the watch request channel closed");
                            }
                        }
                        None => match open(&conn, key, opts).await {
                            Ok(s) => {
                                pending.push_back(to);
                                stream = Some(s);
                                generation = generation.wrapping_add(1);
                            }
                            Err(e) => {
                                to.send(WatchMsg::Ended(Box::new(e)));
                            }
                        },
                    },
                    Cmd::Cancel(g, id) => {
                        if g == generation && routes.remove(&id).is_some() {
                            if let Some(s) = stream.as_ref() {
                                let _ = s.requests.send(Req::Cancel(id));
                            }
                        }
                    }
                }
                continue;
            }
            m = async { stream.as_mut().expect("guarded").responses.message().await }, if stream.is_some() => m,
        };
        match msg {
            Ok(Some(resp)) => route(&mut stream, &mut pending, &mut routes, resp, generation),
            Ok(None) => end(
                &mut stream,
                &mut pending,
                &mut routes,
                "the watch stream ended (etcd restarted or the member went away); re-reading",
            ),
            Err(e) => {
                let e = error::map("watch the queue", e);
                end(&mut stream, &mut pending, &mut routes, &e.to_string());
            }
        }
    }
}

fn route(
    stream: &mut Option<Stream>,
    pending: &mut VecDeque<Route>,
    routes: &mut HashMap<i64, Route>,
    resp: WatchResponse,
    generation: u32,
) {
    let id = resp.watch_id();
    let cancel = |stream: &Option<Stream>| {
        if let Some(s) = stream.as_ref() {
            let _ = s.requests.send(Req::Cancel(id));
        }
    };
    if resp.created() {
        let Some(to) = pending.pop_front() else {
            return;
        };
        if to.is_closed() {
            // Its election moved on before the acknowledgement.
            if !resp.canceled() {
                cancel(stream);
            }
            return;
        }
        if !resp.canceled() {
            routes.insert(id, to.clone());
        }
        to.send(WatchMsg::Resp(Box::new(resp), generation));
        return;
    }
    let to = if resp.canceled() {
        routes.remove(&id)
    } else {
        routes.get(&id).cloned()
    };
    if let Some(to) = to {
        if !to.send(WatchMsg::Resp(Box::new(resp), generation)) {
            routes.remove(&id);
            cancel(stream);
        }
    }
}

fn end(
    stream: &mut Option<Stream>,
    pending: &mut VecDeque<Route>,
    routes: &mut HashMap<i64, Route>,
    why: &str,
) {
    *stream = None;
    // An election with several watchers hears it more than once; it acts on the first.
    for to in pending.drain(..).chain(routes.drain().map(|(_, r)| r)) {
        to.send(WatchMsg::Ended(Box::new(
            Error::new(ErrorKind::Connection, why.to_owned()).with_retryable(true),
        )));
    }
}
