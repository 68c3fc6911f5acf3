//! The deployment examples in `deploy/` are real: the systemd unit passes
//! `systemd-analyze verify`, the Kubernetes manifest parses, and the polld config inside
//! it passes `polld check`. (The Buildbot snippet's settings are the ones the delivery
//! tests' real master runs with.)

// Tests may unwrap: a panic is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

use polld_test_support::{polld_bin, workspace_root};
use yaml_rust2::{Yaml, YamlLoader};

fn deploy(file: &str) -> PathBuf {
    workspace_root().join("deploy").join(file)
}

#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(deploy("systemd/polld.service")).unwrap();
    assert!(unit.contains("DynamicUser=yes") && unit.contains("StateDirectory=polld"));
    assert!(unit.contains("ProtectSystem=strict"));
    // verify checks that ExecStart's binary exists: point it at the one just built.
    let dir = tempfile::tempdir().unwrap();
    let local = unit.replace("/usr/local/bin/polld", &polld_bin().display().to_string());
    let path = dir.path().join("polld.service");
    std::fs::write(&path, local).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze runs (Debian's systemd package)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("polld.service"))
        .collect();
    assert!(
        complaints.is_empty(),
        "systemd-analyze complains:\n{stderr}"
    );
}

#[test]
fn the_kubernetes_manifest_parses_and_its_polld_config_checks() {
    let text = std::fs::read_to_string(deploy("kubernetes/buildbot-with-polld.yaml")).unwrap();
    let documents = YamlLoader::load_from_str(&text).expect("valid YAML");
    let kinds: Vec<&str> = documents
        .iter()
        .filter_map(|d| d["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["ConfigMap", "Secret", "StatefulSet"]);

    let pod = &documents[2]["spec"]["template"]["spec"];
    let containers = pod["containers"].as_vec().expect("containers");
    let sidecar = containers
        .iter()
        .find(|c| c["name"].as_str() == Some("polld"))
        .expect("a polld container");
    assert_eq!(
        sidecar["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    let mounts = sidecar["volumeMounts"].as_vec().expect("mounts");
    assert!(
        mounts
            .iter()
            .any(|m| m["mountPath"].as_str() == Some("/var/lib/polld"))
    );

    let config = documents[0]["data"]["pollers.toml"]
        .as_str()
        .expect("pollers.toml in the ConfigMap");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pollers.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(polld_bin())
        .arg("--config")
        .arg(&path)
        .arg("check")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the ConfigMap's pollers.toml fails polld check:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(Yaml::Integer(1), documents[2]["spec"]["replicas"]);
}
