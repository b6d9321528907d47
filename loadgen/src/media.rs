//! The caller's media engine: one RTP socket shared by every call, a paced sender thread and a
//! receiving thread that matches echoes to calls by SSRC.
//!
//! A task and a socket per call cost more CPU than the system under test at a thousand calls;
//! with one socket, sends are spread over 1 ms slots of the 20 ms packet interval, each slot one
//! `sendmmsg`, and echoes are taken a `recvmmsg` batch at a time, so the loadgen out-runs what it
//! measures. Every call's SDP offers
//! the same port, which RTP allows (streams are told apart by SSRC).

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use hdrhistogram::Histogram;
use tokio::time::Instant;
use voxgate_media::{RtpPacket, StreamStats, is_rtcp};

use crate::batch::{RecvBatch, SendBatch};
use crate::probe::{self, G711, PACKET_LEN, ProbeSender};

/// Slots per packet interval: a call sends in one of them, so sends spread over 20 ms.
const SLOTS: usize = 20;

/// What one stream measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamResult {
    /// Packets sent.
    pub sent: u64,
    /// Echoes received.
    pub received: u64,
    /// RFC 3550 interarrival jitter of the echo, seconds (None below two packets).
    pub jitter_seconds: Option<f64>,
    /// When the last echo came, since the run's epoch.
    pub last_echo_at: Option<Duration>,
}

/// Engine-wide counters, read by the progress line and the report.
#[derive(Debug, Default)]
pub struct MediaCounters {
    /// Packets sent.
    pub sent: AtomicU64,
    /// Echoes matched to a call.
    pub received: AtomicU64,
    /// Packets that matched no call or carried no stamp.
    pub foreign: AtomicU64,
    /// Sends the kernel refused (buffer full).
    pub send_errors: AtomicU64,
}

struct StreamState {
    sender: ProbeSender,
    sending: bool,
    closed: bool,
    sent: u64,
    received: u64,
    last_echo_at: Option<Duration>,
    stats: StreamStats,
}

struct Stream {
    remote: SocketAddr,
    state: Mutex<StreamState>,
}

impl Stream {
    fn lock(&self) -> std::sync::MutexGuard<'_, StreamState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The shared media engine of a `call` run.
#[derive(Clone)]
pub struct MediaEngine {
    inner: Arc<Inner>,
}

struct Inner {
    local: SocketAddr,
    epoch: std::time::Instant,
    streams: RwLock<HashMap<u32, Arc<Stream>>>,
    slots: Mutex<Vec<Vec<Arc<Stream>>>>,
    next_slot: AtomicU64,
    rtt_us: Mutex<Histogram<u64>>,
    counters: MediaCounters,
}

/// A call's handle on its stream.
pub struct MediaStream {
    engine: MediaEngine,
    ssrc: u32,
    stream: Arc<Stream>,
}

impl MediaEngine {
    /// Binds the shared socket on `ip` and starts the sender task and the receiving thread.
    /// `epoch` is the run's time origin, stamped into every packet.
    pub fn start(ip: std::net::IpAddr, epoch: Instant) -> anyhow::Result<Self> {
        let socket = UdpSocket::bind((ip, 0)).context("cannot bind the RTP socket")?;
        crate::enlarge_buffers(&socket);
        let local = socket.local_addr()?;
        let receiver = socket.try_clone()?;

        let sender = socket;
        let inner = Arc::new(Inner {
            local,
            epoch: epoch.into_std(),
            streams: RwLock::new(HashMap::new()),
            slots: Mutex::new(vec![Vec::new(); SLOTS]),
            next_slot: AtomicU64::new(0),
            rtt_us: Mutex::new(rtt_histogram()),
            counters: MediaCounters::default(),
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("rtp-receive".into())
            .spawn(move || receive_loop(&receiver, &weak))?;
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("rtp-send".into())
            .spawn(move || send_loop(&sender, &weak))?;
        Ok(Self { inner })
    }

    /// The address every call's SDP offers.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local
    }

    /// Engine-wide counters.
    pub fn counters(&self) -> &MediaCounters {
        &self.inner.counters
    }

    /// Round-trip times of every echo so far, in microseconds.
    pub fn rtt_histogram(&self) -> Histogram<u64> {
        self.inner
            .rtt_us
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Opens a stream to `remote`; it sends once [`MediaStream::start`] is called. The SSRC is
    /// drawn by `ssrc` until it is unique among live streams.
    pub fn open(
        &self,
        mut ssrc: impl FnMut() -> u32,
        sequence: u16,
        timestamp: u32,
        remote: SocketAddr,
        codec: G711,
    ) -> MediaStream {
        let mut streams = self
            .inner
            .streams
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let id = loop {
            let candidate = ssrc();
            if !streams.contains_key(&candidate) {
                break candidate;
            }
        };
        let stream = Arc::new(Stream {
            remote,
            state: Mutex::new(StreamState {
                sender: ProbeSender::new(codec, id, sequence, timestamp),
                sending: false,
                closed: false,
                sent: 0,
                received: 0,
                last_echo_at: None,
                stats: StreamStats::new(8000),
            }),
        });
        streams.insert(id, stream.clone());
        drop(streams);
        let slot = self.inner.next_slot.fetch_add(1, Ordering::Relaxed) as usize % SLOTS;
        self.inner
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)[slot]
            .push(stream.clone());
        MediaStream {
            engine: self.clone(),
            ssrc: id,
            stream,
        }
    }
}

impl MediaStream {
    /// Starts sending every 20 ms.
    pub fn start(&self) {
        self.stream.lock().sending = true;
    }

