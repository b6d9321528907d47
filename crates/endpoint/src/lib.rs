//! The async SIP endpoint: one UDP socket and one `voxgate_sip::Transactions`, driven by a task.
//!
//! This is the one place where SIP bytes meet sockets; the proxy and the loadgen both use it, so
//! the transaction layer is exercised by the same code in the product and in its test tool.
//!
//! Calls talk to the endpoint through a cloneable handle. Events of a dialog are routed to the task
//! that registered its Call-ID; everything else (new INVITEs, OPTIONS, strays) goes to the
//! `incoming` channel handed out by [`Endpoint::bind`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use rsip::prelude::*;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use voxgate_sip::{Event, TimerConfig, TransactionKey, Transactions, Transport};

/// How long a transaction key stays mapped to its Call-ID: longer than any RFC 3261 timer
/// (64 * T1 plus Timer D), so that late timeouts and retransmissions still reach their call.
const KEY_ROUTE_TTL: Duration = Duration::from_secs(64);

/// Counters of what the endpoint saw on the wire.
#[derive(Debug, Default)]
pub struct EndpointCounters {
    /// Datagrams received.
    pub received: AtomicU64,
    /// Datagrams sent (including retransmissions).
    pub sent: AtomicU64,
    /// Datagrams that did not parse as SIP (answered with 4xx when possible, else dropped).
    pub malformed: AtomicU64,
}

/// Sees every SIP datagram the endpoint receives or sends (for per-method metrics).
pub trait MessageObserver: Send + Sync + 'static {
    /// One datagram; `method` is the request method, or `None` for a response.
    fn on_message(&self, outbound: bool, method: Option<&str>);
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
    commands: mpsc::UnboundedSender<Command>,
    counters: Arc<EndpointCounters>,
}

/// The receiving half of a Call-ID route; unregisters the route when dropped.
#[derive(Debug)]
pub struct DialogEvents {
    call_id: String,
    events: mpsc::UnboundedReceiver<Event>,
    commands: mpsc::UnboundedSender<Command>,
}

#[derive(Debug)]
enum Command {
    Register {
        call_id: String,
        events: mpsc::UnboundedSender<Event>,
    },
    Unregister {
        call_id: String,
    },
    Request {
        destination: SocketAddr,
        request: rsip::Request,
    },
    Respond {
        key: TransactionKey,
        response: rsip::Response,
    },
    Stateless {
        destination: SocketAddr,
        message: rsip::SipMessage,
    },
}

impl Endpoint {
    /// Binds `addr` and starts the endpoint task. Events for unregistered Call-IDs arrive on the
    /// returned receiver.
    pub async fn bind(
        addr: SocketAddr,
        timers: TimerConfig,
    ) -> anyhow::Result<(Self, mpsc::UnboundedReceiver<Event>)> {
        Self::bind_observed(addr, timers, None).await
    }

    /// [`Endpoint::bind`] with an observer of every datagram.
    pub async fn bind_observed(
        addr: SocketAddr,
        timers: TimerConfig,
        observer: Option<Arc<dyn MessageObserver>>,
    ) -> anyhow::Result<(Self, mpsc::UnboundedReceiver<Event>)> {
        let socket = UdpSocket::bind(addr)
            .await
            .with_context(|| format!("cannot bind SIP socket {addr}"))?;
        let local_addr = socket.local_addr()?;
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (incoming_tx, incoming) = mpsc::unbounded_channel();
        let counters = Arc::new(EndpointCounters::default());
        let driver = Driver {
            socket,
            transactions: Transactions::new(timers),
            routes: HashMap::new(),
            key_routes: HashMap::new(),
            incoming: incoming_tx,
            counters: counters.clone(),
            observer,
        };
        tokio::spawn(driver.run(command_rx));
        let endpoint = Self {
            local_addr,
            commands,
            counters,
        };
        Ok((endpoint, incoming))
    }

    /// The bound SIP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Wire counters.
    pub fn counters(&self) -> &EndpointCounters {
        &self.counters
    }

