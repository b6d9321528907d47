//! The deployment files under `deploy/`: every manifest parses, the Kubernetes base says what a
//! voxgate Proxy needs (probes, preStop drain within the grace period, host network, CAP_SYS_NICE,
//! a PDB, an HPA on the adapter's metrics), the systemd unit drains on stop, the shipped config is
//! one voxgate accepts, and every `voxgate_*` metric the files name is exported by a running voxgate.

// A plain test thread drives real processes: real clock and sleeps; setup failures may panic.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Proxy, backend_toml, field, run_calls, start_backend, wait_until};
use serde_yaml_ng::Value;

/// The repository's `deploy/` directory.
fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every file under `dir`, recursively, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The documents of a YAML stream, split on `---` lines (serde_yaml_ng's `from_str` takes one
/// document, and deserializing each of its stream's documents would need `serde` itself).
fn split_documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line == "---" || line.starts_with("--- ") {
            docs.push(
                line.get(4..)
                    .map_or(String::new(), |rest| format!("{rest}\n")),
            );
        } else if line != "..." {
            let doc = docs.last_mut().unwrap();
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs
}

/// Every non-empty YAML document of `path`; panics naming the file when one does not parse.
fn yaml_documents(path: &Path) -> Vec<Value> {
    split_documents(&read(path))
        .iter()
        .enumerate()
        .filter_map(|(i, doc)| {
            let value: Value = serde_yaml_ng::from_str(doc).unwrap_or_else(|e| {
                panic!(
                    "{} (document {}): not valid YAML: {e}",
                    path.display(),
                    i + 1
                )
            });
            (!value.is_null()).then_some(value)
        })
        .collect()
}

/// Every `*.yaml` document under `deploy/`, with its file.
fn manifests() -> Vec<(PathBuf, Value)> {
    files_under(&deploy_dir())
        .into_iter()
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .flat_map(|path| {
            yaml_documents(&path)
                .into_iter()
                .map(move |doc| (path.clone(), doc))
        })
        .collect()
}

/// The one manifest of `kind` named `name`.
fn manifest(all: &[(PathBuf, Value)], kind: &str, name: &str) -> Value {
    let found: Vec<&Value> = all
        .iter()
        .map(|(_, doc)| doc)
        .filter(|doc| doc["kind"].as_str() == Some(kind) && doc["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "expected one {kind} named {name}");
    found[0].clone()
}

fn base_file(name: &str) -> PathBuf {
    deploy_dir().join("kubernetes/base").join(name)
}

fn dashboard_path() -> PathBuf {
    deploy_dir().join("grafana/voxgate-capacity.json")
}

/// The dashboard; panics naming the file when it is not JSON.
fn dashboard() -> serde_json::Value {
    let path = dashboard_path();
    serde_json::from_str(&read(&path))
        .unwrap_or_else(|e| panic!("{}: not valid JSON: {e}", path.display()))
}

/// The voxgate container of the Proxy Deployment.
fn proxy_container(deployment: &Value) -> Value {
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("containers");
    containers
        .iter()
        .find(|c| c["name"] == "voxgate")
        .expect("a container named voxgate")
        .clone()
}

/// `key = value` of `[section]` in a TOML file, the value unquoted (enough for flat keys).
fn toml_value(text: &str, section: &str, key: &str) -> Option<String> {
    let mut current = String::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            current = line.trim_matches(|c| c == '[' || c == ']').to_owned();
        } else if current == section
            && let Some((k, v)) = line.split_once('=')
            && k.trim() == key
        {
            return Some(v.trim().trim_matches('"').to_owned());
        }
    }
    None
}

/// Seconds of a duration written like voxgate's and systemd's: `3600`, `3000s`, `50m`, `1h`.
fn seconds(text: &str) -> u64 {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .unwrap_or_else(|_| panic!("not a duration: {text:?}"));
    let scale = match unit.trim() {
        "" | "s" | "sec" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        other => panic!("unknown duration unit {other:?} in {text:?}"),
    };
    number * scale
}

/// Every `voxgate_[a-z0-9_]+` token in `text`.
fn metric_tokens(text: &str) -> BTreeSet<String> {
    const PREFIX: &str = "voxgate_";
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find(PREFIX) {
        let tail = &rest[at + PREFIX.len()..];
        let len = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        if len > 0 {
            names.insert(format!("{PREFIX}{}", &tail[..len]));
        }
        rest = &tail[len..];
    }
    names
}

/// A histogram's series name without its `_bucket` / `_sum` / `_count` suffix.
fn base_metric(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
}

/// The prometheus-adapter rules file.
fn adapter_rules() -> Value {
    let path = deploy_dir().join("kubernetes/prometheus-adapter/rules.yaml");
    let docs = yaml_documents(&path);
    assert_eq!(docs.len(), 1, "{}: one document", path.display());
    docs[0].clone()
}

/// Output names of the adapter's rules of `section` (`rules`, `externalRules`), with the metric
/// names each rule reads.
fn adapter_outputs(rules: &Value, section: &str) -> Vec<(String, BTreeSet<String>)> {
    rules[section]
        .as_sequence()
        .map(|rules| {
            rules
                .iter()
                .map(|rule| {
                    let output = rule["name"]["as"]
                        .as_str()
                        .unwrap_or_else(|| panic!("adapter rule without name.as: {rule:?}"))
                        .to_owned();
                    let query = format!(
                        "{} {}",
                        rule["seriesQuery"].as_str().unwrap_or_default(),
                        rule["metricsQuery"].as_str().unwrap_or_default()
                    );
                    (output, metric_tokens(&query))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Names the adapter defines that voxgate does not export: a rule's output that is none of the
/// series the rule reads (e.g. `voxgate_sessions_utilization` from active / limit).
fn derived_metric_names() -> BTreeSet<String> {
    let rules = adapter_rules();
    ["rules", "externalRules"]
        .iter()
        .flat_map(|section| adapter_outputs(&rules, section))
        .filter(|(output, inputs)| !inputs.contains(output))
        .map(|(output, _)| output)
        .collect()
}

/// Whether Prometheus text `metrics` has a family `name` (a `# TYPE` line or a sample).
fn exported(metrics: &str, name: &str) -> bool {
    metrics.lines().any(|line| {
        line.strip_prefix("# TYPE ")
            .is_some_and(|rest| rest.split(' ').next() == Some(name))
            || line
                .strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
    })
}

#[test]
fn every_manifest_and_the_dashboard_parse() {
    let all = manifests();
    assert!(
        all.len() >= 9,
        "expected the base, the adapter rules and KEDA, got {}",
        all.len()
    );
    for (path, doc) in &all {
        // The adapter's config file is not a Kubernetes object; everything else is.
        if !path.ends_with("prometheus-adapter/rules.yaml") {
            assert!(
                doc["apiVersion"].is_string() && doc["kind"].is_string(),
                "{}: a document without apiVersion and kind",
                path.display()
            );
        }
    }
    let dashboard = dashboard();
    assert!(
        dashboard["schemaVersion"].as_u64().unwrap() >= 36,
        "schemaVersion"
    );
}

#[test]
fn kustomization_lists_files_that_exist() {
    let path = base_file("kustomization.yaml");
    let docs = yaml_documents(&path);
    let kustomization = &docs[0];
    let mut listed: Vec<&str> = kustomization["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    for generator in ["configMapGenerator", "secretGenerator"] {
        for generated in kustomization[generator].as_sequence().into_iter().flatten() {
            for key in ["files", "envs"] {
                for file in generated[key].as_sequence().into_iter().flatten() {
                    let file = file.as_str().unwrap();
                    // `files` entries may be `key=path`.
                    listed.push(file.rsplit_once('=').map_or(file, |(_, path)| path));
                }
            }
        }
    }
    assert!(
        listed.contains(&"deployment.yaml") && listed.contains(&"voxgate.toml"),
        "{listed:?}"
    );
    for file in &listed {
        assert!(
            base_file(file).is_file(),
            "kustomization.yaml lists {file}, which does not exist"
        );
    }
    // The autoscalers are alternatives: the base must not pull in the KEDA ScaledObject.
    assert!(
        !listed.iter().any(|file| file.contains("keda")),
        "{listed:?}"
    );
}

#[test]
fn deployment_probes_drains_and_runs_on_the_host_network() {
    let all = manifests();
    let deployment = manifest(&all, "Deployment", "voxgate");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = proxy_container(&deployment);

    let liveness = container["livenessProbe"]["httpGet"]["path"].as_str();
    let readiness = container["readinessProbe"]["httpGet"]["path"].as_str();
    assert_eq!(liveness, Some("/livez"));
    assert_eq!(readiness, Some("/readyz"));
    assert_ne!(liveness, readiness);
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(container[probe]["httpGet"]["port"].as_u64(), Some(9090));
    }

    let pre_stop: Vec<&str> = container["lifecycle"]["preStop"]["exec"]["command"]
        .as_sequence()
        .expect("preStop exec command")
        .iter()
        .map(|arg| arg.as_str().unwrap())
        .collect();
    assert!(pre_stop.contains(&"drain"), "{pre_stop:?}");

    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(grace >= 600, "grace period {grace}s");
    // The drain must end (its deadline) before the kubelet kills the pod.
    let config = read(&base_file("voxgate.toml"));
    let deadline = seconds(&toml_value(&config, "drain", "deadline").expect("drain.deadline"));
    assert!(
        deadline < grace,
        "drain.deadline {deadline}s must be below terminationGracePeriodSeconds {grace}s"
    );

    assert_eq!(pod["hostNetwork"].as_bool(), Some(true));
    assert_eq!(pod["dnsPolicy"].as_str(), Some("ClusterFirstWithHostNet"));
    let ports = container["ports"].as_sequence().expect("ports");
    let declared = |port: u64, protocol: &str| {
        ports.iter().any(|p| {
            p["containerPort"].as_u64() == Some(port)
                && p["protocol"].as_str().unwrap_or("TCP") == protocol
        })
    };
    assert!(declared(5060, "UDP"), "SIP over UDP not declared");
    assert!(declared(5060, "TCP"), "SIP over TCP not declared");
    assert!(declared(9090, "TCP"), "HTTP not declared");

    // Kubernetes spells capabilities without the CAP_ prefix; accept both.
    let added: Vec<&str> = container["securityContext"]["capabilities"]["add"]
        .as_sequence()
        .expect("capabilities.add")
        .iter()
        .map(|c| {
            let c = c.as_str().unwrap();
            c.strip_prefix("CAP_").unwrap_or(c)
        })
        .collect();
    assert!(added.contains(&"SYS_NICE"), "{added:?}");
    assert!(
        toml_value(&config, "media", "worker_nice")
            .is_some_and(|nice| nice.parse::<i32>().unwrap() < 0),
        "CAP_SYS_NICE is only needed for a negative media.worker_nice"
    );

    let env = container["env"].as_sequence().expect("env");
    let field_of = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["valueFrom"]["fieldRef"]["fieldPath"].as_str())
    };
    assert_eq!(field_of("POD_NAME"), Some("metadata.name"));
    assert_eq!(field_of("HOST_IP"), Some("status.hostIP"));

    let anti_affinity =
        &pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(
        anti_affinity["topologyKey"].as_str(),
        Some("kubernetes.io/hostname")
    );
    assert_eq!(
        anti_affinity["labelSelector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"],
        "the anti-affinity must select the Proxies themselves"
    );
}

#[test]
fn disruption_budget_and_autoscaler_fit_the_deployment() {
    let all = manifests();
    let deployment = manifest(&all, "Deployment", "voxgate");
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];

    let pdb = manifest(&all, "PodDisruptionBudget", "voxgate");
    assert!(
        !pdb["spec"]["maxUnavailable"].is_null() || !pdb["spec"]["minAvailable"].is_null(),
        "PDB without maxUnavailable or minAvailable"
    );
    for (key, value) in pdb["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .expect("PDB selector")
    {
        assert_eq!(&pod_labels[key.as_str().unwrap()], value, "PDB selector");
    }

    let hpa = manifest(&all, "HorizontalPodAutoscaler", "voxgate");
    assert_eq!(hpa["apiVersion"].as_str(), Some("autoscaling/v2"));
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "voxgate");
    assert!(hpa["spec"]["minReplicas"].as_u64().unwrap() >= 2);
    let window = hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"]
        .as_u64()
        .expect("behavior.scaleDown.stabilizationWindowSeconds");
    assert!(window >= 300, "scale-down window {window}s");

    // Each metric the HPA reads is one the adapter serves, of the matching kind.
    let rules = adapter_rules();
    let custom: Vec<String> = adapter_outputs(&rules, "rules")
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let external: Vec<String> = adapter_outputs(&rules, "externalRules")
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let metrics = hpa["spec"]["metrics"].as_sequence().expect("metrics");
    let mut adapter_metrics = 0;
    for metric in metrics {
        let (kind, served) = match metric["type"].as_str() {
            Some("Pods") => ("pods", &custom),
            Some("External") => ("external", &external),
            _ => continue,
        };
        let name = metric[kind]["metric"]["name"].as_str().unwrap().to_owned();
        assert!(
            served.contains(&name),
            "the HPA reads {kind} metric {name}, which no prometheus-adapter rule serves"
        );
        adapter_metrics += 1;
    }
    assert!(adapter_metrics > 0, "the HPA reads no Pods/External metric");

    // The HPA and KEDA plan for the region this Deployment serves.
    let region = toml_value(&read(&base_file("voxgate.toml")), "node", "region").unwrap();
    for metric in metrics.iter().filter(|m| m["type"] == "External") {
        assert_eq!(
            metric["external"]["metric"]["selector"]["matchLabels"]["region"].as_str(),
            Some(region.as_str())
        );
    }
    let keda = manifest(&all, "ScaledObject", "voxgate");
    assert_eq!(keda["spec"]["scaleTargetRef"]["name"], "voxgate");
    let queries: Vec<&str> = keda["spec"]["triggers"]
        .as_sequence()
        .expect("triggers")
        .iter()
        .filter(|t| t["type"] == "prometheus")
        .map(|t| t["metadata"]["query"].as_str().unwrap())
        .collect();
    assert!(
        queries
            .iter()
            .any(|q| q.contains(&format!("region=\"{region}\""))),
        "{queries:?}"
    );
}

#[test]
fn systemd_unit_drains_on_stop() {
    let path = deploy_dir().join("systemd/voxgate.service");
    let unit = read(&path);
    let setting = |key: &str| {
        unit.lines()
            .filter(|line| !line.trim_start().starts_with('#'))
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .map(str::trim)
    };
    assert_eq!(setting("Type"), Some("simple"));
    assert_eq!(setting("KillSignal"), Some("SIGTERM"));
    let timeout = seconds(setting("TimeoutStopSec").expect("TimeoutStopSec"));
    assert!(timeout >= 600, "TimeoutStopSec {timeout}s");
    // systemd installs take the default drain.deadline; the stop timeout must outlast it.
    let defaults = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/voxgate.toml"));
    let deadline = seconds(&toml_value(&defaults, "drain", "deadline").expect("drain.deadline"));
    assert!(
        deadline < timeout,
        "drain.deadline {deadline}s must be below TimeoutStopSec {timeout}s"
    );
    assert!(
        setting("AmbientCapabilities").is_some_and(|caps| caps.contains("CAP_SYS_NICE")),
        "AmbientCapabilities"
    );
    assert_eq!(setting("Restart"), Some("on-failure"));
    assert!(setting("ExecReload").is_none(), "voxgate has no reload");
}

#[test]
fn dashboard_queries_prometheus_through_its_variables() {
    let dashboard = dashboard();
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating");
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no ${name} variable"))
    };
    assert_eq!(variable("datasource")["type"], "datasource");
    assert_eq!(variable("datasource")["query"], "prometheus");
    assert!(variable("region")["query"].to_string().contains("region"));
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().unwrap();
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "{title}: id reused"
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no queries");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
            let expr = target["expr"].as_str().unwrap_or_default();
            assert!(expr.contains("voxgate_"), "{title}: {expr:?}");
        }
    }
}