    /// Stops sending (echoes are still counted).
    pub fn stop(&self) {
        self.stream.lock().sending = false;
    }

    /// (sent, received) so far.
    pub fn progress(&self) -> (u64, u64) {
        let state = self.stream.lock();
        (state.sent, state.received)
    }

    /// When the last echo came, since the run's epoch.
    pub fn last_echo_at(&self) -> Option<Duration> {
        self.stream.lock().last_echo_at
    }

    /// Ends the stream and returns what it measured.
    pub fn close(self) -> StreamResult {
        let result = {
            let mut state = self.stream.lock();
            state.sending = false;
            state.closed = true;
            StreamResult {
                sent: state.sent,
                received: state.received,
                jitter_seconds: (state.stats.packets() > 1).then(|| state.stats.jitter_seconds()),
                last_echo_at: state.last_echo_at,
            }
        };
        self.engine
            .inner
            .streams
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.ssrc);
        result
    }
}

impl Drop for MediaStream {
    fn drop(&mut self) {
        // `close` may not have run (a call that failed mid-hold): stop sending either way. The
        // sender drops closed streams from its slots.
        self.stream.lock().closed = true;
        if let Ok(mut streams) = self.engine.inner.streams.write() {
            streams.remove(&self.ssrc);
        }
    }
}

/// Every millisecond, sends the packets of the calls in this slot, in one batch.
///
/// A thread of its own rather than a task: the runtime's timer and the SIP tasks then never delay
/// a slot, and a late slot is caught up at once (the stamps carry the real send time).
fn send_loop(socket: &UdpSocket, inner: &std::sync::Weak<Inner>) {
    let interval = probe::PTIME / SLOTS as u32;
    let mut sender = SendBatch::new();
    let mut packets: Vec<[u8; PACKET_LEN]> = Vec::new();
    let mut targets: Vec<SocketAddr> = Vec::new();
    let mut slot = 0usize;
    let Some(start) = inner.upgrade().map(|i| i.epoch) else {
        return;
    };
    let mut deadline = start.elapsed();
    loop {
        let Some(inner) = inner.upgrade() else { return };
        let elapsed = inner.epoch.elapsed();
        if elapsed < deadline {
            drop(inner);
            #[allow(clippy::disallowed_methods)] // a dedicated thread, not a runtime's
            std::thread::sleep(deadline - elapsed);
            continue;
        }
        deadline += interval;
        let due: Vec<Arc<Stream>> = {
            let mut slots = inner.slots.lock().unwrap_or_else(PoisonError::into_inner);
            slots[slot].retain(|s| !s.lock().closed);
            slots[slot].clone()
        };
        slot = (slot + 1) % SLOTS;
        packets.clear();
        targets.clear();
        let mut senders = Vec::with_capacity(due.len());
        for stream in &due {
            let mut state = stream.lock();
            if !state.sending {
                continue;
            }
            let mut out = [0u8; PACKET_LEN];
            state.sender.next_packet(inner.epoch.elapsed(), &mut out);
            // Counted before it leaves, under the lock: `close` must never see an echo that
            // outran its packet's count (received > sent).
            state.sent += 1;
            packets.push(out);
            targets.push(stream.remote);
            senders.push(stream);
        }
        let datagrams: Vec<(&[u8], SocketAddr)> = packets
            .iter()
            .zip(&targets)
            .map(|(p, &to)| (&p[..], to))
            .collect();
        let sent = sender.send(socket, &datagrams, |i| senders[i].lock().sent -= 1);
        inner
            .counters
            .sent
            .fetch_add(sent as u64, Ordering::Relaxed);
        let failed = (datagrams.len() - sent) as u64;
        if failed > 0 {
            inner
                .counters
                .send_errors
                .fetch_add(failed, Ordering::Relaxed);
        }
    }
}

/// Blocking receive loop of the shared socket, a batch at a time; ends when the engine is gone.
fn receive_loop(socket: &UdpSocket, inner: &std::sync::Weak<Inner>) {
    // Wake up now and then to notice that the engine is gone.
    let _ = socket.set_read_timeout(Some(Duration::from_millis(200)));
    let mut batch = RecvBatch::new();
    let mut rtts = Vec::with_capacity(crate::batch::BATCH);
    // 200 calls send 10,000 packets a second, a thousand 50,000: coalesce only near the latter.
    #[allow(clippy::disallowed_methods)] // a dedicated thread: its own clock
    let mut coalescer = voxgate_media::coalesce::Coalescer::new(25_000, std::time::Instant::now());
    loop {
        let received = batch.recv(socket);
        let Some(inner) = inner.upgrade() else { return };
        let Ok(count) = received else { continue };
        #[allow(clippy::disallowed_methods)] // receive time of real packets: this is the clock
        let now = std::time::Instant::now();
        let since_epoch = now.duration_since(inner.epoch);
        let mut received = 0;
        let mut foreign = 0;
        rtts.clear();
        {
            let streams = inner.streams.read().unwrap_or_else(PoisonError::into_inner);
            for (datagram, _) in batch.datagrams() {
                if is_rtcp(datagram) {
                    continue;
                }
                let stamp = RtpPacket::parse(datagram)
                    .ok()
                    .and_then(|p| probe::sent_at(&p).map(|at| (p, at)));
                let Some((packet, sent_at)) = stamp else {
                    foreign += 1;
                    continue;
                };
                let Some(stream) = streams.get(&packet.ssrc()) else {
                    foreign += 1;
                    continue;
                };
                rtts.push(since_epoch.saturating_sub(sent_at));
                let mut state = stream.lock();
                state.received += 1;
                state.last_echo_at = Some(since_epoch);
                state
                    .stats
                    .record(now, packet.sequence(), packet.timestamp(), datagram.len());
                received += 1;
            }
        }
        if !rtts.is_empty() {
            let mut histogram = inner.rtt_us.lock().unwrap_or_else(PoisonError::into_inner);
            for rtt in &rtts {
                let _ = histogram.record(u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX));
            }
        }
        inner
            .counters
            .received
            .fetch_add(received, Ordering::Relaxed);
        if foreign > 0 {
            inner.counters.foreign.fetch_add(foreign, Ordering::Relaxed);
        }
        drop(inner);
        crate::batch::coalesce(&mut coalescer, count);
    }
}

fn rtt_histogram() -> Histogram<u64> {
    // 1 us to 60 s at 3 significant digits; values beyond are clamped by `record` failing, which
    // only happens for an echo a minute late.
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}
