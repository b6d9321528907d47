//! The outbound pipeline: calls the admin API originates (`POST /v1/calls`), queued until this
//! node has a free session slot and a Backend has room, then dialled and bridged.
//!
//! A request is `pending` in a bounded FIFO queue, `dialing` once its slot and Backend lease are
//! taken and the INVITE is out to the trunk, `bridging` once the number answered and the Backend
//! is being called, `connected` while both legs are up, and `ended` with one [`Outcome`]. A full
//! queue refuses the next request (429 with Retry-After). Slots are not signalled when they free
//! up (the node cap is a lock-free counter shared with the SIP path), so the worker looks again
//! every [`POLL`] while requests wait: at most that much added to a wait that is typically
//! seconds.
//!
//! The queue keeps the last [`HISTORY`] ended requests so that `GET /v1/calls/{id}` can tell
//! what became of one; older ones are forgotten.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rand::Rng;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::time::Instant;
use voxgate_cluster::Trunk;
use voxgate_core::{NodeId, RegionId, SessionId};

use crate::metrics;

/// How often a waiting queue looks for a free slot.
pub const POLL: Duration = Duration::from_millis(20);

/// Ended requests kept for `GET /v1/calls/{id}`.
pub const HISTORY: usize = 1000;

/// One call to originate, validated.
#[derive(Debug, Clone)]
pub struct CallRequest {
    /// The number (SIP user part) to dial.
    pub to: String,
    /// The From user (caller id) on the trunk leg.
    pub from: String,
    /// The trunk it is dialled through.
    pub trunk: Trunk,
    /// The region whose Backends take it (least-loaded, with spillover).
    pub region: RegionId,
    /// A Backend chosen by the operator instead of the least-loaded one.
    pub backend: Option<NodeId>,
}

/// Where an originate request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Waiting for a session slot and a Backend with room.
    Pending,
    /// The INVITE is out to the trunk.
    Dialing,
    /// The number answered; the Backend is being called.
    Bridging,
    /// Both legs are up and media flows.
    Connected,
    /// Finished, see the outcome.
    Ended,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::Pending => "pending",
            Stage::Dialing => "dialing",
            Stage::Bridging => "bridging",
            Stage::Connected => "connected",
            Stage::Ended => "ended",
        }
    }
}

/// What became of an originate request: the `outcome` label of `voxgate_outbound_calls_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// The call was bridged and later ended by either side (or a media timeout).
    Completed,
    /// The number was busy (486, 600).
    Busy,
    /// The number did not answer within `outbound.ring_timeout` (or answered 480/408/487).
    NoAnswer,
    /// The trunk refused the call or did not respond.
    Failed,
    /// The number answered but no Backend took the call; the number was hung up.
    NoBackend,
    /// The request waited `outbound.max_wait` without a free slot.
    Expired,
    /// Cancelled by `DELETE /v1/calls/{id}` while pending.
    Cancelled,
    /// The node drained or shut down first.
    Shutdown,
}

impl Outcome {
    /// Every outcome, in report order.
    pub const ALL: [Outcome; 8] = [
        Outcome::Completed,
        Outcome::Busy,
        Outcome::NoAnswer,
        Outcome::Failed,
        Outcome::NoBackend,
        Outcome::Expired,
        Outcome::Cancelled,
        Outcome::Shutdown,
    ];

    /// The outcome's name in JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Busy => "busy",
            Outcome::NoAnswer => "no_answer",
            Outcome::Failed => "failed",
            Outcome::NoBackend => "no_backend",
            Outcome::Expired => "expired",
            Outcome::Cancelled => "cancelled",
            Outcome::Shutdown => "shutdown",
        }
    }
}

/// Why a request was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// `outbound.queue_size` requests are already waiting.
    #[error("the outbound queue is full")]
    QueueFull,
}

/// What a cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// The request was pending: it left the queue (outcome `cancelled`).
    Dequeued,
    /// The call was being dialled or was up: its task was told to hang up (CANCEL or BYE).
    HangingUp,
}

