//! `voxgate-loadgen whip` against an in-process WHIP stub built on voxgate's `WebRtcPeer`, over
//! real loopback sockets: the echo passes, silence and refusals fail with their reasons.

mod common;

use std::path::{Path, PathBuf};

use common::{Mode, WhipStub, loadgen, read_report};

fn report_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("whip-{name}-{}.json", std::process::id()))
}

fn args(url: &str, report: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "whip".to_owned(),
        "--target".to_owned(),
        url.to_owned(),
        "--bind".to_owned(),
        "127.0.0.1".to_owned(),
        "--rate".to_owned(),
        "50".to_owned(),
        "--report".to_owned(),
        report.display().to_string(),
        "--quiet".to_owned(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoed_sessions_pass_with_setup_times_rtt_and_the_tone() {
    let stub = WhipStub::start(Mode::Echo, Some("secret-token")).await;
    let report = report_path("echo");
    let (code, stdout, stderr) = loadgen(args(
        &stub.url,
        &report,
        &[
            "--concurrency",
            "3",
            "--hold",
            "3s",
            "--token",
            "secret-token",
        ],
    ))
    .await;
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    println!("{stdout}");
    assert!(stdout.contains("verdict   PASS"), "{stdout}");
    let r = read_report(&report);
    let _ = std::fs::remove_file(&report);
    assert_eq!(r["sessions"]["attempted"], 3, "{r:#}");
    assert_eq!(r["sessions"]["connected"], 3, "{r:#}");
    assert_eq!(r["sessions"]["completed"], 3, "{r:#}");
    assert_eq!(r["sessions"]["failed"], 0, "{r:#}");
    assert_eq!(r["post_statuses"]["201"], 3, "{r:#}");
    assert_eq!(r["delete_statuses"]["200"], 3, "{r:#}");
    assert_eq!(
        stub.seen.deletes.load(std::sync::atomic::Ordering::Relaxed),
        3
    );
    for setup in ["post_to_201", "post_to_connected", "post_to_first_audio"] {
        assert_eq!(r["setup_ms"][setup]["count"], 3, "{setup}: {r:#}");
    }
    let connected = r["setup_ms"]["post_to_connected"]["max"]
        .as_f64()
        .expect("f64");
    let first_audio = r["setup_ms"]["post_to_first_audio"]["min"]
        .as_f64()
        .expect("f64");
    assert!(connected > 0.0 && first_audio > 0.0, "{r:#}");
    // About 50 packets a second each way; the echo of the last few is still in flight.
    let sent = r["rtp"]["sent"].as_u64().expect("u64");
    let received = r["rtp"]["received"].as_u64().expect("u64");
    assert!((420..=460).contains(&sent), "{r:#}");
    assert!(received + 15 >= sent && received <= sent, "{r:#}");
    assert_eq!(r["rtp"]["lost"], 0, "{r:#}");
    assert_eq!(r["rtp"]["decode_errors"], 0, "{r:#}");
    // Cycles 2 and 3 of each session start after a gap: two round trips each, on loopback
    // little more than the encoder's look-ahead.
    assert!(
        r["media_rtt_ms"]["count"].as_u64().expect("u64") >= 6,
        "{r:#}"
    );
    let rtt_max = r["media_rtt_ms"]["max"].as_f64().expect("f64");
    assert!(rtt_max < 60.0, "{r:#}");
    assert_eq!(r["tone"]["passed"], 3, "{r:#}");
    assert_eq!(r["tone"]["found_hz"]["1000"], 3, "{r:#}");
    assert!(r["tone"]["ratio_min"].as_f64().expect("f64") > 0.8, "{r:#}");
    assert_eq!(r["verdict"]["passed"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_echo_fails_every_session_with_exit_code_2() {
    let stub = WhipStub::start(Mode::Silent, None).await;
    let report = report_path("silent");
    let (code, stdout, stderr) = loadgen(args(
        &stub.url,
        &report,
        &["--concurrency", "2", "--hold", "1s"],
    ))
    .await;
    assert_eq!(code, Some(2), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let r = read_report(&report);
    let _ = std::fs::remove_file(&report);
    assert_eq!(r["sessions"]["connected"], 2, "{r:#}");
    assert_eq!(
        r["sessions"]["failure_reasons"]["no audio back"], 2,
        "{r:#}"
    );
    assert_eq!(r["tone"]["failed"], 2, "{r:#}");
    // The resource is deleted all the same.
    assert_eq!(r["delete_statuses"]["200"], 2, "{r:#}");
    assert_eq!(r["verdict"]["passed"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_posts_and_a_wrong_token_are_failures_by_status() {
    let stub = WhipStub::start(Mode::Reject(503), None).await;
    let report = report_path("reject");
    let (code, stdout, stderr) = loadgen(args(
        &stub.url,
        &report,
        &["--concurrency", "2", "--total", "4"],
    ))
    .await;
    assert_eq!(code, Some(2), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let r = read_report(&report);
    assert_eq!(r["post_statuses"]["503"], 4, "{r:#}");
    assert_eq!(
        r["sessions"]["failure_reasons"]["POST answered 503"], 4,
        "{r:#}"
    );
    assert!(stdout.contains("failed (POST answered 503): 4"), "{stdout}");

    let stub = WhipStub::start(Mode::Echo, Some("right")).await;
    let (code, _, _) = loadgen(args(
        &stub.url,
        &report,
        &["--concurrency", "1", "--token", "wrong"],
    ))
    .await;
    assert_eq!(code, Some(2));
    let r = read_report(&report);
    let _ = std::fs::remove_file(&report);
    assert_eq!(
        r["sessions"]["failure_reasons"]["POST answered 401"], 1,
        "{r:#}"
    );
    assert_eq!(
        stub.seen
            .connected
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}
