//! Backend selection: least utilization across Backends of different caps, a stopped Backend
//! marked down by probing, a 503 + Retry-After cooldown, and failover from a silent Backend.

// A plain test thread drives real processes: real clock and sleeps; setup failures may panic.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{
    Proxy, SilentPeer, backend_status, backend_toml, field, field_f64, run_calls, start_backend,
    wait_until,
};

fn active(proxy: &Proxy, backend: &str) -> f64 {
    proxy.metric(&format!(
        "voxgate_backend_sessions_active{{backend=\"{backend}\",region=\"US-EAST\"}}"
    ))
}

fn up(proxy: &Proxy, backend: &str) -> f64 {
    proxy.metric(&format!(
        "voxgate_backend_up{{backend=\"{backend}\",region=\"US-EAST\"}}"
    ))
}

#[test]
fn calls_split_by_utilization() {
    let (_small, small_addr) = start_backend("split-small", &["--max-sessions", "50"]);
    let (_big, big_addr) = start_backend("split-big", &["--max-sessions", "50"]);
    let config = format!(
        "[health]\ninterval = \"1s\"\n{}{}",
        backend_toml("small", small_addr, 4, None),
        backend_toml("big", big_addr, 12, None)
    );
    let proxy = Proxy::start("split-proxy", &config);
    let target = proxy.sip.to_string();
    let load = std::thread::spawn(move || {
        run_calls(&[
            "--target",
            &target,
            "--concurrency",
            "8",
            "--rate",
            "20",
            "--total",
            "8",
            "--hold",
            "3s",
        ])
    });
    let held = wait_until(Duration::from_secs(3), || {
        proxy.metric("voxgate_sessions_active") == 8.0
    });
    assert!(held, "8 calls not up:\n{}", proxy.metrics());
    let (small, big) = (active(&proxy, "small"), active(&proxy, "big"));
    assert_eq!(small + big, 8.0);
    // Equal utilization is 2/4 and 6/12; ties are broken at random, so one call either way.
    assert!(
        (1.0..=3.0).contains(&small) && (5.0..=7.0).contains(&big),
        "split small {small} / big {big} is not by utilization"
    );
    let (output, report) = load.join().unwrap();
    assert!(output.status.success(), "{report:#}");
    assert_eq!(field(&report, &["calls", "completed"]), 8, "{report:#}");
    proxy.assert_idle(Duration::from_secs(5));
    assert_eq!(active(&proxy, "small"), 0.0);
    assert_eq!(active(&proxy, "big"), 0.0);
}

#[test]
fn stopped_backend_is_marked_down_and_gets_no_calls() {
    let (mut doomed, doomed_addr) = start_backend("down-doomed", &[]);
    let (_good, good_addr) = start_backend("down-good", &[]);
    let config = format!(
        "[routing]\ninvite_timeout = \"2s\"\n[health]\ninterval = \"200ms\"\nfailures_to_down = 2\nsuccesses_to_up = 2\n{}{}",
        backend_toml("doomed", doomed_addr, 10, None),
        backend_toml("good", good_addr, 10, None)
    );
    let proxy = Proxy::start("down-proxy", &config);
    assert!(wait_until(Duration::from_secs(2), || up(&proxy, "doomed") == 1.0));

    // Stop it, and take its port so any INVITE sent there is seen (and never answered).
    doomed.child.kill().unwrap();
    doomed.child.wait().unwrap();
    let ghost = SilentPeer::bind(&doomed_addr.to_string());
    let down = wait_until(Duration::from_secs(2), || up(&proxy, "doomed") == 0.0);
    assert!(down, "stopped Backend still up:\n{}", proxy.metrics());
    assert!(
        ghost.calls("OPTIONS") >= 1,
        "probes do not reach its address"
    );
    assert_eq!(up(&proxy, "good"), 1.0);

    let (output, report) = run_calls(&[
        "--target",
        &proxy.sip.to_string(),
        "--concurrency",
        "6",
        "--rate",
        "20",
        "--total",
        "6",
        "--hold",
        "500ms",
        "--max-failure-rate",
        "0",
    ]);
    assert!(output.status.success(), "{report:#}");
    assert_eq!(field(&report, &["calls", "completed"]), 6, "{report:#}");
    assert_eq!(ghost.calls("INVITE"), 0, "a down Backend was sent calls");
    // No call waited for the dead Backend's invite timeout.
    assert!(
        field_f64(&report, &["setup_ms", "max"]) < 1000.0,
        "{report:#}"
    );
    proxy.assert_idle(Duration::from_secs(5));
}

