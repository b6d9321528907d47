//! The media relay of one session: the caller-facing and Backend-facing sockets and the worker
//! thread that moves RTP and RTCP between them.
//!
//! Each side owns an RTP and an RTCP socket on a leased port pair; the sans-I/O `RelayLeg`s decide
//! what is accepted (latching, strict source). The relay ends when its handle is dropped, which
//! closes the sockets and returns the ports to the pool.
//!
//! Relays live on a few media worker threads (one per CPU), apart from the signalling runtime.
//! Each worker is a plain level-triggered epoll loop over the sockets of its relays: a packet
//! costs one `recvfrom` and one `sendto` and no task wakeup, which matters because a thousand
//! G.711 calls are 100,000 packets a second through the relay.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, mpsc as std_mpsc};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::eventfd::{EfdFlags, EventFd};
use tokio::sync::oneshot;
use tokio::time::Instant;
use voxgate_media::coalesce::Coalescer;
use voxgate_media::pool::{PortLease, PortPool};
use voxgate_media::relay::{PacketKind, RelayLeg};
use voxgate_media::stats::StreamStats;

use crate::metrics::{self, RtpDirection};

pub use voxgate_session::{PeerMedia, Side};

/// The direction of packets received on `side`.
fn direction(side: Side) -> RtpDirection {
    match side {
        Side::Caller => RtpDirection::CallerToBackend,
        Side::Backend => RtpDirection::BackendToCaller,
    }
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

/// Marks the wake-up eventfd in epoll event data; relay sockets use `slot << 2 | socket`.
const WAKE: u64 = u64::MAX;

/// Readiness events taken per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 256;

/// Packets a second per worker above which it coalesces (see `voxgate_media::coalesce`): about
/// 400 calls' media on one worker. Below it the worker blocks and relays each packet at once.
const BUSY_PPS: u64 = 20_000;

/// How often counts are flushed to the metrics and silent legs looked for.
const TICK: Duration = Duration::from_secs(1);

/// The media worker threads that relays are spread over, started on first use.
struct MediaWorkers {
    workers: Vec<Worker>,
    next: AtomicUsize,
    ids: AtomicU64,
}

/// The process's workers, started by [`start_workers`] (or on first use with the defaults).
static WORKERS: OnceLock<MediaWorkers> = OnceLock::new();

/// Starts the media workers: `count` threads (0: one per CPU) at nice value `nice` (0: the
/// process's own priority). Later calls, and relays started before it, keep the first set.
pub fn start_workers(count: usize, nice: i32) {
    WORKERS.get_or_init(|| MediaWorkers::spawn(count, nice));
}

impl MediaWorkers {
    /// The running workers, started with the defaults if [`start_workers`] was not called.
    fn get() -> &'static MediaWorkers {
        WORKERS.get_or_init(|| MediaWorkers::spawn(0, 0))
    }

    fn spawn(count: usize, nice: i32) -> MediaWorkers {
        let count = if count > 0 {
            count
        } else {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        };
        let workers = (0..count)
            .filter_map(|index| match Worker::spawn(index, nice) {
                Ok(worker) => Some(worker),
                Err(err) => {
                    tracing::error!(index, %err, "cannot start a media worker");
                    None
                }
            })
            .collect();
        MediaWorkers {
            workers,
            next: AtomicUsize::new(0),
            ids: AtomicU64::new(0),
        }
    }

    /// The next live worker, round robin.
    fn pick(&self) -> Option<&Worker> {
        let count = self.workers.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..count)
            .filter_map(|i| self.workers.get((start + i) % count))
            .find(|w| w.alive.load(Ordering::Acquire))
    }
}

/// A media worker's inbox: commands, and the eventfd that wakes its `epoll_wait`.
#[derive(Debug)]
struct Worker {
    commands: std_mpsc::Sender<Command>,
    wake: Arc<EventFd>,
    /// Cleared when the worker's thread ends (an epoll failure, a panic).
    alive: Arc<AtomicBool>,
}