/// Why a request could not be cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CancelError {
    /// No request with that id (or it ended long ago).
    #[error("no originate request with that id")]
    NotFound,
    /// It has ended already.
    #[error("the call has ended")]
    Ended,
}

/// The queue and the record of every recent originate request.
#[derive(Debug)]
pub struct OutboundQueue {
    capacity: usize,
    max_wait: Duration,
    inner: Mutex<Inner>,
    pub(crate) wake: Notify,
}

#[derive(Debug, Default)]
struct Inner {
    /// Ids of pending requests, oldest first.
    pending: VecDeque<String>,
    records: HashMap<String, Record>,
    /// Ids of ended requests, oldest first, forgotten past [`HISTORY`].
    ended: VecDeque<String>,
    processing: usize,
    outcomes: BTreeMap<Outcome, u64>,
}

#[derive(Debug)]
struct Record {
    request: CallRequest,
    stage: Stage,
    queued_at: Instant,
    dialed_at: Option<Instant>,
    ended_at: Option<Instant>,
    outcome: Option<Outcome>,
    /// The trunk's final answer when it refused the call.
    sip_code: Option<u16>,
    /// Why an established call ended (`caller_bye` is the dialled party).
    end_cause: Option<&'static str>,
    backend: Option<NodeId>,
    session: Option<SessionId>,
    /// Tells the call's task to hang up, from dialing on.
    hang_up: Option<Arc<Notify>>,
}

impl OutboundQueue {
    /// An empty queue holding at most `capacity` pending requests for at most `max_wait` each.
    pub fn new(capacity: usize, max_wait: Duration) -> Self {
        Self {
            capacity,
            max_wait,
            inner: Mutex::new(Inner::default()),
            wake: Notify::new(),
        }
    }

    /// Queues `request`; returns its id and its place in the queue (1 = next).
    pub fn submit(
        &self,
        request: CallRequest,
        now: Instant,
        rng: &mut impl Rng,
    ) -> Result<(String, usize), SubmitError> {
        let mut inner = self.lock();
        if inner.pending.len() >= self.capacity {
            return Err(SubmitError::QueueFull);
        }
        let id = format!("{:016x}", rng.random::<u64>());
        inner.records.insert(
            id.clone(),
            Record {
                request,
                stage: Stage::Pending,
                queued_at: now,
                dialed_at: None,
                ended_at: None,
                outcome: None,
                sip_code: None,
                end_cause: None,
                backend: None,
                session: None,
                hang_up: None,
            },
        );
        inner.pending.push_back(id.clone());
        let position = inner.pending.len();
        inner.publish();
        drop(inner);
        self.wake.notify_one();
        Ok((id, position))
    }

    /// Cancels a request: a pending one leaves the queue, a call being dialled or up is hung up.
    pub fn cancel(&self, id: &str, now: Instant) -> Result<Cancelled, CancelError> {
        let mut inner = self.lock();
        let record = inner.records.get(id).ok_or(CancelError::NotFound)?;
        match record.stage {
            Stage::Pending => {
                inner.end_pending(id, Outcome::Cancelled, now);
                Ok(Cancelled::Dequeued)
            }
            Stage::Ended => Err(CancelError::Ended),
            Stage::Dialing | Stage::Bridging | Stage::Connected => {
                if let Some(hang_up) = &record.hang_up {
                    // A permit: the task sees it at its next wait even if not waiting now.
                    hang_up.notify_one();
                }
                Ok(Cancelled::HangingUp)
            }
        }
    }

    /// One request as JSON, or `None` if unknown.
    pub fn call_json(&self, id: &str, now: Instant) -> Option<Value> {
        let inner = self.lock();
        let record = inner.records.get(id)?;
        let position = inner.pending.iter().position(|p| p == id).map(|i| i + 1);
        Some(record.json(id, position, now))
    }

