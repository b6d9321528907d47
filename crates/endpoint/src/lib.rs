//! The async SIP endpoint: one UDP socket, an optional TCP listener and one
//! `voxgate_sip::Transactions`, driven by a task.
//!
//! This is the one place where SIP bytes meet sockets; the proxy and the loadgen both use it, so
//! the transaction layer is exercised by the same code in the product and in its test tool.
//!
//! Calls talk to the endpoint through a cloneable handle. Events of a dialog are routed to the task
//! that registered its Call-ID; everything else (new INVITEs, OPTIONS, strays) goes to the
//! `incoming` channel handed out by [`Endpoint::bind`].
//!
//! Transports. Every message the transaction layer emits says its transport. Responses go back
//! over the transport their request came on (the transaction layer records it). Requests and
//! stateless messages from [`Endpoint::request`] and [`Endpoint::stateless`] follow the
//! *connection reuse* rule: TCP when a connection to the destination address is open (accepted or
//! outbound, or an outbound one being opened), else UDP; [`Endpoint::request_via`] and
//! [`Endpoint::stateless_via`] name the transport instead. A TCP message to an address without a
//! connection opens one (RFC 3261 18.2.2 reuses, then connects), which is then read from and
//! reused like an accepted one. The endpoint does not rewrite Via headers: the caller writes the
//! transport it meant. TLS, SCTP and WebSocket are not supported.

mod claims;
mod driver;
pub mod framer;
mod tcp;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use anyhow::Context as _;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use voxgate_sip::{Event, TimerConfig, TransactionKey, Transactions, Transport};

pub use crate::claims::{Claim, NewDialogs};
use crate::driver::Driver;
pub use crate::tcp::TcpLimits;

/// Counters of what the endpoint saw on the wire.
#[derive(Debug, Default)]
pub struct EndpointCounters {
    /// Messages received: UDP datagrams and framed TCP messages.
    pub received: AtomicU64,
    /// Messages sent (including retransmissions), over either transport.
    pub sent: AtomicU64,
    /// Messages that did not parse as SIP (answered with 4xx when possible, else dropped).
    pub malformed: AtomicU64,
    /// TCP connections open now (accepted and outbound); goes down as well as up.
    pub tcp_connections: AtomicU64,
    /// TCP failures: refused accepts over the limit, failed connects, unframeable streams, read
    /// and write errors, peers disconnected for not reading.
    pub tcp_errors: AtomicU64,
    /// Commands and events dropped because the queue they were bound for was full (the endpoint
    /// task's commands, a dialog's events, the unrouted events): load shed, never a wait.
    pub shed: AtomicU64,
}

/// Commands (requests, responses, routes) queued for the endpoint task.
pub const COMMAND_QUEUE: usize = 65_536;
/// Unrouted events (new requests, strays) queued for the dispatcher.
pub const INCOMING_QUEUE: usize = 8_192;
/// Events queued for one dialog's (or session's) task.
pub const DIALOG_QUEUE: usize = 256;

/// How to set up an [`Endpoint`]; `Default` is UDP only with RFC 3261 timers.
#[derive(Default)]
pub struct EndpointOptions {
    /// Where to listen for SIP over TCP; `None` accepts no connections (outbound connects for
    /// [`Endpoint::request_via`] still work).
    pub tcp: Option<SocketAddr>,
    /// Transaction timers.
    pub timers: TimerConfig,
    /// Sees every message received or sent.
    pub observer: Option<Arc<dyn MessageObserver>>,
    /// Bounds on TCP connections.
    pub tcp_limits: TcpLimits,
    /// Judges every received message before the transaction layer sees it.
    pub guard: Option<Arc<dyn EdgeGuard>>,
}

impl fmt::Debug for EndpointOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointOptions")
            .field("tcp", &self.tcp)
            .field("timers", &self.timers)
            .field("observer", &self.observer.as_ref().map(|_| "..."))
            .field("tcp_limits", &self.tcp_limits)
            .field("guard", &self.guard.as_ref().map(|_| "..."))
            .finish()
    }
}

/// Sees every SIP message the endpoint receives or sends (for per-method metrics).
pub trait MessageObserver: Send + Sync + 'static {
    /// One datagram or TCP message; `method` is the request method, or `None` for a response.
    fn on_message(&self, outbound: bool, method: Option<&str>);
}