/// The Deployment's environment for the voxgate container, the downward API and the Secret
/// resolved as the kubelet would (with `pod_name`, `host_ip` and the Secret's `admin_key`).
fn pod_environment(
    container: &Value,
    secret: &Value,
    admin_key: Option<&str>,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for source in container["envFrom"].as_sequence().into_iter().flatten() {
        assert_eq!(source["secretRef"]["name"], secret["metadata"]["name"]);
        for (key, value) in secret["stringData"].as_mapping().expect("stringData") {
            let key = key.as_str().unwrap().to_owned();
            let value = admin_key.map_or_else(|| value.as_str().unwrap().to_owned(), str::to_owned);
            env.push((key, value));
        }
    }
    for var in container["env"].as_sequence().expect("env") {
        let name = var["name"].as_str().unwrap().to_owned();
        let value = if let Some(value) = var["value"].as_str() {
            // $(VAR) refers to a variable defined earlier in the list.
            env.iter().fold(value.to_owned(), |value, (k, v)| {
                value.replace(&format!("$({k})"), v)
            })
        } else {
            match var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("metadata.name") => "voxgate-6d5f8c7b9-x2k9p".to_owned(),
                Some("status.hostIP") => "10.0.3.17".to_owned(),
                other => panic!("{name}: unexpected source {other:?}"),
            }
        };
        env.push((name, value));
    }
    env
}

