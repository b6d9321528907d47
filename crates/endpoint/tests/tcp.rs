//! SIP over TCP on loopback: framing of real streams, answers on the same connection, limits,
//! keep-alives, connection reuse and outbound connects.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::{TcpListener, UdpSocket};
use voxgate_endpoint::{Endpoint, EndpointOptions, TcpLimits};
use voxgate_sip::message::response_for;
use voxgate_sip::{Event, MAX_MESSAGE_SIZE, TimerConfig, Transport};

use common::{
    TcpPeer, endpoint, eventually, loopback, next_request, request, request_bytes, start_line,
};

#[tokio::test]
async fn split_writes_arrive_and_answers_return_on_the_same_connection() {
    let (endpoint, mut incoming) = endpoint(TcpLimits::default()).await;
    let tcp_addr = endpoint.tcp_addr().unwrap();
    let mut peer = TcpPeer::connect(tcp_addr).await;

    peer.write_chunked(&request_bytes("OPTIONS", "split-options", ""), 37)
        .await;
    let options = next_request(&mut incoming).await;
    assert_eq!(options.transport, Transport::Tcp);
    assert_eq!(options.source, peer.local_addr());
    assert_eq!(options.request.method, rsip::Method::Options);

    peer.write_chunked(&request_bytes("INVITE", "split-invite", "v=0\r\n"), 1)
        .await;
    let invite = next_request(&mut incoming).await;
    assert_eq!(invite.transport, Transport::Tcp);
    assert_eq!(invite.request.method, rsip::Method::Invite);
    assert_eq!(invite.request.body, b"v=0\r\n");
    assert_eq!(start_line(&peer.message().await), "SIP/2.0 100 Trying");

    endpoint.respond(options.key, response_for(&options.request, 200, Some("t1")));
    let answer = peer.message().await;
    assert_eq!(start_line(&answer), "SIP/2.0 200 OK");
    assert!(answer.contains("split-options"), "{answer}");

    endpoint.respond(invite.key, response_for(&invite.request, 486, Some("t2")));
    let answer = peer.message().await;
    assert_eq!(start_line(&answer), "SIP/2.0 486 Busy Here");
    assert!(answer.contains("split-invite"), "{answer}");
    assert_eq!(
        endpoint.counters().tcp_connections.load(Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn pipelined_messages_in_one_write_arrive_whole() {
    let (endpoint, mut incoming) = endpoint(TcpLimits::default()).await;
    let mut peer = TcpPeer::connect(endpoint.tcp_addr().unwrap()).await;
    let body = "hello\r\n\r\nINVITE not a request\r\n";
    let stream = [
        request_bytes("OPTIONS", "pipelined-1", ""),
        request_bytes("MESSAGE", "pipelined-2", body),
    ]
    .concat();
    peer.write(&stream).await;

    let first = next_request(&mut incoming).await;
    assert_eq!(first.request.method, rsip::Method::Options);
    let second = next_request(&mut incoming).await;
    assert_eq!(second.request.method, rsip::Method::Message);
    assert_eq!(second.request.body, body.as_bytes());
    assert_eq!(endpoint.counters().received.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn oversized_header_closes_only_that_connection() {
    let (endpoint, mut incoming) = endpoint(TcpLimits::default()).await;
    let tcp_addr = endpoint.tcp_addr().unwrap();
    let mut good = TcpPeer::connect(tcp_addr).await;
    let mut bad = TcpPeer::connect(tcp_addr).await;

    let mut huge = b"OPTIONS sip:bob@127.0.0.1 SIP/2.0\r\nX-Filler: ".to_vec();
    huge.resize(MAX_MESSAGE_SIZE + 1024, b'a');
    // The endpoint may close before everything is written; a failed write is fine.
    let _ = tokio::io::AsyncWriteExt::write_all(&mut bad.stream, &huge).await;
    bad.expect_closed().await;
    eventually("the error is counted", || {
        endpoint.counters().tcp_errors.load(Ordering::Relaxed) == 1
    })
    .await;

    good.write(&request_bytes("OPTIONS", "still-served", ""))
        .await;
    let options = next_request(&mut incoming).await;
    assert_eq!(options.source, good.local_addr());
    endpoint.respond(options.key, response_for(&options.request, 200, None));
    assert_eq!(start_line(&good.message().await), "SIP/2.0 200 OK");
    eventually("one connection left", || {
        endpoint.counters().tcp_connections.load(Ordering::Relaxed) == 1
    })
    .await;
}

#[tokio::test]
async fn message_without_content_length_closes_the_connection() {
    let (endpoint, _incoming) = endpoint(TcpLimits::default()).await;
    let mut peer = TcpPeer::connect(endpoint.tcp_addr().unwrap()).await;
    peer.write(b"OPTIONS sip:bob@127.0.0.1 SIP/2.0\r\nCall-ID: x\r\n\r\n")
        .await;
    peer.expect_closed().await;
}

#[tokio::test]
async fn keep_alive_ping_gets_a_pong_and_messages_still_follow() {
    let (endpoint, mut incoming) = endpoint(TcpLimits::default()).await;
    let mut peer = TcpPeer::connect(endpoint.tcp_addr().unwrap()).await;
    peer.write(b"\r\n\r\n").await;
    assert_eq!(peer.read_raw().await, b"\r\n");

    // A ping split across writes, then a message in the same stream.
    peer.write_chunked(b"\r\n\r\n", 1).await;
    assert_eq!(peer.read_raw().await, b"\r\n");
    peer.write(&request_bytes("OPTIONS", "after-ping", ""))
        .await;
    assert_eq!(next_request(&mut incoming).await.transport, Transport::Tcp);
}

#[tokio::test]
async fn request_reuses_an_open_connection_instead_of_udp() {
    let (endpoint, mut incoming) = endpoint(TcpLimits::default()).await;
    let mut peer = TcpPeer::connect(endpoint.tcp_addr().unwrap()).await;
    // A UDP socket on the same address as the peer's TCP end: the request must not go there.
    let udp = UdpSocket::bind(peer.local_addr()).await.unwrap();

    // The endpoint learns the connection from the first message on it.
    peer.write(&request_bytes("OPTIONS", "hello", "")).await;
    let hello = next_request(&mut incoming).await;
    endpoint.respond(hello.key, response_for(&hello.request, 200, None));
    assert_eq!(start_line(&peer.message().await), "SIP/2.0 200 OK");

    endpoint.request(peer.local_addr(), request("OPTIONS", "reuse"));
    let sent = peer.message().await;
    assert!(sent.starts_with("OPTIONS sip:bob@127.0.0.1"), "{sent}");
    assert!(sent.contains("Call-ID: reuse"), "{sent}");

    let mut buf = [0u8; 2048];
    let udp_read = tokio::time::timeout(Duration::from_millis(300), udp.recv_from(&mut buf)).await;
    assert!(udp_read.is_err(), "the request also went over UDP");

    // The answer on the connection completes the client transaction.
    let request = voxgate_sip::parse(sent.as_bytes()).unwrap();
    let rsip::SipMessage::Request(request) = request else {
        panic!("not a request")
    };
    let response = response_for(&request, 200, Some("p"));
    peer.write(&voxgate_sip::message::encode_response(&response))
        .await;
    let event = tokio::time::timeout(common::WAIT, incoming.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(event, Event::Response { .. }), "{event:?}");
}

#[tokio::test]
async fn request_without_a_connection_goes_over_udp() {
    let (endpoint, _incoming) = endpoint(TcpLimits::default()).await;
    let udp = UdpSocket::bind(loopback()).await.unwrap();
    endpoint.request(udp.local_addr().unwrap(), request("OPTIONS", "udp"));
    let mut buf = [0u8; 2048];
    let (len, from) = tokio::time::timeout(common::WAIT, udp.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(from, endpoint.local_addr());
    assert!(buf[..len].starts_with(b"OPTIONS "));
    assert_eq!(
        endpoint.counters().tcp_connections.load(Ordering::Relaxed),
        0
    );
}

#[tokio::test]
async fn request_via_tcp_connects_and_reuses_the_outbound_connection() {
    // The endpoint itself listens on no TCP port: outbound connects do not need one.
    let (endpoint, mut incoming) = Endpoint::bind(loopback(), TimerConfig::default())
        .await
        .unwrap();
    assert_eq!(endpoint.tcp_addr(), None);
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let server = listener.local_addr().unwrap();

    endpoint.request_via(server, Transport::Tcp, request("INVITE", "outbound"));
    let (stream, _) = tokio::time::timeout(common::WAIT, listener.accept())
        .await
        .unwrap()
        .unwrap();
    let mut peer = TcpPeer::from(stream);
    let sent = peer.message().await;
    assert!(sent.starts_with("INVITE "), "{sent}");
    assert_eq!(
        endpoint.counters().tcp_connections.load(Ordering::Relaxed),
        1
    );

    // The outbound connection is read from like an accepted one.
    let rsip::SipMessage::Request(invite) = voxgate_sip::parse(sent.as_bytes()).unwrap() else {
        panic!("not a request")
    };
    let ringing = response_for(&invite, 180, Some("s"));
    peer.write(&voxgate_sip::message::encode_response(&ringing))
        .await;
    let event = tokio::time::timeout(common::WAIT, incoming.recv())
        .await
        .unwrap()
        .unwrap();
    let Event::Response { response, .. } = event else {
        panic!("expected a response, got {event:?}")
    };
    assert_eq!(response.status_code.code(), 180);

    // And reused by the automatic choice: no second connection is accepted.
    endpoint.request(server, request("OPTIONS", "outbound-reuse"));
    let sent = peer.message().await;
    assert!(sent.starts_with("OPTIONS "), "{sent}");
    let second = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
    assert!(second.is_err(), "a second connection was opened");
}

#[tokio::test]
async fn failed_connect_is_counted_and_the_transaction_times_out() {
    let timers = TimerConfig {
        t1: Duration::from_millis(10),
        ..TimerConfig::default()
    };
    let options = EndpointOptions {
        timers,
        ..EndpointOptions::default()
    };
    let (endpoint, mut incoming) = Endpoint::bind_with(loopback(), options).await.unwrap();
    // A port nobody listens on: bind, note it, close.
    let closed = TcpListener::bind(loopback())
        .await
        .unwrap()
        .local_addr()
        .unwrap();

    endpoint.request_via(closed, Transport::Tcp, request("OPTIONS", "refused"));
    eventually("the connect failure is counted", || {
        endpoint.counters().tcp_errors.load(Ordering::Relaxed) == 1
    })
    .await;
    let event = tokio::time::timeout(common::WAIT, incoming.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(event, Event::Timeout { .. }), "{event:?}");
    assert_eq!(
        endpoint.counters().tcp_connections.load(Ordering::Relaxed),
        0
    );
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed() {
    let limits = TcpLimits {
        max_connections: 1,
        ..TcpLimits::default()
    };
    let (endpoint, mut incoming) = endpoint(limits).await;
    let tcp_addr = endpoint.tcp_addr().unwrap();
    let mut first = TcpPeer::connect(tcp_addr).await;
    first.write(&request_bytes("OPTIONS", "first", "")).await;
    next_request(&mut incoming).await;

    let mut second = TcpPeer::connect(tcp_addr).await;
    second.expect_closed().await;
    assert_eq!(endpoint.counters().tcp_errors.load(Ordering::Relaxed), 1);

    // Once the first one leaves, its slot is free again.
    drop(first);
    eventually("the first connection is gone", || {
        endpoint.counters().tcp_connections.load(Ordering::Relaxed) == 0
    })
    .await;
    let mut third = TcpPeer::connect(tcp_addr).await;
    third.write(&request_bytes("OPTIONS", "third", "")).await;
    assert_eq!(next_request(&mut incoming).await.source, third.local_addr());
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let limits = TcpLimits {
        idle_timeout: Duration::from_millis(200),
        ..TcpLimits::default()
    };
    let (endpoint, _incoming) = endpoint(limits).await;
    let mut peer = TcpPeer::connect(endpoint.tcp_addr().unwrap()).await;
    peer.expect_closed().await;
    eventually("the gauge goes back to zero", || {
        endpoint.counters().tcp_connections.load(Ordering::Relaxed) == 0
    })
    .await;
    assert_eq!(endpoint.counters().tcp_errors.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_peer_that_does_not_read_is_disconnected() {
    let limits = TcpLimits {
        write_queue: 8,
        write_timeout: Duration::from_millis(200),
        ..TcpLimits::default()
    };
    let (endpoint, mut incoming) = endpoint(limits).await;
    let mut peer = TcpPeer::connect(endpoint.tcp_addr().unwrap()).await;
    peer.write(&request_bytes("OPTIONS", "lazy", "")).await;
    next_request(&mut incoming).await;

    // Far more than the socket buffers hold; the peer never reads.
    let mut message = request("MESSAGE", "flood");
    voxgate_sip::message::set_body(&mut message, vec![b'x'; 12 * 1024], Some("text/plain"));
    for _ in 0..2_000 {
        endpoint.stateless(peer.local_addr(), message.clone());
        if endpoint.counters().tcp_connections.load(Ordering::Relaxed) == 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    eventually("the lazy peer is disconnected", || {
        endpoint.counters().tcp_connections.load(Ordering::Relaxed) == 0
    })
    .await;
    assert!(endpoint.counters().tcp_errors.load(Ordering::Relaxed) >= 1);
}
