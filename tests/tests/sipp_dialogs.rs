//! Dialogs that real peers send, through a running voxgate: a SIPp UAC scenario as the caller and
//! a SIPp UAS scenario as the only Backend (both in `tests/sipp/`, each with a header saying what
//! it checks). A test passes when both sipp processes exit 0 (every check of both scenarios held)
//! and voxgate is idle afterwards. Skipped with a printed reason where sipp is not installed;
//! failed instead under CI.

// A plain test thread drives real processes: real clock and sleeps; setup failures may panic.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use common::sipp::{ProbeCatcher, ScenarioPeer, sipp_or_skip};
use common::{Proxy, backend_toml, lease_port};

/// Every test's health section: voxgate probes each Backend with OPTIONS at start and then once
/// per interval; the start probe is answered by a [`ProbeCatcher`], the next comes after the test.
const HEALTH: &str = "[health]\ninterval = \"60s\"\nfailures_to_down = 3\n";
/// Session timers short enough for a test (RFC 4028): Min-SE 4 s.
const SESSION_TIMERS: &str = "[sip]\nmin_se = \"4s\"\n";
/// A ring deadline short enough for a test.
const RING_DEADLINE: &str = "[routing]\ninvite_timeout = \"1s\"\nring_timeout = \"3s\"\n";
/// How long a caller scenario may take (the longest, the session refresh, takes about 9 s).
const CALLER_LIMIT: Duration = Duration::from_secs(20);

/// A voxgate whose only Backend is a SIPp UAS scenario taking one call.
struct Bench {
    test: String,
    sipp: PathBuf,
    proxy: Proxy,
    backend: ScenarioPeer,
}

impl Bench {
    /// Starts voxgate with `config` (sections besides health and backends) and the Backend
    /// scenario `uas`; `None` after printing why the test is skipped.
    fn start(test: &str, uas: &str, config: &str) -> Option<Self> {
        let sipp = sipp_or_skip(test)?;
        let port = lease_port();
        let catcher = ProbeCatcher::bind(port);
        let address = format!("127.0.0.1:{port}").parse().unwrap();
        let config = format!(
            "{HEALTH}{config}{}",
            backend_toml("sipp", address, 10, None)
        );
        let proxy = Proxy::start(test, &config);
        catcher.answer_and_release(Duration::from_secs(2));
        let backend = ScenarioPeer::uas(&format!("{test}-uas"), &sipp, uas, port, 1, proxy.media);
        Some(Self {
            test: test.to_owned(),
            sipp,
            proxy,
            backend,
        })
    }

    /// Places one call with the caller scenario `uac` and waits for it and for the Backend
    /// scenario; panics with both message traces and voxgate's log unless both exited 0. Returns
    /// how long the caller's scenario ran.
    fn call(&mut self, uac: &str) -> Duration {
        let (caller, elapsed) = self.caller(uac);
        let status = self.backend.wait(Duration::from_secs(5));
        if !passed(status) {
            self.fail(&format!("Backend scenario {status:?}"), &caller);
        }
        elapsed
    }

    /// Runs the caller scenario `uac` alone (the Backend scenario keeps running): panics as
    /// [`Bench::call`] unless it exited 0; returns it and how long it ran.
    fn caller(&mut self, uac: &str) -> (ScenarioPeer, Duration) {
        let mut caller = ScenarioPeer::uac(
            &format!("{}-uac", self.test),
            &self.sipp,
            uac,
            self.proxy.sip,
            self.proxy.media,
        );
        // A Backend scenario that failed leaves the caller waiting: give up a second later.
        let mut failed_at = None;
        let backend = &mut self.backend;
        let status = caller.wait_unless(CALLER_LIMIT, || {
            if backend.status().is_some_and(|s| !s.success()) {
                let at = *failed_at.get_or_insert_with(Instant::now);
                return at.elapsed() > Duration::from_secs(1);
            }
            false
        });
        let elapsed = caller.elapsed();
        if !passed(status) {
            self.fail(
                &format!("caller scenario {status:?} after {elapsed:?}"),
                &caller,
            );
        }
        (caller, elapsed)
    }

    fn fail(&self, what: &str, caller: &ScenarioPeer) -> ! {
        panic!(
            "{}: {what}\n{}\n{}\n==== voxgate log\n{}",
            self.test,
            caller.report(),
            self.backend.report(),
            self.proxy.process.log()
        )
    }

    /// voxgate has no session and no media port left, and exactly one session ended, for `cause`.
    fn assert_ended_once(&self, cause: &str) {
        self.proxy.assert_idle(Duration::from_secs(5));
        assert_eq!(ended_causes(&self.proxy), vec![(cause.to_owned(), 1.0)]);
    }
}

fn passed(status: Option<ExitStatus>) -> bool {
    status.is_some_and(|s| s.success())
}

/// Every `voxgate_sessions_ended_total` sample that is not 0: (cause, count).
fn ended_causes(proxy: &Proxy) -> Vec<(String, f64)> {
    proxy
        .metrics()
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("voxgate_sessions_ended_total{cause=\"")?;
            let (cause, value) = rest.split_once("\"} ")?;
            let value: f64 = value.trim().parse().ok()?;
            (value != 0.0).then(|| (cause.to_owned(), value))
        })
        .collect()
}

