//! Loading and validating the configuration: defaults, env overrides, and errors that name the key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use voxgate_proxy::config::{self, Config, ConfigError, LogFormat, load, parse_str};

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Loads the default config with `extra` TOML appended (later tables extend the defaults).
fn with_toml(text: &str) -> Result<Config, ConfigError> {
    parse_str("test.toml", text, []).and_then(|config| config.validate().map(|()| config))
}

fn err_key(text: &str) -> (String, String) {
    let err = with_toml(text).expect_err("config should be rejected");
    (err.key, err.reason)
}

fn repo_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../config")
        .join(name)
}

#[test]
fn default_loads_with_documented_values() {
    let config = load(None, []).unwrap();
    assert_eq!(config, Config::default());
    assert_eq!(config.node.id.as_str(), "proxy-1");
    assert_eq!(config.node.region.as_str(), "US-EAST");
    assert_eq!(config.sip.listen_udp.to_string(), "0.0.0.0:5060");
    assert_eq!(
        config.sip.listen_tcp.map(|a| a.to_string()).as_deref(),
        Some("0.0.0.0:5060")
    );
    assert_eq!(config::SipConfig::MAX_MESSAGE_SIZE, 16 * 1024);
    assert_eq!(
        (config.media.port_min, config.media.port_max),
        (20000, 29999)
    );
    assert_eq!(config.media.timeout, Duration::from_secs(60));
    assert_eq!((config.media.workers, config.media.worker_nice), (0, 0));
    assert_eq!(config.http.listen.to_string(), "127.0.0.1:9090");
    assert_eq!(config.limits.max_sessions, 150);
    assert_eq!(config.limits.retry_after, Duration::from_secs(5));
    assert_eq!(config.routing.invite_timeout, Duration::from_secs(4));
    assert_eq!(config.routing.seed, None);
    assert_eq!(config.log.format, LogFormat::Text);

    let specs = config.backend_specs();
    let addresses: Vec<String> = specs.iter().map(|b| b.address.to_string()).collect();
    assert_eq!(addresses, ["127.0.0.1:5080", "127.0.0.1:5081"]);
    assert!(
        specs
            .iter()
            .all(|b| b.region == config.node.region && b.enabled && b.max_sessions == 100)
    );
    // The embedded `local` trunk: callers on loopback (scripts/run.sh, the loadgen).
    let trunks = config.trunk_table();
    let names: Vec<&str> = trunks.trunks().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["local"]);
    assert!(
        trunks
            .inbound("127.0.0.1".parse().expect("address"))
            .is_some()
    );
    assert!(
        trunks
            .inbound("192.0.2.1".parse().expect("address"))
            .is_none()
    );
    assert!(
        config
            .spillover()
            .next_regions(&config.node.region)
            .is_empty()
    );
    assert_eq!(config.health(), voxgate_cluster::HealthConfig::default());
}

#[test]
fn empty_file_equals_default() {
    assert_eq!(with_toml("").unwrap(), Config::default());
}

#[test]
fn env_overrides_change_values() {
    let config = load(
        None,
        env(&[
            ("VOXGATE_LIMITS__MAX_SESSIONS", "20"),
            ("VOXGATE_SIP__LISTEN_UDP", "127.0.0.1:5070"),
            ("VOXGATE_SIP__LISTEN_TCP", ""),
            ("VOXGATE_MEDIA__TIMEOUT", "500ms"),
            ("VOXGATE_ROUTING__SEED", "42"),
            ("VOXGATE_LOG__FORMAT", "json"),
            (
                "VOXGATE_ROUTING__SPILLOVER",
                r#"{ "US-EAST" = ["US-WEST"] }"#,
            ),
            ("VOXGATE_BACKENDS__1__REGION", "US-WEST"),
            ("PATH", "/usr/bin"),
        ]),
    )
    .unwrap();
    assert_eq!(config.limits.max_sessions, 20);
    assert_eq!(config.sip.listen_udp.to_string(), "127.0.0.1:5070");
    assert_eq!(config.sip.listen_tcp, None);
    assert_eq!(config.media.timeout, Duration::from_millis(500));
    assert_eq!(config.routing.seed, Some(42));
    assert_eq!(config.log.format, LogFormat::Json);
    let east = config.node.region.clone();
    assert_eq!(
        config.spillover().next_regions(&east)[0].as_str(),
        "US-WEST"
    );
}