/// Clears a worker's `alive` flag when its thread ends, however it ends.
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Media workers running and started: a worker whose thread ended is not restarted (its relays'
/// sockets are gone with it), so `/livez` fails and the process is replaced.
pub fn workers_alive() -> (usize, usize) {
    let Some(workers) = WORKERS.get() else {
        return (0, 0);
    };
    let alive = workers
        .workers
        .iter()
        .filter(|w| w.alive.load(Ordering::Acquire))
        .count();
    (alive, workers.workers.len())
}

impl Worker {
    fn spawn(index: usize, nice: i32) -> std::io::Result<Self> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let wake = Arc::new(EventFd::from_flags(
            EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC,
        )?);
        epoll.add(&*wake, EpollEvent::new(EpollFlags::EPOLLIN, WAKE))?;
        let (commands, inbox) = std_mpsc::channel();
        let alive = Arc::new(AtomicBool::new(true));
        let guard = AliveGuard(alive.clone());
        let mut event_loop = WorkerLoop {
            epoll,
            wake: wake.clone(),
            inbox,
            relays: Vec::new(),
            free: Vec::new(),
            slots: HashMap::new(),
            tally: Tally::default(),
        };
        std::thread::Builder::new()
            .name(format!("media-{index}"))
            .spawn(move || {
                let _alive = guard;
                set_thread_nice(index, nice);
                event_loop.run();
            })?;
        Ok(Self {
            commands,
            wake,
            alive,
        })
    }

    fn send(&self, command: Command) {
        if self.commands.send(command).is_ok() {
            let _ = self.wake.write(1);
        }
    }
}

/// One worker thread's state: its relays in a slab indexed by epoll event data.
struct WorkerLoop {
    epoll: Epoll,
    wake: Arc<EventFd>,
    inbox: std_mpsc::Receiver<Command>,
    relays: Vec<Option<RelayState>>,
    free: Vec<usize>,
    /// Relay id to slab slot, for commands.
    slots: HashMap<u64, usize>,
    tally: Tally,
}

impl WorkerLoop {
    /// Waits for readable sockets and relays one packet per readiness event, forever.
    ///
    /// Level-triggered epoll: a socket with more packets queued is reported again by the next
    /// wait, so each packet costs one `recvfrom` and one `sendto`, never a `recvfrom` that only
    /// finds the queue empty (which edge-triggered readiness, as in tokio, needs to re-arm).
    ///
    /// While packets flow, the worker sleeps [`Coalescer::PAUSE`] (1 ms) between waits instead of
    /// blocking in `epoll_wait`: a worker blocked there is woken (and the sender's CPU preempted)
    /// for every packet, tens of thousands of context switches a second, whereas a sleeping one
    /// finds a millisecond's packets ready at once. That adds up to the pause per hop, so it
    /// starts only above [`BUSY_PPS`]; a lightly loaded or idle worker blocks and wakes on each
    /// packet as usual.
    fn run(&mut self) {
        let mut events = vec![EpollEvent::empty(); EVENTS_PER_WAIT];
        let mut buf = [0u8; 2048];
        let mut next_tick = now() + TICK;
        let mut busy = false;
        let mut coalescer = Coalescer::new(BUSY_PPS, now());
        loop {
            let wait_ms = if busy {
                #[allow(clippy::disallowed_methods)] // a dedicated thread, not a runtime's
                std::thread::sleep(Coalescer::PAUSE);
                0
            } else {
                let wait = next_tick.saturating_duration_since(now());
                u16::try_from(wait.as_millis() + 1).unwrap_or(u16::MAX)
            };
            let ready = match self.epoll.wait(&mut events, wait_ms) {
                Ok(n) => n,
                Err(Errno::EINTR) => 0,
                Err(err) => {
                    tracing::error!(%err, "media worker cannot wait for sockets; it stops");
                    return;
                }
            };
            let now = now();
            busy = coalescer.record(now, ready, ready == EVENTS_PER_WAIT);
            let events = &events[..ready];
            // Commands first: a peer's address set just before its 200 OK went out must be known
            // before that peer's first packet, which may be in this same batch.
            if events.iter().any(|e| e.data() == WAKE) {
                let _ = self.wake.read();
                while let Ok(command) = self.inbox.try_recv() {
                    self.on_command(command, now);
                }
            }
            for event in events {
                let data = event.data();
                if data == WAKE {
                    continue;
                }
                let slot = usize::try_from(data >> 2).unwrap_or(usize::MAX);
                let Some(Some(relay)) = self.relays.get_mut(slot) else {
                    continue;
                };
                let side = if data & 2 == 0 {
                    Side::Caller
                } else {
                    Side::Backend
                };
                relay.on_readable(side, data & 1 == 1, now, &mut buf, &mut self.tally);
            }
            if now >= next_tick {
                self.tally.flush();
                for relay in self.relays.iter_mut().flatten() {
                    relay.check_silence(now);
                }
                next_tick = now + TICK;
            }
        }
    }

