//! Deterministic test harness: a client and a server `Transactions` over a simulated link.
//!
//! Like quinn-proto's `tests/util.rs` `Pair`: packets get a seeded loss and a fixed delay, and
//! time jumps straight to the next deadline (packet arrival or timer), so 32 s of RFC 3261
//! timers run in microseconds.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use voxgate_sip::{Event, TimerConfig, Transactions, Transmit, Transport};

/// Which endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

/// One endpoint: its transaction layer, the events it produced and everything it sent.
#[derive(Debug)]
pub struct Endpoint {
    pub tx: Transactions,
    pub addr: SocketAddr,
    pub events: VecDeque<Event>,
    pub sent: Vec<(Instant, Transmit)>,
}

impl Endpoint {
    fn new(addr: SocketAddr) -> Self {
        Self {
            tx: Transactions::new(TimerConfig::default()),
            addr,
            events: VecDeque::new(),
            sent: Vec::new(),
        }
    }

    /// Messages sent whose first line starts with `prefix` (e.g. `"INVITE"`, `"SIP/2.0 200"`).
    pub fn sent_count(&self, prefix: &str) -> usize {
        self.sent
            .iter()
            .filter(|(_, t)| t.payload.starts_with(prefix.as_bytes()))
            .count()
    }

    /// Send times of messages starting with `prefix`.
    pub fn sent_times(&self, prefix: &str) -> Vec<Instant> {
        self.sent
            .iter()
            .filter(|(_, t)| t.payload.starts_with(prefix.as_bytes()))
            .map(|(at, _)| *at)
            .collect()
    }
}

/// A packet on the link.
#[derive(Debug)]
pub struct Packet {
    pub deliver_at: Instant,
    pub to: Side,
    pub from: SocketAddr,
    pub transmit: Transmit,
}

type DropRule = Box<dyn FnMut(Side, &[u8]) -> bool>;

/// A client and a server wired through a lossy, delayed link.
pub struct Pair {
    pub client: Endpoint,
    pub server: Endpoint,
    pub start: Instant,
    pub now: Instant,
    pub transport: Transport,
    /// Probability that a packet is lost (seeded).
    pub loss: f64,
    /// One-way delay.
    pub delay: Duration,
    rng: StdRng,
    in_flight: Vec<Packet>,
    /// Extra targeted loss: return true to drop a packet sent by `Side`.
    drop_rules: Vec<DropRule>,
    /// When false, packets to the server are dropped (it is "unplugged").
    pub server_reachable: bool,
}

impl Pair {
    pub fn new(transport: Transport, seed: u64) -> Self {
        // The one real clock read: an anchor; every later instant is virtual.
        #[allow(clippy::disallowed_methods)]
        let start = Instant::now();
        Self {
            client: Endpoint::new("192.0.2.1:5060".parse().unwrap()),
            server: Endpoint::new("192.0.2.2:5080".parse().unwrap()),
            start,
            now: start,
            transport,
            loss: 0.0,
            delay: Duration::from_millis(10),
            rng: StdRng::seed_from_u64(seed),
            in_flight: Vec::new(),
            drop_rules: Vec::new(),
            server_reachable: true,
        }
    }

    /// Drops packets sent by `side` for which `rule` returns true.
    pub fn drop_when(&mut self, rule: impl FnMut(Side, &[u8]) -> bool + 'static) {
        self.drop_rules.push(Box::new(rule));
    }

    /// Drops the first `n` packets sent by `side` whose payload starts with `prefix`.
    pub fn drop_first(&mut self, side: Side, prefix: &'static str, n: usize) {
        let mut left = n;
        self.drop_when(move |from, payload| {
            if from == side && left > 0 && payload.starts_with(prefix.as_bytes()) {
                left -= 1;
                true
            } else {
                false
            }
        });
    }

    pub fn endpoint(&mut self, side: Side) -> &mut Endpoint {
        match side {
            Side::Client => &mut self.client,
            Side::Server => &mut self.server,
        }
    }

    /// Seconds since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Processes everything due at `now` until both endpoints are quiet.
    pub fn drive(&mut self) {
        loop {
            self.client.tx.handle_timeout(self.now);
            self.server.tx.handle_timeout(self.now);
            self.collect(Side::Client);
            self.collect(Side::Server);
            let now = self.now;
            let due: Vec<Packet> = {
                let (due, rest) = std::mem::take(&mut self.in_flight)
                    .into_iter()
                    .partition(|p| p.deliver_at <= now);
                self.in_flight = rest;
                due
            };
            if due.is_empty() {
                break;
            }
            for packet in due {
                let transport = packet.transmit.transport;
                let endpoint = self.endpoint(packet.to);
                // Errors (stray or invalid input) are part of what tests look at through events.
                let _ = endpoint.tx.handle_datagram(
                    now,
                    packet.from,
                    transport,
                    &packet.transmit.payload,
                );
            }
        }
    }

