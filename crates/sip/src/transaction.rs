//! The RFC 3261 section 17 transaction layer, with RFC 6026's Accepted states, sans-I/O.
//!
//! [`Transactions`] owns every client and server transaction of one endpoint. Inputs take `now`;
//! outputs are drained with [`Transactions::poll_transmit`], [`Transactions::poll_event`] and
//! [`Transactions::poll_timeout`] after every input, like quinn-proto's `Connection`.
//!
//! Decisions the RFC leaves open:
//! - A new INVITE is answered with `100 Trying` at once (turn off with
//!   [`Transactions::set_auto_trying`]), since the B2BUA above always takes longer than 200 ms.
//! - The server INVITE transaction retransmits its 2xx itself over UDP (RFC 3261 puts this in the
//!   TU core, 13.3.1.4) until the ACK arrives; the ACK (new branch) is matched on Call-ID, CSeq
//!   number and From tag and still reported as [`Event::Ack`].
//! - Timer H expiry (no ACK for a non-2xx) just ends the transaction; there is nothing left for
//!   the TU to do.
//! - Requests without a branch (RFC 2543) are refused with [`TransactionError::NoBranch`].

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rsip::headers::UntypedHeader;
use rsip::{Header, Method, SipMessage};

use crate::message::{self, ParseError};
use crate::timer::TimerConfig;

/// How a message travels; decides whether the layer retransmits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Unreliable: retransmission timers run, Timers D/I/J/K wait.
    Udp,
    /// Reliable: no retransmissions, Timers D/I/J/K are zero.
    Tcp,
}

impl Transport {
    /// True for transports that deliver reliably (no retransmission needed).
    pub fn is_reliable(self) -> bool {
        matches!(self, Self::Tcp)
    }
}

/// Which side of a transaction this endpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// We sent the request.
    Client,
    /// We received the request.
    Server,
}

/// Identifies a transaction (RFC 3261 17.1.3 and 17.2.3).
///
/// Client keys are branch + CSeq method; server keys are branch + Via sent-by + method, with ACK
/// mapped to INVITE so an ACK for a non-2xx finds its INVITE. CANCEL has its own key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TransactionKey {
    role: Role,
    /// The branch followed by the lower-cased sent-by (empty for client keys), in one
    /// allocation shared by every clone; `split` is where the branch ends.
    text: Arc<str>,
    split: usize,
    method: &'static str,
}

impl TransactionKey {
    fn client(branch: &str, method: &Method) -> Self {
        Self {
            role: Role::Client,
            text: Arc::from(branch),
            split: branch.len(),
            method: method_name(method),
        }
    }

    fn server(branch: &str, sent_by: &str, method: &Method) -> Self {
        let method = if *method == Method::Ack {
            &Method::Invite
        } else {
            method
        };
        let text: Arc<str> = if sent_by.bytes().any(|b| b.is_ascii_uppercase()) {
            let mut text = String::with_capacity(branch.len() + sent_by.len());
            text.push_str(branch);
            text.extend(sent_by.chars().map(|c| c.to_ascii_lowercase()));
            Arc::from(text)
        } else {
            let mut buf = [0u8; 128];
            let len = branch.len() + sent_by.len();
            match buf.get_mut(..len) {
                Some(out) => {
                    out[..branch.len()].copy_from_slice(branch.as_bytes());
                    out[branch.len()..].copy_from_slice(sent_by.as_bytes());
                    // Two whole `&str`s back to back: valid UTF-8.
                    Arc::from(std::str::from_utf8(out).unwrap_or_default())
                }
                None => Arc::from([branch, sent_by].concat()),
            }
        };
        Self {
            role: Role::Server,
            text,
            split: branch.len(),
            method: method_name(method),
        }
    }

    /// Client or server side.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The top Via branch of the request.
    pub fn branch(&self) -> &str {
        &self.text[..self.split]
    }

    /// The request method, upper case (`INVITE`, `BYE`, ...).
    pub fn method(&self) -> &'static str {
        self.method
    }

    /// True for INVITE transactions.
    pub fn is_invite(&self) -> bool {
        self.method == "INVITE"
    }
}