/// `voxgate --check-config` with the ConfigMap's voxgate.toml and the pod's environment.
fn check_config(env: &[(String, String)]) -> (bool, String) {
    let config = common::scratch_dir().join(format!("deploy-base-{}.toml", std::process::id()));
    std::fs::copy(base_file("voxgate.toml"), &config).unwrap();
    let config = config.to_string_lossy().into_owned();
    let output = Command::new(common::binary("voxgate"))
        .env_clear()
        .envs(env.iter().map(|(k, v)| {
            let v = if k == "VOXGATE_CONFIG" { &config } else { v };
            (k.as_str(), v.as_str())
        }))
        .args(["--config", &config, "--check-config"])
        .output()
        .expect("run voxgate --check-config");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn base_config_and_pod_environment_are_accepted_by_voxgate() {
    let all = manifests();
    let deployment = manifest(&all, "Deployment", "voxgate");
    let container = proxy_container(&deployment);
    let secret = manifest(&all, "Secret", "voxgate-admin");

    // With a real key, as the README says to set it, the config is accepted.
    let key = "f3a9c1d27e4b8056a1c9d3e7b2f4a6c8d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f";
    let (ok, text) = check_config(&pod_environment(&container, &secret, Some(key)));
    assert!(
        ok && text.contains("config ok"),
        "voxgate refuses the Kubernetes config:\n{text}"
    );

    // As shipped, the Secret's placeholder is refused: nobody runs on a published key.
    let (ok, text) = check_config(&pod_environment(&container, &secret, None));
    assert!(
        !ok && text.contains("cluster.admin_key"),
        "the placeholder admin key was not refused:\n{text}"
    );
}

#[test]
fn every_metric_named_in_deploy_is_exported_by_voxgate() {
    let derived = derived_metric_names();
    assert!(
        derived.contains("voxgate_sessions_utilization"),
        "{derived:?}"
    );
    let mut named = BTreeSet::new();
    for path in files_under(&deploy_dir()) {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        named.extend(
            metric_tokens(&text)
                .iter()
                .map(|name| base_metric(name).to_owned()),
        );
    }
    let wanted: BTreeSet<String> = named.difference(&derived).cloned().collect();
    assert!(
        wanted.contains("voxgate_sessions_active")
            && wanted.contains("voxgate_session_setup_seconds"),
        "{wanted:?}"
    );

    // Counters and histograms appear once used: one answered call (with stray media dropped), one
    // call refused at the cap of 1.
    let (_backend, addr) = start_backend("deploy-b1", &["--max-sessions", "10"]);
    let config = format!(
        "[limits]\nmax_sessions = 1\n[health]\ninterval = \"1s\"\n{}",
        backend_toml("b1", addr, 10, None)
    );
    let mut proxy = Proxy::start("deploy-proxy", &config);
    let up = wait_until(Duration::from_secs(10), || {
        proxy.metric_opt("voxgate_backend_up{backend=\"b1\",region=\"US-EAST\"}") == Some(1.0)
    });
    assert!(up, "backend never up:\n{}", proxy.metrics());

    let target = proxy.sip.to_string();
    let load = std::thread::spawn(move || {
        run_calls(&[
            "--target",
            &target,
            "--concurrency",
            "2",
            "--rate",
            "50",
            "--total",
            "2",
            "--hold",
            "4s",
        ])
    });
    let answered = wait_until(Duration::from_secs(5), || {
        proxy.metric("voxgate_sessions_active") == 1.0
    });
    assert!(answered, "no call up:\n{}", proxy.metrics());
    // Once the call's media has latched (packets relayed both ways, counted about once a second),
    // junk on every relay port is dropped (strict source or malformed) without disturbing the call.
    let latched = wait_until(Duration::from_secs(3), || {
        ["caller_to_backend", "backend_to_caller"]
            .iter()
            .all(|direction| {
                proxy.counter(&format!(
                    "voxgate_rtp_packets_total{{direction=\"{direction}\"}}"
                )) > 0.0
            })
    });
    assert!(latched, "no media relayed:\n{}", proxy.metrics());
    let stray = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for port in proxy.media.0..=proxy.media.1 {
        let _ = stray.send_to(b"junk", ("127.0.0.1", port));
    }
    assert_eq!(
        proxy.metric("voxgate_sessions_active"),
        1.0,
        "the call ended before the junk was sent"
    );
    let (_, report) = load.join().unwrap();
    assert_eq!(field(&report, &["calls", "answered"]), 1, "{report:#}");
    assert_eq!(
        field(&report, &["calls", "rejected", "503"]),
        1,
        "{report:#}"
    );

    // Relay counters are flushed about once a second.
    let mut missing = Vec::new();
    wait_until(Duration::from_secs(5), || {
        let metrics = proxy.metrics();
        missing = wanted
            .iter()
            .filter(|name| !exported(&metrics, name))
            .cloned()
            .collect();
        missing.is_empty()
    });
    assert!(
        missing.is_empty(),
        "named under deploy/ but not exported by voxgate: {missing:?}\n{}",
        proxy.metrics()
    );
    proxy.assert_alive();
}
