//! Trunks as the unit of trust, end to end: a trunk with digest users admits sipp once it
//! authenticates (its `[authentication]` keyword) and refuses a wrong password; a caller from
//! an unlisted source gets 403 (or nothing with `sip.unknown_source = "drop"`); none of those
//! reaches a Backend or takes a slot. A carrier's identity headers reach a sipp Backend as the
//! trunk's policy says. A flood from one source bans it while calls from another complete.

// A plain test thread drives real processes: real clock and sleeps; setup failures may panic.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::sipp::{SippBackend, SippBench};
use common::{
    Proxy, backend_toml, field, json_request, raw_request, run_calls, sip_exchange, start_backend,
    wait_until,
};

const WAIT: Duration = Duration::from_secs(2);

fn refused(proxy: &Proxy, reason: &str) -> f64 {
    proxy.counter(&format!("voxgate_sip_refused_total{{reason=\"{reason}\"}}"))
}

#[test]
fn a_digest_trunk_admits_sipp_once_it_authenticates_and_refuses_everyone_else() {
    let test = "trust-digest";
    let backend = SippBackend::new("b1", "answer_uas.xml");
    // sipp 3.6 answers MD5 challenges only; SHA-256 is covered by the unit tests.
    let config = "[[trunks]]\nname = \"pbx\"\nsources = [\"127.0.0.1/32\"]\nalgorithms = [\"MD5\"]\n\
                  [[trunks.users]]\nname = \"pbx1\"\npassword = \"s3cret\"\n";
    let Some(mut bench) = SippBench::start(test, &[backend], config) else {
        return;
    };
    // Admitted after its challenge; the call runs to its end at the Backend.
    bench.caller_with("auth_uac.xml", &["-au", "pbx1", "-ap", "s3cret"]);
    bench.wait_backends(None);
    let proxy = &bench.proxy;
    assert_eq!(proxy.counter("voxgate_sessions_started_total"), 1.0);
    assert!(proxy.counter("voxgate_sip_challenges_total") >= 1.0);

    // The same sipp with a wrong password: 401, then 403 (the scenario checks both).
    let (_caller, _) = bench.caller_with("auth_refused_uac.xml", &["-au", "pbx1", "-ap", "guess"]);
    let proxy = &bench.proxy;
    assert_eq!(refused(proxy, "bad_credentials"), 1.0);
    // Without credentials at all: a challenge, nothing more.
    let invite = raw_request("INVITE", proxy.sip, "127.0.0.1:9", "nocreds", "");
    let answer = sip_exchange("127.0.0.1", proxy.sip, invite.as_bytes(), WAIT);
    assert!(answer.starts_with("SIP/2.0 401 "), "{answer}");
    assert!(
        answer.contains("WWW-Authenticate: Digest realm=\"voxgate\""),
        "{answer}"
    );
    assert!(
        answer.contains("algorithm=MD5") && answer.contains("qop=\"auth\""),
        "{answer}"
    );
    // From an address no trunk lists: 403, for a call and for OPTIONS alike.
    for method in ["INVITE", "OPTIONS", "REGISTER"] {
        let request = raw_request(method, proxy.sip, "127.0.0.2:9", method, "");
        let answer = sip_exchange("127.0.0.2", proxy.sip, request.as_bytes(), WAIT);
        assert!(answer.starts_with("SIP/2.0 403 "), "{method}: {answer}");
        // No version for scanners to report.
        assert!(answer.contains("Server: voxgate\r\n"), "{answer}");
    }
    assert_eq!(refused(proxy, "unknown_source"), 3.0);
    // None of them took a slot or reached a Backend.
    assert_eq!(proxy.counter("voxgate_sessions_started_total"), 1.0);
    assert_eq!(proxy.metric("voxgate_sessions_active"), 0.0);
    assert_eq!(
        proxy.counter("voxgate_sessions_rejected_total{reason=\"capacity\"}"),
        0.0
    );
    proxy.assert_idle(Duration::from_secs(5));
}

#[test]
fn drop_mode_sends_nothing_to_unknown_sources_nor_to_scanners() {
    let (_backend, addr) = start_backend("trust-drop-b1", &[]);
    let config = format!(
        "[sip]\nunknown_source = \"drop\"\n[health]\ninterval = \"1s\"\n\
         [[trunks]]\nname = \"local\"\nsources = [\"127.0.0.1/32\"]\n{}",
        backend_toml("b1", addr, 10, None)
    );
    let proxy = Proxy::start("trust-drop", &config);
    for method in ["INVITE", "OPTIONS", "MESSAGE"] {
        let request = raw_request(method, proxy.sip, "127.0.0.2:9", method, "");
        // Not even 100 Trying: sip_exchange returns the first of any answer here.
        let socket = UdpSocket::bind(("127.0.0.2", 0)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(700)))
            .unwrap();
        socket.send_to(request.as_bytes(), proxy.sip).unwrap();
        let mut buf = [0u8; 2048];
        assert!(
            socket.recv_from(&mut buf).is_err(),
            "{method} got an answer"
        );
    }
    assert_eq!(refused(&proxy, "unknown_source"), 3.0);
    let scan = raw_request(
        "OPTIONS",
        proxy.sip,
        "127.0.0.1:9",
        "scan",
        "User-Agent: friendly-scanner\r\n",
    );
    assert_eq!(
        sip_exchange("127.0.0.1", proxy.sip, scan.as_bytes(), WAIT),
        ""
    );
    assert_eq!(refused(&proxy, "scanner"), 1.0);
    // The trunk's own OPTIONS and calls go on.
    let ping = raw_request("OPTIONS", proxy.sip, "127.0.0.1:9", "ping", "");
    let answer = sip_exchange("127.0.0.1", proxy.sip, ping.as_bytes(), WAIT);
    assert!(answer.starts_with("SIP/2.0 200 "), "{answer}");
    let target = proxy.sip.to_string();
    let (_, report) = run_calls(&["--target", &target, "--total", "2", "--hold", "200ms"]);
    assert_eq!(field(&report, &["calls", "completed"]), 2, "{report:#}");
    assert_eq!(proxy.counter("voxgate_sessions_started_total"), 2.0);
}