    fn collect(&mut self, side: Side) {
        let now = self.now;
        let (from, peer_side) = match side {
            Side::Client => (self.client.addr, Side::Server),
            Side::Server => (self.server.addr, Side::Client),
        };
        loop {
            let endpoint = self.endpoint(side);
            while let Some(event) = endpoint.tx.poll_event() {
                endpoint.events.push_back(event);
            }
            let Some(transmit) = endpoint.tx.poll_transmit() else {
                break;
            };
            endpoint.sent.push((now, transmit.clone()));
            let mut dropped = self.rng.random::<f64>() < self.loss;
            for rule in &mut self.drop_rules {
                dropped |= rule(side, &transmit.payload);
            }
            if peer_side == Side::Server && !self.server_reachable {
                dropped = true;
            }
            if !dropped {
                self.in_flight.push(Packet {
                    deliver_at: now + self.delay,
                    to: peer_side,
                    from,
                    transmit,
                });
            }
        }
    }

    /// The next instant anything happens (a packet arrives or a timer fires).
    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.in_flight.iter().map(|p| p.deliver_at).min(),
            self.client.tx.poll_timeout(),
            self.server.tx.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Jumps to the next deadline and drives; false when nothing is pending.
    pub fn step(&mut self) -> bool {
        self.drive();
        match self.next_deadline() {
            Some(at) => {
                self.now = self.now.max(at);
                self.drive();
                true
            }
            None => false,
        }
    }

    /// Steps until `done` holds (checked after each step) or `limit` of virtual time passes.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&mut Pair) -> bool) -> bool {
        let end = self.now + limit;
        self.drive();
        loop {
            if done(self) {
                return true;
            }
            if self.now > end || !self.step() {
                return done(self);
            }
        }
    }

    /// Steps until nothing is pending at all (every transaction ended, no packet in flight).
    pub fn run_to_idle(&mut self) {
        let end = self.now + Duration::from_secs(600);
        while self.now < end && self.step() {}
    }

    /// Runs until `side` has an event matching `pred`, and removes and returns it.
    pub fn expect_event(
        &mut self,
        side: Side,
        limit: Duration,
        mut pred: impl FnMut(&Event) -> bool,
    ) -> Event {
        let mut found = None;
        self.run_until(limit, |pair| {
            let events = &mut pair.endpoint(side).events;
            if let Some(pos) = events.iter().position(&mut pred) {
                found = events.remove(pos);
                true
            } else {
                false
            }
        });
        match found {
            Some(event) => event,
            None => panic!(
                "no matching event on {side:?} within {limit:?}; have {:?}",
                self.endpoint(side).events
            ),
        }
    }
}

/// A request as text, with a fresh-per-test branch, parsed through `voxgate_sip::parse`.
pub fn request(method: &str, branch: &str, call_id: &str, cseq: u32) -> rsip::Request {
    let text = format!(
        "{method} sip:bob@192.0.2.2:5080 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 192.0.2.1:5060;branch={branch}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@192.0.2.1>;tag=alice1\r\n\
         To: <sip:bob@192.0.2.2>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {cseq} {method}\r\n\
         Contact: <sip:alice@192.0.2.1:5060>\r\n\
         Content-Length: 0\r\n\r\n"
    );
    match voxgate_sip::parse(text.as_bytes()) {
        Ok(rsip::SipMessage::Request(request)) => request,
        other => panic!("bad test request: {other:?}"),
    }
}

/// The ACK a UAC sends for a 2xx: new branch, same Call-ID, CSeq number and From tag.
pub fn ack_for_2xx(branch: &str, call_id: &str, cseq: u32) -> rsip::Request {
    let text = format!(
        "ACK sip:bob@192.0.2.2:5080 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 192.0.2.1:5060;branch={branch}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@192.0.2.1>;tag=alice1\r\n\
         To: <sip:bob@192.0.2.2>;tag=bob1\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {cseq} ACK\r\n\
         Content-Length: 0\r\n\r\n"
    );
    match voxgate_sip::parse(text.as_bytes()) {
        Ok(rsip::SipMessage::Request(request)) => request,
        other => panic!("bad test ACK: {other:?}"),
    }
}

/// Elapsed seconds of each instant since `start`, rounded to milliseconds.
pub fn offsets_ms(start: Instant, times: &[Instant]) -> Vec<u128> {
    times.iter().map(|t| (*t - start).as_millis()).collect()
}
