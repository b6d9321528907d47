//! Call records: the record file checked field by field for a completed, a refused (503 at the
//! cap) and a cancelled SIP call and a WebRTC session; and the webhook losing nothing through an
//! outage: stopped mid-run, every record arrives once after it returns.
//!
//! The webhook test runs a short soak by default (about 20 s, webhook down 5 s). The 2-minute
//! soak with the webhook down for 30 s is the same test, ignored by default:
//!
//! ```text
//! cargo test -p voxgate-tests --test call_records -- --ignored webhook_outage_in_a_two_minute_soak
//! ```

// A plain test thread drives real processes: real clock and sleeps; setup failures may panic.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::uac::{Uac, media_addr, sdp_of};
use common::{
    Proxy, backend_toml, field, lease_port, records_path, run_calls, run_loadgen, scratch_dir,
    start_backend, wait_until,
};
use serde_json::Value;

/// The records of `path`, one per line.
fn records(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("a record line is JSON"))
        .collect()
}

/// Waits until the file of proxy `name` holds `count` records; returns them.
fn wait_records(name: &str, count: usize) -> Vec<Value> {
    let path = records_path(name);
    let mut got = Vec::new();
    let ok = wait_until(Duration::from_secs(10), || {
        got = records(&path);
        got.len() >= count
    });
    assert!(ok, "{} records, expected {count}: {got:#?}", got.len());
    got
}

fn is_time(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|t| t.len() == "2026-01-01T00:00:00.000Z".len() && t.ends_with('Z'))
}

