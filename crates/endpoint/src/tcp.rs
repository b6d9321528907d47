//! SIP over TCP: the listener, one task per connection (read, frame, write) and outbound connects.
//!
//! A connection task owns its socket. Inbound messages go to the driver over one bounded channel
//! shared by all connections, so a busy driver slows the readers rather than buffering without
//! bound. Outbound bytes come from the driver through a bounded per-connection queue that the
//! driver fills with `try_send`: the driver never waits on a peer. A full queue, or a write that
//! does not finish within [`TcpLimits::write_timeout`], disconnects the peer.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, timeout};

use crate::EndpointCounters;
use crate::framer::{Frame, FrameError, StreamFramer};

/// How much spare room a read asks for.
const READ_CHUNK: usize = 8 * 1024;

/// Capacity of the channel from all connection tasks to the driver.
const EVENT_QUEUE: usize = 1024;

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Bounds on the TCP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpLimits {
    /// Open connections, accepted and outbound together; further accepts are closed at once and
    /// further connects fail.
    pub max_connections: usize,
    /// A connection with no bytes read or written for this long is closed.
    pub idle_timeout: Duration,
    /// Messages queued for one connection; a peer that lets the queue fill is disconnected.
    pub write_queue: usize,
    /// Longest a single message write may take before the peer is disconnected.
    pub write_timeout: Duration,
    /// Longest an outbound connect may take.
    pub connect_timeout: Duration,
}

impl Default for TcpLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            idle_timeout: Duration::from_secs(300),
            write_queue: 256,
            write_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// What connection tasks tell the driver.
#[derive(Debug)]
pub(crate) enum TcpEvent {
    /// An accepted connection is ready to carry messages to `peer`.
    Opened {
        peer: SocketAddr,
        connection: TcpConnection,
    },
    /// One framed SIP message from `peer`.
    Message { peer: SocketAddr, bytes: Bytes },
    /// Connection `id` (accepted, outbound, or a connect that failed) is gone.
    Closed { id: u64, peer: SocketAddr },
}

/// The driver's side of one connection.
#[derive(Debug)]
pub(crate) struct TcpConnection {
    /// Tells a closed connection from a newer one to the same peer.
    pub(crate) id: u64,
    /// Messages to write; dropping it closes the connection once the queue is written.
    pub(crate) queue: mpsc::Sender<Bytes>,
}

/// Everything a connection task needs; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct TcpTasks {
    limits: TcpLimits,
    slots: Arc<Semaphore>,
    next_id: Arc<AtomicU64>,
    events: mpsc::Sender<TcpEvent>,
    counters: Arc<EndpointCounters>,
}

/// Why a connection task ended.
#[derive(Debug, thiserror::Error)]
enum CloseReason {
    #[error("closed by the peer")]
    PeerClosed,
    #[error("idle")]
    Idle,
    #[error("released by the endpoint")]
    Released,
    #[error("write timed out")]
    WriteTimeout,
    #[error("read failed: {0}")]
    Read(io::Error),
    #[error("write failed: {0}")]
    Write(io::Error),
    #[error("cannot frame the stream: {0}")]
    Framing(FrameError),
}

impl CloseReason {
    /// Closes that mean something went wrong, for `tcp_errors`.
    fn is_error(&self) -> bool {
        !matches!(self, Self::PeerClosed | Self::Idle | Self::Released)
    }
}

impl TcpTasks {
    pub(crate) fn new(
        limits: TcpLimits,
        counters: Arc<EndpointCounters>,
    ) -> (Self, mpsc::Receiver<TcpEvent>) {
        let (events, receiver) = mpsc::channel(EVENT_QUEUE);
        let tasks = Self {
            limits,
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            next_id: Arc::new(AtomicU64::new(0)),
            events,
            counters,
        };
        (tasks, receiver)
    }