#[test]
fn env_beats_file() {
    let path =
        std::env::temp_dir().join(format!("voxgate-config-test-{}.toml", std::process::id()));
    std::fs::write(&path, "[limits]\nmax_sessions = 10\nhigh_water = 0.5\n").unwrap();
    let config = load(Some(&path), env(&[("VOXGATE_LIMITS__MAX_SESSIONS", "30")])).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(
        (config.limits.max_sessions, config.limits.high_water),
        (30, 0.5)
    );
}

#[test]
fn bad_env_value_names_the_key_and_variable() {
    let err = load(None, env(&[("VOXGATE_LIMITS__MAX_SESSIONS", "many")])).unwrap_err();
    assert_eq!(err.key, "limits.max_sessions");
    assert!(err.reason.contains("VOXGATE_LIMITS__MAX_SESSIONS"), "{err}");
    assert!(
        err.to_string()
            .starts_with("config key `limits.max_sessions`: "),
        "{err}"
    );

    let err = load(None, env(&[("VOXGATE_LIMITS__MAX_SESSIONS", "0")])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "config key `limits.max_sessions`: must be at least 1"
    );

    let err = load(None, env(&[("VOXGATE_LIMITS__MAX_SESION", "3")])).unwrap_err();
    assert_eq!(err.key, "limits.max_sesion");

    let err = load(None, env(&[("VOXGATE_LIMITS__MAX_SESSIONS__X", "3")])).unwrap_err();
    assert_eq!(err.key, "limits.max_sessions");
    assert!(err.reason.contains("not a table"), "{err}");
}

#[test]
fn type_error_names_the_key() {
    let (key, reason) = err_key("[limits]\nmax_sessions = \"many\"\n");
    assert_eq!(key, "limits.max_sessions");
    assert!(reason.contains("invalid type"), "{reason}");
    assert_eq!(err_key("[media]\ntimeout = \"soon\"\n").0, "media.timeout");
    assert_eq!(err_key("[media]\nport_min = 70000\n").0, "media.port_min");
    assert_eq!(err_key("[log]\nformat = \"xml\"\n").0, "log.format");
    assert_eq!(err_key("[node]\nregion = \"us-east\"\n").0, "node.region");
    assert_eq!(err_key("[node]\nid = \"has space\"\n").0, "node.id");
    assert_eq!(
        err_key("[sip]\nlisten_udp = \"nowhere\"\n").0,
        "sip.listen_udp"
    );
    let trunk = "[[trunks]]\nname = \"t\"\nsources = [\"10.0.0.0/8\", \"10.0.0.0/99\"]\n";
    assert_eq!(err_key(trunk).0, "trunks[0].sources[1]");
    assert_eq!(
        err_key("[routing.spillover]\n\"US-EAST\" = [\"west\"]\n").0,
        "routing.spillover.US-EAST[0]"
    );
}

#[test]
fn unknown_keys_are_rejected_by_name() {
    let (key, reason) = err_key("[limits]\nmax_sesions = 3\n");
    assert_eq!(key, "limits.max_sesions");
    assert!(reason.contains("unknown"), "{reason}");
    assert_eq!(err_key("[nope]\n").0, "nope");
    assert_eq!(
        err_key("[sip]\nmax_message_size = 65536\n").0,
        "sip.max_message_size"
    );
    assert_eq!(
        err_key("[[backends]]\nid = \"b\"\naddress = \"127.0.0.1:5080\"\nweight = 2\n").0,
        "backends[0].weight"
    );
}

#[test]
fn missing_required_backend_field_names_the_entry() {
    let (key, reason) = err_key("[[backends]]\nid = \"b\"\n");
    assert_eq!(key, "backends[0]");
    assert!(reason.contains("address"), "{reason}");
}

#[test]
fn syntax_errors_name_the_file_with_position() {
    let (key, reason) = err_key("[limits\n");
    assert_eq!(key, "test.toml");
    assert!(reason.contains("line 1"), "{reason}");

    let missing = Path::new("/nonexistent/voxgate.toml");
    let err = load(Some(missing), []).unwrap_err();
    assert_eq!(err.key, "/nonexistent/voxgate.toml");
    assert!(err.reason.contains("cannot read"), "{err}");
}

