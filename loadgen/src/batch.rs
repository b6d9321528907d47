//! Batched datagram I/O for the shared media sockets: up to [`BATCH`] datagrams per
//! `recvmmsg` / `sendmmsg`, so a thousand calls' packets cost a few system calls a millisecond.

use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd as _;

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};
use voxgate_media::coalesce::Coalescer;

/// Datagrams per system call.
pub const BATCH: usize = 128;

/// Sleeps [`Coalescer::PAUSE`] when `coalescer` says the recent packet rate is high and the last batch
/// of `received` datagrams did not fill (see `voxgate_media::coalesce`).
pub fn coalesce(coalescer: &mut Coalescer, received: usize) {
    #[allow(clippy::disallowed_methods)] // a dedicated receiving thread: its own clock
    let now = std::time::Instant::now();
    if coalescer.record(now, received, received == BATCH) {
        #[allow(clippy::disallowed_methods)] // a dedicated receiving thread, not a runtime's
        std::thread::sleep(Coalescer::PAUSE);
    }
}

/// Largest datagram received whole.
const MAX_DATAGRAM: usize = 2048;

/// Receive buffers and headers for `recvmmsg`, reused across calls.
pub struct RecvBatch {
    headers: MultiHeaders<SockaddrStorage>,
    bufs: Vec<[u8; MAX_DATAGRAM]>,
    received: Vec<(usize, Option<SocketAddr>)>,
}

impl RecvBatch {
    /// Buffers for [`BATCH`] datagrams.
    pub fn new() -> Self {
        Self {
            headers: MultiHeaders::preallocate(BATCH, None),
            bufs: vec![[0u8; MAX_DATAGRAM]; BATCH],
            received: Vec::with_capacity(BATCH),
        }
    }

    /// Waits for at least one datagram (up to the socket's read timeout), then takes what else
    /// is queued, up to [`BATCH`]. Returns how many were received.
    pub fn recv(&mut self, socket: &UdpSocket) -> std::io::Result<usize> {
        self.received.clear();
        let mut iovs: Vec<[IoSliceMut<'_>; 1]> = self
            .bufs
            .iter_mut()
            .map(|buf| [IoSliceMut::new(buf)])
            .collect();
        let results = recvmmsg(
            socket.as_raw_fd(),
            &mut self.headers,
            iovs.iter_mut(),
            MsgFlags::MSG_WAITFORONE,
            None,
        )?;
        self.received
            .extend(results.map(|msg| (msg.bytes, msg.address.and_then(socket_addr))));
        Ok(self.received.len())
    }

    /// The datagrams of the last [`RecvBatch::recv`], with their sources.
    pub fn datagrams(&self) -> impl Iterator<Item = (&[u8], Option<SocketAddr>)> {
        self.received
            .iter()
            .zip(&self.bufs)
            .map(|(&(len, from), buf)| (&buf[..len.min(MAX_DATAGRAM)], from))
    }
}

/// Headers for `sendmmsg`, reused across calls.
pub struct SendBatch {
    headers: MultiHeaders<SockaddrStorage>,
}

impl SendBatch {
    /// Headers for [`BATCH`] datagrams.
    pub fn new() -> Self {
        Self {
            headers: MultiHeaders::preallocate(BATCH, None),
        }
    }

    /// Sends `datagrams` (payload, destination), [`BATCH`] per system call. Returns how many were
    /// sent. A datagram the kernel refuses is skipped (the ones after it are still sent) and
    /// reported to `refused(i)`.
    pub fn send(
        &mut self,
        socket: &UdpSocket,
        datagrams: &[(&[u8], SocketAddr)],
        mut refused: impl FnMut(usize),
    ) -> usize {
        let mut sent = 0;
        let mut next = 0;
        while next < datagrams.len() {
            let chunk = &datagrams[next..datagrams.len().min(next + BATCH)];
            let slices: Vec<[IoSlice<'_>; 1]> = chunk
                .iter()
                .map(|(payload, _)| [IoSlice::new(payload)])
                .collect();
            let addrs: Vec<Option<SockaddrStorage>> = chunk
                .iter()
                .map(|&(_, to)| Some(SockaddrStorage::from(to)))
                .collect();
            match sendmmsg(
                socket.as_raw_fd(),
                &mut self.headers,
                &slices,
                &addrs,
                [],
                MsgFlags::empty(),
            ) {
                Ok(results) => {
                    // At least one: sendmmsg fails rather than send none.
                    let n = results.count().max(1);
                    sent += n;
                    next += n;
                }
                // The first datagram of the chunk failed.
                Err(_) => {
                    refused(next);
                    next += 1;
                }
            }
        }
        sent
    }
}

fn socket_addr(addr: SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    addr.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6((*v6).into()))
}
