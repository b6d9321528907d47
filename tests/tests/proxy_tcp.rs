//! SIP over TCP: a caller on a TCP connection places a call through voxgate to a UDP Backend;
//! responses come back on the connection, and the Backend's BYE reaches the caller on it too.

// A plain test thread drives real processes: real clock and sleeps; setup failures may panic.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use common::{Proxy, backend_toml, lease_port, start_backend};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rsip::SipMessage;
use voxgate_endpoint::framer::{Frame, StreamFramer};
use voxgate_sip::dialog::Dialog;
use voxgate_sip::message::{cseq, response_for};
use voxgate_sip::sdp::{AudioSdp, Codec};

/// A caller speaking SIP over one TCP connection.
struct TcpCaller {
    stream: TcpStream,
    framer: StreamFramer,
    dialog: Dialog,
    rng: StdRng,
}

impl TcpCaller {
    fn connect(proxy: SocketAddr) -> Self {
        let stream = TcpStream::connect(proxy).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let local = stream.local_addr().unwrap();
        let mut rng = StdRng::seed_from_u64(u64::from(local.port()));
        let mut dialog = Dialog::outgoing(
            &mut rng,
            local,
            format!("sip:tcp-caller@{local}"),
            format!("sip:echo@{proxy}"),
            "voxgate-tests",
        );
        dialog.transport = "TCP";
        Self {
            stream,
            framer: StreamFramer::new(),
            dialog,
            rng,
        }
    }

    fn send(&mut self, message: impl std::fmt::Display) {
        self.stream
            .write_all(message.to_string().as_bytes())
            .unwrap();
    }

    /// The next SIP message on the connection within `timeout`.
    fn recv(&mut self, timeout: Duration) -> Option<SipMessage> {
        let deadline = std::time::Instant::now() + timeout;
        let mut buf = [0u8; 8192];
        loop {
            while let Some(frame) = self.framer.next_frame().unwrap() {
                if let Frame::Message(bytes) = frame {
                    return Some(voxgate_sip::parse(&bytes).unwrap());
                }
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.framer.extend(&buf[..n]),
                Err(_) => {}
            }
        }
    }

    /// Responses to `method` until the final one.
    fn final_response(&mut self, method: rsip::Method) -> rsip::Response {
        loop {
            match self.recv(Duration::from_secs(5)) {
                Some(SipMessage::Response(r))
                    if cseq(&r).map(|(_, m)| m) == Some(method) && r.status_code.code() >= 200 =>
                {
                    return r;
                }
                Some(_) => {}
                None => panic!("no final response to {method} over TCP"),
            }
        }
    }
}

#[test]
fn a_tcp_caller_is_answered_and_hung_up_on_its_connection() {
    // The Backend hangs up after 1 s without media from the proxy's side of the call.
    let (_backend, backend) = start_backend("tcp-b1", &["--media-timeout", "1s"]);
    let tcp_port = lease_port();
    let proxy = Proxy::start_with_env(
        "tcp-proxy",
        &backend_toml("b1", backend, 10, None),
        &[("VOXGATE_SIP__LISTEN_TCP", format!("127.0.0.1:{tcp_port}"))],
    );
    let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut caller = TcpCaller::connect(format!("127.0.0.1:{tcp_port}").parse().unwrap());
    let offer = AudioSdp::offer(
        rtp.local_addr().unwrap().ip(),
        rtp.local_addr().unwrap().port(),
        vec![Codec::pcmu()],
        1,
    );
    let invite = caller.dialog.invite(&mut caller.rng, offer.to_string());
    caller.send(&invite);
    let ok = caller.final_response(rsip::Method::Invite);
    assert_eq!(ok.status_code.code(), 200, "{ok}");
    let answer = AudioSdp::parse(std::str::from_utf8(&ok.body).unwrap()).unwrap();
    assert!(
        (proxy.media.0..=proxy.media.1).contains(&answer.port),
        "SDP answer does not point at the proxy: {answer}"
    );
    caller.dialog.confirm(&ok);
    let ack = caller.dialog.ack(&mut caller.rng, 1);
    caller.send(&ack);
    assert_eq!(proxy.metric("voxgate_sessions_active"), 1.0);

    // No RTP flows, so the Backend ends the call; its BYE must come back on our connection.
    let bye = loop {
        match caller.recv(Duration::from_secs(5)) {
            Some(SipMessage::Request(r)) if r.method == rsip::Method::Bye => break r,
            Some(_) => {}
            None => panic!("no BYE over TCP from the proxy"),
        }
    };
    let via = voxgate_sip::dialog::header_value(&bye.headers, "Via").unwrap();
    assert!(
        via.starts_with("SIP/2.0/TCP "),
        "BYE Via names the wrong transport: {via}"
    );
    caller.send(response_for(&bye, 200, None));
    proxy.assert_idle(Duration::from_secs(5));
    assert_eq!(
        proxy.counter("voxgate_sessions_ended_total{cause=\"backend_bye\"}"),
        1.0
    );
}

#[test]
fn a_tcp_caller_can_hang_up() {
    let (_backend, backend) = start_backend("tcp-b2", &[]);
    let tcp_port = lease_port();
    let proxy = Proxy::start_with_env(
        "tcp-proxy-2",
        &backend_toml("b1", backend, 10, None),
        &[("VOXGATE_SIP__LISTEN_TCP", format!("127.0.0.1:{tcp_port}"))],
    );
    let mut caller = TcpCaller::connect(format!("127.0.0.1:{tcp_port}").parse().unwrap());
    let offer = AudioSdp::offer("127.0.0.1".parse().unwrap(), 40_000, vec![Codec::pcmu()], 1);
    let invite = caller.dialog.invite(&mut caller.rng, offer.to_string());
    caller.send(&invite);
    let ok = caller.final_response(rsip::Method::Invite);
    assert_eq!(ok.status_code.code(), 200, "{ok}");
    caller.dialog.confirm(&ok);
    let ack = caller.dialog.ack(&mut caller.rng, 1);
    caller.send(&ack);
    let bye = caller.dialog.bye(&mut caller.rng);
    caller.send(&bye);
    let answer = caller.final_response(rsip::Method::Bye);
    assert_eq!(answer.status_code.code(), 200, "{answer}");
    proxy.assert_idle(Duration::from_secs(5));
    assert_eq!(
        proxy.counter("voxgate_sessions_ended_total{cause=\"caller_bye\"}"),
        1.0
    );
    assert_eq!(
        proxy.counter("voxgate_sip_messages_total{method=\"INVITE\",direction=\"in\"}"),
        1.0
    );
}