#[test]
fn records_of_a_completed_a_refused_and_a_cancelled_call() {
    let _ = std::fs::remove_file(records_path("rec-proxy"));
    let (_backend, addr) = start_backend("rec-b1", &["--answer-delay", "500ms"]);
    let config = format!(
        "[node]\nid = \"rec-node\"\n[limits]\nmax_sessions = 1\n[health]\ninterval = \"1s\"\n{}",
        backend_toml("b1", addr, 10, None)
    );
    let proxy = Proxy::start("rec-proxy", &config);

    // 1. Completed: answered, 50 RTP packets each way, hung up by the caller.
    let (mut caller, ok) = Uac::answered("127.0.0.1", proxy.sip);
    let relay = media_addr(&sdp_of(&ok.body));
    caller.send_rtp(relay, 50, 0x1234);
    let echoed = caller.recv_rtp(50, Duration::from_secs(3));
    assert!(echoed > 40, "echo: {echoed} packets");

    // 2. Refused while the one slot is taken: 503.
    let mut refused = Uac::new("127.0.0.2", proxy.sip);
    refused.send_invite();
    let (_, answer) = refused
        .final_response(rsip::Method::Invite, Duration::from_secs(3))
        .expect("an answer at the cap");
    assert_eq!(answer.status_code.code(), 503);
    refused.ack_failure(&answer);

    let bye = caller.in_dialog(rsip::Method::Bye, None, Duration::from_secs(3));
    assert_eq!(bye.map(|r| r.status_code.code()), Some(200));
    proxy.assert_idle(Duration::from_secs(5));

    // 3. Cancelled while the Backend rings (it answers only after 500 ms).
    let mut cancelled = Uac::new("127.0.0.3", proxy.sip);
    cancelled.send_invite();
    cancelled
        .wait_response(rsip::Method::Invite, 100, Duration::from_secs(3))
        .expect("100 Trying");
    std::thread::sleep(Duration::from_millis(100)); // let the far INVITE go out first
    cancelled.cancel();
    let (_, terminated) = cancelled
        .final_response(rsip::Method::Invite, Duration::from_secs(3))
        .expect("a final answer to the cancelled INVITE");
    assert_eq!(terminated.status_code.code(), 487);
    cancelled.ack_failure(&terminated);

    let all = wait_records("rec-proxy", 3);
    assert_eq!(all.len(), 3, "{all:#?}");
    let by_cause: BTreeMap<String, &Value> = all
        .iter()
        .map(|r| (r["cause"].as_str().unwrap().to_owned(), r))
        .collect();
    // Every record id is unique.
    let ids: BTreeSet<&str> = all
        .iter()
        .map(|r| r["record_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3);

    let done = by_cause["caller_bye"];
    let call_id = caller
        .invite
        .as_ref()
        .and_then(|i| voxgate_sip::message::call_id(i).map(str::to_owned));
    assert!(done["record_id"].as_str().unwrap().starts_with("rec-node-"));
    assert!(done["session_id"].as_u64().unwrap() > 0);
    assert_eq!(done["kind"], "sip");
    assert_eq!(done["node"], "rec-node");
    assert_eq!(done["region"], "US-EAST");
    assert_eq!(
        done["trunk"], "local",
        "the embedded trunk of loopback callers"
    );
    assert_eq!(done["caller_call_id"].as_str(), call_id.as_deref());
    assert!(
        done["backend_call_id"]
            .as_str()
            .is_some_and(|c| Some(c) != call_id.as_deref())
    );
    assert!(
        done["caller"].as_str().unwrap().starts_with("sip:"),
        "{done}"
    );
    assert!(
        done["callee"].as_str().unwrap().starts_with("sip:"),
        "{done}"
    );
    assert_eq!(done["backend"], "b1");
    for key in ["arrived_at", "ringing_at", "answered_at", "ended_at"] {
        assert!(is_time(&done[key]), "{key}: {}", done[key]);
    }
    let setup = done["setup_ms"].as_u64().unwrap();
    assert!(
        (400..3000).contains(&setup),
        "setup {setup} ms (answer delay 500 ms)"
    );
    assert!(done["duration_ms"].as_u64().unwrap() >= 1000, "{done}");
    assert_eq!(done["ended_by"], "caller");
    assert!(done["code"].is_null());
    assert_eq!(done["caller_code"], 200);
    let attempts = done["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["backend"], "b1");
    assert_eq!(attempts[0]["code"], 200);
    assert_eq!(attempts[0]["address"], addr.to_string());
    assert_eq!(attempts[0]["call_id"], done["backend_call_id"]);
    assert_eq!(done["codecs"]["caller"], "PCMU/8000");
    assert_eq!(done["codecs"]["backend"], "PCMU/8000");
    let up = &done["media"]["caller_to_backend"];
    assert_eq!(up["packets"], 50, "{done}");
    assert_eq!(up["bytes"], 50 * 172);
    assert_eq!(up["lost"], 0);
    assert_eq!(up["loss_pct"], 0.0);
    assert!(up["jitter_ms"].as_f64().unwrap() < 20.0, "{up}");
    let down = &done["media"]["backend_to_caller"];
    assert!(down["packets"].as_u64().unwrap() >= 40, "{down}");
    let mos = done["mos"].as_f64().unwrap();
    assert!((4.0..=4.41).contains(&mos), "mos {mos}");
    assert!(done["transfer"].is_null());

    let cap = by_cause["capacity"];
    assert_eq!(cap["kind"], "sip");
    assert_eq!(cap["session_id"], 0);
    assert_eq!(cap["ended_by"], "node");
    assert_eq!(cap["caller_code"], 503);
    assert!(cap["backend"].is_null() && cap["answered_at"].is_null() && cap["media"].is_null());
    assert_eq!(cap["attempts"].as_array().unwrap().len(), 0);
    assert_eq!(cap["arrived_at"], cap["ended_at"]);
    assert!(
        cap["caller"].as_str().unwrap().contains("127.0.0.2"),
        "{cap}"
    );

    let gone = by_cause["cancelled"];
    assert_eq!(gone["ended_by"], "caller");
    assert_eq!(gone["caller_code"], 487);
    assert!(gone["answered_at"].is_null() && gone["setup_ms"].is_null());
    assert_eq!(gone["duration_ms"], 0);
    let attempts = gone["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1);
    assert!(
        attempts[0]["code"].is_null(),
        "given up, not answered: {gone}"
    );
    assert!(gone["mos"].is_null(), "no media was relayed: {gone}");

    // The operator's log: one INFO line per ended session, and no other per-call INFO line.
    let log = proxy.process.log();
    let ends = log.lines().filter(|l| l.contains("session ended")).count();
    assert_eq!(ends, 3, "{log}");
    assert!(log.contains("cause=capacity"), "{log}");
}

#[test]
fn a_webrtc_session_leaves_a_record() {
    let _ = std::fs::remove_file(records_path("rec-whip"));
    let (_backend, addr) = start_backend("rec-whip-b1", &["--codecs", "pcmu,telephone-event"]);
    let proxy = Proxy::start("rec-whip", &backend_toml("b1", addr, 10, None));
    let target = format!("http://{}/whip?to=agent", proxy.whip);
    let (output, report) = run_loadgen(
        "whip",
        &[
            "--target",
            &target,
            "--concurrency",
            "1",
            "--hold",
            "2s",
            "--bind",
            "127.0.0.1",
        ],
    );
    assert!(output.status.success(), "{report:#}");
    assert_eq!(field(&report, &["sessions", "completed"]), 1, "{report:#}");
    let all = wait_records("rec-whip", 1);
    let r = &all[0];
    assert_eq!(r["kind"], "webrtc");
    assert!(
        r["caller_call_id"].as_str().unwrap().starts_with("whip:"),
        "{r}"
    );
    assert_eq!(r["caller"], "webrtc");
    assert_eq!(r["callee"], "agent");
    assert_eq!(r["backend"], "b1");
    assert_eq!(r["cause"], "whip_delete");
    assert_eq!(r["ended_by"], "caller");
    assert!(r["caller_code"].is_null());
    assert_eq!(r["codecs"]["caller"], "opus/48000");
    assert_eq!(r["codecs"]["backend"], "PCMU/8000");
    assert!(
        is_time(&r["answered_at"]) && r["setup_ms"].as_u64().is_some(),
        "{r}"
    );
    assert!(r["duration_ms"].as_u64().unwrap() >= 1500, "{r}");
    for way in ["caller_to_backend", "backend_to_caller"] {
        let m = &r["media"][way];
        assert!(m["packets"].as_u64().unwrap() >= 50, "{way}: {r}");
        assert_eq!(m["lost"], 0, "{way}: {r}");
        assert!(m["mos"].as_f64().unwrap() >= 4.0, "{way}: {r}");
    }
    // The WebRTC stack's per-peer INFO chatter is held at WARN.
    let log = proxy.process.log();
    assert!(!log.contains(" INFO rtc"), "{log}");
    assert_eq!(
        log.lines().filter(|l| l.contains("session ended")).count(),
        1,
        "{log}"
    );
}

/// A webhook receiver the test owns: takes POSTs on `port`, answers 200, remembers every body's
/// `record_id`; stopped (its port closed) and restarted on the same port.
struct Receiver {
    port: u16,
    ids: Arc<Mutex<Vec<String>>>,
    running: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
}

impl Receiver {
    fn start(port: u16) -> Self {
        let mut receiver = Self {
            port,
            ids: Arc::new(Mutex::new(Vec::new())),
            running: None,
        };
        receiver.resume();
        receiver
    }

    fn resume(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).expect("bind the receiver");
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (ids, stopped) = (self.ids.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((stream, _)) => serve(stream, &ids),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        self.running = Some((stop, thread));
    }

    /// Closes the port: POSTs are refused until [`Receiver::resume`].
    fn stop(&mut self) {
        if let Some((stop, thread)) = self.running.take() {
            stop.store(true, Ordering::Release);
            thread.join().unwrap();
        }
    }

    fn ids(&self) -> Vec<String> {
        self.ids.lock().unwrap().clone()
    }
}

/// One HTTP/1.1 exchange: reads a POST, records its `record_id`, answers 200.
fn serve(stream: std::net::TcpStream, ids: &Mutex<Vec<String>>) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let record: Value = serde_json::from_slice(&body).expect("a record is JSON");
    ids.lock()
        .unwrap()
        .push(record["record_id"].as_str().unwrap().to_owned());
    let mut stream = stream;
    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
}

/// Calls for `seconds` through a proxy whose webhook is down from a third of the run for
/// `down` seconds; then every record of the file arrives at the webhook exactly once.
fn webhook_outage(name: &str, seconds: u64, down: u64) {
    let _ = std::fs::remove_file(records_path(name));
    let spool = scratch_dir().join(format!("{name}-{}-spool", std::process::id()));
    let _ = std::fs::remove_dir_all(&spool);
    let port = lease_port();
    let mut receiver = Receiver::start(port);
    let (_backend, addr) = start_backend(&format!("{name}-b1"), &[]);
    let config = format!(
        "[records]\nwebhook = \"http://127.0.0.1:{port}/records\"\nwebhook_timeout = \"2s\"\nspool_dir = \"{}\"\nretry_min = \"200ms\"\nretry_max = \"1s\"\n[health]\ninterval = \"1s\"\n{}",
        spool.display(),
        backend_toml("b1", addr, 50, None)
    );
    let proxy = Proxy::start(name, &config);
    let target = proxy.sip.to_string();
    let total = (seconds * 4).to_string();
    let load = std::thread::spawn(move || {
        run_calls(&[
            "--target",
            &target,
            "--concurrency",
            "4",
            "--rate",
            "4",
            "--total",
            &total,
            "--hold",
            "1s",
        ])
    });
    let started = Instant::now();
    let delivered_before = wait_until(Duration::from_secs(seconds), || !receiver.ids().is_empty());
    assert!(delivered_before, "nothing delivered before the outage");
    while started.elapsed() < Duration::from_secs(seconds / 3) {
        std::thread::sleep(Duration::from_millis(50));
    }
    receiver.stop();
    let outage = Instant::now();
    // Records keep coming while the webhook is down: they wait in the spool.
    let spooled = wait_until(Duration::from_secs(down), || {
        proxy.counter("voxgate_records_webhook_failures_total") > 0.0
            && proxy
                .metric_opt("voxgate_records_spool_bytes")
                .unwrap_or(0.0)
                > 0.0
    });
    assert!(
        spooled,
        "no failure counted while down:\n{}",
        proxy.metrics()
    );
    while outage.elapsed() < Duration::from_secs(down) {
        std::thread::sleep(Duration::from_millis(50));
    }
    receiver.resume();
    let (output, report) = load.join().unwrap();
    assert!(output.status.success(), "{report:#}");
    let calls = field(&report, &["calls", "answered"]) as usize;
    assert!(calls > 0, "{report:#}");
    proxy.assert_idle(Duration::from_secs(10));

    let written = wait_records(name, calls);
    let file_ids: BTreeSet<String> = written
        .iter()
        .map(|r| r["record_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(file_ids.len(), written.len(), "record ids are unique");
    let all_in = wait_until(Duration::from_secs(30), || {
        receiver.ids().len() >= written.len()
    });
    let got = receiver.ids();
    assert!(
        all_in,
        "{} of {} records delivered:\n{}",
        got.len(),
        written.len(),
        proxy.metrics()
    );
    let got_set: BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(
        got_set, file_ids,
        "the webhook got exactly the file's records"
    );
    assert_eq!(got.len(), got_set.len(), "a record arrived twice");
    assert_eq!(
        proxy.counter("voxgate_records_dropped_total{reason=\"spool_full\"}"),
        0.0
    );
    assert_eq!(
        proxy.counter("voxgate_records_webhook_delivered_total"),
        got.len() as f64
    );
    let emptied = wait_until(Duration::from_secs(5), || {
        proxy.metric_opt("voxgate_records_spool_bytes") == Some(0.0)
    });
    assert!(emptied, "{}", proxy.metrics());
    receiver.stop();
}

#[test]
fn a_webhook_outage_loses_no_record_and_duplicates_none() {
    webhook_outage("rec-hook", 18, 5);
}

/// The issue's soak: 2 minutes of calls, webhook down 30 s in the middle.
#[test]
#[ignore = "2-minute soak; run explicitly"]
fn webhook_outage_in_a_two_minute_soak() {
    webhook_outage("rec-hook-soak", 120, 30);
}