    /// Every pending and live request, and the recent ended ones, oldest first.
    pub fn calls_json(&self, now: Instant) -> Vec<Value> {
        let inner = self.lock();
        let mut all: Vec<(&String, &Record)> = inner.records.iter().collect();
        all.sort_by_key(|(_, record)| record.queued_at);
        all.into_iter()
            .map(|(id, record)| {
                let position = inner.pending.iter().position(|p| p == id).map(|i| i + 1);
                record.json(id, position, now)
            })
            .collect()
    }

    /// Queue depth, the oldest wait, calls in progress and outcomes so far, for `/v1/capacity`.
    pub fn stats_json(&self, now: Instant) -> Value {
        let inner = self.lock();
        let oldest_wait = inner
            .pending
            .front()
            .and_then(|id| inner.records.get(id))
            .map_or(0.0, |r| {
                now.saturating_duration_since(r.queued_at).as_secs_f64()
            });
        let outcomes: serde_json::Map<String, Value> = Outcome::ALL
            .iter()
            .map(|o| {
                let n = inner.outcomes.get(o).copied().unwrap_or(0);
                (o.as_str().to_owned(), json!(n))
            })
            .collect();
        json!({
            "pending": inner.pending.len(),
            "processing": inner.processing,
            "queue_size": self.capacity,
            "oldest_wait_s": oldest_wait,
            "outcomes": outcomes,
        })
    }

    /// Requests waiting.
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    /// Ends every pending request whose wait passed `max_wait`.
    pub(crate) fn expire(&self, now: Instant) {
        let mut inner = self.lock();
        while let Some(id) = inner.pending.front().cloned() {
            let waited = inner.records.get(&id).map_or(Duration::MAX, |r| {
                now.saturating_duration_since(r.queued_at)
            });
            if waited < self.max_wait {
                break;
            }
            inner.end_pending(&id, Outcome::Expired, now);
        }
    }

    /// Ends every pending request with `outcome` (the node is going away).
    pub(crate) fn abandon_all(&self, outcome: Outcome, now: Instant) {
        let mut inner = self.lock();
        while let Some(id) = inner.pending.front().cloned() {
            inner.end_pending(&id, outcome, now);
        }
    }

    /// Pending requests, oldest first.
    pub(crate) fn waiting(&self) -> Vec<(String, CallRequest)> {
        let inner = self.lock();
        inner
            .pending
            .iter()
            .filter_map(|id| Some((id.clone(), inner.records.get(id)?.request.clone())))
            .collect()
    }

    /// Moves a pending request to `dialing` and returns its hang-up signal; `None` if it is no
    /// longer pending (cancelled).
    pub(crate) fn start(&self, id: &str, backend: &NodeId, now: Instant) -> Option<Arc<Notify>> {
        let mut inner = self.lock();
        let index = inner.pending.iter().position(|p| p == id)?;
        inner.pending.remove(index);
        inner.processing += 1;
        let hang_up = Arc::new(Notify::new());
        if let Some(record) = inner.records.get_mut(id) {
            record.stage = Stage::Dialing;
            record.dialed_at = Some(now);
            record.backend = Some(backend.clone());
            record.hang_up = Some(hang_up.clone());
            metrics::outbound_wait(now.saturating_duration_since(record.queued_at));
        }
        inner.publish();
        Some(hang_up)
    }

    fn update(&self, id: &str, change: impl FnOnce(&mut Record)) {
        if let Some(record) = self.lock().records.get_mut(id) {
            change(record);
        }
    }

