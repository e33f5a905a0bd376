//! The listeners: HTTP/1.1 connections (hyper, as `axum::serve` drives it)
//! with the limits axum does not offer: a header-read timeout, an idle
//! keep-alive timeout and a connection limit.
//!
//! A connection is either *busy* (a request's head has been read and its
//! response is not finished) or *waiting* for a request. A waiting connection
//! is closed when
//! - it is new and its first request's head is not complete within
//!   `header_read_timeout` of being accepted (silent sockets, slowloris),
//! - it was kept alive after a response and no byte of the next request
//!   arrives within `idle_timeout`,
//! - the next request's first byte came but its head is not complete within
//!   `header_read_timeout` of that byte.
//!
//! A busy connection is never closed by these timeouts (a workflow may run
//! long, an event stream lasts), but a request body that stalls for
//! `header_read_timeout` between two reads ends with an error.
//!
//! At `max_connections`, a new connection takes the place of the waiting
//! connection that has waited longest (so silent or slow sockets cannot lock
//! legitimate clients out); when every connection is busy, new ones wait in
//! the listen backlog until one finishes.

use axum::body::{Body, HttpBody};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The connection limits of one listener.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) header_read_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_connections: usize,
}

/// Serves `app` on `listener` until Ctrl-C / SIGTERM or `shutdown`: then no
/// new connections; waiting ones close, busy ones finish their request.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let app = tower::ServiceBuilder::new()
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            limits.header_read_timeout,
        ))
        .service(app);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let open = Arc::new(Open::default());
    let tasks = TaskTracker::new();
    let signal = crate::until_shutdown(shutdown.clone());
    tokio::pin!(signal);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors or similar: back off rather than spin.
                    if !is_connection_error(&e) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
            },
            _ = &mut signal => break,
        };
        let slot = tokio::select! {
            slot = take_slot(&slots, &open) => slot,
            _ = &mut signal => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = Connection {
            stream,
            peer,
            app: app.clone(),
            limits,
            open: open.clone(),
            shutdown: shutdown.clone(),
        };
        tasks.spawn(async move {
            conn.run().await;
            drop(slot);
        });
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// A free connection slot: at once, or by closing the connection that has
/// waited longest for a request, or (every connection busy) when one ends.
async fn take_slot(slots: &Arc<Semaphore>, open: &Open) -> tokio::sync::OwnedSemaphorePermit {
    loop {
        if let Ok(slot) = slots.clone().try_acquire_owned() {
            return slot;
        }
        open.close_longest_waiting();
        // The closed connection frees its slot at once; if a request began
        // on it first, look again shortly.
        if let Ok(slot) =
            tokio::time::timeout(Duration::from_millis(50), slots.clone().acquire_owned()).await
        {
            return slot.expect("the semaphore is never closed");
        }
    }
}

/// The open connections of a listener, for choosing whom to close at the limit.
#[derive(Default)]
struct Open {
    connections: Mutex<HashMap<u64, Arc<Activity>>>,
    next: std::sync::atomic::AtomicU64,
}

impl Open {
    fn add(&self, activity: Arc<Activity>) -> u64 {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        lock(&self.connections).insert(id, activity);
        id
    }

    fn remove(&self, id: u64) {
        lock(&self.connections).remove(&id);
    }

    fn close_longest_waiting(&self) {
        let victim = lock(&self.connections)
            .values()
            .filter_map(|a| a.waiting_since().map(|since| (since, a.clone())))
            .min_by_key(|(since, _)| *since);
        if let Some((_, activity)) = victim {
            activity.close_if_waiting();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where a connection is between requests.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Waiting for a request head since `since`: the first one (`fresh`), or
    /// the next one on a kept-alive connection; `head` is when its first byte came.
    Waiting {
        since: Instant,
        fresh: bool,
        head: Option<Instant>,
    },
    /// Serving this many requests (a response body counts until it is sent).
    Busy(usize),
    /// Chosen to make room at the limit: the connection closes.
    Closing,
}

/// A connection's phase, shared by its reader, its requests and its task.
struct Activity {
    phase: Mutex<Phase>,
    changed: Notify,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            phase: Mutex::new(Phase::Waiting {
                since: Instant::now(),
                fresh: true,
                head: None,
            }),
            changed: Notify::new(),
        }
    }

    /// When the connection must be closed if nothing changes (`None`: busy).
    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        match *lock(&self.phase) {
            Phase::Waiting {
                head: Some(first_byte),
                ..
            } => Some(first_byte + limits.header_read_timeout),
            Phase::Waiting {
                since, fresh: true, ..
            } => Some(since + limits.header_read_timeout),
            Phase::Waiting { since, .. } => Some(since + limits.idle_timeout),
            Phase::Busy(_) => None,
            Phase::Closing => Some(Instant::now()),
        }
    }

    fn waiting_since(&self) -> Option<Instant> {
        match *lock(&self.phase) {
            Phase::Waiting { since, .. } => Some(since),
            _ => None,
        }
    }

    fn close_if_waiting(&self) {
        let mut phase = lock(&self.phase);
        if matches!(*phase, Phase::Waiting { .. }) {
            *phase = Phase::Closing;
            self.changed.notify_one();
        }
    }

    /// Bytes arrived: a waiting connection's next head has begun.
    fn read(&self) {
        let mut phase = lock(&self.phase);
        if let Phase::Waiting {
            head: head @ None, ..
        } = &mut *phase
        {
            *head = Some(Instant::now());
            self.changed.notify_one();
        }
    }

    /// A request's head was read: busy until the returned guard drops.
    /// No wake-up: busy only moves the deadline away (to none), and the
    /// connection's task finds that out when its old deadline passes.
    fn begin(self: &Arc<Self>) -> Busy {
        let mut phase = lock(&self.phase);
        *phase = match *phase {
            Phase::Busy(n) => Phase::Busy(n + 1),
            // Too late to close: the request is served.
            _ => Phase::Busy(1),
        };
        Busy(self.clone())
    }
}