    /// Accepts connections until the driver is gone.
    pub(crate) fn spawn_listener(&self, listener: TcpListener) {
        let tasks = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, peer)) => tasks.accepted(stream, peer),
                        Err(err) => {
                            tracing::warn!(%err, "SIP TCP accept failed");
                            tokio::time::sleep(ACCEPT_BACKOFF).await;
                        }
                    },
                    () = tasks.events.closed() => break,
                }
            }
        });
    }

    fn accepted(&self, stream: TcpStream, peer: SocketAddr) {
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            self.counters.tcp_errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "SIP TCP connection limit reached; closing the new connection");
            return;
        };
        let (connection, outbound) = self.queue();
        let id = connection.id;
        let tasks = self.clone();
        tokio::spawn(async move {
            let opened = TcpEvent::Opened { peer, connection };
            if tasks.events.send(opened).await.is_ok() {
                tasks.run(id, peer, stream, outbound, permit).await;
            }
        });
    }

    /// Starts connecting to `peer`; messages queued on the returned connection are written once
    /// it is up. A failure is logged, counted, and reported as [`TcpEvent::Closed`].
    pub(crate) fn connect(&self, peer: SocketAddr) -> TcpConnection {
        let (connection, outbound) = self.queue();
        let id = connection.id;
        let tasks = self.clone();
        tokio::spawn(async move {
            match tasks.open(peer).await {
                Ok((stream, permit)) => tasks.run(id, peer, stream, outbound, permit).await,
                Err(err) => {
                    tasks.counters.tcp_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, %err, "SIP TCP connect failed");
                    let _ = tasks.events.send(TcpEvent::Closed { id, peer }).await;
                }
            }
        });
        connection
    }

    async fn open(&self, peer: SocketAddr) -> io::Result<(TcpStream, OwnedSemaphorePermit)> {
        let permit = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| io::Error::other("connection limit reached"))?;
        let stream = timeout(self.limits.connect_timeout, TcpStream::connect(peer))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        Ok((stream, permit))
    }

    fn queue(&self) -> (TcpConnection, mpsc::Receiver<Bytes>) {
        let (queue, outbound) = mpsc::channel(self.limits.write_queue.max(1));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        (TcpConnection { id, queue }, outbound)
    }

    /// Serves one open connection until it closes, then tells the driver.
    async fn run(
        &self,
        id: u64,
        peer: SocketAddr,
        stream: TcpStream,
        outbound: mpsc::Receiver<Bytes>,
        _permit: OwnedSemaphorePermit,
    ) {
        let _open = OpenGauge::new(&self.counters);
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(%peer, %err, "cannot set TCP_NODELAY");
        }
        let reason = self.serve(peer, stream, outbound).await;
        if reason.is_error() {
            self.counters.tcp_errors.fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(%peer, %reason, "SIP TCP connection closed");
        let _ = self.events.send(TcpEvent::Closed { id, peer }).await;
    }

    async fn serve(
        &self,
        peer: SocketAddr,
        mut stream: TcpStream,
        mut outbound: mpsc::Receiver<Bytes>,
    ) -> CloseReason {
        let mut framer = StreamFramer::new();
        let mut idle_at = Instant::now() + self.limits.idle_timeout;
        loop {
            framer.buffer_mut().reserve(READ_CHUNK);
            let step = tokio::select! {
                read = stream.read_buf(framer.buffer_mut()) => match read {
                    Ok(0) => Err(CloseReason::PeerClosed),
                    Ok(_) => self.deliver(peer, &mut framer, &mut stream).await,
                    Err(err) => Err(CloseReason::Read(err)),
                },
                payload = outbound.recv() => match payload {
                    Some(payload) => self.write(&mut stream, &payload).await,
                    None => Err(CloseReason::Released),
                },
                () = tokio::time::sleep_until(idle_at) => Err(CloseReason::Idle),
            };
            if let Err(reason) = step {
                return reason;
            }
            idle_at = Instant::now() + self.limits.idle_timeout;
        }
    }

    /// Hands every complete message to the driver and answers pings.
    async fn deliver(
        &self,
        peer: SocketAddr,
        framer: &mut StreamFramer,
        stream: &mut TcpStream,
    ) -> Result<(), CloseReason> {
        while let Some(frame) = framer.next_frame().map_err(CloseReason::Framing)? {
            match frame {
                Frame::Message(bytes) => {
                    let message = TcpEvent::Message { peer, bytes };
                    if self.events.send(message).await.is_err() {
                        return Err(CloseReason::Released);
                    }
                }
                Frame::Ping => self.write(stream, b"\r\n").await?,
            }
        }
        Ok(())
    }

    async fn write(&self, stream: &mut TcpStream, bytes: &[u8]) -> Result<(), CloseReason> {
        match timeout(self.limits.write_timeout, stream.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(CloseReason::Write(err)),
            Err(_) => Err(CloseReason::WriteTimeout),
        }
    }
}

/// Counts a connection in `tcp_connections` while it lives.
struct OpenGauge<'a>(&'a EndpointCounters);

impl<'a> OpenGauge<'a> {
    fn new(counters: &'a EndpointCounters) -> Self {
        counters.tcp_connections.fetch_add(1, Ordering::Relaxed);
        Self(counters)
    }
}

impl Drop for OpenGauge<'_> {
    fn drop(&mut self) {
        self.0.tcp_connections.fetch_sub(1, Ordering::Relaxed);
    }
}
