//! The media relay of one session: the caller-facing and Backend-facing sockets and the task
//! that moves RTP and RTCP between them.
//!
//! Each side owns an RTP and an RTCP socket on a leased port pair; the sans-I/O `RelayLeg`s decide
//! what is accepted (latching, strict source). The task ends when the handle is dropped, which
//! closes the sockets and returns the ports to the pool.
//!
//! Relay tasks run on a few media worker threads, each a single-threaded tokio runtime, apart from
//! the signalling runtime: a packet's wakeup, receive and send then stay on one thread, without
//! the cross-thread wakeups of a work-stealing scheduler, which cost more than the relaying.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use voxgate_media::pool::{PortLease, PortPool};
use voxgate_media::relay::{PacketKind, RelayLeg};

use crate::metrics::{self, RtpDirection};

/// Which side of the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The leg facing the caller (trunk or client).
    Caller,
    /// The leg facing the Backend (or the outbound trunk).
    Backend,
}

impl Side {
    fn index(self) -> usize {
        match self {
            Side::Caller => 0,
            Side::Backend => 1,
        }
    }

    fn other(self) -> Side {
        match self {
            Side::Caller => Side::Backend,
            Side::Backend => Side::Caller,
        }
    }

    fn direction(self) -> RtpDirection {
        match self {
            Side::Caller => RtpDirection::CallerToBackend,
            Side::Backend => RtpDirection::BackendToCaller,
        }
    }
}

/// What the peer of a side announced in its SDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerMedia {
    /// RTP address (`c=` and `m=` port).
    pub rtp: SocketAddr,
    /// RTCP address (`a=rtcp`, else RTP port + 1); unused when `mux`.
    pub rtcp: SocketAddr,
    /// RTP and RTCP share the RTP port (rtcp-mux).
    pub mux: bool,
    /// The peer will send media (its direction is sendrecv or sendonly), so silence means trouble.
    pub sends: bool,
}

/// Why relay setup failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The port pool has no free pair.
    #[error("media port pool exhausted")]
    PortsExhausted,
    /// Binding a leased port failed (another process holds it, or the address is wrong).
    #[error("cannot bind media port {port}: {source}")]
    Bind {
        /// The port that failed.
        port: u16,
        /// Why.
        source: std::io::Error,
    },
}

/// Ports of both sides, bound and ready before any SDP is sent.
#[derive(Debug)]
pub struct RelaySockets {
    sides: [SideSockets; 2],
}

#[derive(Debug)]
struct SideSockets {
    rtp: std::net::UdpSocket,
    rtcp: std::net::UdpSocket,
    lease: PortLease,
}

/// The sockets of one side, registered with the media worker's runtime.
struct BoundSide {
    rtp: UdpSocket,
    rtcp: UdpSocket,
    _lease: PortLease,
}

impl BoundSide {
    fn register(side: SideSockets) -> std::io::Result<Self> {
        Ok(Self {
            rtp: UdpSocket::from_std(side.rtp)?,
            rtcp: UdpSocket::from_std(side.rtcp)?,
            _lease: side.lease,
        })
    }
}

/// The media worker threads: single-threaded runtimes that relay tasks are spread over.
struct MediaWorkers {
    handles: Vec<tokio::runtime::Handle>,
    next: AtomicUsize,
}

impl MediaWorkers {
    /// The process's workers, started on first use: one per CPU.
    fn get() -> &'static MediaWorkers {
        static WORKERS: OnceLock<MediaWorkers> = OnceLock::new();
        WORKERS.get_or_init(|| {
            let count = std::env::var("VOXGATE_MEDIA_WORKERS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
            let mut handles = Vec::with_capacity(count);
            for index in 0..count {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                let Ok(runtime) = runtime else {
                    tracing::error!(index, "cannot start a media worker runtime");
                    continue;
                };
                let handle = runtime.handle().clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("media-{index}"))
                    .spawn(move || runtime.block_on(std::future::pending::<()>()));
                match spawned {
                    Ok(_) => handles.push(handle),
                    Err(err) => tracing::error!(index, %err, "cannot start a media worker thread"),
                }
            }
            MediaWorkers {
                handles,
                next: AtomicUsize::new(0),
            }
        })
    }

    /// Spawns `task` on the next worker (round robin), or on the caller's runtime if no worker
    /// could be started.
    fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        if self.handles.is_empty() {
            tokio::spawn(task);
            return;
        }
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[index].spawn(task);
    }
}

impl RelaySockets {
    /// Leases and binds two port pairs on `bind_ip`. Pairs another process holds are skipped
    /// (kept aside until a free pair is found, so they are not retried at once).
    pub fn bind(pool: &PortPool, bind_ip: IpAddr) -> Result<Self, RelayError> {
        let caller = SideSockets::bind(pool, bind_ip)?;
        let backend = SideSockets::bind(pool, bind_ip)?;
        Ok(Self {
            sides: [caller, backend],
        })
    }

