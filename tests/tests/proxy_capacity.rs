//! The node cap: with `limits.max_sessions = 5`, 25 simultaneous calls give exactly 5 answered and
//! 20 `503` with Retry-After; readiness and OPTIONS follow the cap; every slot comes back.

// A plain test thread drives real processes: real clock and sleeps; setup failures may panic.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::uac::{Uac, header};
use common::{
    Proxy, backend_toml, field, raw_request, run_calls, sip_exchange, start_backend, wait_until,
};

#[test]
fn cap_admits_exactly_n_and_rejects_the_rest_with_retry_after() {
    let (_backend, addr) = start_backend("cap-b1", &["--max-sessions", "50"]);
    let config = format!(
        "[limits]\nmax_sessions = 5\nhigh_water = 0.9\nretry_after = \"5s\"\n[health]\ninterval = \"1s\"\n{}",
        backend_toml("b1", addr, 50, None)
    );
    let mut proxy = Proxy::start("cap-proxy", &config);
    assert_eq!(proxy.get("/readyz").0, 200, "ready before any call");
    assert_eq!(proxy.metric("voxgate_sessions_limit"), 5.0);

    let target = proxy.sip.to_string();
    let load = std::thread::spawn(move || {
        run_calls(&[
            "--target",
            &target,
            "--concurrency",
            "25",
            "--rate",
            "200",
            "--total",
            "25",
            "--hold",
            "3s",
        ])
    });
    // While the 5 admitted calls are held: the cap is full.
    let full = wait_until(Duration::from_secs(3), || {
        proxy.metric("voxgate_sessions_active") == 5.0
    });
    assert!(full, "cap never reached:\n{}", proxy.metrics());
    assert_eq!(proxy.metric("voxgate_sessions_available"), 0.0);
    let (status, body) = proxy.get("/readyz");
    assert_eq!(status, 503, "not unready at the high-water mark: {body}");

    let mut uac = Uac::new("127.0.0.1", proxy.sip);
    uac.send_invite();
    let (_, refused) = uac
        .final_response(rsip::Method::Invite, Duration::from_secs(3))
        .expect("no answer to an INVITE at the cap");
    assert_eq!(refused.status_code.code(), 503, "{refused}");
    let retry: u64 = header(&refused, "Retry-After")
        .expect("503 without Retry-After")
        .trim()
        .parse()
        .unwrap();
    assert!(
        (5..=8).contains(&retry),
        "Retry-After {retry} not 5s + jitter"
    );

    let options = raw_request("OPTIONS", proxy.sip, "127.0.0.1:9", "cap-options", "");
    let answer = sip_exchange(
        "127.0.0.1",
        proxy.sip,
        options.as_bytes(),
        Duration::from_secs(2),
    );
    assert!(
        answer.starts_with("SIP/2.0 503 "),
        "OPTIONS at the cap: {answer:?}"
    );

    let (output, report) = load.join().unwrap();
    assert!(output.status.success(), "{report:#}");
    assert_eq!(field(&report, &["calls", "attempted"]), 25, "{report:#}");
    assert_eq!(field(&report, &["calls", "answered"]), 5, "{report:#}");
    assert_eq!(field(&report, &["calls", "completed"]), 5, "{report:#}");
    assert_eq!(
        field(&report, &["calls", "rejected", "503"]),
        20,
        "{report:#}"
    );

    proxy.assert_idle(Duration::from_secs(5));
    assert_eq!(
        proxy.get("/readyz").0,
        200,
        "still unready after the calls ended"
    );
    assert_eq!(proxy.counter("voxgate_sessions_started_total"), 5.0);
    assert_eq!(
        proxy.counter("voxgate_sessions_rejected_total{reason=\"capacity\"}"),
        21.0,
        "{}",
        proxy.metrics()
    );
    let options = raw_request("OPTIONS", proxy.sip, "127.0.0.1:9", "cap-options-2", "");
    let answer = sip_exchange(
        "127.0.0.1",
        proxy.sip,
        options.as_bytes(),
        Duration::from_secs(2),
    );
    assert!(
        answer.starts_with("SIP/2.0 200 "),
        "OPTIONS below the cap: {answer:?}"
    );
    proxy.assert_alive();
}
