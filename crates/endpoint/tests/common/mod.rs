//! Shared helpers for the endpoint's integration tests: a loopback endpoint and a raw TCP peer.
#![allow(dead_code)]
// Test helpers panic on setup failures; that is how a test should fail.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use voxgate_endpoint::framer::{Frame, StreamFramer};
use voxgate_endpoint::{Endpoint, EndpointOptions, TcpLimits};
use voxgate_sip::{Event, TransactionKey, Transport};

/// Longest any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(5);

/// An endpoint on loopback with UDP and TCP on ephemeral ports.
pub async fn endpoint(limits: TcpLimits) -> (Endpoint, mpsc::Receiver<Event>) {
    let options = EndpointOptions {
        tcp: Some(loopback()),
        tcp_limits: limits,
        ..EndpointOptions::default()
    };
    Endpoint::bind_with(loopback(), options).await.unwrap()
}

pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A request as text, with Content-Length.
pub fn request_bytes(method: &str, call_id: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} sip:bob@127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK-{call_id}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@127.0.0.1>;tag=a1\r\n\
         To: <sip:bob@127.0.0.1>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 {method}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A request for [`Endpoint::request`].
pub fn request(method: &str, call_id: &str) -> rsip::Request {
    let bytes = request_bytes(method, call_id, "");
    match voxgate_sip::parse(&bytes).unwrap() {
        rsip::SipMessage::Request(request) => request,
        rsip::SipMessage::Response(_) => unreachable!(),
    }
}

/// A new server transaction from `incoming`.
pub struct Incoming {
    pub key: TransactionKey,
    pub source: SocketAddr,
    pub transport: Transport,
    pub request: rsip::Request,
}

/// The next `Event::Request` (other events are skipped).
pub async fn next_request(incoming: &mut mpsc::Receiver<Event>) -> Incoming {
    loop {
        let event = tokio::time::timeout(WAIT, incoming.recv())
            .await
            .expect("no request in time")
            .expect("endpoint stopped");
        if let Event::Request {
            key,
            source,
            transport,
            request,
        } = event
        {
            return Incoming {
                key,
                source,
                transport,
                request,
            };
        }
    }
}

/// A raw SIP-over-TCP peer.
pub struct TcpPeer {
    pub stream: TcpStream,
    framer: StreamFramer,
}

impl TcpPeer {
    pub async fn connect(addr: SocketAddr) -> Self {
        Self::from(TcpStream::connect(addr).await.unwrap())
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().unwrap()
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// Writes `bytes` in pieces of `chunk`, yielding between them so they leave separately.
    pub async fn write_chunked(&mut self, bytes: &[u8], chunk: usize) {
        for piece in bytes.chunks(chunk) {
            self.write(piece).await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// The next frame from the endpoint.
    pub async fn frame(&mut self) -> Frame {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(frame) = self.framer.next_frame().unwrap() {
                    return frame;
                }
                let read = self
                    .stream
                    .read_buf(self.framer.buffer_mut())
                    .await
                    .unwrap();
                assert_ne!(read, 0, "connection closed");
            }
        })
        .await
        .expect("no frame in time")
    }

    /// The next SIP message from the endpoint, as text.
    pub async fn message(&mut self) -> String {
        match self.frame().await {
            Frame::Message(bytes) => String::from_utf8(bytes.to_vec()).unwrap(),
            Frame::Ping => panic!("expected a message, got a ping"),
        }
    }

    /// Raw bytes as they arrive (for the keep-alive pong).
    pub async fn read_raw(&mut self) -> Vec<u8> {
        let mut buf = vec![0; 64];
        let n = tokio::time::timeout(WAIT, self.stream.read(&mut buf))
            .await
            .expect("nothing read in time")
            .unwrap();
        buf.truncate(n);
        buf
    }

    /// Waits until the endpoint closed the connection (EOF or reset).
    pub async fn expect_closed(&mut self) {
        let mut buf = vec![0; 4096];
        tokio::time::timeout(WAIT, async {
            loop {
                match self.stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("connection still open");
    }
}

impl From<TcpStream> for TcpPeer {
    fn from(stream: TcpStream) -> Self {
        Self {
            stream,
            framer: StreamFramer::new(),
        }
    }
}

/// The first line of a message.
pub fn start_line(message: &str) -> &str {
    message.lines().next().unwrap_or_default()
}

/// Polls `condition` until it holds or [`WAIT`] passes.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
