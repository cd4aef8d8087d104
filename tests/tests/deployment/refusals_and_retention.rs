//! A value one playbook refuses stays for the next playbook that takes it, a refusal's reason
//! survives to the dead-letter reason, a file name does not stop an unwanted-software alert, and
//! the Object Lock mode pin covers PutObjectRetention as well as PutObject. (Each failed on
//! 5c32b74, found by a second adversarial review of issue 10.)

use crate::policy;

use serde_json::json;
use shared::alerts::parse;
use shared::alerts::playbook::Playbooks;
use shared::defender::CommandType;
use testkit::alerts::defender_file_alert;

/// docs/security.md (What an alert can make the pipeline do): "a Defender alert goes on without
/// the refused value ..., so a file's name can at most cost the commands that need it". For the bundled `file-details` playbook
/// (UnwantedSoftware, Low) the path goes into args, where an apostrophe, `&`, `$`, brackets or any
/// non-ASCII letter is refused; dropping `file_path` leaves no playbook that matches, so the whole
/// alert is dead-lettered (`no_playbook`) and nothing runs. An attacker evades the only playbook for
/// this alert class by naming the file `it's.exe`; an ordinary German user's `Rechnung März.exe`
/// does the same by accident.
#[test]
fn a_file_name_does_not_stop_an_unwanted_software_alert() {
    let p = Playbooks::bundled().unwrap();
    let mut stopped = Vec::new();
    for name in [
        "it's.exe",
        "Rechnung M\u{e4}rz.exe",
        "a&b.exe",
        "setup[1].exe",
    ] {
        let alert = parse(&defender_file_alert(
            "UnwantedSoftware",
            "Low",
            "C:\\Users\\alice\\Downloads",
            name,
        ))
        .unwrap();
        if let Err(e) = p.plan(&alert) {
            stopped.push(format!("{name:?}: {e}"));
        }
    }
    assert!(
        stopped.is_empty(),
        "alerts stopped whole by a file name:\n{}",
        stopped.join("\n")
    );
}

/// `plan` drops a refused value from the alert for every later playbook, not only for the one
/// that refused it: a value that a path-in-args playbook refuses is then missing for a later
/// GetFile playbook that would take it literally, so the file is not collected although a
/// configured playbook could collect it.
#[test]
fn a_value_one_playbook_refuses_stays_for_the_next() {
    const PB: &str = r#"
[[library_files]]
name = "file-details.ps1"
external = true
[[library_files]]
name = "triage.ps1"
external = true

[[playbooks]]
name = "details"
[playbooks.match]
category = ["Malware"]
has_parameters = ["file_path"]
[[playbooks.commands]]
type = "RunScript"
script = "file-details.ps1"
args = "-Path {file_path}"
[playbooks.placeholders.file_path]
kind = "windows_path"

[[playbooks]]
name = "fetch"
[playbooks.match]
category = ["Malware"]
has_parameters = ["file_path"]
[[playbooks.commands]]
type = "GetFile"
path = "{file_path}"
[playbooks.placeholders.file_path]
kind = "windows_path"

[[playbooks]]
name = "triage"
[[playbooks.commands]]
type = "RunScript"
script = "triage.ps1"
"#;
    let p = Playbooks::from_toml(PB).unwrap();
    let alert = parse(&defender_file_alert(
        "Malware",
        "High",
        "C:\\Users\\alice\\Downloads",
        "it's.exe",
    ))
    .unwrap();
    let plan = p.plan(&alert).unwrap();
    assert_eq!(
        plan.playbook.name, "fetch",
        "refused by `details` ({:?}), then dropped for `fetch` too",
        plan.refused
    );
    assert!(plan.commands.iter().any(|c| c.kind == CommandType::GetFile));
}

/// When the refusing playbook's rule does not require the value, `plan` picks the same playbook
/// again, and rendering it fails with `missing_parameter`; the error (the alert's DLQ reason) no
/// longer says that the value was there and refused, so the operator sees a wrong cause.
#[test]
fn a_refusal_is_not_lost_when_the_same_playbook_is_chosen_again() {
    const PB: &str = r#"
[[playbooks]]
name = "collect"
[playbooks.match]
category = ["Malware"]
[[playbooks.commands]]
type = "GetFile"
path = "{file_path}"
[playbooks.placeholders.file_path]
kind = "windows_path"
"#;
    let p = Playbooks::from_toml(PB).unwrap();
    let alert = parse(&defender_file_alert(
        "Malware",
        "High",
        "C:\\Users\\alice",
        "NUL.exe",
    ))
    .unwrap();
    match p.plan(&alert) {
        Ok(_) => {}
        Err(e) => assert!(
            e.message.contains("refused"),
            "the DLQ reason hides the refusal: {e}"
        ),
    }
}

/// The bucket policy pins the Object Lock mode on `s3:PutObject` only. Every role that writes
/// evidence or manifests holds `s3:PutObjectRetention` on them (S3 requires it to write with a
/// retention date), and that action is also the PutObjectRetention API: a compromised submit or
/// poll role can call it on any manifest, collect on any evidence object, with the other mode or a
/// retain-until date centuries away. `s3:object-lock-mode` and
/// `s3:object-lock-remaining-retention-days` are condition keys of `s3:PutObjectRetention`, so
/// the same Deny (plus a cap on the remaining days) can cover it.
#[test]
fn the_retention_mode_pin_covers_put_object_retention() {
    use policy::Decision::Deny;
    let roles = policy::symbolic_roles_and_policies(
        json!({"EnableObjectLock": "true", "ObjectLockMode": "GOVERNANCE"}),
    );
    let bucket = &roles.resource_policies["EvidenceBucketPolicy"];
    let manifest = "arn:aws:s3:::lr-evidence/evidence/r-1/manifest.json";
    let submit = &roles.functions["submit"];
    assert!(
        submit.allows("s3:PutObjectRetention", manifest, None),
        "submit holds PutObjectRetention on every manifest"
    );
    let mut ctx: policy::Context = Default::default();
    ctx.insert("aws:SecureTransport", "true");
    ctx.insert("s3:object-lock-mode", "COMPLIANCE");
    assert_eq!(
        policy::decide(&[bucket], "s3:PutObjectRetention", manifest, &ctx),
        Deny,
        "PutObjectRetention with the other mode is not refused by the bucket policy"
    );
}
