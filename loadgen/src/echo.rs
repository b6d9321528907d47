//! The echo Backend's media: one RTP socket for every call, echoed by a blocking thread in
//! batches (`recvmmsg` / `sendmmsg`).
//!
//! Each packet goes straight back to the address it came from. Calls register the address their
//! peer announced in SDP to learn when media last arrived (for the media timeout); packets from
//! addresses no call announced are echoed all the same.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use voxgate_media::is_rtcp;

use crate::batch::{RecvBatch, SendBatch};

/// The shared echo socket and what it has seen.
#[derive(Debug, Clone)]
pub struct EchoSocket {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    local: SocketAddr,
    epoch: std::time::Instant,
    peers: RwLock<HashMap<SocketAddr, Arc<AtomicU64>>>,
    echoed: AtomicU64,
}

/// A call's view of its peer's media: when a packet from it last arrived.
#[derive(Debug)]
pub struct PeerActivity {
    echo: EchoSocket,
    peer: SocketAddr,
    last_ms: Arc<AtomicU64>,
}

impl EchoSocket {
    /// Binds `ip:0` and starts echoing.
    pub fn start(ip: IpAddr) -> anyhow::Result<Self> {
        let socket = UdpSocket::bind((ip, 0)).context("cannot bind the echo RTP socket")?;
        crate::enlarge_buffers(&socket);
        #[allow(clippy::disallowed_methods)] // the time origin of the activity stamps
        let epoch = std::time::Instant::now();
        let inner = Arc::new(Inner {
            local: socket.local_addr()?,
            epoch,
            peers: RwLock::new(HashMap::new()),
            echoed: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("rtp-echo".into())
            .spawn(move || echo_loop(&socket, &weak))?;
        Ok(Self { inner })
    }

    /// The address every call's SDP answer names.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local
    }

    /// Packets echoed so far.
    pub fn echoed(&self) -> u64 {
        self.inner.echoed.load(Ordering::Relaxed)
    }

    /// Starts tracking media from `peer` (its SDP address).
    pub fn watch(&self, peer: SocketAddr) -> PeerActivity {
        let last_ms = Arc::new(AtomicU64::new(self.now_ms()));
        self.inner
            .peers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(peer, last_ms.clone());
        PeerActivity {
            echo: self.clone(),
            peer,
            last_ms,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.inner.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

impl PeerActivity {
    /// How long since media from the peer last arrived (or since watching began).
    pub fn silence(&self) -> Duration {
        let last = self.last_ms.load(Ordering::Relaxed);
        Duration::from_millis(self.echo.now_ms().saturating_sub(last))
    }
}

impl Drop for PeerActivity {
    fn drop(&mut self) {
        let mut peers = self
            .echo
            .inner
            .peers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        // Only our own entry: a later call may have registered the same peer address.
        if peers
            .get(&self.peer)
            .is_some_and(|l| Arc::ptr_eq(l, &self.last_ms))
        {
            peers.remove(&self.peer);
        }
    }
}

fn echo_loop(socket: &UdpSocket, inner: &std::sync::Weak<Inner>) {
    let _ = socket.set_read_timeout(Some(Duration::from_millis(500)));
    let mut batch = RecvBatch::new();
    let mut sender = SendBatch::new();
    // Two echo Backends share ~25,000 packets a second at a thousand calls.
    #[allow(clippy::disallowed_methods)] // a dedicated thread: its own clock
    let mut coalescer = voxgate_media::coalesce::Coalescer::new(15_000, std::time::Instant::now());
    loop {
        let received = batch.recv(socket);
        let Some(inner) = inner.upgrade() else { return };
        let Ok(count) = received else { continue };
        let now_ms = u64::try_from(inner.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut echoes = Vec::with_capacity(crate::batch::BATCH);
        {
            let peers = inner.peers.read().unwrap_or_else(PoisonError::into_inner);
            for (datagram, from) in batch.datagrams() {
                let Some(from) = from else { continue };
                if let Some(last) = peers.get(&from) {
                    last.store(now_ms, Ordering::Relaxed);
                }
                // RTCP (muxed) is not echoed: a reflected sender report would confuse the caller.
                if !is_rtcp(datagram) {
                    echoes.push((datagram, from));
                }
            }
        }
        let sent = sender.send(socket, &echoes, |_| {});
        inner.echoed.fetch_add(sent as u64, Ordering::Relaxed);
        drop(inner);
        crate::batch::coalesce(&mut coalescer, count);
    }
}