    fn on_command(&mut self, command: Command, now: std::time::Instant) {
        match command {
            Command::Start {
                id,
                sockets,
                silent,
                timeout,
            } => self.start(id, sockets, silent, timeout, now),
            Command::Peer { id, side, media } => {
                if let Some(relay) = self.relay(id) {
                    relay.set_peer(side, media, now);
                }
            }
            Command::Arm { id } => {
                if let Some(relay) = self.relay(id) {
                    relay.armed_at = Some(now);
                }
            }
            Command::Snapshot { id, report } => {
                if let Some(relay) = self.relay(id) {
                    let [caller, backend] = &relay.state;
                    let _ = report.send([caller.stats.clone(), backend.stats.clone()]);
                }
            }
            Command::Inject { id, side, packet } => {
                if let Some(relay) = self.relay(id) {
                    relay.inject(side, &packet);
                }
            }
            Command::Stop { id, report } => {
                let Some(slot) = self.slots.remove(&id) else {
                    return;
                };
                if let Some(relay) = self.relays.get_mut(slot).and_then(Option::take) {
                    for socket in relay.sockets.iter().flat_map(|s| [&s.rtp, &s.rtcp]) {
                        let _ = self.epoll.delete(socket);
                    }
                    self.free.push(slot);
                    if let Some(report) = report {
                        let [caller, backend] = relay.state;
                        let _ = report.send([caller.stats, backend.stats]);
                    }
                }
                // The last packets of the call show in the metrics when it ends, as tests expect.
                self.tally.flush();
            }
        }
    }

    fn relay(&mut self, id: u64) -> Option<&mut RelayState> {
        let slot = *self.slots.get(&id)?;
        self.relays.get_mut(slot)?.as_mut()
    }

    fn start(
        &mut self,
        id: u64,
        sockets: RelaySockets,
        silent: oneshot::Sender<Side>,
        timeout: Duration,
        now: std::time::Instant,
    ) {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.relays.push(None);
            self.relays.len() - 1
        });
        let [caller, backend] = &sockets.sides;
        let registered = [
            (&caller.rtp, 0),
            (&caller.rtcp, 1),
            (&backend.rtp, 2),
            (&backend.rtcp, 3),
        ]
        .into_iter()
        .try_for_each(|(socket, index)| {
            let data = (slot as u64) << 2 | index;
            self.epoll
                .add(socket, EpollEvent::new(EpollFlags::EPOLLIN, data))
        });
        if let Err(err) = registered {
            tracing::error!(%err, "cannot register relay sockets");
            for socket in sockets.sides.iter().flat_map(|s| [&s.rtp, &s.rtcp]) {
                let _ = self.epoll.delete(socket);
            }
            self.free.push(slot);
            return;
        }
        let side_state = || SideState::new(now);
        self.relays[slot] = Some(RelayState {
            sockets: sockets.sides,
            state: [side_state(), side_state()],
            armed_at: None,
            silent: Some(silent),
            timeout,
        });
        self.slots.insert(id, slot);
    }
}

