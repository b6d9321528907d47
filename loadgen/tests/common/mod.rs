//! A WHIP server stand-in for the `whip` subcommand's tests: a minimal HTTP/1.1 endpoint that
//! answers offers with voxgate's own `WebRtcPeer` on one shared loopback UDP socket, and echoes
//! each session's audio back to it (the way voxgate bridged to an echo Backend does).

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::SeedableRng as _;
use rand::rngs::StdRng;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use voxgate_webrtc::{PeerConfig, PeerDemux, PeerEvent, WebRtcPeer};

/// What the stub does with a session's audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Echo every packet back.
    Echo,
    /// Connect, but send nothing back.
    Silent,
    /// Refuse every POST with this status.
    Reject(u16),
}

/// What the stub saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub posts: AtomicU64,
    pub deletes: AtomicU64,
    pub connected: AtomicU64,
    pub audio_in: AtomicU64,
}

/// A running stub.
pub struct WhipStub {
    pub url: String,
    pub seen: Arc<Seen>,
}

enum Command {
    Offer {
        sdp: String,
        reply: oneshot::Sender<Result<(u64, String), u16>>,
    },
    Delete {
        id: u64,
        reply: oneshot::Sender<bool>,
    },
}

impl WhipStub {
    /// Starts the stub on loopback; `token` is the bearer token required, if any.
    pub async fn start(mode: Mode, token: Option<&str>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("tcp");
        let http = listener.local_addr().expect("addr");
        let media = UdpSocket::bind("127.0.0.1:0").await.expect("udp");
        let seen = Arc::new(Seen::default());
        let (commands, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_media(media, rx, mode, seen.clone()));
        let token = token.map(|t| format!("Bearer {t}"));
        let seen_http = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let commands = commands.clone();
                let token = token.clone();
                let seen = seen_http.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, commands, mode, token, seen).await;
                });
            }
        });
        Self {
            url: format!("http://{http}/whip"),
            seen,
        }
    }
}

/// One request per connection: enough for the loadgen, which opens one per request.
async fn serve(
    mut stream: TcpStream,
    commands: mpsc::UnboundedSender<Command>,
    mode: Mode,
    token: Option<String>,
    seen: Arc<Seen>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.lines();
    let request_line = lines.next().unwrap_or_default().to_owned();
    let mut content_length = 0;
    let mut authorization = None;
    let mut content_type = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim().to_owned();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => content_length = value.parse().unwrap_or(0),
                "authorization" => authorization = Some(value),
                "content-type" => content_type = Some(value),
                _ => {}
            }
        }
    }
    while buf.len() < head_end + content_length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..]).into_owned();
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));

    let response = if token.is_some() && authorization != token {
        respond(401, &[], "")
    } else if method == "POST" && path == "/whip" {
        seen.posts.fetch_add(1, Ordering::Relaxed);
        if let Mode::Reject(status) = mode {
            respond(status, &[], "")
        } else if content_type.as_deref() != Some("application/sdp") {
            respond(415, &[], "")
        } else {
            let (reply, answer) = oneshot::channel();
            let _ = commands.send(Command::Offer { sdp: body, reply });
            match answer.await {
                Ok(Ok((id, sdp))) => respond(
                    201,
                    &[
                        ("Location", format!("/whip/{id}")),
                        ("Content-Type", "application/sdp".to_owned()),
                    ],
                    &sdp,
                ),
                Ok(Err(status)) => respond(status, &[], ""),
                Err(_) => respond(500, &[], ""),
            }
        }
    } else if method == "DELETE"
        && let Some(id) = path.strip_prefix("/whip/").and_then(|id| id.parse().ok())
    {
        seen.deletes.fetch_add(1, Ordering::Relaxed);
        let (reply, done) = oneshot::channel();
        let _ = commands.send(Command::Delete { id, reply });
        if done.await.unwrap_or(false) {
            respond(200, &[], "")
        } else {
            respond(404, &[], "")
        }
    } else {
        respond(404, &[], "")
    };
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

