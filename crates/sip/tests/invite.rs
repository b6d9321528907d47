//! INVITE client and server transactions over the simulated link: timers A, B, D, G, H, I, L, M,
//! lost messages, CANCEL and TCP.

// Test helpers outside #[test] fns unwrap too; a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Pair, Side, ack_for_2xx, offsets_ms, request};
use voxgate_sip::message::response_for;
use voxgate_sip::{Event, TransactionKey, Transport};

const LONG: Duration = Duration::from_secs(120);

/// Client sends an INVITE; returns the server's key once the request arrived.
fn invite(pair: &mut Pair, branch: &str, call_id: &str) -> (TransactionKey, rsip::Request) {
    let now = pair.now;
    let destination = pair.server.addr;
    let transport = pair.transport;
    pair.client
        .tx
        .send_request(
            now,
            destination,
            transport,
            request("INVITE", branch, call_id, 1),
        )
        .unwrap();
    match pair.expect_event(Side::Server, LONG, |e| matches!(e, Event::Request { .. })) {
        Event::Request { key, request, .. } => (key, request),
        _ => unreachable!(),
    }
}

fn respond(pair: &mut Pair, key: &TransactionKey, request: &rsip::Request, status: u16) {
    let response = response_for(request, status, Some("bob1"));
    let now = pair.now;
    pair.server.tx.send_response(now, key, response).unwrap();
}

fn is_response(e: &Event, status: u16) -> bool {
    matches!(e, Event::Response { response, .. } if response.status_code.code() == status)
}

#[test]
fn timer_a_retransmits_and_timer_b_times_out() {
    let mut pair = Pair::new(Transport::Udp, 1);
    pair.server_reachable = false;
    let now = pair.now;
    let key = pair
        .client
        .tx
        .send_request(
            now,
            pair.server.addr,
            Transport::Udp,
            request("INVITE", "z9hG4bKa1", "c1", 1),
        )
        .unwrap();
    let event = pair.expect_event(Side::Client, LONG, |e| matches!(e, Event::Timeout { .. }));
    assert!(matches!(event, Event::Timeout { key: k } if k == key));
    // Timer A: 0.5 s doubling, uncapped, until Timer B at 64*T1.
    let times = offsets_ms(pair.start, &pair.client.sent_times("INVITE"));
    assert_eq!(times, [0, 500, 1500, 3500, 7500, 15500, 31500]);
    assert_eq!(pair.elapsed(), Duration::from_secs(32));
    assert!(pair.client.tx.is_empty());
}

#[test]
fn lost_invites_are_recovered_and_trying_is_repeated() {
    let mut pair = Pair::new(Transport::Udp, 2);
    pair.drop_first(Side::Client, "INVITE", 2);
    pair.drop_first(Side::Server, "SIP/2.0 100", 1);
    let (key, req) = invite(&mut pair, "z9hG4bKa2", "c2");
    assert_eq!(pair.elapsed(), Duration::from_millis(1510));
    // The first 100 was lost, so the client retransmits once more and the server repeats it.
    pair.run_until(LONG, |p| p.client.sent_count("INVITE") == 4);
    pair.expect_event(Side::Client, LONG, |e| is_response(e, 100));
    assert_eq!(pair.server.sent_count("SIP/2.0 100"), 2);
    respond(&mut pair, &key, &req, 486);
    pair.run_to_idle();
    assert!(pair.client.tx.is_empty() && pair.server.tx.is_empty());
    assert_eq!(
        pair.server.events.len(),
        0,
        "retransmissions are not passed up"
    );
}

