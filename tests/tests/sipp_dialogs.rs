//! Dialogs that real peers send, through a running voxgate: a SIPp UAC scenario as the caller and
//! a SIPp UAS scenario as the only Backend (both in `tests/sipp/`, each with a header saying what
//! it checks). A test passes when both sipp processes exit 0 (every check of both scenarios held)
//! and voxgate is idle afterwards. Skipped with a printed reason where sipp is not installed;
//! failed instead under CI.

// A plain test thread drives real processes: real clock and sleeps; setup failures may panic.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::sipp::{SippBackend, SippBench};

/// Session timers short enough for a test (RFC 4028): Min-SE 4 s.
const SESSION_TIMERS: &str = "[sip]\nmin_se = \"4s\"\n";
/// A ring deadline short enough for a test.
const RING_DEADLINE: &str = "[routing]\ninvite_timeout = \"1s\"\nring_timeout = \"3s\"\n";

/// A voxgate whose only Backend is the SIPp UAS scenario `uas`, with `config` (sections besides
/// health and backends); `None` after printing why `test` is skipped.
fn one_backend(test: &str, uas: &str, config: &str) -> Option<SippBench> {
    SippBench::start(test, &[SippBackend::new("sipp", uas)], config)
}

#[test]
fn late_offer_gets_the_backends_offer_and_acks_the_callers_answer() {
    let test = "late_offer_gets_the_backends_offer_and_acks_the_callers_answer";
    let Some(mut bench) = one_backend(test, "late_offer_uas.xml", "") else {
        return;
    };
    bench.call("late_offer_uac.xml");
    bench.assert_ended_once("caller_bye");
}

#[test]
fn offerless_reinvite_is_relayed_and_the_answer_comes_in_the_ack() {
    let test = "offerless_reinvite_is_relayed_and_the_answer_comes_in_the_ack";
    let Some(mut bench) = one_backend(test, "reinvite_offerless_uas.xml", "") else {
        return;
    };
    bench.call("reinvite_offerless_uac.xml");
    bench.assert_ended_once("caller_bye");
}

#[test]
fn caller_requiring_100rel_gets_reliable_provisionals() {
    let test = "caller_requiring_100rel_gets_reliable_provisionals";
    let Some(mut bench) = one_backend(test, "ringing_uas.xml", "") else {
        return;
    };
    bench.call("prack_uac.xml");
    bench.assert_ended_once("caller_bye");
}

#[test]
fn backend_requiring_100rel_gets_prack() {
    let test = "backend_requiring_100rel_gets_prack";
    let Some(mut bench) = one_backend(test, "prack_uas.xml", "") else {
        return;
    };
    bench.call("plain_uac.xml");
    bench.assert_ended_once("caller_bye");
}

#[test]
fn both_legs_requiring_100rel_each_get_prack() {
    let test = "both_legs_requiring_100rel_each_get_prack";
    let Some(mut bench) = one_backend(test, "prack_uas.xml", "") else {
        return;
    };
    bench.call("prack_uac.xml");
    bench.assert_ended_once("caller_bye");
}

#[test]
fn caller_update_with_sdp_is_relayed_and_rewritten() {
    let test = "caller_update_with_sdp_is_relayed_and_rewritten";
    let Some(mut bench) = one_backend(test, "update_caller_uas.xml", "") else {
        return;
    };
    bench.call("update_caller_uac.xml");
    bench.assert_ended_once("caller_bye");
}

#[test]
fn backend_update_with_sdp_is_relayed_and_rewritten() {
    let test = "backend_update_with_sdp_is_relayed_and_rewritten";
    let Some(mut bench) = one_backend(test, "update_backend_uas.xml", "") else {
        return;
    };
    bench.call("update_backend_uac.xml");
    bench.assert_ended_once("caller_bye");
}

#[test]
fn early_dialog_update_is_relayed_and_rewritten() {
    let test = "early_dialog_update_is_relayed_and_rewritten";
    let Some(mut bench) = one_backend(test, "early_update_uas.xml", "") else {
        return;
    };
    bench.call("early_update_uac.xml");
    bench.assert_ended_once("caller_bye");
}

#[test]
fn unrefreshed_session_timer_ends_the_call_before_expiry() {
    let test = "unrefreshed_session_timer_ends_the_call_before_expiry";
    let Some(mut bench) = one_backend(test, "timer_uas.xml", SESSION_TIMERS) else {
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
    let Some(mut bench) = one_backend(test, "timer_uas.xml", SESSION_TIMERS) else {
        return;
    };
    bench.caller("timer_too_small_uac.xml");
    bench.proxy.assert_idle(Duration::from_secs(5));
    let backend_saw = bench.backends[0].messages();
    assert!(
        !backend_saw.contains("INVITE"),
        "the Backend got a call voxgate should have refused:\n{backend_saw}"
    );
}

#[test]
fn session_refreshed_by_update_outlives_its_first_interval() {
    let test = "session_refreshed_by_update_outlives_its_first_interval";
    let Some(mut bench) = one_backend(test, "timer_uas.xml", SESSION_TIMERS) else {
        return;
    };
    bench.call("timer_refresh_uac.xml");
    bench.assert_ended_once("caller_bye");
}

#[test]
fn ring_deadline_cancels_the_backend_and_gives_the_caller_408() {
    let test = "ring_deadline_cancels_the_backend_and_gives_the_caller_408";
    let Some(mut bench) = one_backend(test, "ring_uas.xml", RING_DEADLINE) else {
        return;
    };
    let elapsed = bench.call("ring_uac.xml");
    assert!(
        elapsed > Duration::from_millis(2500),
        "408 after {elapsed:?}, before the 3 s ring deadline"
    );
    bench.assert_ended_once("ring_timeout");
}
