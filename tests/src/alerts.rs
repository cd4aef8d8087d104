//! Alerts: native and Defender bodies, the run id an alert makes, the hostile-input corpus.

/// A native (`lr.alert/v1`) alert.
pub fn native_alert(
    alert_id: &str,
    machine: &str,
    category: &str,
    params: &[(&str, &str)],
) -> serde_json::Value {
    let parameters: serde_json::Map<String, serde_json::Value> = params
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
        .collect();
    serde_json::json!({
        "schema": "lr.alert/v1", "alert_id": alert_id, "machine_id": machine, "title": "Test alert",
        "category": category, "severity": "High", "source": "tests", "parameters": parameters
    })
}

/// A Defender alert whose one piece of evidence is the file `name` in the folder `dir`.
pub fn defender_file_alert(category: &str, severity: &str, dir: &str, name: &str) -> String {
    serde_json::json!({
        "id": "da637000000000000000_1",
        "machineId": "a".repeat(40),
        "title": "Malware detected",
        "category": category,
        "severity": severity,
        "detectionSource": "WindowsDefenderAv",
        "evidence": [{"entityType": "File", "filePath": dir, "fileName": name,
                      "sha256": "ab".repeat(32)}]
    })
    .to_string()
}

pub fn run_id(format: &str, alert_id: &str, machine: &str, playbook: &str) -> shared::ids::RunId {
    shared::ids::RunId::derive(format, alert_id, machine, playbook)
}

/// The run an alert of `tenant` makes (a deployment with a tenant registry).
pub fn tenant_run_id(
    tenant: &str,
    format: &str,
    alert_id: &str,
    machine: &str,
    playbook: &str,
) -> shared::ids::RunId {
    let tenant = shared::ids::TenantKey::parse(tenant).expect("a valid tenant key");
    shared::ids::RunId::derive_for(Some(&tenant), format, alert_id, machine, playbook)
}

/// The hostile-input corpus: (name, body, expected reject code).
pub fn corpus() -> Vec<(String, String, String)> {
    #[derive(serde::Deserialize)]
    struct Case {
        name: String,
        body: String,
        code: String,
    }
    include_str!("../corpus/hostile-alerts.jsonl")
        .lines()
        .map(|l| {
            let c: Case = serde_json::from_str(l).expect("corpus line");
            (c.name, c.body, c.code)
        })
        .collect()
}