/// A datagram (or TCP message) to send.
#[derive(Debug, Clone)]
pub struct Transmit {
    /// Where to send it.
    pub destination: SocketAddr,
    /// Over which transport.
    pub transport: Transport,
    /// The serialized SIP message.
    pub payload: Bytes,
}

/// What the transaction user (dialog layer, B2BUA) must act on.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// A new request opened a server transaction (INVITE, BYE, OPTIONS, CANCEL, ...). The TU
    /// must answer it with [`Transactions::send_response`].
    Request {
        /// The server transaction to answer on.
        key: TransactionKey,
        /// Where the request came from; responses go back there.
        source: SocketAddr,
        /// The transport it came over.
        transport: Transport,
        /// The request.
        request: rsip::Request,
    },
    /// An ACK for a 2xx (outside any transaction; the dialog layer consumes it), or an ACK
    /// matching nothing. It also stops the server's 2xx retransmissions.
    Ack {
        /// Where the ACK came from.
        source: SocketAddr,
        /// The ACK.
        request: rsip::Request,
    },
    /// A response for a client transaction: provisional or final, and 2xx retransmissions of an
    /// INVITE (so the UAC re-sends its ACK).
    Response {
        /// The client transaction.
        key: TransactionKey,
        /// The response.
        response: rsip::Response,
    },
    /// A client transaction timed out (Timer B or F): act as if 408 arrived.
    Timeout {
        /// The client transaction.
        key: TransactionKey,
    },
    /// A server INVITE transaction sent a 2xx but no ACK came within 64*T1 (RFC 6026 Timer L):
    /// the TU should send BYE.
    AckTimeout {
        /// The server transaction.
        key: TransactionKey,
    },
    /// A response matching no transaction (e.g. a late 2xx retransmission).
    StrayResponse {
        /// Where it came from.
        source: SocketAddr,
        /// The response.
        response: rsip::Response,
    },
}

/// Why the transaction layer refused an input.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum TransactionError {
    /// The bytes did not parse or validate; an error response was queued when answerable.
    #[error("invalid message: {0}")]
    Parse(#[from] ParseError),
    /// No live transaction has this key (it ended, or never existed).
    #[error("no such transaction")]
    UnknownTransaction,
    /// The request's top Via has no branch, or (for requests we send) one without the RFC 3261
    /// magic cookie.
    #[error("top Via has no RFC 3261 branch")]
    NoBranch,
    /// The request cannot start or match a transaction (the reason says why).
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
    /// The response cannot be sent on this transaction (the reason says why).
    #[error("invalid response: {0}")]
    InvalidResponse(&'static str),
    /// A client transaction with this branch and method is already live.
    #[error("a transaction with this key already exists")]
    DuplicateTransaction,
    /// The server transaction already sent its final response.
    #[error("the transaction already sent a final response")]
    AlreadyFinal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    InviteClient,
    NonInviteClient,
    InviteServer,
    NonInviteServer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Calling,
    Trying,
    Proceeding,
    Completed,
    Accepted,
    Confirmed,
}

/// What an ACK for a 2xx carries that identifies its INVITE: Call-ID, CSeq number, From tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct AckId {
    call_id: String,
    cseq: u32,
    from_tag: String,
}

impl AckId {
    fn of<M: rsip::message::HasHeaders>(msg: &M) -> Option<Self> {
        Some(Self {
            call_id: message::call_id(msg)?.to_string(),
            cseq: message::cseq(msg)?.0,
            from_tag: message::from_tag(msg).unwrap_or_default(),
        })
    }
}

#[derive(Debug)]
struct Transaction {
    key: TransactionKey,
    kind: Kind,
    state: State,
    peer: SocketAddr,
    transport: Transport,
    /// Client: the request. Server: the last response sent.
    last_sent: Option<Bytes>,
    /// INVITE client: the request, to build the ACK for a non-2xx.
    invite: Option<Box<rsip::Request>>,
    /// INVITE client: the ACK sent for the non-2xx final response.
    ack: Option<Bytes>,
    interval: Duration,
    retransmit_at: Option<Instant>,
    expire_at: Option<Instant>,
    /// INVITE server in Accepted: the key of `Transactions::by_ack`.
    ack_id: Option<AckId>,
    acked: bool,
    /// The deadline this transaction currently has in `Transactions::deadlines`.
    scheduled: Option<Instant>,
}