#[test]
fn late_offer_gets_the_backends_offer_and_acks_the_callers_answer() {
    let test = "late_offer_gets_the_backends_offer_and_acks_the_callers_answer";
    let Some(mut bench) = Bench::start(test, "late_offer_uas.xml", "") else {
        return;
    };
    bench.call("late_offer_uac.xml");
    bench.assert_ended_once("caller_bye");
}

#[test]
fn offerless_reinvite_is_relayed_and_the_answer_comes_in_the_ack() {
    let test = "offerless_reinvite_is_relayed_and_the_answer_comes_in_the_ack";
    let Some(mut bench) = Bench::start(test, "reinvite_offerless_uas.xml", "") else {
        return;
    };
    bench.call("reinvite_offerless_uac.xml");
    bench.assert_ended_once("caller_bye");
}

#[test]
fn caller_requiring_100rel_gets_reliable_provisionals() {
    let test = "caller_requiring_100rel_gets_reliable_provisionals";
    let Some(mut bench) = Bench::start(test, "ringing_uas.xml", "") else {
        return;
    };
    bench.call("prack_uac.xml");
    bench.assert_ended_once("caller_bye");
}

#[test]
fn backend_requiring_100rel_gets_prack() {
    let test = "backend_requiring_100rel_gets_prack";
    let Some(mut bench) = Bench::start(test, "prack_uas.xml", "") else {
        return;
    };
    bench.call("plain_uac.xml");
    bench.assert_ended_once("caller_bye");
}

#[test]
fn both_legs_requiring_100rel_each_get_prack() {
    let test = "both_legs_requiring_100rel_each_get_prack";
    let Some(mut bench) = Bench::start(test, "prack_uas.xml", "") else {
        return;
    };
    bench.call("prack_uac.xml");
    bench.assert_ended_once("caller_bye");
}

#[test]
fn caller_update_with_sdp_is_relayed_and_rewritten() {
    let test = "caller_update_with_sdp_is_relayed_and_rewritten";
    let Some(mut bench) = Bench::start(test, "update_caller_uas.xml", "") else {
        return;
    };
    bench.call("update_caller_uac.xml");
    bench.assert_ended_once("caller_bye");
}

#[test]
fn backend_update_with_sdp_is_relayed_and_rewritten() {
    let test = "backend_update_with_sdp_is_relayed_and_rewritten";
    let Some(mut bench) = Bench::start(test, "update_backend_uas.xml", "") else {
        return;
    };
    bench.call("update_backend_uac.xml");
    bench.assert_ended_once("caller_bye");
}

#[test]
fn early_dialog_update_is_relayed_and_rewritten() {
    let test = "early_dialog_update_is_relayed_and_rewritten";
    let Some(mut bench) = Bench::start(test, "early_update_uas.xml", "") else {
        return;
    };
    bench.call("early_update_uac.xml");
    bench.assert_ended_once("caller_bye");
}

#[test]
fn unrefreshed_session_timer_ends_the_call_before_expiry() {
    let test = "unrefreshed_session_timer_ends_the_call_before_expiry";
    let Some(mut bench) = Bench::start(test, "timer_uas.xml", SESSION_TIMERS) else {
        return;
    };
    let elapsed = bench.call("timer_expiry_uac.xml");
    // Session-Expires 8 s: BYE at expiry minus min(32 s, SE/3), about 5.3 s after the answer.
    assert!(
        elapsed > Duration::from_millis(4500) && elapsed < Duration::from_millis(8000),
        "voxgate's BYE came {elapsed:?} after the INVITE; expected about 5.3 s"
    );
    bench.assert_ended_once("session_expired");
}

#[test]
fn session_timer_below_min_se_gets_422() {
    let test = "session_timer_below_min_se_gets_422";
    let Some(mut bench) = Bench::start(test, "timer_uas.xml", SESSION_TIMERS) else {
        return;
    };
    bench.caller("timer_too_small_uac.xml");
    bench.proxy.assert_idle(Duration::from_secs(5));
    let backend_saw = bench.backend.messages();
    assert!(
        !backend_saw.contains("INVITE"),
        "the Backend got a call voxgate should have refused:\n{backend_saw}"
    );
}

#[test]
fn session_refreshed_by_update_outlives_its_first_interval() {
    let test = "session_refreshed_by_update_outlives_its_first_interval";
    let Some(mut bench) = Bench::start(test, "timer_uas.xml", SESSION_TIMERS) else {
        return;
    };
    bench.call("timer_refresh_uac.xml");
    bench.assert_ended_once("caller_bye");
}

#[test]
fn ring_deadline_cancels_the_backend_and_gives_the_caller_408() {
    let test = "ring_deadline_cancels_the_backend_and_gives_the_caller_408";
    let Some(mut bench) = Bench::start(test, "ring_uas.xml", RING_DEADLINE) else {
        return;
    };
    let elapsed = bench.call("ring_uac.xml");
    assert!(
        elapsed > Duration::from_millis(2500),
        "408 after {elapsed:?}, before the 3 s ring deadline"
    );
    bench.assert_ended_once("ring_timeout");
}