/// Sets the calling thread's nice value (Linux keeps one per thread); a refusal (no
/// CAP_SYS_NICE for a negative value) is logged and the thread runs at the process's priority.
fn set_thread_nice(index: usize, nice: i32) {
    if nice == 0 {
        return;
    }
    let thread = rustix::thread::gettid();
    match rustix::process::setpriority_process(Some(thread), nice) {
        Ok(()) => tracing::debug!(index, nice, "media worker priority set"),
        Err(err) => tracing::warn!(
            index,
            nice,
            %err,
            "cannot set media.worker_nice (a negative value needs CAP_SYS_NICE); running at the default priority"
        ),
    }
}

/// The clock of the media workers (plain OS threads; tokio's clock falls back to the system's).
fn now() -> std::time::Instant {
    Instant::now().into_std()
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

/// A non-blocking RTP/RTCP socket pair on a leased port pair, for a media path outside the
/// relay workers (a WebRTC session's Backend side).
pub(crate) fn bind_pair(
    pool: &PortPool,
    ip: IpAddr,
) -> Result<(std::net::UdpSocket, std::net::UdpSocket, PortLease), RelayError> {
    let sockets = SideSockets::bind(pool, ip)?;
    Ok((sockets.rtp, sockets.rtcp, sockets.lease))
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
    Start {
        id: u64,
        sockets: RelaySockets,
        silent: oneshot::Sender<Side>,
        timeout: Duration,
    },
    Peer {
        id: u64,
        side: Side,
        media: PeerMedia,
    },
    Arm {
        id: u64,
    },
    /// Hands out the receive statistics so far (the API's view of a live session).
    Snapshot {
        id: u64,
        report: oneshot::Sender<MediaStats>,
    },
    /// Sends a packet made here (DTMF events) out of `side` to its peer.
    Inject {
        id: u64,
        side: Side,
        packet: Vec<u8>,
    },
    Stop {
        id: u64,
        /// Hears the receive statistics of both sides (caller, Backend) once the relay is gone.
        report: Option<oneshot::Sender<MediaStats>>,
    },
}

/// What a relay received and forwarded on each side (indexed by [`Side::index`]): RTP packets,
/// bytes, loss and jitter (RFC 3550), at the clock rate of the side's announced codec.
pub type MediaStats = [StreamStats; 2];

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Start { id, .. } => write!(f, "Start({id})"),
            Command::Peer { id, side, .. } => write!(f, "Peer({id}, {side:?})"),
            Command::Arm { id } => write!(f, "Arm({id})"),
            Command::Snapshot { id, .. } => write!(f, "Snapshot({id})"),
            Command::Inject { id, side, .. } => write!(f, "Inject({id}, {side:?})"),
            Command::Stop { id, .. } => write!(f, "Stop({id})"),
        }
    }
}

/// Controls a running relay; dropping it stops the relay and frees its ports.
///
/// The relay lives on a media worker; dropping the handle tells the worker, which flushes the
/// packet counts to the metrics and closes the sockets, returning the ports to the pool.
#[derive(Debug)]
pub struct Relay {
    worker: Option<&'static Worker>,
    id: u64,
    silent: Option<oneshot::Receiver<Side>>,
}

impl Relay {
    /// Starts relaying between the two sides; a side with no known peer drops what it would
    /// send until `set_peer` names one (or a packet from the peer latches it).
    pub fn start(sockets: RelaySockets, timeout: Duration) -> Self {
        let (silent_tx, silent) = oneshot::channel();
        let workers = MediaWorkers::get();
        let id = workers.ids.fetch_add(1, Ordering::Relaxed);
        let worker = workers.pick();
        match worker {
            Some(worker) => worker.send(Command::Start {
                id,
                sockets,
                silent: silent_tx,
                timeout,
            }),
            None => tracing::error!("no media worker is running; the session ends"),
        }
        Self {
            worker,
            id,
            silent: Some(silent),
        }
    }

