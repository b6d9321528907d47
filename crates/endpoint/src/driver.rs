//! The endpoint task: owns the sockets' driver side and the transaction layer, and routes events.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use rsip::prelude::*;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::Instant;
use voxgate_sip::{Event, TransactionKey, Transactions, Transport};

use crate::tcp::{TcpConnection, TcpEvent, TcpTasks};
use crate::{Command, EdgeGuard, EndpointCounters, MessageObserver, datagram_method};

/// How long a transaction key stays mapped to its Call-ID after its last request or response:
/// longer than any RFC 3261 timer (64 * T1 plus Timer D), so that late timeouts still reach their
/// call. Each response the TU sends renews the mapping, since Timer L (`AckTimeout`) runs from
/// the 2xx, and an INVITE may ring for any length of time before it.
const KEY_ROUTE_TTL: Duration = Duration::from_secs(64);

/// Inputs of one kind handled before flushing, to batch under load.
const BATCH: usize = 64;

pub(crate) struct Driver {
    pub(crate) socket: UdpSocket,
    pub(crate) transactions: Transactions,
    pub(crate) routes: HashMap<String, mpsc::Sender<Event>>,
    /// Client and server transaction keys to the Call-ID they belong to, with the time they were
    /// mapped; `Timeout` and `AckTimeout` carry only a key.
    pub(crate) key_routes: HashMap<TransactionKey, (String, Instant)>,
    pub(crate) incoming: mpsc::Sender<Event>,
    pub(crate) counters: Arc<EndpointCounters>,
    pub(crate) observer: Option<Arc<dyn MessageObserver>>,
    pub(crate) guard: Option<Arc<dyn EdgeGuard>>,
    pub(crate) tcp: TcpTasks,
    pub(crate) tcp_events: mpsc::Receiver<TcpEvent>,
    /// Open (or opening) TCP connections by peer address; at most one per peer is used.
    pub(crate) connections: HashMap<SocketAddr, TcpConnection>,
}

impl Driver {
    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut buf = vec![0u8; 65_536];
        let mut sweep = tokio::time::interval(Duration::from_secs(5));
        loop {
            let deadline = self.transactions.poll_timeout().map(Instant::from_std);
            tokio::select! {
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((len, source)) => {
                        self.on_message(source, Transport::Udp, &buf[..len]);
                        for _ in 0..BATCH {
                            match self.socket.try_recv_from(&mut buf) {
                                Ok((len, source)) => {
                                    self.on_message(source, Transport::Udp, &buf[..len]);
                                }
                                Err(_) => break,
                            }
                        }
                    }
                    Err(err) => tracing::debug!(%err, "SIP socket receive error"),
                },
                // Never `None`: `self.tcp` holds a sender.
                Some(event) = self.tcp_events.recv() => {
                    self.on_tcp_event(event);
                    for _ in 0..BATCH {
                        match self.tcp_events.try_recv() {
                            Ok(event) => self.on_tcp_event(event),
                            Err(_) => break,
                        }
                    }
                }
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

    fn on_message(&mut self, source: SocketAddr, transport: Transport, bytes: &[u8]) {
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        if let Some(observer) = &self.observer {
            observer.on_message(false, datagram_method(bytes));
        }
        if let Some(guard) = &self.guard
            && !guard.admit(source, bytes)
        {
            return;
        }
        let now = Instant::now().into_std();
        if let Err(err) = self
            .transactions
            .handle_datagram(now, source, transport, bytes)
        {
            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%source, ?transport, %err, "bad SIP message");
        }
    }

    fn on_tcp_event(&mut self, event: TcpEvent) {
        match event {
            TcpEvent::Opened { peer, connection } => {
                self.connections.insert(peer, connection);
            }
            TcpEvent::Message { peer, bytes } => self.on_message(peer, Transport::Tcp, &bytes),
            TcpEvent::Closed { id, peer } => {
                if self.connections.get(&peer).is_some_and(|c| c.id == id) {
                    self.connections.remove(&peer);
                }
            }
        }
    }

