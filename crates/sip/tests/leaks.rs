//! Property test: random call flows over a lossy link always end with no live transaction on
//! either side (every transaction terminates, nothing leaks).

// Test helpers outside #[test] fns unwrap too; a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Pair, ack_for_2xx, request};
use proptest::prelude::*;
use voxgate_sip::message::response_for;
use voxgate_sip::{Event, Transport};

#[derive(Debug, Clone)]
struct Flow {
    invite: bool,
    /// Final status the server TU answers with.
    status: u16,
    /// Whether the server TU sends 180 first.
    ringing: bool,
    /// Whether the client TU cancels the INVITE right after sending it.
    cancel: bool,
}

fn flow() -> impl Strategy<Value = Flow> {
    (
        any::<bool>(),
        prop::sample::select(vec![200u16, 202, 404, 486, 503, 603]),
        any::<bool>(),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(invite, status, ringing, cancel)| Flow {
            invite,
            status,
            ringing,
            cancel: cancel && invite,
        })
}

fn run(seed: u64, loss: f64, tcp: bool, flows: &[Flow]) {
    let transport = if tcp { Transport::Tcp } else { Transport::Udp };
    let mut pair = Pair::new(transport, seed);
    if !tcp {
        pair.loss = loss;
    }
    for (i, flow) in flows.iter().enumerate() {
        let method = if flow.invite { "INVITE" } else { "OPTIONS" };
        let branch = format!("z9hG4bKflow{i}");
        let now = pair.now;
        pair.client
            .tx
            .send_request(
                now,
                pair.server.addr,
                transport,
                request(method, &branch, &branch, 1),
            )
            .unwrap();
        if flow.cancel {
            pair.client
                .tx
                .send_request(
                    now,
                    pair.server.addr,
                    transport,
                    request("CANCEL", &branch, &branch, 1),
                )
                .unwrap();
        }
    }
    let end = pair.now + Duration::from_secs(900);
    while pair.now < end && pair.step() {
        // Server TU: answer every request; a CANCEL also ends its INVITE with 487.
        while let Some(event) = pair.server.events.pop_front() {
            let Event::Request { key, request, .. } = event else {
                continue;
            };
            let now = pair.now;
            if request.method == rsip::Method::Cancel {
                if let Some(invite) = pair.server.tx.cancelled_invite(&request) {
                    // The TU kept the INVITE; here it is rebuilt identically.
                    let original = common::request("INVITE", key.branch(), key.branch(), 1);
                    let terminated = response_for(&original, 487, Some("srv"));
                    let _ = pair.server.tx.send_response(now, &invite, terminated);
                }
                pair.server
                    .tx
                    .send_response(now, &key, response_for(&request, 200, Some("srv")))
                    .unwrap();
                continue;
            }
            let flow = &flows[key
                .branch()
                .trim_start_matches("z9hG4bKflow")
                .parse::<usize>()
                .unwrap()];
            if flow.ringing && key.is_invite() {
                let _ = pair.server.tx.send_response(
                    now,
                    &key,
                    response_for(&request, 180, Some("srv")),
                );
            }
            let status = if key.is_invite() { flow.status } else { 200 };
            // Already answered with 487 after a CANCEL is fine.
            let _ = pair.server.tx.send_response(
                now,
                &key,
                response_for(&request, status, Some("srv")),
            );
        }
        // Client TU: ACK every 2xx to an INVITE (new branch each time).
        while let Some(event) = pair.client.events.pop_front() {
            if let Event::Response { key, response } = event
                && key.is_invite()
                && (200..300).contains(&response.status_code.code())
            {
                let ack = ack_for_2xx(&format!("{}ack", key.branch()), key.branch(), 1);
                pair.client
                    .tx
                    .send_stateless(pair.server.addr, transport, ack.into());
            }
        }
    }
    assert!(
        pair.client.tx.is_empty(),
        "client leaked {}",
        pair.client.tx.len()
    );
    assert!(
        pair.server.tx.is_empty(),
        "server leaked {}",
        pair.server.tx.len()
    );
    assert_eq!(pair.client.tx.poll_timeout(), None);
    assert_eq!(pair.server.tx.poll_timeout(), None);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn random_flows_leave_no_transactions(
        seed in any::<u64>(),
        loss in 0.0f64..0.5,
        tcp in any::<bool>(),
        flows in prop::collection::vec(flow(), 1..30),
    ) {
        run(seed, loss, tcp, &flows);
    }
}