    /// The peer of `side` announced (or re-announced) its media.
    pub fn set_peer(&self, side: Side, media: PeerMedia) {
        if let Some(worker) = self.worker {
            worker.send(Command::Peer {
                id: self.id,
                side,
                media,
            });
        }
    }

    /// Starts the media timeout (once the call is answered).
    pub fn arm(&self) {
        if let Some(worker) = self.worker {
            worker.send(Command::Arm { id: self.id });
        }
    }

    /// What the relay received on each side so far; the receiver hears nothing if the relay
    /// is gone.
    pub fn snapshot(&self) -> oneshot::Receiver<MediaStats> {
        let (tx, rx) = oneshot::channel();
        if let Some(worker) = self.worker {
            worker.send(Command::Snapshot {
                id: self.id,
                report: tx,
            });
        }
        rx
    }

    /// A handle that sends packets of this node's own out of the relay's sockets.
    pub fn injector(&self) -> Injector {
        Injector {
            worker: self.worker,
            id: self.id,
        }
    }

    /// Stops the relay (as dropping it does) and hands back what it received on each side;
    /// the receiver hears nothing if the relay was lost.
    pub fn stop(mut self) -> oneshot::Receiver<MediaStats> {
        let (tx, rx) = oneshot::channel();
        if let Some(worker) = self.worker.take() {
            worker.send(Command::Stop {
                id: self.id,
                report: Some(tx),
            });
        }
        rx
    }

    /// Resolves with the side that went silent for the media timeout, or with the relay lost
    /// (no worker took it, or its worker died); pending forever once it reported.
    pub async fn alarm(&mut self) -> RelayAlarm {
        let Some(rx) = self.silent.as_mut() else {
            return std::future::pending().await;
        };
        let alarm = match (self.worker, rx.await) {
            (Some(_), Ok(side)) => RelayAlarm::Silent(side),
            _ => RelayAlarm::Lost,
        };
        self.silent = None;
        alarm
    }
}

/// Sends packets made by this node (RFC 4733 events toward the caller) out of a relay's
/// socket of one side, to the address that side's media goes to; a packet for a side with no
/// known peer, or for a relay that stopped, is dropped.
#[derive(Debug, Clone)]
pub struct Injector {
    worker: Option<&'static Worker>,
    id: u64,
}

impl Injector {
    /// Sends `packet` to the peer of `side`.
    pub fn send(&self, side: Side, packet: Vec<u8>) {
        if let Some(worker) = self.worker {
            worker.send(Command::Inject {
                id: self.id,
                side,
                packet,
            });
        }
    }
}

/// What a running relay reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayAlarm {
    /// No RTP from this side for the media timeout.
    Silent(Side),
    /// The relay is gone: no worker took it, or its worker ended.
    Lost,
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(worker) = self.worker {
            worker.send(Command::Stop {
                id: self.id,
                report: None,
            });
        }
    }
}

/// One relay on its worker: both sides' sockets and legs.
struct RelayState {
    sockets: [SideSockets; 2],
    state: [SideState; 2],
    armed_at: Option<std::time::Instant>,
    silent: Option<oneshot::Sender<Side>>,
    timeout: Duration,
}

impl RelayState {
    /// Takes one packet from a readable socket and relays it.
    fn on_readable(
        &mut self,
        side: Side,
        rtcp: bool,
        now: std::time::Instant,
        buf: &mut [u8],
        tally: &mut Tally,
    ) {
        let socket = &self.sockets[side.index()];
        let socket = if rtcp { &socket.rtcp } else { &socket.rtp };
        // WouldBlock: another event of this wait already took the packet.
        if let Ok((len, source)) = socket.recv_from(buf) {
            let packet = &buf[..len];
            forward(
                &self.sockets,
                &mut self.state,
                tally,
                side,
                rtcp,
                source,
                packet,
                now,
            );
        }
    }

    fn set_peer(&mut self, side: Side, media: PeerMedia, now: std::time::Instant) {
        self.state[side.index()].set_peer(media, now);
    }