    /// The connection reuse rule: TCP when a connection to `destination` is open (or opening),
    /// else UDP.
    fn transport_to(&self, destination: SocketAddr) -> Transport {
        if self.connections.contains_key(&destination) {
            Transport::Tcp
        } else {
            Transport::Udp
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
                transport,
                request,
            } => {
                let call_id = call_id_of(&request);
                let transport = transport.unwrap_or_else(|| self.transport_to(destination));
                match self.transactions.send_request(
                    now.into_std(),
                    destination,
                    transport,
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
                if let Some((_, since)) = self.key_routes.get_mut(&key) {
                    *since = now;
                }
                if let Err(err) = self
                    .transactions
                    .send_response(now.into_std(), &key, response)
                {
                    tracing::debug!(%err, "cannot send response");
                }
            }
            Command::Stateless {
                destination,
                transport,
                message,
            } => {
                let transport = transport.unwrap_or_else(|| self.transport_to(destination));
                self.transactions
                    .send_stateless(destination, transport, message);
            }
        }
    }

    async fn flush(&mut self) {
        while let Some(transmit) = self.transactions.poll_transmit() {
            self.counters.sent.fetch_add(1, Ordering::Relaxed);
            if let Some(observer) = &self.observer {
                observer.on_message(true, datagram_method(&transmit.payload));
            }
            match transmit.transport {
                Transport::Udp => {
                    if let Err(err) = self
                        .socket
                        .send_to(&transmit.payload, transmit.destination)
                        .await
                    {
                        tracing::debug!(%err, destination = %transmit.destination, "SIP send failed");
                    }
                }
                Transport::Tcp => self.send_tcp(transmit.destination, transmit.payload),
            }
        }
        while let Some(event) = self.transactions.poll_event() {
            self.route(event);
        }
    }

    /// Queues `payload` on the connection to `destination`, connecting first when there is none.
    fn send_tcp(&mut self, destination: SocketAddr, payload: Bytes) {
        let payload = match self.connections.get(&destination) {
            Some(connection) => match connection.queue.try_send(payload) {
                Ok(()) => return,
                Err(TrySendError::Full(_)) => {
                    // Dropping the queue closes the connection once its task gets to it.
                    self.connections.remove(&destination);
                    self.counters.tcp_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%destination, "SIP TCP peer does not read; disconnecting");
                    return;
                }
                // The task ended and its `Closed` is still on the way.
                Err(TrySendError::Closed(payload)) => payload,
            },
            None => payload,
        };
        let connection = self.tcp.connect(destination);
        if connection.queue.try_send(payload).is_err() {
            tracing::debug!(%destination, "SIP TCP queue of a new connection refused a message");
        }
        self.connections.insert(destination, connection);
    }

    fn route(&mut self, event: Event) {
        if let Event::Request { key, request, .. } = &event
            && let Some(call_id) = voxgate_sip::message::call_id(request)
        {
            // Only requests open server transactions that may later time out by key alone.
            self.key_routes
                .insert(key.clone(), (call_id.to_owned(), Instant::now()));
        }
        let call_id = match &event {
            Event::Request { request, .. } | Event::Ack { request, .. } => {
                voxgate_sip::message::call_id(request)
            }
            Event::Response { response, .. } | Event::StrayResponse { response, .. } => {
                voxgate_sip::message::call_id(response)
            }
            Event::Timeout { key } | Event::AckTimeout { key } => self
                .key_routes
                .get(key)
                .map(|(call_id, _)| call_id.as_str()),
            _ => None,
        };
        let route = call_id.and_then(|id| self.routes.get(id));
        let undelivered = match route {
            Some(route) => match route.try_send(event) {
                Ok(()) => None,
                Err(TrySendError::Full(_)) => {
                    self.counters.shed.fetch_add(1, Ordering::Relaxed);
                    None
                }
                Err(TrySendError::Closed(event)) => Some(event),
            },
            None => Some(event),
        };
        if let Some(event) = undelivered
            && let Err(TrySendError::Full(_)) = self.incoming.try_send(event)
        {
            self.counters.shed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn sweep_key_routes(&mut self) {
        // Routes whose task is gone (an unregister shed from a full queue).
        self.routes.retain(|_, route| !route.is_closed());
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