fn respond(status: u16, headers: &[(&str, String)], body: &str) -> String {
    let mut out = format!("HTTP/1.1 {status} Stub\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    out
}

/// The shared media socket: every peer, its demux, its timers and the echo.
async fn run_media(
    socket: UdpSocket,
    mut commands: mpsc::UnboundedReceiver<Command>,
    mode: Mode,
    seen: Arc<Seen>,
) {
    let local = socket.local_addr().expect("udp addr");
    let mut rng = StdRng::seed_from_u64(7);
    let mut demux = PeerDemux::new();
    let mut peers: HashMap<u64, WebRtcPeer> = HashMap::new();
    let mut next_id = 1u64;
    let mut buf = vec![0u8; 2048];
    loop {
        let deadline = peers
            .values_mut()
            .filter_map(|p| p.poll_timeout())
            .min()
            .map(Instant::from_std)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1))
            .max(Instant::now() + Duration::from_millis(1));
        let mut touched = Vec::new();
        tokio::select! {
            command = commands.recv() => match command {
                None => return,
                Some(Command::Offer { sdp, reply }) => {
                    let now = Instant::now().into_std();
                    match WebRtcPeer::new(&sdp, local, PeerConfig::default(), &mut rng, now) {
                        Ok(peer) => {
                            let id = next_id;
                            next_id += 1;
                            demux.insert(id, peer.local_ufrag()).expect("unique ufrag");
                            let answer = peer.answer_sdp().to_owned();
                            peers.insert(id, peer);
                            touched.push(id);
                            let _ = reply.send(Ok((id, answer)));
                        }
                        Err(err) => {
                            let _ = reply.send(Err(err.http_status()));
                        }
                    }
                }
                Some(Command::Delete { id, reply }) => {
                    let found = match peers.get_mut(&id) {
                        Some(peer) => {
                            peer.close(Instant::now().into_std());
                            touched.push(id);
                            true
                        }
                        None => false,
                    };
                    let _ = reply.send(found);
                }
            },
            received = socket.recv_from(&mut buf) => {
                if let Ok((n, from)) = received
                    && let Some(id) = demux.route(from, &buf[..n])
                    && let Some(peer) = peers.get_mut(&id)
                {
                    peer.handle_receive(Instant::now().into_std(), from, &buf[..n]);
                    touched.push(id);
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                let now = Instant::now().into_std();
                for (id, peer) in &mut peers {
                    if peer.poll_timeout().is_some_and(|at| at <= now) {
                        peer.handle_timeout(now);
                        touched.push(*id);
                    }
                }
            }
        }
        for id in touched {
            let mut closed = false;
            if let Some(peer) = peers.get_mut(&id) {
                drain(peer, id, &socket, &mut demux, mode, &seen, &mut closed);
            }
            if closed {
                peers.remove(&id);
            }
        }
    }
}

fn drain(
    peer: &mut WebRtcPeer,
    id: u64,
    socket: &UdpSocket,
    demux: &mut PeerDemux<u64>,
    mode: Mode,
    seen: &Seen,
    closed: &mut bool,
) {
    loop {
        while let Some(transmit) = peer.poll_transmit() {
            let _ = socket.try_send_to(&transmit.payload, transmit.destination);
        }
        let Some(event) = peer.poll_event() else {
            return;
        };
        match event {
            PeerEvent::RemoteAddress(addr) => demux.learn(id, addr),
            PeerEvent::Connected => {
                seen.connected.fetch_add(1, Ordering::Relaxed);
            }
            PeerEvent::Audio {
                payload_type,
                timestamp,
                marker,
                payload,
                ..
            } => {
                seen.audio_in.fetch_add(1, Ordering::Relaxed);
                if mode == Mode::Echo {
                    let now = Instant::now().into_std();
                    // The peer renumbers; the timestamp moves, as a gateway's would.
                    let _ = peer.send_audio(
                        now,
                        payload_type,
                        timestamp.wrapping_add(12345),
                        marker,
                        payload,
                    );
                }
            }
            PeerEvent::Closed(_) => {
                demux.remove(id);
                *closed = true;
            }
            _ => {}
        }
    }
}

/// Runs `voxgate-loadgen ARGS` to its end; returns its exit code, stdout and stderr.
pub async fn loadgen(args: Vec<String>) -> (Option<i32>, String, String) {
    tokio::task::spawn_blocking(move || {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_voxgate-loadgen"))
            .args(&args)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run voxgate-loadgen");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .expect("join")
}

/// The report at `path`, parsed.
pub fn read_report(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).expect("report written");
    serde_json::from_str(&text).expect("report is JSON")
}
