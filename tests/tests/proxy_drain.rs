//! Drain: SIGTERM stops new sessions (503 + Retry-After, `/readyz` false) while calls already up
//! run to their end, then the process exits 0; calls still up at `drain.deadline`, or when a
//! second SIGTERM comes, are ended with BYE to both sides rather than dropped.

// A plain test thread drives real processes: real clock and sleeps; setup failures may panic.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::uac::{Uac, header};
use common::{Proxy, backend_status, backend_toml, field, run_calls, start_backend, wait_until};

fn proxy_for(name: &str, backend: SocketAddr, deadline: &str) -> Proxy {
    let config = format!(
        "[limits]\nmax_sessions = 20\n[drain]\ndeadline = \"{deadline}\"\n[health]\ninterval = \"1s\"\n{}",
        backend_toml("b1", backend, 50, None)
    );
    Proxy::start(name, &config)
}

#[test]
fn drain_lets_calls_finish_refuses_new_ones_and_exits_zero() {
    let (_backend, addr) = start_backend("drain-b1", &[]);
    let mut proxy = proxy_for("drain-proxy", addr, "30s");
    let target = proxy.sip.to_string();
    let load = std::thread::spawn(move || {
        run_calls(&[
            "--target",
            &target,
            "--concurrency",
            "4",
            "--rate",
            "100",
            "--total",
            "4",
            "--hold",
            "3s",
        ])
    });
    assert!(
        wait_until(Duration::from_secs(3), || {
            proxy.metric("voxgate_sessions_active") == 4.0
        }),
        "calls never came up:\n{}",
        proxy.metrics()
    );

    proxy.process.signal("TERM");
    let draining = wait_until(Duration::from_secs(2), || {
        let (status, body) = proxy.get("/readyz");
        status == 503 && body.contains("draining")
    });
    assert!(draining, "/readyz not false while draining");
    assert_eq!(proxy.metric("voxgate_drain_remaining_sessions"), 4.0);

    // A new call is refused with Retry-After while the four go on.
    let mut late = Uac::new("127.0.0.1", proxy.sip);
    late.send_invite();
    let (_, refused) = late
        .final_response(rsip::Method::Invite, Duration::from_secs(3))
        .expect("no answer to an INVITE while draining");
    assert_eq!(refused.status_code.code(), 503, "{refused}");
    assert!(header(&refused, "Retry-After").is_some(), "{refused}");

    let (output, report) = load.join().unwrap();
    assert!(output.status.success(), "{report:#}");
    assert_eq!(field(&report, &["calls", "completed"]), 4, "{report:#}");
    assert_eq!(field(&report, &["calls", "failed"]), 0, "{report:#}");
    assert!(
        proxy.process.wait_exit(Duration::from_secs(10)),
        "voxgate did not exit 0 after the last call:\n{}",
        proxy.process.log()
    );
}

#[test]
fn drain_deadline_ends_remaining_calls_with_bye_to_both_sides() {
    let (backend, addr) = start_backend("dl-b1", &["--status-every", "300ms"]);
    let mut proxy = proxy_for("dl-proxy", addr, "1s");
    let (mut uac, _) = Uac::answered("127.0.0.1", proxy.sip);

    proxy.process.signal("TERM");
    let started = Instant::now();
    let bye = uac
        .recv_request(rsip::Method::Bye, Duration::from_secs(5))
        .expect("no BYE at the drain deadline");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "BYE after {:?}, before the 1 s deadline",
        started.elapsed()
    );
    uac.respond(&bye, 200);
    let hung_up = wait_until(Duration::from_secs(3), || {
        backend_status(&backend.log(), "ended") == Some(1)
    });
    assert!(
        hung_up,
        "the Backend still has the call:\n{}",
        backend.log()
    );
    assert!(
        proxy.process.wait_exit(Duration::from_secs(5)),
        "voxgate did not exit 0 after the deadline:\n{}",
        proxy.process.log()
    );
}

#[test]
fn second_sigterm_ends_calls_with_bye_at_once() {
    let (backend, addr) = start_backend("twice-b1", &["--status-every", "300ms"]);
    let mut proxy = proxy_for("twice-proxy", addr, "10m");
    let (mut uac, _) = Uac::answered("127.0.0.1", proxy.sip);

    proxy.process.signal("TERM");
    assert!(wait_until(Duration::from_secs(2), || proxy
        .get("/readyz")
        .0
        == 503));
    proxy.process.signal("TERM");
    let bye = uac
        .recv_request(rsip::Method::Bye, Duration::from_secs(3))
        .expect("no BYE after the second SIGTERM");
    uac.respond(&bye, 200);
    let hung_up = wait_until(Duration::from_secs(3), || {
        backend_status(&backend.log(), "ended") == Some(1)
    });
    assert!(
        hung_up,
        "the Backend still has the call:\n{}",
        backend.log()
    );
    assert!(
        proxy.process.wait_exit(Duration::from_secs(5)),
        "voxgate did not exit 0:\n{}",
        proxy.process.log()
    );
}

#[test]
fn drain_command_drains_the_local_node_and_waits_for_its_exit() {
    const KEY: &str = "drain-cli-admin-key-0123456789abcdef";
    let (_backend, addr) = start_backend("cli-b1", &[]);
    let config = format!(
        "[limits]\nmax_sessions = 20\n[health]\ninterval = \"1s\"\n{}",
        backend_toml("b1", addr, 50, None)
    );
    let mut proxy = Proxy::start_with_env(
        "cli-proxy",
        &config,
        &[("VOXGATE_CLUSTER__ADMIN_KEY", KEY.to_owned())],
    );
    let output = std::process::Command::new(common::binary("voxgate"))
        .args(["drain", "--wait", "--timeout", "10s"])
        .env("VOXGATE_HTTP__LISTEN", proxy.http.to_string())
        .env("VOXGATE_CLUSTER__ADMIN_KEY", KEY)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "voxgate drain failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("\"draining\":true"), "{stdout}");
    assert!(
        proxy.process.wait_exit(Duration::from_secs(5)),
        "the node did not exit 0:\n{}",
        proxy.process.log()
    );
    // Without the key the command says what is missing.
    let output = std::process::Command::new(common::binary("voxgate"))
        .arg("drain")
        .env("VOXGATE_HTTP__LISTEN", proxy.http.to_string())
        .env_remove("VOXGATE_CLUSTER__ADMIN_KEY")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("VOXGATE_CLUSTER__ADMIN_KEY"));
}

#[test]
fn a_call_still_ringing_at_the_deadline_is_cancelled_and_refused() {
    let (_backend, addr) = start_backend("ring-b1", &["--answer-delay", "30s"]);
    let mut proxy = proxy_for("ring-proxy", addr, "1s");
    let mut uac = Uac::new("127.0.0.1", proxy.sip);
    uac.send_invite();
    uac.wait_response(rsip::Method::Invite, 180, Duration::from_secs(3))
        .expect("no 180 Ringing");

    proxy.process.signal("TERM");
    let (_, refused) = uac
        .final_response(rsip::Method::Invite, Duration::from_secs(5))
        .expect("the ringing call got no final answer at the deadline");
    assert_eq!(refused.status_code.code(), 503, "{refused}");
    assert!(header(&refused, "Retry-After").is_some(), "{refused}");
    assert!(
        proxy.process.wait_exit(Duration::from_secs(5)),
        "voxgate did not exit 0 with a call ringing:\n{}",
        proxy.process.log()
    );
}