    /// Sends a packet of our own to `side`'s peer (where relayed RTP for it goes).
    fn inject(&self, side: Side, packet: &[u8]) {
        if let Some(dest) = self.state[side.index()].rtp_leg.destination() {
            let _ = self.sockets[side.index()].rtp.send_to(packet, dest);
        }
    }

    fn check_silence(&mut self, now: std::time::Instant) {
        let Some(since) = self.armed_at else { return };
        for side in [Side::Caller, Side::Backend] {
            let s = &self.state[side.index()];
            let expects_media = s.peer.is_some_and(|p| p.sends);
            let last = s.rtp_leg.last_activity().max(since);
            if expects_media && now.duration_since(last) >= self.timeout {
                if let Some(tx) = self.silent.take() {
                    let _ = tx.send(side);
                }
                self.armed_at = None;
            }
        }
    }
}

/// One side's legs and announced media, inside its relay.
struct SideState {
    rtp_leg: RelayLeg,
    rtcp_leg: RelayLeg,
    peer: Option<PeerMedia>,
    /// RTP received from this side's peer and forwarded, for the call record.
    stats: StreamStats,
}

impl SideState {
    fn new(now: std::time::Instant) -> Self {
        Self {
            rtp_leg: RelayLeg::new(None, now),
            rtcp_leg: RelayLeg::new(None, now),
            peer: None,
            stats: StreamStats::new(8000),
        }
    }

    /// The peer announced `media`; a moved address is learnt again (latching restarts).
    fn set_peer(&mut self, media: PeerMedia, now: std::time::Instant) {
        let moved = self.peer.is_none_or(|p| p.rtp != media.rtp);
        if moved {
            self.rtp_leg.renegotiate(Some(media.rtp), now);
            self.rtcp_leg.renegotiate(Some(media.rtcp), now);
        }
        // Jitter is counted in the codec's timestamp units; a stream that already started (early
        // media) keeps the clock it started with.
        if self.stats.packets() == 0 {
            self.stats = StreamStats::new(media.clock_rate);
        }
        self.peer = Some(media);
    }

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

/// Packet and drop counts kept per worker and flushed to the metrics once a second (and when a
/// relay stops), so the hot path touches no shared counter.
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
            if self.packets[i] > 0 {
                metrics::rtp_packets(direction(side), self.packets[i], self.bytes[i]);
            }
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

/// Accepts a packet that arrived on `from_side` and sends it out of the other side.
/// Where one received packet goes: out of side `to`, on its RTCP socket or not, to `dest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hop {
    to: Side,
    rtcp_socket: bool,
    dest: SocketAddr,
}

/// Why a received packet goes nowhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unsent {
    /// Its leg refused it (strict source, malformed).
    Refused(voxgate_media::relay::DropReason),
    /// The other side has no known peer yet.
    NoDestination,
}

/// The forwarding decision for `packet` from `source`, received on `from_side`'s RTP socket or
/// (`on_rtcp_socket`) its RTCP socket: the receiving leg latches and checks it; RTCP (on either
/// socket: rtcp-mux) goes to the other side's RTCP destination, over its RTP socket when that
/// side multiplexes; RTP goes to the other side's RTP destination. No I/O.
fn route(
    state: &mut [SideState; 2],
    from_side: Side,
    on_rtcp_socket: bool,
    source: SocketAddr,
    packet: &[u8],
    now: std::time::Instant,
) -> Result<Hop, Unsent> {
    let inbound = &mut state[from_side.index()];
    let leg = if on_rtcp_socket {
        &mut inbound.rtcp_leg
    } else {
        &mut inbound.rtp_leg
    };
    let kind = leg.receive(now, source, packet).map_err(Unsent::Refused)?;
    let to = from_side.other();
    let outbound = &state[to.index()];
    let hop = if kind == PacketKind::Rtcp || on_rtcp_socket {
        outbound.rtcp_destination().map(|(mux, dest)| Hop {
            to,
            rtcp_socket: !mux,
            dest,
        })
    } else {
        outbound.rtp_leg.destination().map(|dest| Hop {
            to,
            rtcp_socket: false,
            dest,
        })
    };
    hop.ok_or(Unsent::NoDestination)
}