/// A request in progress; dropped when its response is sent (or abandoned).
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let mut phase = lock(&self.0.phase);
        *phase = match *phase {
            Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
            _ => Phase::Waiting {
                since: Instant::now(),
                fresh: false,
                head: None,
            },
        };
        self.0.changed.notify_one();
    }
}

type App = tower_http::timeout::RequestBodyTimeout<Router>;

/// One accepted connection and what it needs to serve itself.
struct Connection {
    stream: TcpStream,
    /// The client's address, handed to every request of the connection as
    /// `ConnectInfo<SocketAddr>` (rate limits and failed logins by source).
    peer: SocketAddr,
    app: App,
    limits: Limits,
    open: Arc<Open>,
    shutdown: CancellationToken,
}

impl Connection {
    async fn run(self) {
        let activity = Arc::new(Activity::new());
        let id = self.open.add(activity.clone());
        let io = TokioIo::new(Watched {
            io: self.stream,
            activity: activity.clone(),
        });
        let (app, on_request) = (self.app, activity.clone());
        let peer = axum::extract::ConnectInfo(self.peer);
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(peer);
            let busy = on_request.begin();
            let call = tower::ServiceExt::oneshot(app.clone(), request);
            async move {
                let response = match call.await {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
                Ok::<_, Infallible>(response.map(|body| Body::new(Sending { body, _busy: busy })))
            }
        });
        let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
        tokio::pin!(conn);
        let mut stopping = false;
        // One timer for the connection's life, moved only when its
        // deadline moves (not one timer per wake-up).
        let mut armed = activity.deadline(&self.limits);
        let timer = tokio::time::sleep_until(armed.unwrap_or_else(far_future));
        tokio::pin!(timer);
        loop {
            let deadline = activity.deadline(&self.limits);
            if deadline != armed {
                armed = deadline;
                timer.as_mut().reset(deadline.unwrap_or_else(far_future));
            }
            tokio::select! {
                _ = conn.as_mut() => break,
                _ = self.shutdown.cancelled(), if !stopping => {
                    stopping = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = activity.changed.notified() => {}
                _ = timer.as_mut(), if armed.is_some() => {
                    if activity.deadline(&self.limits).is_some_and(|d| d <= Instant::now()) {
                        break;
                    }
                    // Not yet due (the connection got busy, or its deadline
                    // moved): re-arm on the next turn.
                    armed = None;
                }
            }
        }
        self.open.remove(id);
    }
}

/// A deadline that never comes (a year away), for a timer with none.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(365 * 24 * 3600)
}

/// A response body; the request counts as in progress until it is dropped.
struct Sending {
    body: Body,
    _busy: Busy,
}

impl HttpBody for Sending {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// The socket, telling its connection when bytes arrive.
struct Watched {
    io: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.read();
        }
        read
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