impl Transaction {
    fn deadline(&self) -> Option<Instant> {
        match (self.retransmit_at, self.expire_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The live transactions, by id: a slot vector with a free list, so a lookup is an index and a
/// growing table rehashes nothing. An id is an insertion counter (high 32 bits) over the slot
/// (low 32 bits), so ids still order by creation (ties in `Transactions::deadlines` fire in that
/// order) and a reused slot never answers to an old id.
#[derive(Debug, Default)]
struct Slab {
    slots: Vec<Option<(u64, Transaction)>>,
    free: Vec<u32>,
    inserted: u64,
    len: usize,
}

impl Slab {
    fn get(&self, id: u64) -> Option<&Transaction> {
        match self.slots.get(id as u32 as usize)? {
            Some((slot_id, t)) if *slot_id == id => Some(t),
            _ => None,
        }
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut Transaction> {
        match self.slots.get_mut(id as u32 as usize)? {
            Some((slot_id, t)) if *slot_id == id => Some(t),
            _ => None,
        }
    }

    fn insert(&mut self, transaction: Transaction) -> u64 {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                let slot = u32::try_from(self.slots.len()).expect("fewer than 2^32 transactions");
                self.slots.push(None);
                slot
            }
        };
        let id = (self.inserted << 32) | u64::from(slot);
        self.inserted = self.inserted.wrapping_add(1) & u64::from(u32::MAX);
        self.slots[slot as usize] = Some((id, transaction));
        self.len += 1;
        id
    }

    fn remove(&mut self, id: u64) -> Option<Transaction> {
        let slot = id as u32;
        let entry = self.slots.get_mut(slot as usize)?;
        if !matches!(entry, Some((slot_id, _)) if *slot_id == id) {
            return None;
        }
        let (_, t) = entry.take()?;
        self.len -= 1;
        self.free.push(slot);
        Some(t)
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Every client and server transaction of one endpoint.
#[derive(Debug)]
pub struct Transactions {
    config: TimerConfig,
    auto_trying: bool,
    transactions: Slab,
    by_key: HashMap<TransactionKey, u64>,
    by_ack: HashMap<AckId, u64>,
    deadlines: BTreeSet<(Instant, u64)>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
}

impl Transactions {
    /// An empty transaction layer with these timers; sends `100 Trying` for new INVITEs.
    pub fn new(config: TimerConfig) -> Self {
        Self {
            config,
            auto_trying: true,
            transactions: Slab::default(),
            by_key: HashMap::new(),
            by_ack: HashMap::new(),
            deadlines: BTreeSet::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Whether a new INVITE server transaction answers `100 Trying` by itself (default: on).
    pub fn set_auto_trying(&mut self, on: bool) {
        self.auto_trying = on;
    }

    /// The timers in use.
    pub fn config(&self) -> TimerConfig {
        self.config
    }

    /// Bytes from the network: parse and validate, then [`Self::handle_message`]. On an
    /// answerable bad request, queues the error response to `source` and returns the error.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        transport: Transport,
        bytes: &[u8],
    ) -> Result<(), TransactionError> {
        let parsed = message::frame(bytes).and_then(|framed| {
            // Fast path: a request other than ACK finds its server transaction without building
            // rsip types; a retransmission is answered at once, and a new INVITE gets its
            // 100 Trying straight from the framed header lines.
            let mut prepared = None;
            if let Some((method, branch, sent_by)) = framed.request_key()
                && method != Method::Ack
                && !branch.is_empty()
            {
                let key = TransactionKey::server(branch, sent_by, &method);
                if let Some(&id) = self.by_key.get(&key) {
                    return Ok(Err(id));
                }
                let trying = (method == Method::Invite && self.auto_trying)
                    .then(|| framed.trying_response());
                prepared = Some((key, trying));
            }
            message::build(framed).map(|msg| Ok((msg, prepared)))
        });
        match parsed {
            Ok(Ok((SipMessage::Request(request), Some((key, trying))))) => {
                self.open_server(source, transport, request, key, trying);
                Ok(())
            }
            Ok(Ok((msg, _))) => self.handle_message(now, source, transport, msg),
            Ok(Err(id)) => {
                self.repeat_last_response(id);
                Ok(())
            }
            Err(err) => {
                if let Some(payload) = message::error_response(bytes, &err) {
                    self.transmits.push_back(Transmit {
                        destination: source,
                        transport,
                        payload,
                    });
                }
                Err(err.into())
            }
        }
    }

    /// A parsed message from the network.
    pub fn handle_message(
        &mut self,
        now: Instant,
        source: SocketAddr,
        transport: Transport,
        msg: SipMessage,
    ) -> Result<(), TransactionError> {
        match msg {
            SipMessage::Request(request) => self.handle_request(now, source, transport, request),
            SipMessage::Response(response) => self.handle_response(now, source, response),
        }
    }

    /// Starts a client transaction and queues the first transmission. The request must carry a
    /// top Via with a `z9hG4bK` branch and a CSeq naming its method; ACK is not a transaction
    /// (send it with [`Self::send_stateless`]).
    pub fn send_request(
        &mut self,
        now: Instant,
        destination: SocketAddr,
        transport: Transport,
        request: rsip::Request,
    ) -> Result<TransactionKey, TransactionError> {
        if request.method == Method::Ack {
            return Err(TransactionError::InvalidRequest(
                "ACK is not a transaction; use send_stateless",
            ));
        }
        let branch = message::top_branch(&request).ok_or(TransactionError::NoBranch)?;
        if !branch.starts_with(message::BRANCH_MAGIC) {
            return Err(TransactionError::NoBranch);
        }
        match message::cseq(&request) {
            Some((_, method)) if method == request.method => {}
            _ => {
                return Err(TransactionError::InvalidRequest(
                    "CSeq missing or not matching the method",
                ));
            }
        }
        let key = TransactionKey::client(&branch, &request.method);
        if self.by_key.contains_key(&key) {
            return Err(TransactionError::DuplicateTransaction);
        }
        let payload = message::encode_request(&request);
        self.transmit(destination, transport, payload.clone());
        let invite = request.method == Method::Invite;
        let t1 = self.config.t1;
        let transaction = Transaction {
            key: key.clone(),
            kind: if invite {
                Kind::InviteClient
            } else {
                Kind::NonInviteClient
            },
            state: if invite {
                State::Calling
            } else {
                State::Trying
            },
            peer: destination,
            transport,
            last_sent: Some(payload),
            invite: invite.then(|| Box::new(request)),
            ack: None,
            interval: t1,
            retransmit_at: (!transport.is_reliable())
                .then(|| now.checked_add(t1))
                .flatten(),
            expire_at: now.checked_add(self.config.transaction_timeout()),
            ack_id: None,
            acked: false,
            scheduled: None,
        };
        self.insert(transaction);
        Ok(key)
    }

    /// Answers a server transaction; the response goes to the request's source address
    /// (rport-style, the Via host is ignored).
    pub fn send_response(
        &mut self,
        now: Instant,
        key: &TransactionKey,
        response: rsip::Response,
    ) -> Result<(), TransactionError> {
        let id = *self
            .by_key
            .get(key)
            .filter(|_| key.role == Role::Server)
            .ok_or(TransactionError::UnknownTransaction)?;
        let code = response.status_code.code();
        if !(100..=699).contains(&code) {
            return Err(TransactionError::InvalidResponse(
                "status code outside 100..=699",
            ));
        }
        let config = self.config;
        let Some(t) = self.transactions.get_mut(id) else {
            return Err(TransactionError::UnknownTransaction);
        };
        let reliable = t.transport.is_reliable();
        let payload = message::encode_response(&response);
        let mut terminate = false;
        let mut ack_id = None;
        match (t.kind, t.state, code) {
            (Kind::InviteServer, State::Proceeding, 100..=199) => {}
            (Kind::InviteServer, State::Proceeding, 200..=299) => {
                t.state = State::Accepted;
                t.interval = config.t1;
                t.retransmit_at = (!reliable).then(|| now.checked_add(config.t1)).flatten();
                t.expire_at = now.checked_add(config.transaction_timeout());
                ack_id = AckId::of(&response);
                t.ack_id = ack_id.clone();
            }
            // RFC 6026 lets further 2xx (forked) through in Accepted.
            (Kind::InviteServer, State::Accepted, 200..=299) => {}
            (Kind::InviteServer, State::Proceeding, _) => {
                t.state = State::Completed;
                t.interval = config.t1;
                t.retransmit_at = (!reliable).then(|| now.checked_add(config.t1)).flatten();
                t.expire_at = now.checked_add(config.transaction_timeout());
            }
            (Kind::NonInviteServer, State::Trying | State::Proceeding, 100..=199) => {
                t.state = State::Proceeding;
            }
            (Kind::NonInviteServer, State::Trying | State::Proceeding, _) => {
                t.state = State::Completed;
                let j = config.timer_j(reliable);
                terminate = j.is_zero();
                t.expire_at = now.checked_add(j);
            }
            (Kind::InviteServer | Kind::NonInviteServer, _, _) => {
                return Err(TransactionError::AlreadyFinal);
            }
            (Kind::InviteClient | Kind::NonInviteClient, _, _) => {
                return Err(TransactionError::UnknownTransaction);
            }
        }
        t.last_sent = Some(payload.clone());
        let (peer, transport) = (t.peer, t.transport);
        self.transmit(peer, transport, payload);
        if let Some(ack_id) = ack_id {
            self.by_ack.insert(ack_id, id);
        }
        if terminate {
            self.remove(id);
        } else {
            self.reschedule(id);
        }
        Ok(())
    }

    /// Sends a message outside any transaction (the UAC's ACK for a 2xx, stateless replies).
    pub fn send_stateless(
        &mut self,
        destination: SocketAddr,
        transport: Transport,
        msg: SipMessage,
    ) {
        self.transmit(destination, transport, message::to_bytes(&msg));
    }

    /// For a CANCEL: the INVITE server transaction it cancels (RFC 3261 17.2.3 matching), if it
    /// is live and has not sent a final response, so the TU can answer 487 to the INVITE.
    pub fn cancelled_invite(&self, cancel: &rsip::Request) -> Option<TransactionKey> {
        let via = message::top_via_parts(cancel)?;
        let fallback;
        let branch = match via.branch.filter(|b| !b.is_empty()) {
            Some(branch) => branch,
            None => {
                fallback = message::rfc2543_branch(cancel);
                fallback.as_str()
            }
        };
        let key = TransactionKey::server(branch, via.sent_by, &Method::Invite);
        let id = self.by_key.get(&key)?;
        let t = self.transactions.get(*id)?;
        (t.kind == Kind::InviteServer && t.state == State::Proceeding).then_some(key)
    }

    /// Fires every timer due at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            if let Some(t) = self.transactions.get_mut(id) {
                t.scheduled = None;
            }
            self.fire(now, id);
        }
    }

    /// The earliest deadline over all transactions; call [`Self::handle_timeout`] then.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(at, _)| at)
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for the transaction user.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Live transactions (client and server).
    pub fn len(&self) -> usize {
        self.transactions.len()
    }

    /// True when no transaction is live.
    pub fn is_empty(&self) -> bool {
        self.transactions.is_empty()
    }

    fn handle_request(
        &mut self,
        now: Instant,
        source: SocketAddr,
        transport: Transport,
        request: rsip::Request,
    ) -> Result<(), TransactionError> {
        let via = message::top_via_parts(&request).ok_or(TransactionError::InvalidRequest(
            "missing or invalid top Via",
        ))?;
        // No branch: an RFC 2543 client, matched by the RFC 3261 17.2.3 fallback.
        let fallback;
        let branch = match via.branch.filter(|b| !b.is_empty()) {
            Some(branch) => branch,
            None => {
                fallback = message::rfc2543_branch(&request);
                fallback.as_str()
            }
        };
        let key = TransactionKey::server(branch, via.sent_by, &request.method);
        if request.method == Method::Ack {
            return self.handle_ack(now, source, key, request);
        }
        if let Some(&id) = self.by_key.get(&key) {
            self.repeat_last_response(id);
            return Ok(());
        }
        let trying = (request.method == Method::Invite && self.auto_trying)
            .then(|| message::encode_response(&message::response_for(&request, 100, None)));
        self.open_server(source, transport, request, key, trying);
        Ok(())
    }

    /// Opens the server transaction `key` for a new request (not ACK, no live transaction with
    /// this key), sends `trying` (the automatic 100 Trying of a new INVITE) and reports the
    /// request to the TU.
    fn open_server(
        &mut self,
        source: SocketAddr,
        transport: Transport,
        request: rsip::Request,
        key: TransactionKey,
        trying: Option<Bytes>,
    ) {
        let invite = request.method == Method::Invite;
        if let Some(payload) = &trying {
            self.transmit(source, transport, payload.clone());
        }
        self.insert(Transaction {
            key: key.clone(),
            kind: if invite {
                Kind::InviteServer
            } else {
                Kind::NonInviteServer
            },
            state: if invite {
                State::Proceeding
            } else {
                State::Trying
            },
            peer: source,
            transport,
            last_sent: trying,
            invite: None,
            ack: None,
            interval: self.config.t1,
            retransmit_at: None,
            expire_at: None,
            ack_id: None,
            acked: false,
            scheduled: None,
        });
        self.events.push_back(Event::Request {
            key,
            source,
            transport,
            request,
        });
    }

    fn handle_ack(
        &mut self,
        now: Instant,
        source: SocketAddr,
        key: TransactionKey,
        request: rsip::Request,
    ) -> Result<(), TransactionError> {
        let config = self.config;
        let mut accepted = None;
        if let Some(&id) = self.by_key.get(&key)
            && let Some(t) = self.transactions.get_mut(id)
        {
            {
                match t.state {
                    State::Completed => {
                        // ACK for our non-2xx: absorb it, Timer I soaks up retransmissions.
                        t.state = State::Confirmed;
                        t.retransmit_at = None;
                        let i = config.timer_i_k(t.transport.is_reliable());
                        t.expire_at = now.checked_add(i);
                        if i.is_zero() {
                            self.remove(id);
                        } else {
                            self.reschedule(id);
                        }
                        return Ok(());
                    }
                    State::Confirmed => return Ok(()),
                    // Some UAs reuse the INVITE's branch for the 2xx ACK.
                    State::Accepted => accepted = Some(id),
                    _ => {}
                }
            }
        }
        let accepted = accepted.or_else(|| {
            let ack_id = AckId::of(&request)?;
            self.by_ack.get(&ack_id).copied()
        });
        if let Some(id) = accepted {
            if let Some(t) = self.transactions.get_mut(id) {
                t.acked = true;
                t.retransmit_at = None;
            }
            self.reschedule(id);
        }
        self.events.push_back(Event::Ack { source, request });
        Ok(())
    }

    fn handle_response(
        &mut self,
        now: Instant,
        source: SocketAddr,
        response: rsip::Response,
    ) -> Result<(), TransactionError> {
        let key = match (message::top_branch(&response), message::cseq(&response)) {
            (Some(branch), Some((_, method))) => TransactionKey::client(&branch, &method),
            _ => {
                self.events
                    .push_back(Event::StrayResponse { source, response });
                return Ok(());
            }
        };
        let Some(&id) = self.by_key.get(&key) else {
            self.events
                .push_back(Event::StrayResponse { source, response });
            return Ok(());
        };
        let code = response.status_code.code();
        if !(100..=699).contains(&code) {
            return Err(TransactionError::InvalidResponse(
                "status code outside 100..=699",
            ));
        }
        let config = self.config;
        let Some(t) = self.transactions.get_mut(id) else {
            return Ok(());
        };
        let reliable = t.transport.is_reliable();
        let mut pass_up = true;
        let mut terminate = false;
        match (t.kind, t.state, code) {
            (Kind::InviteClient, State::Calling | State::Proceeding, 100..=199) => {
                t.state = State::Proceeding;
                t.retransmit_at = None;
                t.expire_at = None;
            }
            (Kind::InviteClient, State::Calling | State::Proceeding, 200..=299) => {
                t.state = State::Accepted;
                t.retransmit_at = None;
                t.expire_at = now.checked_add(config.transaction_timeout());
            }
            (Kind::InviteClient, State::Calling | State::Proceeding, _) => {
                let ack = t
                    .invite
                    .as_deref()
                    .map(|invite| message::encode_request(&ack_for(invite, &response)));
                if let Some(ack) = ack.clone() {
                    self.transmits.push_back(Transmit {
                        destination: t.peer,
                        transport: t.transport,
                        payload: ack,
                    });
                }
                t.ack = ack;
                t.invite = None;
                t.state = State::Completed;
                t.retransmit_at = None;
                let d = config.timer_d(reliable);
                terminate = d.is_zero();
                t.expire_at = now.checked_add(d);
            }
            (Kind::InviteClient, State::Completed, 300..=699) => {
                // A retransmitted final: repeat the ACK (17.1.1.2).
                if let Some(ack) = t.ack.clone() {
                    self.transmits.push_back(Transmit {
                        destination: t.peer,
                        transport: t.transport,
                        payload: ack,
                    });
                }
                pass_up = false;
            }
            (Kind::InviteClient, State::Accepted, 200..=299) => {}
            (Kind::NonInviteClient, State::Trying | State::Proceeding, 100..=199) => {
                t.state = State::Proceeding;
            }
            (Kind::NonInviteClient, State::Trying | State::Proceeding, _) => {
                t.state = State::Completed;
                t.retransmit_at = None;
                let k = config.timer_i_k(reliable);
                terminate = k.is_zero();
                t.expire_at = now.checked_add(k);
            }
            _ => pass_up = false,
        }
        if pass_up {
            self.events.push_back(Event::Response { key, response });
        }
        if terminate {
            self.remove(id);
        } else {
            self.reschedule(id);
        }
        Ok(())
    }

    /// Runs the timers of transaction `id` that are due.
    fn fire(&mut self, now: Instant, id: u64) {
        let config = self.config;
        let Some(t) = self.transactions.get_mut(id) else {
            return;
        };
        if t.expire_at.is_some_and(|at| at <= now) {
            let event = match (t.kind, t.state) {
                // Timer B, F.
                (Kind::InviteClient, State::Calling)
                | (Kind::NonInviteClient, State::Trying | State::Proceeding) => {
                    Some(Event::Timeout { key: t.key.clone() })
                }
                // Timer L without an ACK.
                (Kind::InviteServer, State::Accepted) if !t.acked => {
                    Some(Event::AckTimeout { key: t.key.clone() })
                }
                // Timers D, M, K, H, I, J and L after the ACK: just end.
                _ => None,
            };
            self.events.extend(event);
            self.remove(id);
            return;
        }
        if t.retransmit_at.is_some_and(|at| at <= now) {
            if let Some(payload) = t.last_sent.clone() {
                self.transmits.push_back(Transmit {
                    destination: t.peer,
                    transport: t.transport,
                    payload,
                });
            }
            t.interval = match (t.kind, t.state) {
                // Timer A doubles without a cap.
                (Kind::InviteClient, _) => t.interval.saturating_mul(2),
                // Timer E in Proceeding: T2.
                (Kind::NonInviteClient, State::Proceeding) => config.t2,
                // Timers E, G and the 2xx retransmission: doubling, capped at T2.
                _ => t.interval.saturating_mul(2).min(config.t2),
            };
            t.retransmit_at = now.checked_add(t.interval);
        }
        self.reschedule(id);
    }

    /// A retransmitted request: repeat the last response, if any (17.2.1, 17.2.2).
    fn repeat_last_response(&mut self, id: u64) {
        if let Some(t) = self.transactions.get(id)
            && t.state != State::Confirmed
            && let Some(payload) = t.last_sent.clone()
        {
            let (peer, transport) = (t.peer, t.transport);
            self.transmit(peer, transport, payload);
        }
    }

    fn transmit(&mut self, destination: SocketAddr, transport: Transport, payload: Bytes) {
        self.transmits.push_back(Transmit {
            destination,
            transport,
            payload,
        });
    }

    fn insert(&mut self, transaction: Transaction) {
        let key = transaction.key.clone();
        let id = self.transactions.insert(transaction);
        self.by_key.insert(key, id);
        self.reschedule(id);
    }

    /// Puts transaction `id`'s earliest timer in `deadlines`, replacing its previous entry.
    fn reschedule(&mut self, id: u64) {
        let Some(t) = self.transactions.get_mut(id) else {
            return;
        };
        let next = t.deadline();
        if t.scheduled == next {
            return;
        }
        if let Some(old) = t.scheduled.take() {
            self.deadlines.remove(&(old, id));
        }
        if let Some(next) = next {
            self.deadlines.insert((next, id));
            t.scheduled = Some(next);
        }
    }

    fn remove(&mut self, id: u64) {
        let Some(t) = self.transactions.remove(id) else {
            return;
        };
        self.by_key.remove(&t.key);
        if let Some(ack_id) = &t.ack_id
            && self.by_ack.get(ack_id) == Some(&id)
        {
            self.by_ack.remove(ack_id);
        }
        if let Some(at) = t.scheduled {
            self.deadlines.remove(&(at, id));
        }
    }
}

/// The ACK for a non-2xx final response (RFC 3261 17.1.1.3): Request-URI, top Via, From,
/// Call-ID, Route and the CSeq number of the INVITE, To from the response, method ACK.
fn ack_for(invite: &rsip::Request, response: &rsip::Response) -> rsip::Request {
    let mut headers = rsip::Headers::default();
    let mut via_done = false;
    let to = response.headers.iter().find(|h| matches!(h, Header::To(_)));
    for header in invite.headers.iter() {
        match header {
            Header::Via(_) if !via_done => {
                via_done = true;
                headers.push(header.clone());
            }
            Header::MaxForwards(_) | Header::From(_) | Header::CallId(_) | Header::Route(_) => {
                headers.push(header.clone())
            }
            Header::To(_) => headers.push(to.unwrap_or(header).clone()),
            Header::CSeq(cseq) => {
                let seq = cseq.seq().unwrap_or_default();
                headers.push(Header::CSeq(rsip::headers::CSeq::new(format!("{seq} ACK"))));
            }
            _ => {}
        }
    }
    headers.push(Header::ContentLength(0.into()));
    rsip::Request {
        method: Method::Ack,
        uri: invite.uri.clone(),
        version: rsip::Version::V2,
        headers,
        body: Vec::new(),
    }
}

fn method_name(method: &Method) -> &'static str {
    message::method_name(method)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_key_maps_to_invite() {
        let ack = TransactionKey::server("z9hG4bKx", "Host:5060", &Method::Ack);
        let invite = TransactionKey::server("z9hG4bKx", "host:5060", &Method::Invite);
        assert_eq!(ack, invite);
        assert_ne!(invite, TransactionKey::client("z9hG4bKx", &Method::Invite));
        assert!(invite.is_invite());
    }

    #[test]
    fn rfc2543_requests_without_branch_match_by_17_2_3() {
        let invite = "INVITE sip:b@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1\r\n\
            From: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.com>\r\nCall-ID: c2543\r\n\
            CSeq: 5 INVITE\r\nContent-Length: 0\r\n\r\n";
        let source: SocketAddr = "192.0.2.1:5060".parse().unwrap();
        // A fixed origin: only the ordering of events matters here, no timer fires.
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        let mut t = Transactions::new(TimerConfig::default());
        for _ in 0..2 {
            t.handle_datagram(now, source, Transport::Udp, invite.as_bytes())
                .unwrap();
        }
        // One request for the TU, the retransmission absorbed (its 100 Trying resent).
        let mut requests = 0;
        while let Some(event) = t.poll_event() {
            requests += usize::from(matches!(event, Event::Request { .. }));
        }
        assert_eq!(requests, 1);
        assert_eq!(t.len(), 1);
        let cancel = invite.replace("INVITE", "CANCEL");
        let Ok(SipMessage::Request(cancel)) = message::parse(cancel.as_bytes()) else {
            panic!("CANCEL does not parse");
        };
        assert!(t.cancelled_invite(&cancel).is_some());
    }
}