    /// The RTP port of `side` (RTCP is the next one).
    pub fn port(&self, side: Side) -> u16 {
        self.sides[side.index()].lease.rtp()
    }
}

impl SideSockets {
    fn bind(pool: &PortPool, ip: IpAddr) -> Result<Self, RelayError> {
        let mut skipped = Vec::new();
        for _ in 0..8 {
            let lease = pool.lease().ok_or(RelayError::PortsExhausted)?;
            let bind = |port: u16| {
                let socket = std::net::UdpSocket::bind((ip, port))?;
                socket.set_nonblocking(true)?;
                Ok::<_, std::io::Error>(socket)
            };
            match (bind(lease.rtp()), bind(lease.rtcp())) {
                (Ok(rtp), Ok(rtcp)) => return Ok(Self { rtp, rtcp, lease }),
                (Err(source), _) | (_, Err(source)) => {
                    if skipped.len() == 7 {
                        return Err(RelayError::Bind {
                            port: lease.rtp(),
                            source,
                        });
                    }
                    skipped.push(lease);
                }
            }
        }
        Err(RelayError::PortsExhausted)
    }
}

enum Command {
    Peer { side: Side, media: PeerMedia },
    Arm,
}

/// Controls a running relay; dropping it stops the relay and frees its ports.
///
/// The task is not aborted: dropping the handle closes its command channel, and the task then
/// flushes its last packet counts to the metrics before its sockets and port leases go.
#[derive(Debug)]
pub struct Relay {
    commands: mpsc::UnboundedSender<Command>,
    silent: Option<oneshot::Receiver<Side>>,
}

impl Relay {
    /// Starts relaying between the two sides; a side with no known peer drops what it would
    /// send until `set_peer` names one (or a packet from the peer latches it).
    pub fn start(sockets: RelaySockets, timeout: Duration) -> Self {
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (silent_tx, silent) = oneshot::channel();
        MediaWorkers::get().spawn(run(sockets, command_rx, silent_tx, timeout));
        Self {
            commands,
            silent: Some(silent),
        }
    }

    /// The peer of `side` announced (or re-announced) its media.
    pub fn set_peer(&self, side: Side, media: PeerMedia) {
        let _ = self.commands.send(Command::Peer { side, media });
    }

    /// Starts the media timeout (once the call is answered).
    pub fn arm(&self) {
        let _ = self.commands.send(Command::Arm);
    }

    /// Resolves with the side that went silent for the media timeout; pending forever when the
    /// relay stopped otherwise.
    pub async fn silence(&mut self) -> Side {
        match self.silent.as_mut() {
            Some(rx) => match rx.await {
                Ok(side) => {
                    self.silent = None;
                    side
                }
                Err(_) => {
                    self.silent = None;
                    std::future::pending().await
                }
            },
            None => std::future::pending().await,
        }
    }
}

/// One side's state inside the task.
struct SideState {
    rtp_leg: RelayLeg,
    rtcp_leg: RelayLeg,
    peer: Option<PeerMedia>,
}

impl SideState {
    fn rtcp_destination(&self) -> Option<(bool, SocketAddr)> {
        let peer = self.peer?;
        if peer.mux {
            self.rtp_leg.destination().map(|d| (true, d))
        } else {
            self.rtcp_leg
                .destination()
                .or(Some(peer.rtcp))
                .map(|d| (false, d))
        }
    }
}

/// Packet and drop counts kept locally and flushed to the metrics once a second, so the hot
/// path touches no shared counter.
#[derive(Default)]
struct Tally {
    packets: [u64; 2],
    bytes: [u64; 2],
    strict_source: u64,
    malformed: u64,
    no_destination: u64,
    send_failed: u64,
}

impl Tally {
    fn flush(&mut self) {
        for side in [Side::Caller, Side::Backend] {
            let i = side.index();
            metrics::rtp_packets(side.direction(), self.packets[i], self.bytes[i]);
        }
        for (reason, count) in [
            ("strict_source", self.strict_source),
            ("malformed", self.malformed),
            ("no_destination", self.no_destination),
            ("send_failed", self.send_failed),
        ] {
            if count > 0 {
                metrics::rtp_dropped(reason, count);
            }
        }
        *self = Tally::default();
    }
}

