//! New dialogs claimed by the task that handles an unrouted INVITE, before that task runs.
//!
//! Routing a Call-ID to a task is a command the endpoint carries out later, so events of the
//! same dialog may already sit in the unrouted queue behind the INVITE (a CANCEL sent right after
//! it). [`NewDialogs`] routes the new dialog to a queue of its own at once and forwards those
//! early events into it, so that none reaches the unrouted handler instead of its call.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use voxgate_sip::Event;

use crate::{DIALOG_QUEUE, Endpoint, Route};

/// The table is pruned of ended dialogs once it grows past this, then past twice what survived.
const PRUNE_AT: usize = 1024;

/// Dialogs claimed from the unrouted queue, by Call-ID, while their events may still come that
/// way.
#[derive(Debug, Default)]
pub struct NewDialogs {
    queues: HashMap<String, mpsc::Sender<Event>>,
    prune_at: usize,
}

/// A claimed dialog's queue: its sender (for more Call-IDs of the same task), its receiver and
/// the route that feeds it.
#[derive(Debug)]
pub struct Claim {
    /// Feeds the queue (hand it to [`Endpoint::route`] for further dialogs of the same task).
    pub sender: mpsc::Sender<Event>,
    /// The task's events.
    pub events: mpsc::Receiver<Event>,
    /// The route of the claimed Call-ID; dropping it unregisters it.
    pub route: Route,
}

impl NewDialogs {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes `call_id` to a new queue now and remembers it for [`NewDialogs::forward`].
    pub fn claim(&mut self, endpoint: &Endpoint, call_id: &str) -> Claim {
        let (sender, events) = mpsc::channel(DIALOG_QUEUE);
        let route = endpoint.route(call_id, sender.clone());
        if self.queues.len() >= self.prune_at.max(PRUNE_AT) {
            self.queues.retain(|_, queue| !queue.is_closed());
            // Amortised: the next scan waits until as many again were added.
            self.prune_at = self.queues.len() * 2;
        }
        self.queues.insert(call_id.to_owned(), sender.clone());
        Claim {
            sender,
            events,
            route,
        }
    }

    /// Hands `event` to the live dialog that claimed its Call-ID; `Some(event)` back when there
    /// is none. A full queue sheds the event (counted in the endpoint's `shed`).
    pub fn forward(&mut self, endpoint: &Endpoint, event: Event) -> Option<Event> {
        let Some(queue) = call_id(&event).and_then(|id| self.queues.get(id)) else {
            return Some(event);
        };
        match queue.try_send(event) {
            Ok(()) => None,
            Err(TrySendError::Full(_)) => {
                endpoint.counters().shed.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(TrySendError::Closed(event)) => Some(event),
        }
    }
}

/// The Call-ID of an event's message, if it carries one.
fn call_id(event: &Event) -> Option<&str> {
    match event {
        Event::Request { request, .. } | Event::Ack { request, .. } => {
            voxgate_sip::message::call_id(request)
        }
        Event::Response { response, .. } | Event::StrayResponse { response, .. } => {
            voxgate_sip::message::call_id(response)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(call_id: &str) -> Event {
        let text = format!(
            "ACK sip:a@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1\r\n\
             From: <sip:b@127.0.0.1>;tag=1\r\nTo: <sip:a@127.0.0.1>;tag=2\r\nCall-ID: {call_id}\r\n\
             CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
        );
        let Ok(rsip::SipMessage::Request(request)) = voxgate_sip::parse(text.as_bytes()) else {
            panic!("test ACK does not parse");
        };
        Event::Ack {
            source: "127.0.0.1:5060".parse().expect("addr"),
            request,
        }
    }

    #[tokio::test]
    async fn only_claimed_live_dialogs_take_events() {
        let (endpoint, _incoming) = Endpoint::bind(
            "127.0.0.1:0".parse().expect("addr"),
            voxgate_sip::TimerConfig::default(),
        )
        .await
        .expect("bind");
        let mut dialogs = NewDialogs::new();
        assert!(
            dialogs.forward(&endpoint, ack("nobody")).is_some(),
            "unclaimed: handed back"
        );
        let mut claim = dialogs.claim(&endpoint, "mine");
        assert!(
            dialogs.forward(&endpoint, ack("mine")).is_none(),
            "claimed: forwarded"
        );
        assert!(matches!(claim.events.try_recv(), Ok(Event::Ack { .. })));
        drop(claim);
        assert!(
            dialogs.forward(&endpoint, ack("mine")).is_some(),
            "ended: handed back"
        );
    }
}
