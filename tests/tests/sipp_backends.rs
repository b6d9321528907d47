//! The main call flows with SIPp UAS scenarios as the Backends instead of the loadgen's echo
//! Backend, which shares voxgate's SIP stack (a bug in that stack would sit on both ends and stay
//! invisible): a basic call with RTP both ways, BYE from each side, CANCEL, re-INVITE from each
//! side, and failover on 503 and on silence. The scenarios are in `tests/sipp/`, each with a
//! header saying what it checks; a test passes when every sipp process exits 0, voxgate is idle
//! afterwards and its one session ended for the expected cause. Skipped with a printed reason
//! where sipp is not installed; failed instead under CI.

// A plain test thread drives real processes: real clock and sleeps; setup failures may panic.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::sipp::{SippBackend, SippBench};
use common::uac::{Uac, media_addr, sdp_of};
use common::wait_until;

/// Failover order made deterministic: the first Backend is in the node's region (US-EAST) and the
/// second in US-WEST, where US-EAST spills over once it has no eligible Backend left, i.e. once
/// the first was tried (ties between equally loaded Backends of one region are broken at random).
const SPILLOVER: &str = "[routing.spillover]\n\"US-EAST\" = [\"US-WEST\"]\n";
/// The silent Backend's scenario stays silent for 2 s: well past this.
const INVITE_TIMEOUT: &str = "[routing]\ninvite_timeout = \"500ms\"\n";

/// The SSRC of the test caller's RTP.
const SSRC: u32 = 0x5eed_0001;

#[test]
fn basic_call_relays_rtp_both_ways_to_a_sipp_backend() {
    let test = "basic_call_relays_rtp_both_ways_to_a_sipp_backend";
    let backend = SippBackend::new("sipp", "answer_uas.xml").echoing();
    let Some(mut bench) = SippBench::start(test, &[backend], "") else {
        return;
    };
    // The caller is the test's own UAC: sipp 3.6 cannot check the RTP it receives.
    let (mut uac, ok) = Uac::answered("127.0.0.1", bench.proxy.sip);
    let relay = media_addr(&sdp_of(&ok.body));
    let media = bench.proxy.media;
    assert!(
        (media.0..=media.1).contains(&relay.port()),
        "answer {relay} is not voxgate's relay {media:?}"
    );
    const SENT: u16 = 50;
    uac.send_rtp(relay, SENT, SSRC);
    let echoed = uac.echoed(SSRC, SENT, Duration::from_secs(3));
    // sipp echoes what reaches its media port to where it came from (voxgate's Backend-side
    // port): each packet back proves both directions through voxgate and the Backend's receipt.
    assert!(
        echoed.len() >= usize::from(SENT) * 9 / 10,
        "{} of {SENT} RTP packets came back through voxgate",
        echoed.len()
    );
    for direction in ["caller_to_backend", "backend_to_caller"] {
        let name = format!("voxgate_rtp_packets_total{{direction=\"{direction}\"}}");
        // Relays flush their counts about once a second.
        let counted = wait_until(Duration::from_secs(3), || {
            bench.proxy.counter(&name) >= echoed.len() as f64
        });
        assert!(
            counted,
            "{name} below {}:\n{}",
            echoed.len(),
            bench.proxy.metrics()
        );
    }
    let bye = uac
        .in_dialog(rsip::Method::Bye, None, Duration::from_secs(5))
        .expect("no answer to BYE");
    assert_eq!(bye.status_code.code(), 200, "{bye}");
    bench.wait_backends(None);
    bench.assert_ended_once("caller_bye");
}

#[test]
fn caller_bye_reaches_a_sipp_backend() {
    let test = "caller_bye_reaches_a_sipp_backend";
    let backend = SippBackend::new("sipp", "answer_uas.xml");
    let Some(mut bench) = SippBench::start(test, &[backend], "") else {
        return;
    };
    bench.call("plain_uac.xml");
    bench.assert_ended_once("caller_bye");
}

#[test]
fn sipp_backend_bye_reaches_the_caller() {
    let test = "sipp_backend_bye_reaches_the_caller";
    let backend = SippBackend::new("sipp", "bye_uas.xml");
    let Some(mut bench) = SippBench::start(test, &[backend], "") else {
        return;
    };
    bench.call("bye_wait_uac.xml");
    bench.assert_ended_once("backend_bye");
}

#[test]
fn caller_cancel_reaches_a_ringing_sipp_backend() {
    let test = "caller_cancel_reaches_a_ringing_sipp_backend";
    let backend = SippBackend::new("sipp", "ring_uas.xml");
    let Some(mut bench) = SippBench::start(test, &[backend], "") else {
        return;
    };
    bench.call("cancel_uac.xml");
    bench.assert_ended_once("cancelled");
    assert_eq!(
        bench.proxy.counter("voxgate_sessions_started_total"),
        0.0,
        "a cancelled call was counted as started"
    );
}

#[test]
fn caller_reinvite_is_answered_by_a_sipp_backend_and_acked_across() {
    let test = "caller_reinvite_is_answered_by_a_sipp_backend_and_acked_across";
    let backend = SippBackend::new("sipp", "reinvite_uas.xml");
    let Some(mut bench) = SippBench::start(test, &[backend], "") else {
        return;
    };
    bench.call("reinvite_uac.xml");
    bench.assert_ended_once("caller_bye");
}

#[test]
fn sipp_backend_reinvite_is_answered_by_the_caller_and_acked_across() {
    let test = "sipp_backend_reinvite_is_answered_by_the_caller_and_acked_across";
    let backend = SippBackend::new("sipp", "reinvite_backend_uas.xml");
    let Some(mut bench) = SippBench::start(test, &[backend], "") else {
        return;
    };
    bench.call("reinvite_backend_uac.xml");
    bench.assert_ended_once("caller_bye");
}

#[test]
fn sipp_backend_503_fails_over_to_the_next() {
    let test = "sipp_backend_503_fails_over_to_the_next";
    let backends = [
        SippBackend::new("busy", "busy_uas.xml"),
        SippBackend::new("good", "answer_uas.xml").in_region("US-WEST"),
    ];
    let Some(mut bench) = SippBench::start(test, &backends, SPILLOVER) else {
        return;
    };
    // plain_uac.xml fails on any final answer but 200: the 503 must not reach the caller.
    bench.call("plain_uac.xml");
    bench.assert_ended_once("caller_bye");
}

#[test]
fn silent_sipp_backend_fails_over_after_the_invite_timeout() {
    let test = "silent_sipp_backend_fails_over_after_the_invite_timeout";
    let backends = [
        SippBackend::new("silent", "silent_uas.xml"),
        SippBackend::new("good", "answer_uas.xml").in_region("US-WEST"),
    ];
    let config = format!("{INVITE_TIMEOUT}{SPILLOVER}");
    let Some(mut bench) = SippBench::start(test, &backends, &config) else {
        return;
    };
    let (caller, elapsed) = bench.caller("plain_uac.xml");
    // plain_uac.xml holds the call 1 s; the answer waited for the 500 ms invite timeout too.
    assert!(
        elapsed >= Duration::from_millis(1500),
        "the caller was done after {elapsed:?}: its call did not wait for the invite timeout"
    );
    // The silent Backend's late 180 gets its abandoned INVITE cancelled (silent_uas.xml).
    bench.wait_backends(Some(&caller));
    bench.assert_ended_once("caller_bye");
}
