//! Non-INVITE client and server transactions over the simulated link: timers E, F, J, K, loss
//! and TCP.

// Test helpers outside #[test] fns unwrap too; a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Pair, Side, offsets_ms, request};
use voxgate_sip::message::response_for;
use voxgate_sip::{Event, Transport};

const LONG: Duration = Duration::from_secs(120);

fn options(pair: &mut Pair, branch: &str) {
    let now = pair.now;
    let (destination, transport) = (pair.server.addr, pair.transport);
    pair.client
        .tx
        .send_request(
            now,
            destination,
            transport,
            request("OPTIONS", branch, branch, 1),
        )
        .unwrap();
}

fn answer_requests(pair: &mut Pair, status: u16) -> usize {
    let mut answered = 0;
    while let Some(event) = pair.server.events.pop_front() {
        if let Event::Request { key, request, .. } = event {
            let now = pair.now;
            let response = response_for(&request, status, Some("srv"));
            pair.server.tx.send_response(now, &key, response).unwrap();
            answered += 1;
        }
    }
    answered
}

#[test]
fn timer_e_caps_at_t2_and_timer_f_times_out() {
    let mut pair = Pair::new(Transport::Udp, 1);
    pair.server_reachable = false;
    options(&mut pair, "z9hG4bKn1");
    pair.expect_event(Side::Client, LONG, |e| matches!(e, Event::Timeout { .. }));
    assert_eq!(pair.elapsed(), Duration::from_secs(32));
    let times = offsets_ms(pair.start, &pair.client.sent_times("OPTIONS"));
    assert_eq!(
        times,
        [
            0, 500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500
        ]
    );
    assert!(pair.client.tx.is_empty());
}

#[test]
fn timer_e_in_proceeding_resends_every_t2() {
    let mut pair = Pair::new(Transport::Udp, 2);
    options(&mut pair, "z9hG4bKn2");
    pair.run_until(LONG, |p| !p.server.events.is_empty());
    answer_requests(&mut pair, 100);
    pair.expect_event(
        Side::Client,
        LONG,
        |e| matches!(e, Event::Response { response, .. } if response.status_code.code() == 100),
    );
    pair.expect_event(Side::Client, LONG, |e| matches!(e, Event::Timeout { .. }));
    let times = offsets_ms(pair.start, &pair.client.sent_times("OPTIONS"));
    // Before the 100 arrived (at 20 ms): 0; then E fires at 0.5 s and every T2 after.
    assert_eq!(
        times,
        [0, 500, 4500, 8500, 12500, 16500, 20500, 24500, 28500]
    );
    // Each retransmission got the 100 again.
    assert_eq!(pair.server.sent_count("SIP/2.0 100"), times.len());
    pair.run_to_idle();
}

#[test]
fn timer_k_on_client_and_j_on_server_with_lost_response() {
    let mut pair = Pair::new(Transport::Udp, 3);
    pair.drop_first(Side::Server, "SIP/2.0 200", 1);
    options(&mut pair, "z9hG4bKn3");
    pair.run_until(LONG, |p| !p.server.events.is_empty());
    assert_eq!(answer_requests(&mut pair, 200), 1);
    let answered = pair.now;
    pair.expect_event(Side::Client, LONG, |e| matches!(e, Event::Response { .. }));
    // The lost 200 was recovered by the client's retransmission at 0.5 s.
    assert_eq!(pair.elapsed(), Duration::from_millis(520));
    let got_final = pair.now;
    pair.run_until(LONG, |p| p.client.tx.is_empty());
    assert_eq!(pair.now - got_final, Duration::from_secs(5), "Timer K = T4");
    pair.run_until(LONG, |p| p.server.tx.is_empty());
    assert_eq!(
        pair.now - answered,
        Duration::from_secs(32),
        "Timer J = 64*T1"
    );
    assert_eq!(pair.server.sent_count("SIP/2.0 200"), 2);
    assert!(
        pair.server.events.is_empty(),
        "retransmission not passed up"
    );
}

#[test]
fn tcp_non_invite_has_zero_j_and_k() {
    let mut pair = Pair::new(Transport::Tcp, 4);
    options(&mut pair, "z9hG4bKn4");
    pair.run_until(LONG, |p| !p.server.events.is_empty());
    answer_requests(&mut pair, 200);
    assert!(pair.server.tx.is_empty(), "Timer J = 0 on TCP");
    pair.expect_event(Side::Client, LONG, |e| matches!(e, Event::Response { .. }));
    assert!(pair.client.tx.is_empty(), "Timer K = 0 on TCP");
    assert_eq!(pair.client.sent_count("OPTIONS"), 1);
}

#[test]
fn many_transactions_over_a_lossy_link_all_end() {
    let mut pair = Pair::new(Transport::Udp, 5);
    pair.loss = 0.3;
    for i in 0..200 {
        options(&mut pair, &format!("z9hG4bKmany{i}"));
        let method = if i % 2 == 0 { "BYE" } else { "INVITE" };
        let now = pair.now;
        let branch = format!("z9hG4bKinv{i}");
        pair.client
            .tx
            .send_request(
                now,
                pair.server.addr,
                Transport::Udp,
                request(method, &branch, &branch, 2),
            )
            .unwrap();
    }
    assert_eq!(pair.client.tx.len(), 400);
    let end = pair.now + Duration::from_secs(300);
    while pair.now < end && pair.step() {
        answer_requests(&mut pair, 486);
    }
    assert!(pair.client.tx.is_empty() && pair.server.tx.is_empty());
    let (mut finals, mut timeouts) = (0, 0);
    for event in &pair.client.events {
        match event {
            Event::Response { response, .. } if response.status_code.code() == 486 => finals += 1,
            Event::Timeout { .. } => timeouts += 1,
            _ => {}
        }
    }
    // Every transaction ended exactly once; with 30 % loss and ~7-11 tries nearly all succeed.
    assert_eq!(finals + timeouts, 400);
    assert!(finals > 390, "finals {finals}");
}

#[test]
fn send_response_errors() {
    let mut pair = Pair::new(Transport::Udp, 6);
    options(&mut pair, "z9hG4bKn6");
    pair.run_until(LONG, |p| !p.server.events.is_empty());
    let Some(Event::Request { key, request, .. }) = pair.server.events.pop_front() else {
        panic!("no request");
    };
    let now = pair.now;
    pair.server
        .tx
        .send_response(now, &key, response_for(&request, 200, None))
        .unwrap();
    let again = pair
        .server
        .tx
        .send_response(now, &key, response_for(&request, 500, None));
    assert!(matches!(
        again,
        Err(voxgate_sip::TransactionError::AlreadyFinal)
    ));
    // A request without a magic-cookie branch cannot start a client transaction.
    let bad = common::request("OPTIONS", "oldstyle", "x", 1);
    let err = pair
        .client
        .tx
        .send_request(now, pair.server.addr, Transport::Udp, bad);
    assert!(matches!(err, Err(voxgate_sip::TransactionError::NoBranch)));
}