#[test]
fn lost_ack_for_2xx_then_retransmitted_2xx() {
    let mut pair = Pair::new(Transport::Udp, 3);
    pair.drop_first(Side::Client, "ACK", 1);
    let (key, req) = invite(&mut pair, "z9hG4bKa3", "c3");
    respond(&mut pair, &key, &req, 200);
    // The UAC TU ACKs every 2xx it sees (the first ACK is lost).
    for round in 0..2 {
        pair.expect_event(Side::Client, LONG, |e| is_response(e, 200));
        let ack = ack_for_2xx(&format!("z9hG4bKack{round}"), "c3", 1);
        pair.client
            .tx
            .send_stateless(pair.server.addr, Transport::Udp, ack.into());
    }
    pair.expect_event(Side::Server, LONG, |e| matches!(e, Event::Ack { .. }));
    let acked_at = pair.now;
    pair.run_to_idle();
    // One 2xx retransmission (at T1), then it stopped.
    assert_eq!(pair.server.sent_count("SIP/2.0 200"), 2);
    assert!(
        pair.server
            .sent_times("SIP/2.0 200")
            .iter()
            .all(|t| *t < acked_at)
    );
    assert!(
        !pair
            .server
            .events
            .iter()
            .any(|e| matches!(e, Event::AckTimeout { .. }))
    );
    assert!(pair.client.tx.is_empty() && pair.server.tx.is_empty());
}

#[test]
fn timer_l_reports_missing_ack_and_2xx_retransmits_cap_at_t2() {
    let mut pair = Pair::new(Transport::Udp, 4);
    let (key, req) = invite(&mut pair, "z9hG4bKa4", "c4");
    let answered = pair.now;
    respond(&mut pair, &key, &req, 200);
    let event = pair.expect_event(Side::Server, LONG, |e| {
        matches!(e, Event::AckTimeout { .. })
    });
    assert!(matches!(event, Event::AckTimeout { key: k } if k == key));
    assert_eq!(pair.now - answered, Duration::from_secs(32));
    let times = offsets_ms(answered, &pair.server.sent_times("SIP/2.0 200"));
    assert_eq!(&times[..7], [0, 500, 1500, 3500, 7500, 11500, 15500]);
    // Timer M on the client passed every retransmitted 2xx up.
    let seen = pair
        .client
        .events
        .iter()
        .filter(|e| is_response(e, 200))
        .count();
    assert_eq!(seen, times.len());
    pair.run_to_idle();
    assert!(pair.client.tx.is_empty() && pair.server.tx.is_empty());
}

#[test]
fn timer_g_h_when_every_ack_is_lost_and_timer_d_on_client() {
    let mut pair = Pair::new(Transport::Udp, 5);
    pair.drop_when(|side, payload| side == Side::Client && payload.starts_with(b"ACK"));
    let (key, req) = invite(&mut pair, "z9hG4bKa5", "c5");
    let answered = pair.now;
    respond(&mut pair, &key, &req, 486);
    pair.run_until(LONG, |p| p.server.tx.is_empty());
    // Timer H: the server gives up 64*T1 after its final response.
    assert_eq!(pair.now - answered, Duration::from_secs(32));
    let times = offsets_ms(answered, &pair.server.sent_times("SIP/2.0 486"));
    assert_eq!(
        times,
        [
            0, 500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500
        ]
    );
    // The client ACKs the first 486 and every retransmission it absorbs in Completed (Timer D).
    assert_eq!(pair.client.sent_count("ACK"), times.len());
    let finals = pair
        .client
        .events
        .iter()
        .filter(|e| is_response(e, 486))
        .count();
    assert_eq!(finals, 1);
    pair.run_to_idle();
    assert!(pair.client.tx.is_empty());
}

#[test]
fn timer_i_after_ack_for_non_2xx() {
    let mut pair = Pair::new(Transport::Udp, 6);
    let (key, req) = invite(&mut pair, "z9hG4bKa6", "c6");
    respond(&mut pair, &key, &req, 603);
    pair.run_until(LONG, |p| p.client.sent_count("ACK") == 1);
    let ack_sent = pair.now;
    pair.run_until(LONG, |p| p.server.tx.is_empty());
    // ACK arrives after the link delay; Timer I = T4 then.
    assert_eq!(pair.now - ack_sent, Duration::from_millis(5010));
    assert_eq!(pair.server.sent_count("SIP/2.0 603"), 1);
    pair.run_until(LONG, |p| p.client.tx.is_empty());
    // Timer D = 32 s from the final response.
    assert_eq!(pair.now - ack_sent, Duration::from_secs(32));
    assert!(pair.server.events.is_empty(), "non-2xx ACK is absorbed");
}