#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename the arguments
fn forward(
    sockets: &[SideSockets; 2],
    state: &mut [SideState; 2],
    tally: &mut Tally,
    from_side: Side,
    on_rtcp_socket: bool,
    source: SocketAddr,
    packet: &[u8],
    now: std::time::Instant,
) {
    let hop = match route(state, from_side, on_rtcp_socket, source, packet, now) {
        Ok(hop) => hop,
        Err(Unsent::Refused(voxgate_media::relay::DropReason::StrictSource)) => {
            tally.strict_source += 1;
            return;
        }
        Err(Unsent::Refused(_)) => {
            tally.malformed += 1;
            return;
        }
        Err(Unsent::NoDestination) => {
            tally.no_destination += 1;
            return;
        }
    };
    let out = &sockets[hop.to.index()];
    let socket = if hop.rtcp_socket { &out.rtcp } else { &out.rtp };
    // A relay never waits on a full send buffer (the sockets are non-blocking): the packet is
    // late by then anyway.
    match socket.send_to(packet, hop.dest) {
        Ok(_) => {
            let i = from_side.index();
            tally.packets[i] += 1;
            tally.bytes[i] += packet.len() as u64;
            if let Some((sequence, timestamp)) = rtp_header(packet) {
                state[i]
                    .stats
                    .record(now, sequence, timestamp, packet.len());
            }
        }
        Err(_) => tally.send_failed += 1,
    }
}

/// Sequence number and timestamp of an RTP packet; `None` for RTCP (muxed RTCP parses as RTP
/// with payload types 72-76, RFC 5761 4) and for anything else.
fn rtp_header(packet: &[u8]) -> Option<(u16, u32)> {
    let rtp = voxgate_media::rtp::RtpPacket::parse(packet).ok()?;
    (!(72..=76).contains(&rtp.payload_type())).then(|| (rtp.sequence(), rtp.timestamp()))
}

#[cfg(test)]
mod tests {
    //! The real forwarding decision ([`route`]) of one relay, without sockets.

    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn rtp(seq: u16) -> Vec<u8> {
        let mut packet = vec![0x80, 0x00];
        packet.extend_from_slice(&seq.to_be_bytes());
        packet.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        packet.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        packet.extend_from_slice(&[0xff; 160]);
        packet
    }

    /// An RTCP receiver report with no report blocks.
    fn rtcp() -> Vec<u8> {
        let mut packet = vec![0x80, 201, 0x00, 0x01];
        packet.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        packet
    }

    fn peer(rtp: &str, rtcp: &str, mux: bool) -> PeerMedia {
        PeerMedia {
            rtp: addr(rtp),
            rtcp: addr(rtcp),
            mux,
            sends: true,
            clock_rate: 8000,
        }
    }

    const CALLER: &str = "127.0.0.10:4000";
    const CALLER_RTCP: &str = "127.0.0.10:4001";
    const BACKEND: &str = "127.0.0.21:5000";
    const BACKEND_RTCP: &str = "127.0.0.21:5001";

    #[allow(clippy::disallowed_methods)]
    fn relay(caller_mux: bool, backend_mux: bool) -> ([SideState; 2], std::time::Instant) {
        let now = std::time::Instant::now();
        let mut state = [SideState::new(now), SideState::new(now)];
        state[0].set_peer(peer(CALLER, CALLER_RTCP, caller_mux), now);
        state[1].set_peer(peer(BACKEND, BACKEND_RTCP, backend_mux), now);
        (state, now)
    }