async fn run(
    sockets: RelaySockets,
    mut commands: mpsc::UnboundedReceiver<Command>,
    silent: oneshot::Sender<Side>,
    timeout: Duration,
) {
    let now = Instant::now().into_std();
    let mut state = [Side::Caller, Side::Backend].map(|_| SideState {
        rtp_leg: RelayLeg::new(None, now),
        rtcp_leg: RelayLeg::new(None, now),
        peer: None,
    });
    let [caller, backend] = sockets.sides;
    let (caller, backend) = match (BoundSide::register(caller), BoundSide::register(backend)) {
        (Ok(caller), Ok(backend)) => (caller, backend),
        (Err(err), _) | (_, Err(err)) => {
            tracing::error!(%err, "cannot register relay sockets");
            return;
        }
    };
    let sockets = [caller, backend];
    let [caller, backend] = &sockets;
    let mut tally = Tally::default();
    let mut bufs = [[0u8; 2048]; 4];
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut armed_at: Option<std::time::Instant> = None;
    let mut silent = Some(silent);
    loop {
        let [b0, b1, b2, b3] = &mut bufs;
        tokio::select! {
            r = caller.rtp.recv_from(b0) => if let Ok((n, from)) = r {
                forward(&sockets, &mut state, &mut tally, Side::Caller, false, from, &b0[..n]);
            },
            r = caller.rtcp.recv_from(b1) => if let Ok((n, from)) = r {
                forward(&sockets, &mut state, &mut tally, Side::Caller, true, from, &b1[..n]);
            },
            r = backend.rtp.recv_from(b2) => if let Ok((n, from)) = r {
                forward(&sockets, &mut state, &mut tally, Side::Backend, false, from, &b2[..n]);
            },
            r = backend.rtcp.recv_from(b3) => if let Ok((n, from)) = r {
                forward(&sockets, &mut state, &mut tally, Side::Backend, true, from, &b3[..n]);
            },
            command = commands.recv() => match command {
                Some(Command::Peer { side, media }) => {
                    let now = Instant::now().into_std();
                    let s = &mut state[side.index()];
                    let moved = s.peer.is_none_or(|p| p.rtp != media.rtp);
                    if moved {
                        s.rtp_leg.renegotiate(Some(media.rtp), now);
                        s.rtcp_leg.renegotiate(Some(media.rtcp), now);
                    }
                    s.peer = Some(media);
                }
                Some(Command::Arm) => armed_at = Some(Instant::now().into_std()),
                None => break,
            },
            _ = tick.tick() => {
                tally.flush();
                if let Some(since) = armed_at {
                    let now = Instant::now().into_std();
                    for side in [Side::Caller, Side::Backend] {
                        let s = &state[side.index()];
                        let expects_media = s.peer.is_some_and(|p| p.sends);
                        let last = s.rtp_leg.last_activity().max(since);
                        if expects_media && now.duration_since(last) >= timeout {
                            if let Some(tx) = silent.take() {
                                let _ = tx.send(side);
                            }
                            armed_at = None;
                        }
                    }
                }
            }
        }
    }
    tally.flush();
}

/// Accepts a packet that arrived on `from_side` and sends it out of the other side.
#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename the arguments
fn forward(
    sockets: &[BoundSide; 2],
    state: &mut [SideState; 2],
    tally: &mut Tally,
    from_side: Side,
    on_rtcp_socket: bool,
    source: SocketAddr,
    packet: &[u8],
) {
    let now = Instant::now().into_std();
    let inbound = &mut state[from_side.index()];
    let leg = if on_rtcp_socket {
        &mut inbound.rtcp_leg
    } else {
        &mut inbound.rtp_leg
    };
    let kind = match leg.receive(now, source, packet) {
        Ok(kind) => kind,
        Err(reason) => {
            match reason {
                voxgate_media::relay::DropReason::StrictSource => tally.strict_source += 1,
                _ => tally.malformed += 1,
            }
            return;
        }
    };
    let to_side = from_side.other();
    let outbound = &state[to_side.index()];
    let out_sockets = &sockets[to_side.index()];
    let target = if kind == PacketKind::Rtcp || on_rtcp_socket {
        outbound.rtcp_destination().map(|(mux, dest)| {
            let socket = if mux {
                &out_sockets.rtp
            } else {
                &out_sockets.rtcp
            };
            (socket, dest)
        })
    } else {
        outbound
            .rtp_leg
            .destination()
            .map(|dest| (&out_sockets.rtp, dest))
    };
    let Some((socket, dest)) = target else {
        tally.no_destination += 1;
        return;
    };
    // A relay never waits on a full send buffer: the packet is late by then anyway.
    match socket.try_send_to(packet, dest) {
        Ok(_) => {
            let i = from_side.index();
            tally.packets[i] += 1;
            tally.bytes[i] += packet.len() as u64;
        }
        Err(_) => tally.send_failed += 1,
    }
}
