//! The shared WebRTC media socket: one UDP socket and one task for every WebRTC peer of this
//! node.
//!
//! The task owns the socket, the [`PeerDemux`] and the [`WebRtcPeer`]s. A datagram is routed
//! to its peer (STUN by our ufrag, the rest by the learned client address) and handed in; what
//! the peer then wants sent goes out of the same socket, and its events go to the session task
//! that owns the peer over a channel. Sessions talk to the task through [`PeerHub`] commands
//! (add a peer, send audio, close). Timers: each peer's next deadline is kept in a heap; a peer
//! is scheduled again only when its deadline moves earlier, and a wake-up that comes early (the
//! deadline moved later) just runs `handle_timeout` and reschedules, so the heap holds about one
//! entry per peer however many packets flow.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::time::Instant as StdInstant;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use voxgate_webrtc::{PeerDemux, PeerEvent, WebRtcPeer};

use crate::metrics;

/// The soonest a peer's timer is run again after it was run.
const MIN_TIMER: std::time::Duration = std::time::Duration::from_millis(1);

/// Largest datagram read; DTLS records and SRTP packets stay far below a 1,500-byte MTU.
const MAX_DATAGRAM: usize = 2048;

/// Commands (add, send audio, close) queued for the media task; a full queue sheds.
const COMMAND_QUEUE: usize = 65_536;

/// Events queued for one session: about 10 s of audio. A session that lets it fill is not
/// reading: its audio is shed, and a control event that cannot be delivered closes the peer.
pub const PEER_QUEUE: usize = 512;

/// A handle on the shared media task; clones share it.
#[derive(Debug, Clone)]
pub struct PeerHub {
    commands: mpsc::Sender<Command>,
    local: SocketAddr,
}

enum Command {
    Add {
        key: u64,
        peer: Box<WebRtcPeer>,
        events: mpsc::Sender<PeerEvent>,
    },
    Send {
        key: u64,
        payload_type: u8,
        timestamp: u32,
        marker: bool,
        payload: Bytes,
    },
    Close {
        key: u64,
    },
}

impl PeerHub {
    /// Binds the shared socket on `addr` and starts its task (on the current runtime).
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        let socket = UdpSocket::bind(addr).await?;
        let local = socket.local_addr()?;
        let (commands, receiver) = mpsc::channel(COMMAND_QUEUE);
        let driver = Driver {
            socket,
            demux: PeerDemux::new(),
            peers: HashMap::new(),
            timers: BinaryHeap::new(),
        };
        tokio::spawn(driver.run(receiver));
        Ok(Self { commands, local })
    }

    /// The socket's bound address (its port is the ICE candidate's).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Hands `peer` to the task; its events go to `events` until it closes.
    pub fn add(&self, key: u64, peer: WebRtcPeer, events: mpsc::Sender<PeerEvent>) {
        self.command(Command::Add {
            key,
            peer: Box::new(peer),
            events,
        });
    }

    /// Sends one RTP packet (Opus or telephone-event) to the client of peer `key`.
    pub fn send(&self, key: u64, payload_type: u8, timestamp: u32, marker: bool, payload: Bytes) {
        self.command(Command::Send {
            key,
            payload_type,
            timestamp,
            marker,
            payload,
        });
    }

    /// Closes peer `key` (DTLS close_notify); its `Closed` event follows.
    pub fn close(&self, key: u64) {
        self.command(Command::Close { key });
    }

    /// Queues `command`; a full queue sheds it (counted), never waits.
    fn command(&self, command: Command) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.commands.try_send(command) {
            metrics::webrtc_shed();
        }
    }
}

struct Entry {
    peer: Box<WebRtcPeer>,
    events: mpsc::Sender<PeerEvent>,
    /// The deadline this peer has in the heap, if any.
    scheduled: Option<StdInstant>,
}

struct Driver {
    socket: UdpSocket,
    demux: PeerDemux<u64>,
    peers: HashMap<u64, Entry>,
    timers: BinaryHeap<Reverse<(StdInstant, u64)>>,
}