    /// Routes every later event of `call_id` to the returned receiver.
    pub fn register(&self, call_id: &str) -> DialogEvents {
        let (tx, rx) = mpsc::unbounded_channel();
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

    /// Starts a client transaction.
    pub fn request(&self, destination: SocketAddr, request: rsip::Request) {
        self.send(Command::Request {
            destination,
            request,
        });
    }

    /// Answers a server transaction.
    pub fn respond(&self, key: TransactionKey, response: rsip::Response) {
        self.send(Command::Respond { key, response });
    }

    /// Sends a message outside any transaction (ACK for a 2xx).
    pub fn stateless(&self, destination: SocketAddr, message: impl Into<rsip::SipMessage>) {
        self.send(Command::Stateless {
            destination,
            message: message.into(),
        });
    }

    fn send(&self, command: Command) {
        // The driver only stops when every handle is gone, so a failed send cannot happen while
        // `self` exists; ignoring it keeps shutdown paths simple.
        let _ = self.commands.send(command);
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
        let _ = self.commands.send(Command::Unregister {
            call_id: std::mem::take(&mut self.call_id),
        });
    }
}

struct Driver {
    socket: UdpSocket,
    transactions: Transactions,
    routes: HashMap<String, mpsc::UnboundedSender<Event>>,
    /// Client and server transaction keys to the Call-ID they belong to, with the time they were
    /// mapped; `Timeout` and `AckTimeout` carry only a key.
    key_routes: HashMap<TransactionKey, (String, Instant)>,
    incoming: mpsc::UnboundedSender<Event>,
    counters: Arc<EndpointCounters>,
    observer: Option<Arc<dyn MessageObserver>>,
}

impl Driver {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut buf = vec![0u8; 65_536];
        let mut sweep = tokio::time::interval(Duration::from_secs(5));
        loop {
            let deadline = self.transactions.poll_timeout().map(Instant::from_std);
            tokio::select! {
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((len, source)) => {
                        self.on_datagram(source, &buf[..len]);
                        // Drain what is already queued before flushing, to batch under load.
                        for _ in 0..64 {
                            match self.socket.try_recv_from(&mut buf) {
                                Ok((len, source)) => self.on_datagram(source, &buf[..len]),
                                Err(_) => break,
                            }
                        }
                    }
                    Err(err) => tracing::debug!(%err, "SIP socket receive error"),
                },
                command = commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => break,
                },
                () = sleep_until(deadline), if deadline.is_some() => {
                    self.transactions.handle_timeout(Instant::now().into_std());
                }
                _ = sweep.tick() => self.sweep_key_routes(),
            }
            self.flush().await;
        }
        self.flush().await;
    }

    fn on_datagram(&mut self, source: SocketAddr, bytes: &[u8]) {
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        if let Some(observer) = &self.observer {
            observer.on_message(false, datagram_method(bytes));
        }
        let now = Instant::now().into_std();
        if let Err(err) = self
            .transactions
            .handle_datagram(now, source, Transport::Udp, bytes)
        {
            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%source, %err, "bad SIP datagram");
        }
    }

    fn on_command(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::Register { call_id, events } => {
                self.routes.insert(call_id, events);
            }
            Command::Unregister { call_id } => {
                self.routes.remove(&call_id);
            }
            Command::Request {
                destination,
                request,
            } => {
                let call_id = call_id_of(&request);
                match self.transactions.send_request(
                    now.into_std(),
                    destination,
                    Transport::Udp,
                    request,
                ) {
                    Ok(key) => {
                        if let Some(call_id) = call_id {
                            self.key_routes.insert(key, (call_id, now));
                        }
                    }
                    Err(err) => tracing::warn!(%err, "cannot send request"),
                }
            }
            Command::Respond { key, response } => {
                if let Err(err) = self
                    .transactions
                    .send_response(now.into_std(), &key, response)
                {
                    tracing::debug!(%err, "cannot send response");
                }
            }
            Command::Stateless {
                destination,
                message,
            } => {
                self.transactions
                    .send_stateless(destination, Transport::Udp, message);
            }
        }
    }

    async fn flush(&mut self) {
        while let Some(transmit) = self.transactions.poll_transmit() {
            self.counters.sent.fetch_add(1, Ordering::Relaxed);
            if let Some(observer) = &self.observer {
                observer.on_message(true, datagram_method(&transmit.payload));
            }
            if let Err(err) = self
                .socket
                .send_to(&transmit.payload, transmit.destination)
                .await
            {
                tracing::debug!(%err, destination = %transmit.destination, "SIP send failed");
            }
        }
        while let Some(event) = self.transactions.poll_event() {
            self.route(event);
        }
    }

    fn route(&mut self, event: Event) {
        let call_id = match &event {
            Event::Request { key, request, .. } => {
                let call_id = call_id_of(request);
                if let Some(call_id) = &call_id {
                    self.key_routes
                        .insert(key.clone(), (call_id.clone(), Instant::now()));
                }
                call_id
            }
            Event::Ack { request, .. } => call_id_of(request),
            Event::Response { response, .. } | Event::StrayResponse { response, .. } => {
                response.call_id_header().ok().map(|h| h.value().to_owned())
            }
            Event::Timeout { key } | Event::AckTimeout { key } => {
                self.key_routes.get(key).map(|(call_id, _)| call_id.clone())
            }
            _ => None,
        };
        let route = call_id.as_ref().and_then(|id| self.routes.get(id));
        let undelivered = match route {
            Some(route) => route.send(event).err().map(|e| e.0),
            None => Some(event),
        };
        if let Some(event) = undelivered {
            let _ = self.incoming.send(event);
        }
    }

    fn sweep_key_routes(&mut self) {
        let now = Instant::now();
        self.key_routes
            .retain(|_, (_, since)| now.duration_since(*since) < KEY_ROUTE_TTL);
    }
}

fn call_id_of(request: &rsip::Request) -> Option<String> {
    request.call_id_header().ok().map(|h| h.value().to_owned())
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
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