/// Judges each received message before it is parsed or opens a transaction: what it refuses
/// costs nothing more and gets no answer at all (not even `100 Trying`). Called on the endpoint
/// task for every UDP datagram and TCP message, so it must be quick.
pub trait EdgeGuard: Send + Sync + 'static {
    /// Whether the message `bytes` from `source` goes on to the transaction layer.
    fn admit(&self, source: SocketAddr, bytes: &[u8]) -> bool;
}

/// The request method of a datagram (its first token), `None` for a response or noise.
pub fn datagram_method(bytes: &[u8]) -> Option<&str> {
    if bytes.starts_with(b"SIP/") {
        return None;
    }
    let end = bytes.iter().position(|&b| b == b' ')?;
    let token = &bytes[..end];
    if token.is_empty() || token.len() > 16 || !token.iter().all(u8::is_ascii_uppercase) {
        return None;
    }
    std::str::from_utf8(token).ok()
}

/// A handle to the endpoint task; cheap to clone.
#[derive(Debug, Clone)]
pub struct Endpoint {
    local_addr: SocketAddr,
    tcp_addr: Option<SocketAddr>,
    commands: mpsc::Sender<Command>,
    counters: Arc<EndpointCounters>,
}

/// The receiving half of a Call-ID route; unregisters the route when dropped.
#[derive(Debug)]
pub struct DialogEvents {
    call_id: String,
    events: mpsc::Receiver<Event>,
    commands: mpsc::Sender<Command>,
}

#[derive(Debug)]
enum Command {
    Register {
        call_id: String,
        events: mpsc::Sender<Event>,
    },
    Unregister {
        call_id: String,
    },
    Request {
        destination: SocketAddr,
        /// `None`: the connection reuse rule decides.
        transport: Option<Transport>,
        request: rsip::Request,
    },
    Respond {
        key: TransactionKey,
        response: rsip::Response,
    },
    Stateless {
        destination: SocketAddr,
        /// `None`: the connection reuse rule decides.
        transport: Option<Transport>,
        message: rsip::SipMessage,
    },
}

impl Endpoint {
    /// Binds `addr` and starts the endpoint task. Events for unregistered Call-IDs arrive on the
    /// returned receiver.
    pub async fn bind(
        addr: SocketAddr,
        timers: TimerConfig,
    ) -> anyhow::Result<(Self, mpsc::Receiver<Event>)> {
        Self::bind_observed(addr, timers, None).await
    }

    /// [`Endpoint::bind`] with an observer of every message.
    pub async fn bind_observed(
        addr: SocketAddr,
        timers: TimerConfig,
        observer: Option<Arc<dyn MessageObserver>>,
    ) -> anyhow::Result<(Self, mpsc::Receiver<Event>)> {
        let options = EndpointOptions {
            timers,
            observer,
            ..EndpointOptions::default()
        };
        Self::bind_with(addr, options).await
    }

    /// Binds the UDP socket `udp` and, with [`EndpointOptions::tcp`], a TCP listener, then starts
    /// the endpoint task. Events for unregistered Call-IDs arrive on the returned receiver.
    pub async fn bind_with(
        udp: SocketAddr,
        options: EndpointOptions,
    ) -> anyhow::Result<(Self, mpsc::Receiver<Event>)> {
        let socket = UdpSocket::bind(udp)
            .await
            .with_context(|| format!("cannot bind SIP socket {udp}"))?;
        let local_addr = socket.local_addr()?;
        let listener = match options.tcp {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot bind SIP TCP listener {addr}"))?,
            ),
            None => None,
        };
        let tcp_addr = listener.as_ref().map(TcpListener::local_addr).transpose()?;
        let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let (incoming_tx, incoming) = mpsc::channel(INCOMING_QUEUE);
        let counters = Arc::new(EndpointCounters::default());
        let (tcp, tcp_events) = tcp::TcpTasks::new(options.tcp_limits, counters.clone());
        if let Some(listener) = listener {
            tcp.spawn_listener(listener);
        }
        let driver = Driver {
            socket,
            transactions: Transactions::new(options.timers),
            routes: HashMap::new(),
            key_routes: HashMap::new(),
            incoming: incoming_tx,
            counters: counters.clone(),
            observer: options.observer,
            guard: options.guard,
            tcp,
            tcp_events,
            connections: HashMap::new(),
        };
        tokio::spawn(driver.run(command_rx));
        let endpoint = Self {
            local_addr,
            tcp_addr,
            commands,
            counters,
        };
        Ok((endpoint, incoming))
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The TCP listening address, when [`EndpointOptions::tcp`] was set.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// Wire counters.
    pub fn counters(&self) -> &EndpointCounters {
        &self.counters
    }