    fn finish(&self, id: &str, outcome: Outcome, now: Instant) {
        let mut inner = self.lock();
        inner.processing = inner.processing.saturating_sub(1);
        inner.record_end(id, outcome, now);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update under the lock leaves the maps consistent; keep serving after a panic.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    fn end_pending(&mut self, id: &str, outcome: Outcome, now: Instant) {
        self.pending.retain(|p| p != id);
        if let Some(record) = self.records.get(id) {
            metrics::outbound_wait(now.saturating_duration_since(record.queued_at));
        }
        self.record_end(id, outcome, now);
    }

    fn record_end(&mut self, id: &str, outcome: Outcome, now: Instant) {
        if let Some(record) = self.records.get_mut(id) {
            record.stage = Stage::Ended;
            record.outcome = Some(outcome);
            record.ended_at = Some(now);
            record.hang_up = None;
        }
        *self.outcomes.entry(outcome).or_default() += 1;
        metrics::outbound_finished(outcome.as_str());
        self.ended.push_back(id.to_owned());
        while self.ended.len() > HISTORY {
            if let Some(old) = self.ended.pop_front() {
                self.records.remove(&old);
            }
        }
        self.publish();
    }

    fn publish(&self) {
        metrics::outbound_queue(self.pending.len(), self.processing);
    }
}

impl Record {
    fn json(&self, id: &str, position: Option<usize>, now: Instant) -> Value {
        let since = |from: Instant, to: Option<Instant>| {
            to.unwrap_or(now)
                .saturating_duration_since(from)
                .as_secs_f64()
        };
        let waited = since(self.queued_at, self.dialed_at.or(self.ended_at));
        json!({
            "id": id,
            "state": self.stage.as_str(),
            "to": self.request.to,
            "from": self.request.from,
            "trunk": self.request.trunk.name,
            "region": self.request.region.as_str(),
            "backend": self.backend.as_ref().or(self.request.backend.as_ref()).map(NodeId::as_str),
            "position": position,
            "waited_s": waited,
            "duration_s": self.dialed_at.map(|d| since(d, self.ended_at)),
            "outcome": self.outcome.map(Outcome::as_str),
            "sip_code": self.sip_code,
            "end_cause": self.end_cause,
            "session": self.session.map(|s| s.0),
        })
    }
}

/// An originated call's link back to its record: the call task reports its progress through it.
/// Dropping it unfinished (a panic, an early return) records `failed`, so `processing` always
/// returns to 0.
#[derive(Debug)]
pub struct Progress {
    queue: Arc<OutboundQueue>,
    id: String,
    hang_up: Arc<Notify>,
    pinned: bool,
    finished: bool,
}

impl Progress {
    /// The link of request `id`, just started by the dialer, with its `hang_up` signal.
    pub fn new(queue: Arc<OutboundQueue>, id: String, hang_up: Arc<Notify>, pinned: bool) -> Self {
        Self {
            queue,
            id,
            hang_up,
            pinned,
            finished: false,
        }
    }

    /// The request's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether the operator chose the Backend: that one or none, no failover.
    pub fn pinned(&self) -> bool {
        self.pinned
    }

    /// Notified when `DELETE /v1/calls/{id}` asks the call to hang up.
    pub fn hang_up_signal(&self) -> Arc<Notify> {
        self.hang_up.clone()
    }

    /// The session that carries the call.
    pub fn session(&self, session: SessionId) {
        self.queue.update(&self.id, |r| r.session = Some(session));
    }

    /// The call reached `stage` (bridging, connected).
    pub fn stage(&self, stage: Stage) {
        self.queue.update(&self.id, |r| r.stage = stage);
    }

    /// The Backend that took the call, if failover moved it from the one first leased.
    pub fn backend(&self, backend: &NodeId) {
        self.queue
            .update(&self.id, |r| r.backend = Some(backend.clone()));
    }