    #[test]
    fn rtp_goes_to_the_other_side_and_nowhere_before_it_is_known() {
        #[allow(clippy::disallowed_methods)]
        let now = std::time::Instant::now();
        let mut state = [SideState::new(now), SideState::new(now)];
        let early = route(&mut state, Side::Caller, false, addr(CALLER), &rtp(1), now);
        assert_eq!(early, Err(Unsent::NoDestination));
        state[1].set_peer(peer(BACKEND, BACKEND_RTCP, false), now);
        let hop = route(&mut state, Side::Caller, false, addr(CALLER), &rtp(2), now);
        let expected = Hop {
            to: Side::Backend,
            rtcp_socket: false,
            dest: addr(BACKEND),
        };
        assert_eq!(hop, Ok(expected));
    }

    #[test]
    fn a_latched_leg_refuses_other_sources() {
        let (mut state, now) = relay(false, false);
        let first = route(
            &mut state,
            Side::Backend,
            false,
            addr(BACKEND),
            &rtp(1),
            now,
        );
        assert!(first.is_ok());
        let spoofed = route(
            &mut state,
            Side::Backend,
            false,
            addr("127.0.0.99:5000"),
            &rtp(2),
            now,
        );
        assert_eq!(
            spoofed,
            Err(Unsent::Refused(
                voxgate_media::relay::DropReason::StrictSource
            ))
        );
        let garbage = route(
            &mut state,
            Side::Backend,
            false,
            addr(BACKEND),
            &[0u8; 3],
            now,
        );
        assert_eq!(
            garbage,
            Err(Unsent::Refused(voxgate_media::relay::DropReason::Malformed))
        );
    }

    #[test]
    fn rtcp_without_mux_goes_socket_to_socket() {
        let (mut state, now) = relay(false, false);
        let hop = route(
            &mut state,
            Side::Caller,
            true,
            addr(CALLER_RTCP),
            &rtcp(),
            now,
        );
        let expected = Hop {
            to: Side::Backend,
            rtcp_socket: true,
            dest: addr(BACKEND_RTCP),
        };
        assert_eq!(hop, Ok(expected));
    }

    #[test]
    fn rtcp_mux_on_one_side_is_split_or_joined_for_the_other() {
        // The caller multiplexes (RTCP on its RTP port), the Backend does not.
        let (mut state, now) = relay(true, false);
        let up = route(&mut state, Side::Caller, false, addr(CALLER), &rtcp(), now);
        let split = Hop {
            to: Side::Backend,
            rtcp_socket: true,
            dest: addr(BACKEND_RTCP),
        };
        assert_eq!(up, Ok(split));
        // The Backend's RTCP reaches the caller on the caller's RTP port, from our RTP socket.
        let down = route(
            &mut state,
            Side::Backend,
            true,
            addr(BACKEND_RTCP),
            &rtcp(),
            now,
        );
        let joined = Hop {
            to: Side::Caller,
            rtcp_socket: false,
            dest: addr(CALLER),
        };
        assert_eq!(down, Ok(joined));
        // RTP from the Backend on its RTP socket still goes to the caller's RTP.
        let media = route(
            &mut state,
            Side::Backend,
            false,
            addr(BACKEND),
            &rtp(1),
            now,
        );
        assert_eq!(
            media.map(|h| (h.rtcp_socket, h.dest)),
            Ok((false, addr(CALLER)))
        );
    }

    #[test]
    fn a_moved_peer_is_learnt_again() {
        let (mut state, now) = relay(false, false);
        assert!(
            route(
                &mut state,
                Side::Backend,
                false,
                addr(BACKEND),
                &rtp(1),
                now
            )
            .is_ok()
        );
        let moved = peer("127.0.0.22:6000", "127.0.0.22:6001", false);
        state[1].set_peer(moved, now);
        let old = route(&mut state, Side::Caller, false, addr(CALLER), &rtp(2), now);
        assert_eq!(
            old.map(|h| h.dest),
            Ok(addr("127.0.0.22:6000")),
            "sent to the new address"
        );
        let from_new = route(
            &mut state,
            Side::Backend,
            false,
            addr("127.0.0.22:6000"),
            &rtp(3),
            now,
        );
        assert!(from_new.is_ok(), "the new address latches");
    }
}