    /// Routes every later event of `call_id` to the returned receiver.
    pub fn register(&self, call_id: &str) -> DialogEvents {
        let (tx, rx) = mpsc::channel(DIALOG_QUEUE);
        self.send(Command::Register {
            call_id: call_id.to_owned(),
            events: tx,
        });
        DialogEvents {
            call_id: call_id.to_owned(),
            events: rx,
            commands: self.commands.clone(),
        }
    }

    /// Routes every later event of `call_id` into `events` (shared by the dialogs of one
    /// session) until the returned [`Route`] is dropped.
    pub fn route(&self, call_id: &str, events: mpsc::Sender<Event>) -> Route {
        self.send(Command::Register {
            call_id: call_id.to_owned(),
            events,
        });
        Route {
            call_id: call_id.to_owned(),
            commands: self.commands.clone(),
        }
    }

    /// Starts a client transaction, over TCP when a connection to `destination` is open, else
    /// over UDP (the connection reuse rule, see the crate docs).
    pub fn request(&self, destination: SocketAddr, request: rsip::Request) {
        self.send(Command::Request {
            destination,
            transport: None,
            request,
        });
    }

    /// Starts a client transaction over `transport`; TCP connects when no connection is open.
    pub fn request_via(
        &self,
        destination: SocketAddr,
        transport: Transport,
        request: rsip::Request,
    ) {
        self.send(Command::Request {
            destination,
            transport: Some(transport),
            request,
        });
    }

    /// Answers a server transaction, over the transport its request came on.
    pub fn respond(&self, key: TransactionKey, response: rsip::Response) {
        self.send(Command::Respond { key, response });
    }

    /// Sends a message outside any transaction (ACK for a 2xx), with the transport chosen like
    /// [`Endpoint::request`]'s.
    pub fn stateless(&self, destination: SocketAddr, message: impl Into<rsip::SipMessage>) {
        self.send(Command::Stateless {
            destination,
            transport: None,
            message: message.into(),
        });
    }

    /// [`Endpoint::stateless`] over `transport`.
    pub fn stateless_via(
        &self,
        destination: SocketAddr,
        transport: Transport,
        message: impl Into<rsip::SipMessage>,
    ) {
        self.send(Command::Stateless {
            destination,
            transport: Some(transport),
            message: message.into(),
        });
    }

    fn send(&self, command: Command) {
        // The driver only stops when every handle is gone, so the queue is never closed while
        // `self` exists; a full one sheds (the transaction layer's retransmissions, or the
        // peer's, recover a lost message).
        if let Err(mpsc::error::TrySendError::Full(_)) = self.commands.try_send(command) {
            self.counters
                .shed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// A Call-ID routed by [`Endpoint::route`]; unregisters the route when dropped.
#[derive(Debug)]
pub struct Route {
    call_id: String,
    commands: mpsc::Sender<Command>,
}

impl Drop for Route {
    fn drop(&mut self) {
        // A full queue leaves the route behind: its sender is closed, and the endpoint's sweep
        // removes closed routes.
        let _ = self.commands.try_send(Command::Unregister {
            call_id: std::mem::take(&mut self.call_id),
        });
    }
}

impl DialogEvents {
    /// The next event of this dialog; `None` once the endpoint stopped.
    pub async fn recv(&mut self) -> Option<Event> {
        self.events.recv().await
    }
}

impl Drop for DialogEvents {
    fn drop(&mut self) {
        let _ = self.commands.try_send(Command::Unregister {
            call_id: std::mem::take(&mut self.call_id),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_of_datagrams() {
        assert_eq!(
            datagram_method(b"INVITE sip:a@b SIP/2.0\r\n"),
            Some("INVITE")
        );
        assert_eq!(datagram_method(b"SIP/2.0 200 OK\r\n"), None);
        assert_eq!(datagram_method(b"\x00\xff garbage"), None);
        assert_eq!(datagram_method(b"invite sip:a@b SIP/2.0"), None);
        assert_eq!(datagram_method(b""), None);
    }
}
