//! A voice agent hands its caller to a person (blind transfer, RFC 3515 REFER), with SIPp peers
//! as the Backend, the transfer target and the carrier: bridged by voxgate (the target dialled
//! through a trunk, the caller's RTP reaching it, the Backend's leg ended), failing on a busy
//! target (the caller stays with the Backend), and passed to a carrier that takes REFER
//! (`transfer = "refer"`). The scenarios are in `tests/sipp/transfer_*.xml`, each with a header
//! saying what it checks. Skipped with a printed reason where sipp is not installed; failed
//! instead under CI.

// A plain test thread drives real processes: real clock and sleeps; setup failures may panic.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::sipp::{ScenarioPeer, SippBackend, SippBench};
use common::uac::{Uac, media_addr, sdp_of};
use common::{lease_port, records_path, wait_until};

/// The SSRC of the test caller's RTP.
const SSRC: u32 = 0x5eed_0002;

/// Callers on loopback (the test's caller), and a trunk "pbx" that takes `sip:...@pbx.test` out
/// to a SIPp UAS on `port` (the person).
fn pbx_trunk(port: u16) -> String {
    format!(
        "[[trunks]]\nname = \"local\"\nsources = [\"127.0.0.0/8\"]\n\
         [[trunks]]\nname = \"pbx\"\noutbound = \"127.0.0.1:{port}\"\nhosts = [\"pbx.test\"]\n"
    )
}

/// The transfer target's scenario on `port`, echoing RTP when `echo`.
fn target(bench: &SippBench, scenario: &str, port: u16, echo: bool) -> ScenarioPeer {
    let flags: &[&str] = if echo { &["-rtp_echo"] } else { &[] };
    ScenarioPeer::uas_with(
        &format!("{}-target", bench.test),
        &bench.sipp,
        scenario,
        port,
        1,
        bench.proxy.media,
        flags,
    )
}

/// Waits for the target scenario to exit 0; panics with every trace otherwise.
fn target_passed(bench: &SippBench, target: &mut ScenarioPeer) {
    let status = target.wait(Duration::from_secs(10));
    if !status.is_some_and(|s| s.success()) {
        bench.fail(&format!("target scenario {status:?}"), Some(target));
    }
}

/// The one call record of the proxy of `test`, once written.
fn record(test: &str) -> serde_json::Value {
    let path = records_path(test);
    let mut lines = Vec::new();
    let written = wait_until(Duration::from_secs(10), || {
        lines = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        !lines.is_empty()
    });
    assert!(written, "no record in {}", path.display());
    assert_eq!(lines.len(), 1, "{lines:#?}");
    serde_json::from_str(&lines[0]).expect("a record is JSON")
}

#[test]
fn a_bridged_transfer_puts_the_caller_through_to_the_target_and_ends_the_backend_leg() {
    let test = "a_bridged_transfer_puts_the_caller_through_to_the_target_and_ends_the_backend_leg";
    let port = lease_port();
    // The Backend does not echo RTP: any echo the caller hears is the target's.
    let backend = SippBackend::new("agent", "transfer_backend_uas.xml");
    let Some(mut bench) = SippBench::start(test, &[backend], &pbx_trunk(port)) else {
        return;
    };
    let mut person = target(&bench, "transfer_target_uas.xml", port, true);
    let (mut uac, ok) = Uac::answered("127.0.0.1", bench.proxy.sip);
    let relay = media_addr(&sdp_of(&ok.body));
    // The Backend's scenario ends once voxgate has told it 200 OK and hung up its leg.
    bench.wait_backends(None);

    const SENT: u16 = 50;
    uac.send_rtp(relay, SENT, SSRC);
    let back = uac.echoed(SSRC, SENT, Duration::from_secs(3));
    assert!(
        back.len() >= usize::from(SENT) * 9 / 10,
        "{} of {SENT} RTP packets reached the target and came back",
        back.len()
    );
    let bye = uac
        .in_dialog(rsip::Method::Bye, None, Duration::from_secs(5))
        .expect("no answer to BYE");
    assert_eq!(bye.status_code.code(), 200, "{bye}");
    target_passed(&bench, &mut person);
    bench.assert_ended_once("caller_bye");
    assert_eq!(
        bench
            .proxy
            .counter("voxgate_transfers_total{outcome=\"completed\"}"),
        1.0,
        "{}",
        bench.proxy.metrics()
    );
    // One session, one record: both far INVITEs, and the transfer with its outcome.
    let record = record(test);
    assert_eq!(
        record["transfer"]["target"], "sip:human@pbx.test",
        "{record:#}"
    );
    assert_eq!(record["transfer"]["outcome"], "completed", "{record:#}");
    let codes: Vec<u64> = record["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .filter_map(|a| a["code"].as_u64())
        .collect();
    assert_eq!(codes, [200, 200], "{record:#}");
    assert_eq!(record["cause"], "caller_bye", "{record:#}");
}

#[test]
fn a_busy_target_leaves_the_caller_with_the_backend() {
    let test = "a_busy_target_leaves_the_caller_with_the_backend";
    let port = lease_port();
    let backend = SippBackend::new("agent", "transfer_busy_backend_uas.xml");
    let Some(mut bench) = SippBench::start(test, &[backend], &pbx_trunk(port)) else {
        return;
    };
    let mut person = target(&bench, "transfer_busy_target_uas.xml", port, false);
    let (mut uac, _ok) = Uac::answered("127.0.0.1", bench.proxy.sip);
    // The target refused (its 486 ACKed); the Backend, told so, keeps the call until our BYE.
    target_passed(&bench, &mut person);
    let bye = uac
        .in_dialog(rsip::Method::Bye, None, Duration::from_secs(5))
        .expect("no answer to BYE");
    assert_eq!(bye.status_code.code(), 200, "{bye}");
    bench.wait_backends(None);
    bench.assert_ended_once("caller_bye");
    assert_eq!(
        bench
            .proxy
            .counter("voxgate_transfers_total{outcome=\"busy\"}"),
        1.0
    );
    let record = record(test);
    assert_eq!(record["transfer"]["outcome"], "busy", "{record:#}");
}

#[test]
fn a_carrier_that_takes_refer_gets_the_backends_refer_and_its_notify_reaches_the_backend() {
    let test =
        "a_carrier_that_takes_refer_gets_the_backends_refer_and_its_notify_reaches_the_backend";
    let backend = SippBackend::new("agent", "transfer_refer_backend_uas.xml");
    let trunk =
        "[[trunks]]\nname = \"carrier\"\nsources = [\"127.0.0.1/32\"]\ntransfer = \"refer\"\n";
    let Some(mut bench) = SippBench::start(test, &[backend], trunk) else {
        return;
    };
    bench.call("transfer_carrier_uac.xml");
    bench.assert_ended_once("caller_bye");
    assert_eq!(bench.proxy.counter("voxgate_transfers_total"), 0.0);
}