#[test]
fn cancel_gets_200_and_invite_gets_487() {
    let mut pair = Pair::new(Transport::Udp, 7);
    let (invite_key, invite_req) = invite(&mut pair, "z9hG4bKa7", "c7");
    let now = pair.now;
    let cancel = request("CANCEL", "z9hG4bKa7", "c7", 1);
    pair.client
        .tx
        .send_request(now, pair.server.addr, Transport::Udp, cancel)
        .unwrap();
    let (cancel_key, cancel_req) =
        match pair.expect_event(Side::Server, LONG, |e| matches!(e, Event::Request { .. })) {
            Event::Request { key, request, .. } => (key, request),
            _ => unreachable!(),
        };
    assert_eq!(cancel_key.method(), "CANCEL");
    assert_eq!(
        pair.server.tx.cancelled_invite(&cancel_req),
        Some(invite_key.clone())
    );
    respond(&mut pair, &cancel_key, &cancel_req, 200);
    respond(&mut pair, &invite_key, &invite_req, 487);
    assert_eq!(
        pair.server.tx.cancelled_invite(&cancel_req),
        None,
        "already final"
    );
    pair.expect_event(Side::Client, LONG, |e| is_response(e, 487));
    assert!(pair.client.events.iter().any(|e| is_response(e, 200)));
    pair.run_to_idle();
    assert_eq!(pair.client.sent_count("ACK"), 1);
    assert!(pair.client.tx.is_empty() && pair.server.tx.is_empty());
}

#[test]
fn tcp_has_no_retransmissions_and_zero_wait_timers() {
    let mut pair = Pair::new(Transport::Tcp, 8);
    pair.server_reachable = false;
    let now = pair.now;
    pair.client
        .tx
        .send_request(
            now,
            pair.server.addr,
            Transport::Tcp,
            request("INVITE", "z9hG4bKt1", "t1", 1),
        )
        .unwrap();
    pair.expect_event(Side::Client, LONG, |e| matches!(e, Event::Timeout { .. }));
    assert_eq!(pair.client.sent_count("INVITE"), 1);

    let mut pair = Pair::new(Transport::Tcp, 9);
    let (key, req) = invite(&mut pair, "z9hG4bKt2", "t2");
    respond(&mut pair, &key, &req, 486);
    pair.expect_event(Side::Client, LONG, |e| is_response(e, 486));
    // Timer D = 0: the client transaction ended with its ACK.
    assert!(pair.client.tx.is_empty());
    pair.run_until(LONG, |p| p.server.tx.is_empty());
    // Timer I = 0: ended when the ACK arrived, one link delay later.
    assert_eq!(pair.server.sent_count("SIP/2.0 486"), 1);
    assert!(pair.client.tx.is_empty() && pair.server.tx.is_empty());

    // A 2xx over TCP is not retransmitted; Timer L still reports the missing ACK.
    let mut pair = Pair::new(Transport::Tcp, 10);
    let (key, req) = invite(&mut pair, "z9hG4bKt3", "t3");
    respond(&mut pair, &key, &req, 200);
    pair.expect_event(Side::Server, LONG, |e| {
        matches!(e, Event::AckTimeout { .. })
    });
    assert_eq!(pair.server.sent_count("SIP/2.0 200"), 1);
}

#[test]
fn late_2xx_after_timer_m_is_stray() {
    let mut pair = Pair::new(Transport::Udp, 11);
    let (key, req) = invite(&mut pair, "z9hG4bKa8", "c8");
    respond(&mut pair, &key, &req, 200);
    pair.expect_event(Side::Client, LONG, |e| is_response(e, 200));
    let ack = ack_for_2xx("z9hG4bKack8", "c8", 1);
    pair.client
        .tx
        .send_stateless(pair.server.addr, Transport::Udp, ack.into());
    pair.run_to_idle();
    // Replay the 2xx once both transactions are gone.
    let payload = pair
        .server
        .sent
        .last()
        .map(|(_, t)| t.payload.clone())
        .unwrap();
    let (now, from) = (pair.now, pair.server.addr);
    pair.client
        .tx
        .handle_datagram(now, from, Transport::Udp, &payload)
        .unwrap();
    assert!(matches!(
        pair.client.tx.poll_event(),
        Some(Event::StrayResponse { .. })
    ));
}