impl Driver {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let next = self.timers.peek().map(|Reverse((at, _))| *at);
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.command(command).await,
                    None => return,
                },
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((len, from)) => self.receive(from, &buf[..len]).await,
                    // ICMP errors surface on the next receive; nothing to do about them.
                    Err(err) => tracing::debug!(%err, "webrtc socket receive error"),
                },
                () = tokio::time::sleep_until(next.map_or_else(Instant::now, Instant::from_std)), if next.is_some() => {
                    self.timeouts().await;
                }
            }
        }
    }

    async fn command(&mut self, command: Command) {
        match command {
            Command::Add { key, peer, events } => {
                if let Err(err) = self.demux.insert(key, peer.local_ufrag()) {
                    tracing::warn!(%err, "webrtc peer not added");
                    return;
                }
                self.peers.insert(
                    key,
                    Entry {
                        peer,
                        events,
                        scheduled: None,
                    },
                );
                metrics::webrtc_peers(self.peers.len());
                self.flush(key).await;
            }
            Command::Send {
                key,
                payload_type,
                timestamp,
                marker,
                payload,
            } => {
                let Some(entry) = self.peers.get_mut(&key) else {
                    return;
                };
                let now = StdInstant::from(Instant::now());
                if entry
                    .peer
                    .send_audio(now, payload_type, timestamp, marker, payload)
                    .is_ok()
                {
                    self.flush(key).await;
                }
            }
            Command::Close { key } => {
                if let Some(entry) = self.peers.get_mut(&key) {
                    entry.peer.close(Instant::now().into_std());
                    self.flush(key).await;
                }
            }
        }
    }

    async fn receive(&mut self, from: SocketAddr, datagram: &[u8]) {
        let Some(key) = self.demux.route(from, datagram) else {
            metrics::webrtc_unrouted();
            return;
        };
        let Some(entry) = self.peers.get_mut(&key) else {
            return;
        };
        entry
            .peer
            .handle_receive(Instant::now().into_std(), from, datagram);
        self.flush(key).await;
    }

    async fn timeouts(&mut self) {
        let now = Instant::now().into_std();
        // Take every due entry first and run each peer once: a peer whose next deadline is
        // still not in the future is run again on the next wake-up, not in a loop here.
        let mut due = Vec::new();
        while let Some(Reverse((at, key))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            if let Some(entry) = self.peers.get_mut(&key)
                && entry.scheduled == Some(at)
            {
                entry.scheduled = None;
                due.push(key);
            }
        }
        for key in due {
            if let Some(entry) = self.peers.get_mut(&key) {
                entry.peer.handle_timeout(now);
                self.flush(key).await;
            }
        }
    }

    /// Sends what peer `key` has queued, forwards its events, reschedules it, and drops it once
    /// it has closed.
    async fn flush(&mut self, key: u64) {
        let Some(entry) = self.peers.get_mut(&key) else {
            return;
        };
        while let Some(transmit) = entry.peer.poll_transmit() {
            if let Err(err) = self
                .socket
                .send_to(&transmit.payload, transmit.destination)
                .await
            {
                tracing::debug!(%err, to = %transmit.destination, "webrtc send failed");
            }
        }
        let mut closed = false;
        let mut session_gone = false;
        while let Some(event) = entry.peer.poll_event() {
            match &event {
                PeerEvent::RemoteAddress(addr) => self.demux.learn(key, *addr),
                PeerEvent::Closed(reason) => {
                    metrics::webrtc_closed(reason.as_str());
                    closed = true;
                }
                _ => {}
            }
            let audio = matches!(event, PeerEvent::Audio { .. });
            match entry.events.try_send(event) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    metrics::webrtc_shed();
                    // Audio is shed; a control event lost would leave the session wrong.
                    session_gone |= !audio;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => session_gone = true,
            }
        }
        if session_gone && !closed {
            // Nobody listens to this peer any more: close it.
            metrics::webrtc_closed("session_gone");
            entry.peer.close(Instant::now().into_std());
            while let Some(transmit) = entry.peer.poll_transmit() {
                let _ = self
                    .socket
                    .send_to(&transmit.payload, transmit.destination)
                    .await;
            }
            closed = true;
        }
        if closed {
            self.demux.remove(key);
            self.peers.remove(&key);
            metrics::webrtc_peers(self.peers.len());
            return;
        }
        // At least a millisecond ahead, so a deadline that does not move cannot spin the task.
        let soonest = Instant::now().into_std() + MIN_TIMER;
        if let Some(at) = entry.peer.poll_timeout().map(|at| at.max(soonest))
            && entry.scheduled.is_none_or(|scheduled| at < scheduled)
        {
            entry.scheduled = Some(at);
            self.timers.push(Reverse((at, key)));
        }
    }
}
