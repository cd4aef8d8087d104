use super::*;

const M: &str = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07";

fn native() -> Value {
    serde_json::json!({"schema": "lr.alert/v1", "alert_id": "a-1", "machine_id": M, "title": "t",
        "category": "Malware", "severity": "High", "source": "edr", "parameters": {"file_path": "C:\\x.exe"}})
}

fn defender() -> Value {
    serde_json::json!({"id": "da637000000000000000_123", "machineId": M, "title": "Suspicious",
        "category": "Malware", "severity": "High", "detectionSource": "WindowsDefenderAv", "status": "New",
        "evidence": [{"entityType": "Process"}, {"entityType": "File", "filePath": "C:\\Users\\a\\Downloads", "fileName": "x.exe", "sha256": "ab"}]})
}

#[test]
fn four_formats_normalise_to_one_alert() {
    let n = parse(&native().to_string()).unwrap();
    assert_eq!(
        (n.format, n.envelope),
        (AlertFormat::Native, Envelope::None)
    );
    assert_eq!(n.parameters["file_path"], "C:\\x.exe");
    let d = parse(&defender().to_string()).unwrap();
    assert_eq!(d.format, AlertFormat::Defender);
    assert_eq!(d.parameters["file_path"], "C:\\Users\\a\\Downloads\\x.exe");
    assert_eq!(d.source, "WindowsDefenderAv");
    let sns = serde_json::json!({"Type": "Notification", "MessageId": "m", "TopicArn": "arn:aws:sns:x", "Message": defender().to_string()});
    let s = parse(&sns.to_string()).unwrap();
    assert_eq!(
        (s.format, s.envelope),
        (AlertFormat::Defender, Envelope::Sns)
    );
    let eb = serde_json::json!({"version": "0", "id": "e", "detail-type": "Alert", "source": "custom", "detail": native()});
    let e = parse(&eb.to_string()).unwrap();
    assert_eq!(
        (e.format, e.envelope),
        (AlertFormat::Native, Envelope::EventBridge)
    );
    assert_eq!(e.machine_id, n.machine_id);
}

#[test]
fn bad_input_gets_a_code_that_names_the_problem() {
    let cases: Vec<(String, &str)> = vec![
        ("not json".into(), "invalid_json"),
        ("[1,2]".into(), "unknown_format"),
        ("{}".into(), "unknown_format"),
        (
            r#"{"schema":"lr.alert/v2","alert_id":"a","machine_id":"x"}"#.into(),
            "unknown_schema",
        ),
        (
            native().to_string().replace(M, "../../etc/passwd"),
            "invalid_machine_id",
        ),
        (
            native().to_string().replace("\"a-1\"", "\"a/1\""),
            "invalid_alert_id",
        ),
        (
            format!(
                r#"{{"schema":"lr.alert/v1","alert_id":"a","machine_id":"{M}","machine_id":"{M}"}}"#
            ),
            "duplicate_key",
        ),
        (
            r#"{"Type":"Notification","Message":"{bad"}"#.into(),
            "bad_envelope",
        ),
        (
            r#"{"detail-type":"x","detail":"str"}"#.into(),
            "bad_envelope",
        ),
        (r#"{"id":"da1"}"#.into(), "missing_machine"),
        (
            format!("{{\"pad\":\"{}\"}}", "x".repeat(MAX_ALERT_BYTES)),
            "too_large",
        ),
        (
            native().to_string().replace("\"t\"", "\"a\\u202eb\""),
            "invalid_field",
        ),
        (
            native().to_string().replace("\"edr\"", "42"),
            "invalid_field",
        ),
    ];
    for (body, code) in cases {
        let e = parse(&body).unwrap_err();
        assert_eq!(
            e.code,
            code,
            "{} -> {e}",
            body.chars().take(80).collect::<String>()
        );
        assert!(!e.message.is_empty());
    }
}

/// An alert names its tenant by our key (native) or its Entra id (Defender); a malformed tenant
/// is refused naming the field; an alert naming none records nothing (the same run record and
/// manifest as before tenants).
#[test]
fn an_alert_names_its_tenant_by_key_or_entra_id() {
    let mut n = native();
    n["tenant"] = "acme".into();
    let a = parse(&n.to_string()).unwrap();
    assert_eq!(
        a.tenant,
        Some(Claim::Key(TenantKey::parse("acme").unwrap()))
    );
    let mut d = defender();
    d["tenantId"] = "11111111-2222-3333-4444-55555555555A".into();
    let a = parse(&d.to_string()).unwrap();
    assert_eq!(
        a.tenant,
        Some(Claim::Entra(
            EntraTenantId::parse("11111111-2222-3333-4444-55555555555a").unwrap()
        ))
    );
    for (body, field) in [
        (
            {
                let mut n = native();
                n["tenant"] = "../other".into();
                n
            },
            "tenant:",
        ),
        (
            {
                let mut d = defender();
                d["tenantId"] = "acme".into();
                d
            },
            "tenantId:",
        ),
    ] {
        let e = parse(&body.to_string()).unwrap_err();
        assert_eq!(e.code, RejectCode::InvalidField);
        assert!(e.message.starts_with(field), "{e}");
    }
    let plain = parse(&native().to_string()).unwrap();
    assert_eq!(plain.tenant, None);
    let stored = serde_json::to_string(&plain).unwrap();
    assert!(!stored.contains("tenant"), "{stored}");
}