#[test]
fn each_validation_error_names_its_key() {
    let backend =
        |extra: &str| format!("[[backends]]\nid = \"b1\"\naddress = \"127.0.0.1:5080\"\n{extra}");
    let cases: Vec<(String, &str)> = vec![
        ("[limits]\nmax_sessions = 0\n".into(), "limits.max_sessions"),
        (
            "[[trunks]]\nname = \"c\"\nsources = [\"10.0.0.0/8\"]\n\
             [trunks.credentials]\nname = \"acct\"\npassword = \"p\"\n"
                .into(),
            "trunks[0].credentials",
        ),
        (
            "[[trunks]]\nname = \"c\"\noutbound = \"10.0.0.1:5060\"\n\
             [trunks.credentials]\nname = \"acct\"\n"
                .into(),
            "trunks[0].credentials",
        ),
        ("[limits]\nhigh_water = 0.0\n".into(), "limits.high_water"),
        ("[limits]\nhigh_water = 1.5\n".into(), "limits.high_water"),
        ("[limits]\nhigh_water = nan\n".into(), "limits.high_water"),
        ("[limits]\nretry_after = \"0s\"\n".into(), "limits.retry_after"),
        ("[media]\nport_min = 1000\n".into(), "media.port_min"),
        ("[media]\nport_min = 30000\nport_max = 30000\n".into(), "media.port_max"),
        ("[media]\nport_min = 30001\nport_max = 30002\n".into(), "media.port_max"),
        ("[media]\npublic_ip = \"0.0.0.0\"\n".into(), "media.public_ip"),
        ("[media]\ntimeout = \"0s\"\n".into(), "media.timeout"),
        ("[media]\nworker_nice = -21\n".into(), "media.worker_nice"),
        ("[media]\nworker_nice = 20\n".into(), "media.worker_nice"),
        ("[drain]\ndeadline = \"0s\"\n".into(), "drain.deadline"),
        ("[cluster]\nregistry = \"etcd://x\"\n".into(), "cluster.registry"),
        ("[cluster]\nadmin_key = \"short\"\n".into(), "cluster.admin_key"),
        ("[cluster]\nheartbeat_ttl = \"1s\"\n".into(), "cluster.heartbeat_ttl"),
        ("[cluster]\nstatus_interval = \"0s\"\n".into(), "cluster.status_interval"),
        ("[routing]\nmax_attempts = 0\n".into(), "routing.max_attempts"),
        ("[routing]\ninvite_timeout = \"0s\"\n".into(), "routing.invite_timeout"),
        ("[health]\ninterval = \"0s\"\n".into(), "health.interval"),
        ("[health]\nfailures_to_down = 0\n".into(), "health.failures_to_down"),
        ("[health]\nsuccesses_to_up = 0\n".into(), "health.successes_to_up"),
        ("[log]\nfilter = \"info,[\"\n".into(), "log.filter"),
        (backend("max_sessions = 0\n"), "backends[0].max_sessions"),
        (format!("{}{}", backend(""), backend("")), "backends[1].id"),
        (
            format!("{}[[backends]]\nid = \"b2\"\naddress = \"127.0.0.1:5080\"\n", backend("")),
            "backends[1].address",
        ),
        ("[[trunks]]\nname = \"t\"\nregion = \"GB-LON\"\nsources = [\"10.0.0.0/8\"]\n".into(), "trunks[0].region"),
        ("[[trunks]]\nname = \"\"\nsources = [\"10.0.0.0/8\"]\n".into(), "trunks[0].name"),
        (
            "[[trunks]]\nname = \"t\"\nsources = [\"10.0.0.0/8\"]\n[[trunks]]\nname = \"t\"\nsources = [\"11.0.0.0/8\"]\n"
                .into(),
            "trunks[1].name",
        ),
        ("[[trunks]]\nname = \"t\"\n".into(), "trunks[0].sources"),
        ("[[trunks]]\nname = \"t\"\nsources = [\"10.0.0.0/8\"]\nhosts = [\"\"]\n".into(), "trunks[0].hosts[0]"),
        ("[outbound]\nqueue_size = 0\n".into(), "outbound.queue_size"),
        ("[outbound]\nmax_wait = \"0s\"\n".into(), "outbound.max_wait"),
        ("[outbound]\nring_timeout = \"0s\"\n".into(), "outbound.ring_timeout"),
        ("[outbound]\ncaller_id = \"a b\"\n".into(), "outbound.caller_id"),
        ("[webrtc]\nsetup_timeout = \"0s\"\n".into(), "webrtc.setup_timeout"),
        ("[webrtc]\nconsent_timeout = \"2s\"\n".into(), "webrtc.consent_timeout"),
        ("[webrtc]\nallow_origin = \"\"\n".into(), "webrtc.allow_origin"),
        ("[[webrtc.tokens]]\ntoken = \"short\"\n".into(), "webrtc.tokens[0].token"),
        (
            "[[webrtc.tokens]]\ntoken = \"a-token-of-at-least-32-characters-long\"\nregion = \"GB-LON\"\n".into(),
            "webrtc.tokens[0].region",
        ),
        ("[routing.spillover]\n\"GB-LON\" = [\"US-EAST\"]\n".into(), "routing.spillover.GB-LON"),
        ("[routing.spillover]\n\"US-EAST\" = [\"GB-LON\"]\n".into(), "routing.spillover.US-EAST"),
    ];
    for (text, key) in cases {
        let err = with_toml(&text).expect_err(&text);
        assert_eq!(err.key, key, "for\n{text}\n-> {err}");
        assert!(
            err.to_string()
                .starts_with(&format!("config key `{key}`: ")),
            "{err}"
        );
    }
}