    /// The call is over: its outcome, the trunk's refusal code, the end cause of a bridged call.
    pub fn finish(
        mut self,
        outcome: Outcome,
        sip_code: Option<u16>,
        end_cause: Option<&'static str>,
    ) {
        self.queue.update(&self.id, |r| {
            r.sip_code = sip_code;
            r.end_cause = end_cause;
        });
        self.queue.finish(&self.id, outcome, Instant::now());
        self.finished = true;
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if !self.finished {
            self.queue.finish(&self.id, Outcome::Failed, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    use super::*;

    fn request(to: &str) -> CallRequest {
        let region = RegionId::new("US-EAST").expect("region");
        CallRequest {
            to: to.to_owned(),
            from: "voxgate".to_owned(),
            trunk: Trunk {
                name: "carrier".to_owned(),
                region: region.clone(),
                sources: Vec::new(),
                outbound: Some("127.0.0.1:5060".parse().expect("addr")),
                hosts: Vec::new(),
                transfer: voxgate_cluster::TrunkTransfer::Bridge,
                dtmf: voxgate_cluster::TrunkDtmf::Rfc4733,
                pass_headers: Vec::new(),
            },
            region,
            backend: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_queue_is_bounded_fifo_and_tells_each_request_its_fate() {
        let queue = OutboundQueue::new(2, Duration::from_secs(60));
        let mut rng = SmallRng::seed_from_u64(7);
        let t0 = Instant::now();
        let (a, pa) = queue.submit(request("+1001"), t0, &mut rng).expect("room");
        let (b, pb) = queue.submit(request("+1002"), t0, &mut rng).expect("room");
        assert_eq!((pa, pb), (1, 2));
        assert_eq!(
            queue.submit(request("+1003"), t0, &mut rng),
            Err(SubmitError::QueueFull)
        );
        let waiting: Vec<String> = queue.waiting().into_iter().map(|(id, _)| id).collect();
        assert_eq!(waiting, vec![a.clone(), b.clone()]);

        let backend = NodeId::new("b1").expect("node");
        let hang_up = queue
            .start(&a, &backend, t0 + Duration::from_secs(3))
            .expect("a was pending");
        assert!(queue.start(&a, &backend, t0).is_none(), "started twice");
        assert_eq!(queue.cancel(&a, t0), Ok(Cancelled::HangingUp));
        // The permit is there for the call's task to see.
        tokio::time::timeout(Duration::from_millis(1), hang_up.notified())
            .await
            .expect("the hang-up was signalled");
        assert_eq!(queue.call_json(&b, t0).expect("b")["position"], 1);
        assert_eq!(queue.cancel(&b, t0), Ok(Cancelled::Dequeued));
        assert_eq!(queue.cancel("nope", t0), Err(CancelError::NotFound));
        queue.finish(&a, Outcome::Completed, t0 + Duration::from_secs(9));
        assert_eq!(queue.cancel(&a, t0), Err(CancelError::Ended));

        let now = t0 + Duration::from_secs(10);
        let stats = queue.stats_json(now);
        assert_eq!(stats["pending"], 0);
        assert_eq!(stats["processing"], 0);
        assert_eq!(stats["outcomes"]["completed"], 1);
        assert_eq!(stats["outcomes"]["cancelled"], 1);
        let a_json = queue.call_json(&a, now).expect("a");
        assert_eq!(a_json["state"], "ended");
        assert_eq!(a_json["outcome"], "completed");
        assert_eq!(a_json["backend"], "b1");
        assert_eq!(a_json["waited_s"], 3.0);
        assert_eq!(a_json["duration_s"], 6.0);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_expire_after_max_wait_and_history_is_bounded() {
        let queue = OutboundQueue::new(HISTORY + 10, Duration::from_secs(60));
        let mut rng = SmallRng::seed_from_u64(9);
        let t0 = Instant::now();
        let (old, _) = queue.submit(request("+1"), t0, &mut rng).expect("room");
        let (young, _) = queue
            .submit(request("+2"), t0 + Duration::from_secs(30), &mut rng)
            .expect("room");
        queue.expire(t0 + Duration::from_secs(60));
        assert_eq!(
            queue.call_json(&old, t0).expect("old")["outcome"],
            "expired"
        );
        assert_eq!(
            queue.call_json(&young, t0).expect("young")["state"],
            "pending"
        );
        for i in 0..HISTORY + 5 {
            queue
                .submit(request(&format!("+9{i}")), t0, &mut rng)
                .expect("room");
        }
        queue.abandon_all(Outcome::Shutdown, t0);
        assert_eq!(queue.pending(), 0);
        assert!(queue.calls_json(t0).len() <= HISTORY);
        assert!(
            queue.call_json(&old, t0).is_none(),
            "the oldest is forgotten"
        );
        let stats = queue.stats_json(t0);
        assert_eq!(stats["outcomes"]["shutdown"], (HISTORY + 6) as u64);
    }
}