#[test]
fn backend_503_cools_down_for_its_retry_after() {
    let (mut busy, busy_addr) = start_backend(
        "cool-busy",
        &[
            "--max-sessions",
            "0",
            "--retry-after",
            "3s",
            "--status-every",
            "100ms",
        ],
    );
    let (_good, good_addr) = start_backend("cool-good", &[]);
    let config = format!(
        "[health]\ninterval = \"1s\"\n{}{}",
        backend_toml("busy", busy_addr, 10, None),
        backend_toml("good", good_addr, 10, None)
    );
    let proxy = Proxy::start("cool-proxy", &config);
    let target = proxy.sip.to_string();
    let burst = |total: &str, hold: &str| {
        let (output, report) = run_calls(&[
            "--target",
            &target,
            "--concurrency",
            total,
            "--rate",
            "20",
            "--total",
            total,
            "--hold",
            hold,
            "--max-failure-rate",
            "0",
        ]);
        assert!(output.status.success(), "{report:#}");
        assert_eq!(
            field(&report, &["calls", "completed"]),
            total.parse::<u64>().unwrap(),
            "{report:#}"
        );
    };
    let rejected = |busy: &common::Running| backend_status(&busy.log(), "rejected").unwrap_or(0);
    // A burst well inside the Retry-After: every call is answered by the good Backend, the busy
    // one having been tried (and failed over from) once.
    let started = std::time::Instant::now();
    burst("6", "500ms");
    assert!(
        wait_until(Duration::from_secs(2), || rejected(&busy) >= 1),
        "the busy Backend was never tried:\n{}",
        busy.log()
    );
    // Of two held calls one goes to the less utilized Backend, so a pair of calls tries the busy
    // one whenever it is eligible: pairs until it is tried again, which must not be before its
    // Retry-After has run out.
    let retried = wait_until(Duration::from_secs(15), || {
        burst("2", "300ms");
        rejected(&busy) >= 2
    });
    let waited = started.elapsed();
    assert!(
        retried,
        "the busy Backend was never tried again:\n{}",
        busy.log()
    );
    assert!(
        waited >= Duration::from_secs(3),
        "the busy Backend was tried again {waited:?} after the first 503, inside its 3 s Retry-After"
    );
    proxy.assert_idle(Duration::from_secs(5));

    assert!(busy.terminate(Duration::from_secs(10)), "{}", busy.log());
    assert_eq!(
        rejected(&busy),
        2,
        "busy Backend should be tried once per Retry-After window:\n{}",
        busy.log()
    );
}

#[test]
fn silent_backend_fails_over_after_invite_timeout() {
    let silent = SilentPeer::bind("127.0.0.1:0");
    let (_good, good_addr) = start_backend("silent-good", &[]);
    // Probing slow enough that the silent Backend stays "up" for the whole test.
    let config = format!(
        "[routing]\ninvite_timeout = \"500ms\"\n[health]\ninterval = \"30s\"\nfailures_to_down = 3\n{}{}",
        backend_toml("silent", silent.addr, 10, None),
        backend_toml("good", good_addr, 10, None)
    );
    let proxy = Proxy::start("silent-proxy", &config);
    let target = proxy.sip.to_string();
    let one_call = || {
        let before = silent.calls("INVITE");
        let (output, report) = run_calls(&[
            "--target",
            &target,
            "--total",
            "1",
            "--hold",
            "200ms",
            "--max-failure-rate",
            "0",
        ]);
        assert!(output.status.success(), "{report:#}");
        assert_eq!(field(&report, &["calls", "completed"]), 1, "{report:#}");
        (
            silent.calls("INVITE") > before,
            field_f64(&report, &["setup_ms", "max"]),
        )
    };
    // Ties are broken at random: call until one goes to the silent Backend first.
    let mut tried_silent = false;
    for _ in 0..16 {
        let (via_silent, setup) = one_call();
        if via_silent {
            assert!(
                (500.0..2000.0).contains(&setup),
                "setup {setup} ms after trying the silent Backend"
            );
            tried_silent = true;
            break;
        }
        assert!(setup < 400.0, "setup {setup} ms without the silent Backend");
    }
    assert!(tried_silent, "16 calls never picked the silent Backend");
    // Held out for a probe interval after its silence: the next calls do not wait on it.
    for _ in 0..3 {
        let (via_silent, setup) = one_call();
        assert!(!via_silent, "a call tried the silent Backend again at once");
        assert!(setup < 400.0, "setup {setup} ms");
    }
    assert_eq!(up(&proxy, "silent"), 1.0, "probing already marked it down");
    proxy.assert_idle(Duration::from_secs(5));
}
