//! A carrier that challenges every INVITE (401/407, RFC 3261 22.2), played by SIPp: a Backend's
//! call out through that trunk is sent again with the trunk's credentials (`[trunks.credentials]`,
//! the password from the environment) and the carrier verifies them (SIPp's `verifyauth`).
//! Skipped with a printed reason where sipp is not installed; failed instead under CI.

// A plain test thread drives real processes: real clock and sleeps; setup failures may panic.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::sipp::{ProbeCatcher, ScenarioPeer, ended_causes, sipp_or_skip};
use common::{Proxy, backend_toml, lease_port};

#[test]
fn a_backends_call_out_answers_the_carriers_challenge_with_the_trunks_credentials() {
    let test = "a_backends_call_out_answers_the_carriers_challenge_with_the_trunks_credentials";
    let Some(sipp) = sipp_or_skip(test) else {
        return;
    };
    let (backend_port, carrier_port) = (lease_port(), lease_port());
    let backend = SocketAddr::from(([127, 0, 0, 1], backend_port));
    // The Backend is a SIPp caller on its configured address; its calls to 127.0.0.1 leave
    // through the carrier trunk, whose account is acct123.
    let config = format!(
        "[health]\ninterval = \"60s\"\n{}\n[[trunks]]\nname = \"carrier\"\n\
         outbound = \"127.0.0.1:{carrier_port}\"\nhosts = [\"127.0.0.1\"]\n\
         [trunks.credentials]\nname = \"acct123\"\npassword_env = \"VOXGATE_TEST_CARRIER_PASSWORD\"\n",
        backend_toml("agent", backend, 10, None)
    );
    let catcher = ProbeCatcher::bind(backend_port);
    let proxy = Proxy::start_with_env(
        test,
        &config,
        &[("VOXGATE_TEST_CARRIER_PASSWORD", "s3cret".to_owned())],
    );
    catcher.answer_and_release(Duration::from_secs(2));
    let mut carrier = ScenarioPeer::uas(
        &format!("{test}-carrier"),
        &sipp,
        "challenge_carrier_uas.xml",
        carrier_port,
        1,
        proxy.media,
    );
    let mut caller = ScenarioPeer::uac_on(
        &format!("{test}-backend"),
        &sipp,
        "plain_uac.xml",
        proxy.sip,
        backend_port,
        proxy.media,
    );
    let passed = |status: Option<std::process::ExitStatus>| status.is_some_and(|s| s.success());
    let called = caller.wait(Duration::from_secs(20));
    let answered = carrier.wait(Duration::from_secs(5));
    assert!(
        passed(called) && passed(answered),
        "backend {called:?}, carrier {answered:?}\n{}\n{}\n==== voxgate log\n{}",
        caller.report(),
        carrier.report(),
        proxy.process.log()
    );
    proxy.assert_idle(Duration::from_secs(5));
    assert_eq!(ended_causes(&proxy), vec![("caller_bye".to_owned(), 1.0)]);
}