#[test]
fn smallest_valid_port_range_is_one_pair() {
    let config = with_toml("[media]\nport_min = 30000\nport_max = 30001\n").unwrap();
    assert_eq!(
        (config.media.port_min, config.media.port_max),
        (30000, 30001)
    );
}

#[test]
fn multi_region_example_loads() {
    let config = load(Some(&repo_file("multi-region.toml")), []).unwrap();
    assert_eq!(config.regions().len(), 2);
    let specs = config.backend_specs();
    assert_eq!(specs.len(), 4);
    assert!(
        specs
            .iter()
            .any(|b| b.id.as_str() == "west-b" && !b.enabled)
    );

    let east = config.node.region.clone();
    let west = config.spillover().next_regions(&east)[0].clone();
    assert_eq!(west.as_str(), "US-WEST");
    assert_eq!(config.spillover().next_regions(&west), [east]);

    let trunks = config.trunk_table();
    let inbound = trunks.inbound("203.0.113.7".parse().unwrap()).unwrap();
    assert_eq!(inbound.region, west);
    assert!(trunks.inbound("203.0.113.200".parse().unwrap()).is_none());
    assert_eq!(
        trunks.outbound(None, "pstn.example.com").unwrap().name,
        "carrier-west"
    );
    assert_eq!(config.health().interval, Duration::from_secs(2));
    assert_eq!(config.log.format, LogFormat::Json);
}

#[test]
fn embedded_file_is_the_repository_file() {
    let on_disk = std::fs::read_to_string(repo_file("voxgate.toml")).unwrap();
    assert_eq!(on_disk, config::DEFAULT_TOML);
}

#[test]
fn env_value_that_reads_as_a_number_hints_at_quoting() {
    let err = load(None, env(&[("VOXGATE_NODE__ID", "1234")])).unwrap_err();
    assert_eq!(err.key, "node.id");
    assert!(err.reason.contains("quote the value"), "{err}");
    let config = load(None, env(&[("VOXGATE_NODE__ID", "\"1234\"")])).unwrap();
    assert_eq!(config.node.id.as_str(), "1234");
}

#[test]
fn env_needs_a_double_underscore_and_lowercases_keys() {
    // `VOXGATE_LIMITS` (no `__`) is not an override: such names stay free for e.g. VOXGATE_CONFIG.
    let config = load(None, env(&[("VOXGATE_LIMITS", "{ max_sessions = 3 }")])).unwrap();
    assert_eq!(config.limits.max_sessions, 150);
    // Segments are lower-cased, so a spillover region key cannot be set on its own (set the whole
    // table instead); the error names the key.
    let err = load(
        None,
        env(&[("VOXGATE_ROUTING__SPILLOVER__US-EAST", "[\"US-EAST\"]")]),
    )
    .unwrap_err();
    assert_eq!(err.key, "routing.spillover.us-east");
}

#[test]
fn binary_check_config_reports_ok_or_the_key() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_voxgate"));
        command.args(args).env_remove("VOXGATE_CONFIG");
        for (k, v) in env {
            command.env(k, v);
        }
        command.output().unwrap()
    };
    let ok = run(&["--check-config"], &[]);
    assert!(ok.status.success());
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "config ok");

    let example = repo_file("multi-region.toml");
    let ok = run(
        &["--config", example.to_str().unwrap(), "--check-config"],
        &[],
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let bad = run(
        &["--check-config"],
        &[("VOXGATE_LIMITS__MAX_SESSIONS", "many")],
    );
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("config key `limits.max_sessions`"),
        "{stderr}"
    );

    // Flags override env and are validated too.
    let flag = run(
        &["--check-config", "--max-sessions", "0"],
        &[("VOXGATE_LIMITS__MAX_SESSIONS", "5")],
    );
    assert_eq!(flag.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&flag.stderr).contains("`limits.max_sessions`: must be at least 1")
    );

    // Without --check-config a bad config still exits 1 before starting anything.
    let bad = run(&["--config", "/nonexistent.toml"], &[]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stderr)
            .contains("config key `/nonexistent.toml`: cannot read")
    );
}