#[test]
fn the_carrier_identity_reaches_a_sipp_backend_as_the_policy_says() {
    let test = "trust-identity";
    let backend = SippBackend::new("b1", "identity_uas.xml");
    let config = "[[trunks]]\nname = \"carrier\"\nsources = [\"127.0.0.0/8\"]\npass_headers = [\"X-Acc*\"]\n";
    let Some(mut bench) = SippBench::start(test, &[backend], config) else {
        return;
    };
    bench.call("identity_uac.xml");
    // The scenario checked what must be there; here, what must not.
    let received = bench.backends[0].messages();
    let invite = received
        .split("INVITE sip:")
        .nth(1)
        .unwrap_or_else(|| panic!("no INVITE in\n{received}"));
    let invite = invite.split("\n\n").next().unwrap_or(invite);
    assert!(!invite.contains("X-Secret"), "{invite}");
    assert!(!invite.contains("forged"), "{invite}");
    assert_eq!(invite.matches("X-Voxgate-Trunk").count(), 1, "{invite}");
}

#[test]
fn a_flood_from_one_source_bans_it_while_other_callers_complete() {
    const KEY: &str = "trust-flood-admin-key-0123456789abcdef";
    let (_backend, addr) = start_backend("trust-flood-b1", &[]);
    let config = format!(
        "[cluster]\nadmin_key = \"{KEY}\"\n[health]\ninterval = \"1s\"\n\
         [sip.flood]\nrate = 200\nburst = 400\nban = \"30s\"\nexempt = []\n\
         [[trunks]]\nname = \"local\"\nsources = [\"127.0.0.0/8\"]\n{}",
        backend_toml("b1", addr, 50, None)
    );
    let proxy = Proxy::start("trust-flood", &config);
    let rss = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", proxy.process.child.id()))
            .unwrap_or_default();
        common::numbers_in(
            status
                .lines()
                .find(|l| l.starts_with("VmRSS"))
                .unwrap_or("0"),
        )
        .first()
        .copied()
        .unwrap_or(0)
    };
    let target = proxy.sip.to_string();
    let calls = std::thread::spawn(move || {
        run_calls(&[
            "--target", &target, "--total", "20", "--rate", "10", "--hold", "300ms",
        ])
    });
    let before = rss();
    // 5,000 OPTIONS in about 2 s from 127.0.0.3, each a new transaction.
    let flooder = UdpSocket::bind(("127.0.0.3", 0)).unwrap();
    let started = Instant::now();
    for i in 0..5_000u32 {
        let request = raw_request(
            "OPTIONS",
            proxy.sip,
            "127.0.0.3:9",
            &format!("flood{i}"),
            "",
        );
        flooder.send_to(request.as_bytes(), proxy.sip).unwrap();
        if i % 250 == 249 {
            let due = Duration::from_millis(u64::from(i + 1) * 2_000 / 5_000);
            std::thread::sleep(due.saturating_sub(started.elapsed()));
        }
    }
    let banned = wait_until(Duration::from_secs(5), || {
        proxy.metric_opt("voxgate_sip_banned_sources") == Some(1.0)
    });
    assert!(banned, "{}", proxy.metrics());
    // Of what reached voxgate (the kernel may drop some of a burst), everything past the burst
    // (400) and the rate (200/s) while the flood lasted was dropped unanswered.
    let flood_secs = started.elapsed().as_secs_f64();
    let arrived = proxy.counter("voxgate_sip_messages_total{method=\"OPTIONS\",direction=\"in\"}");
    let dropped = refused(&proxy, "banned");
    let passed = arrived - dropped;
    assert!(
        arrived > 2_500.0 && passed <= 400.0 + 200.0 * flood_secs + 50.0,
        "{arrived} arrived, {dropped} dropped in {flood_secs:.1} s:\n{}",
        proxy.metrics()
    );
    let (status, bans, _) = json_request(proxy.http, "GET", "/v1/bans", Some(KEY), None);
    assert_eq!(status, 200, "{bans}");
    assert_eq!(bans["bans"][0]["source"], "127.0.0.3", "{bans}");
    assert!(
        bans["bans"][0]["dropped"].as_u64().unwrap() > 3_000,
        "{bans}"
    );
    let (output, report) = calls.join().unwrap();
    assert_eq!(
        field(&report, &["calls", "completed"]),
        20,
        "{report:#}\n{output:?}"
    );
    let after = rss();
    eprintln!("voxgate RSS before the flood {before} kB, after {after} kB");
    // A banned source's OPTIONS now gets nothing.
    let late = raw_request("OPTIONS", proxy.sip, "127.0.0.3:9", "late", "");
    assert_eq!(
        sip_exchange(
            "127.0.0.3",
            proxy.sip,
            late.as_bytes(),
            Duration::from_millis(500)
        ),
        ""
    );
}
