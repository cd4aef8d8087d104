//! IAM as deployed. The roles come from the SAM-transformed template (infra/role_policies.py), so a
//! template change that drops or widens a permission fails here.
//!
//! - Static: each role against what its stage's code reads, writes, deletes and sends, key by key
//!   (keys built by the code's own key functions): every read of a key that may be absent is backed
//!   by `s3:ListBucket` limited to that key (on AWS a missing key answers 403 AccessDenied instead
//!   of 404 without it), deletes only where the stage deletes, and nothing beyond.
//! - Enforced: the four stages end to end on moto with IAM enforced (infra/moto_iam.py, started by
//!   `./dev test`), each under an IAM user carrying exactly its role's policies, with the Defender
//!   simulator: alert to manifest. That moto also answers 403 for a missing key the caller may not
//!   list, as S3 does, so the stages meet the same answers as on AWS.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::policy::{
    self, ACCOUNT, QUEUES, REGION, SECRET, queue_arn, resource_policies, role_arn,
};
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use aws_sdk_sqs::types::MessageSystemAttributeName;
use serde_json::{Value, json};
use shared::adapters::s3::S3Store;
use shared::defender::CommandType;
use shared::entry::{self, Collect, Function, Intake, Poll, Submit};
use shared::ids::RunId;
use shared::ports::{ObjectStore, Put};
use shared::store::{CommandOutcome, RunOutcome, RunState, keys};
use testkit::alerts::run_id;
use testkit::aws::{provision, sdk_as, unique};
use testkit::content::{expected_sha256, sha256_hex};
use testkit::logs::LogCapture;
use testkit::sim::{FILE, M1, credentials_json, device, sim_config, start_sim};
use testkit::stack::{file_alert, function_env};

// ---------------------------------------------------------------------------------------------
// What each stage's code does with S3, SQS and Secrets Manager.

/// Sample keys of one run, built by the code's own key functions.
struct Keys {
    run_id: RunId,
    run: String,
    command: String,
    manifest: String,
    signature: String,
    evidence: String,
    checkpoint: String,
    board: String,
    budget: String,
    corrupt_budget: String,
    /// Keys no stage touches.
    decoys: Vec<String>,
}

impl Keys {
    fn new() -> Self {
        let run_id = run_id("native", "iam-static", M1, "malware-file");
        Self {
            run: shared::store::run_key(&run_id),
            command: shared::store::command_key(&run_id, 1),
            manifest: shared::store::manifest_key(&run_id),
            signature: shared::store::signature_key(&run_id),
            evidence: shared::store::evidence_key(&run_id, 1, CommandType::GetFile),
            checkpoint: keys::checkpoint_key(&run_id, 1),
            board: keys::STATUS_BOARD_KEY.to_string(),
            budget: keys::BUDGET_KEY.to_string(),
            corrupt_budget: keys::corrupt_budget_key(None, 1_767_225_600_000),
            decoys: vec![
                format!("state/runs/{run_id}/notes.json"),
                // Where packages were staged before they went straight to their evidence keys.
                format!("state/staging/{run_id}/1-0123456789abcdef0123456789abcdef"),
                format!("runs/{run_id}/run.json"),
                format!("evidence/{run_id}/notes.json"),
                "playbooks/default.toml".into(),
                "evidence/loose.bin".into(),
                "state/other.json".into(),
                "other.json".into(),
            ],
            run_id,
        }
    }

    fn all(&self) -> Vec<String> {
        let mut v = vec![
            self.run.clone(),
            self.command.clone(),
            self.manifest.clone(),
            self.evidence.clone(),
            self.checkpoint.clone(),
            self.board.clone(),
            self.budget.clone(),
            self.corrupt_budget.clone(),
        ];
        v.extend(self.decoys.iter().cloned());
        v
    }

    /// ListBucket prefixes that would enumerate something: no role may list them.
    fn listings(&self) -> Vec<String> {
        let r = &self.run_id;
        vec![
            String::new(),
            keys::STATE_PREFIX.into(),
            keys::EVIDENCE_PREFIX.into(),
            "state/runs/".into(),
            "state/budget/".into(),
            "state/poll/".into(),
            "state/staging/".into(),
            format!("state/runs/{r}/"),
            format!("state/runs/{r}/checkpoints/"),
            format!("state/runs/{r}/commands/"),
            format!("evidence/{r}/"),
        ]
    }
}

/// What one function's code does (read from shared/src/stages, store, budget).
#[derive(Debug, Default)]
struct Uses {
    /// GetObject of keys that may not exist (the code treats "missing" as an answer).
    reads_maybe_absent: Vec<String>,
    /// GetObject of keys that exist when read (a package read back).
    reads: Vec<String>,
    /// PutObject, including multipart uploads and CopyObject targets.
    writes: Vec<String>,
    deletes: Vec<String>,
    /// AbortMultipartUpload.
    aborts: Vec<String>,
    /// Queues (logical ids) it sends to.
    sends: Vec<&'static str>,
    /// The queue (logical id) its event source reads.
    receives: &'static str,
    reads_secret: bool,
}

fn uses(k: &Keys) -> BTreeMap<&'static str, Uses> {
    // submit, poll and collect: the tenant budget (an unreadable one is kept aside), run and
    // command records (update_record, end_run, finish_run_if_complete), the manifest (If-None-Match;
    // read back when another message wrote it first, to be signed) and its signature (read first:
    // it may not be there yet).
    let records = |receives: &'static str, sends: Vec<&'static str>| Uses {
        receives,
        reads_maybe_absent: vec![
            k.budget.clone(),
            k.run.clone(),
            k.command.clone(),
            k.signature.clone(),
        ],
        reads: vec![k.manifest.clone()],
        writes: vec![
            k.budget.clone(),
            k.corrupt_budget.clone(),
            k.run.clone(),
            k.command.clone(),
            k.manifest.clone(),
            k.signature.clone(),
        ],
        sends,
        reads_secret: true,
        ..Uses::default()
    };
    // Poll also reads (maybe absent) and rewrites the status board.
    let mut poll = records(
        "PollQueue",
        vec!["PollQueue", "CollectQueue", "PollDeadLetterQueue"],
    );
    poll.reads_maybe_absent.push(k.board.clone());
    poll.writes.push(k.board.clone());
    let mut collect = records(
        "CollectQueue",
        vec!["CollectQueue", "CollectDeadLetterQueue"],
    );
    // Checkpoints are read (maybe absent), written and deleted; the package goes straight to its
    // evidence key through a multipart upload (aborted when given up), and is looked at (HEAD,
    // maybe absent) and read back (hash of a resumed GetFile; whether an object already there is
    // this package).
    collect
        .reads_maybe_absent
        .extend([k.checkpoint.clone(), k.evidence.clone()]);
    collect
        .writes
        .extend([k.checkpoint.clone(), k.evidence.clone()]);
    collect.deletes = vec![k.checkpoint.clone()];
    collect.aborts = vec![k.evidence.clone()];
    BTreeMap::from([
        (
            "intake",
            // create_run: If-None-Match on run.json, read back on a conflict.
            Uses {
                reads_maybe_absent: vec![k.run.clone()],
                writes: vec![k.run.clone()],
                sends: vec!["SubmitQueue", "AlertsDeadLetterQueue"],
                receives: "AlertsQueue",
                ..Uses::default()
            },
        ),
        (
            "submit",
            records(
                "SubmitQueue",
                vec!["SubmitQueue", "PollQueue", "SubmitDeadLetterQueue"],
            ),
        ),
        ("poll", poll),
        ("collect", collect),
    ])
}

fn object_arn(bucket: &str, key: &str) -> String {
    format!("arn:aws:s3:::{bucket}/{key}")
}

fn static_roles(parameters: Value) -> BTreeMap<String, policy::Role> {
    policy::roles(&policy::symbolic_bindings(parameters), false, &[]).functions
}

/// Collects what is wrong instead of stopping at the first, so one run shows every gap.
#[derive(Default)]
struct Findings(Vec<String>);

impl Findings {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }
    fn assert_none(self, title: &str) {
        assert!(self.0.is_empty(), "{title}:\n  {}", self.0.join("\n  "));
    }
}

#[test]
fn every_key_a_role_reads_that_may_be_absent_can_answer_404() {
    let keys = Keys::new();
    let roles = static_roles(json!({}));
    let bucket = "arn:aws:s3:::lr-evidence";
    let mut f = Findings::default();
    for (binary, u) in uses(&keys) {
        let role = &roles[binary];
        for key in &u.reads_maybe_absent {
            f.check(
                role.allows("s3:GetObject", &object_arn("lr-evidence", key), None),
                || format!("{binary}: s3:GetObject on {key}"),
            );
            f.check(role.allows("s3:ListBucket", bucket, Some(key)), || {
                format!(
                    "{binary}: s3:ListBucket with s3:prefix {key:?} (without it S3 answers 403 \
                     AccessDenied, not 404, when {key} does not exist yet)"
                )
            });
        }
    }
    f.assert_none("roles that cannot tell a missing key from a forbidden one");
}

#[test]
fn roles_delete_only_what_their_stage_deletes() {
    let keys = Keys::new();
    let roles = static_roles(json!({}));
    let mut f = Findings::default();
    for (binary, u) in uses(&keys) {
        let role = &roles[binary];
        for key in keys.all() {
            let may = role.allows("s3:DeleteObject", &object_arn("lr-evidence", &key), None);
            let must = u.deletes.contains(&key);
            f.check(may == must, || {
                format!(
                    "{binary}: s3:DeleteObject on {key} is {} but the stage {}",
                    if may { "allowed" } else { "denied" },
                    if must {
                        "deletes it"
                    } else {
                        "never deletes it"
                    }
                )
            });
        }
    }
    f.assert_none("deletes that differ from what the stages do");
}

#[test]
fn each_role_has_exactly_the_access_its_stage_uses() {
    let keys = Keys::new();
    let roles = static_roles(json!({}));
    assert_eq!(
        roles.keys().map(String::as_str).collect::<Vec<_>>(),
        ["collect", "intake", "poll", "submit"],
        "one role per function"
    );
    let bucket = "arn:aws:s3:::lr-evidence";
    let mut f = Findings::default();
    for (binary, u) in uses(&keys) {
        let role = &roles[binary];
        f.check(role.managed_policy_arns.is_empty(), || {
            format!(
                "{binary}: managed policies {:?} (SAM's SQS one receives and deletes on every queue)",
                role.managed_policy_arns
            )
        });
        for key in keys.all() {
            let arn = object_arn("lr-evidence", &key);
            let expect = [
                (
                    "s3:GetObject",
                    u.reads_maybe_absent.contains(&key) || u.reads.contains(&key),
                ),
                ("s3:PutObject", u.writes.contains(&key)),
                ("s3:DeleteObject", u.deletes.contains(&key)),
                ("s3:AbortMultipartUpload", u.aborts.contains(&key)),
                ("s3:ListMultipartUploadParts", false),
                ("s3:GetObjectVersion", false),
                ("s3:DeleteObjectVersion", false),
                ("s3:PutObjectAcl", false),
                ("s3:PutObjectRetention", false),
                ("s3:BypassGovernanceRetention", false),
            ];
            for (action, must) in expect {
                let may = role.allows(action, &arn, None);
                f.check(may == must, || {
                    format!(
                        "{binary}: {action} on {key}: {} (the stage {} it)",
                        if may { "allowed" } else { "denied" },
                        if must { "needs" } else { "has no use for" }
                    )
                });
            }
            let may = role.allows("s3:ListBucket", bucket, Some(&key));
            let must = u.reads_maybe_absent.contains(&key);
            f.check(may == must, || {
                format!(
                    "{binary}: s3:ListBucket for s3:prefix {key:?}: {}",
                    if may { "allowed" } else { "denied" }
                )
            });
        }
        for prefix in keys.listings() {
            f.check(!role.allows("s3:ListBucket", bucket, Some(&prefix)), || {
                format!("{binary}: may list the bucket under {prefix:?}")
            });
        }
        f.check(!role.allows("s3:ListBucket", bucket, None), || {
            format!("{binary}: may list the whole bucket")
        });
        for action in [
            "s3:PutBucketPolicy",
            "s3:DeleteBucket",
            "s3:PutLifecycleConfiguration",
        ] {
            f.check(!role.allows(action, bucket, None), || {
                format!("{binary}: {action} on the bucket")
            });
        }
        for (stage, queue, dlq) in QUEUES {
            // Each function receives and deletes on its own queue only (its event source).
            let own = u.receives == queue;
            for action in ["sqs:ReceiveMessage", "sqs:DeleteMessage"] {
                for q in [queue, dlq] {
                    let may = role.allows(action, &queue_arn(q), None);
                    f.check(may == (own && q == queue), || {
                        format!(
                            "{binary}: {action} on {q} ({stage}): {}",
                            if may { "allowed" } else { "denied" }
                        )
                    });
                }
            }
            for q in [queue, dlq] {
                let may = role.allows("sqs:SendMessage", &queue_arn(q), None);
                let must = u.sends.contains(&q);
                f.check(may == must, || {
                    format!(
                        "{binary}: sqs:SendMessage to {q}: {}",
                        if may { "allowed" } else { "denied" }
                    )
                });
            }
        }
        f.check(
            role.allows("secretsmanager:GetSecretValue", SECRET, None) == u.reads_secret,
            || format!("{binary}: reading the Defender credentials"),
        );
        f.check(
            !role.allows(
                "secretsmanager:GetSecretValue",
                "arn:aws:secretsmanager:us-east-1:123456789012:secret:other-AbCdEf",
                None,
            ),
            || format!("{binary}: reads secrets other than the Defender credentials"),
        );
        for action in [
            "iam:PassRole",
            "sts:AssumeRole",
            "kms:CreateGrant",
            "kms:Encrypt",
        ] {
            f.check(!role.allows(action, "*", None), || {
                format!("{binary}: {action}")
            });
        }
    }
    f.assert_none("roles that differ from what their stages use");
}

#[test]
fn intake_reads_the_playbook_file_and_submit_its_bucket_and_nothing_else() {
    let roles = static_roles(json!({"PlaybooksS3Uri": "s3://pb-bucket/team/playbooks.toml"}));
    // Intake parses hostile alerts: it reads the playbook file and nothing else of the bucket.
    let intake = &roles["intake"];
    assert!(intake.allows(
        "s3:GetObject",
        "arn:aws:s3:::pb-bucket/team/playbooks.toml",
        None
    ));
    for other in ["team/library/triage.ps1", "team/other.toml"] {
        assert!(
            !intake.allows("s3:GetObject", &object_arn("pb-bucket", other), None),
            "intake: {other}"
        );
    }
    assert!(!intake.allows("s3:ListBucket", "arn:aws:s3:::pb-bucket", None));
    for stage in ["submit"] {
        let role = &roles[stage];
        for key in ["team/playbooks.toml", "team/library/triage.ps1"] {
            assert!(
                role.allows("s3:GetObject", &object_arn("pb-bucket", key), None),
                "{stage}: {key}"
            );
        }
        // A library file missing from the folder must answer 404, not 403.
        assert!(
            role.allows("s3:ListBucket", "arn:aws:s3:::pb-bucket", None),
            "{stage}: ListBucket on the playbooks bucket"
        );
        for other in [
            "arn:aws:s3:::other-bucket/team/playbooks.toml",
            "arn:aws:s3:::pb-bucket-2/team/library/triage.ps1",
        ] {
            assert!(
                !role.allows("s3:GetObject", other, None),
                "{stage}: {other}"
            );
        }
        assert!(
            !role.allows(
                "s3:PutObject",
                &object_arn("pb-bucket", "team/library/triage.ps1"),
                None
            ),
            "{stage} must not change the playbooks"
        );
    }
    for stage in ["poll", "collect"] {
        assert!(
            !roles[stage].allows(
                "s3:GetObject",
                &object_arn("pb-bucket", "team/playbooks.toml"),
                None
            ),
            "{stage} reads no playbook"
        );
    }
    // Without PLAYBOOKS_S3_URI no stage reads a playbook from S3 (the bundled ones are built in).
    let roles = static_roles(json!({}));
    for stage in ["intake", "submit"] {
        for key in ["playbooks/default.toml", "library/triage.ps1", "other.json"] {
            assert!(
                !roles[stage].allows("s3:GetObject", &object_arn("lr-evidence", key), None),
                "{stage}: {key}"
            );
        }
    }
}

#[test]
fn with_object_lock_only_what_writes_evidence_may_set_its_retention() {
    let keys = Keys::new();
    let roles = static_roles(json!({"EnableObjectLock": "true"}));
    let mut f = Findings::default();
    for (binary, u) in uses(&keys) {
        let role = &roles[binary];
        for key in keys.all() {
            let arn = object_arn("lr-evidence", &key);
            let may = role.allows("s3:PutObjectRetention", &arn, None);
            let must = u.writes.contains(&key) && keys::is_evidence(&key);
            f.check(may == must, || {
                format!(
                    "{binary}: s3:PutObjectRetention on {key}: {}",
                    if may { "allowed" } else { "denied" }
                )
            });
            f.check(
                !role.allows("s3:BypassGovernanceRetention", &arn, None),
                || format!("{binary}: may bypass retention on {key}"),
            );
        }
    }
    f.assert_none("retention grants that differ from what the stages write");
}

#[test]
fn the_bucket_policy_keeps_manifests_write_once_and_evidence_retained() {
    use crate::policy::Decision::{Deny, Silent};
    let k = Keys::new();
    let collect = role_arn("CollectRole");
    let put = |policy: &Value, key: &str, headers: &[(&str, &str)]| {
        let mut context: policy::Context = headers.iter().copied().collect();
        context.insert("aws:SecureTransport", "true");
        context.insert("aws:PrincipalArn", &collect);
        policy::decide(
            &[policy],
            "s3:PutObject",
            &object_arn("lr-evidence", key),
            &context,
        )
    };
    // PutObject and CompleteMultipartUpload create an object; CreateMultipartUpload and
    // UploadPart (also s3:PutObject) do not, and carry no conditional header.
    let creates = ("s3:ObjectCreationOperation", "true");
    let upload_step = ("s3:ObjectCreationOperation", "false");
    let if_none = ("s3:if-none-match", "*");
    let retained = ("s3:object-lock-mode", "GOVERNANCE");
    let compliance = ("s3:object-lock-mode", "COMPLIANCE");
    for lock in ["false", "true"] {
        let policies = resource_policies(json!({"EnableObjectLock": lock}));
        let bucket = &policies["EvidenceBucketPolicy"];
        let locked = lock == "true";
        let if_locked = if locked { Deny } else { Silent };
        // Nothing under evidence/ is created without If-None-Match, by anyone: neither a manifest
        // (PutObject) nor a package (CompleteMultipartUpload).
        for key in [&k.manifest, &k.signature, &k.evidence] {
            assert_eq!(
                put(bucket, key, &[creates, retained]),
                Deny,
                "lock {lock}: {key}"
            );
        }
        assert_eq!(
            put(bucket, &k.manifest, &[creates, if_none, retained]),
            Silent
        );
        assert_eq!(
            put(bucket, &k.evidence, &[creates, if_none]),
            Silent,
            "lock {lock}: completion"
        );
        // The steps of a package's upload carry neither header and pass; its creation carries
        // the retention, in the deployment's mode only.
        assert_eq!(
            put(bucket, &k.evidence, &[upload_step]),
            Silent,
            "lock {lock}: a part"
        );
        assert_eq!(
            put(bucket, &k.evidence, &[upload_step, retained]),
            Silent,
            "lock {lock}"
        );
        assert_eq!(
            put(bucket, &k.evidence, &[upload_step, compliance]),
            if_locked,
            "lock {lock}: a writer picking COMPLIANCE would lock it for everyone"
        );
        assert_eq!(
            put(bucket, &k.manifest, &[creates, if_none, compliance]),
            if_locked,
            "lock {lock}"
        );
        // A manifest is a single PutObject: without retention it is refused, and so is a multipart
        // upload to its key (whose steps carry no mode).
        assert_eq!(
            put(bucket, &k.manifest, &[creates, if_none]),
            if_locked,
            "lock {lock}: a manifest without retention"
        );
        assert_eq!(
            put(bucket, &k.signature, &[upload_step]),
            if_locked,
            "lock {lock}: a multipart upload to a signature"
        );
        // State is rewritten freely, and never needs retention.
        for key in [&k.run, &k.budget, &k.checkpoint] {
            assert_eq!(put(bucket, key, &[creates]), Silent, "lock {lock}: {key}");
        }
        // Plain HTTP is refused for everything.
        let plain: policy::Context = [("aws:SecureTransport", "false")].into_iter().collect();
        let read = policy::decide(
            &[bucket],
            "s3:GetObject",
            &object_arn("lr-evidence", &k.run),
            &plain,
        );
        assert_eq!(read, Deny);
    }
}

/// Defect: a principal that may write to the bucket (an administrator, a data role) planted a
/// package and a manifest listing it, and the pipeline signed it. The bucket policy now refuses
/// every write under evidence/ but the pipeline's own: packages from collect only, manifests and
/// signatures from the sealing roles; state stays theirs to rewrite.
#[test]
fn planted_evidence_is_refused_by_the_bucket_policy_for_every_other_principal() {
    use crate::policy::Decision::{Deny, Silent};
    let k = Keys::new();
    let policies = resource_policies(json!({"EnableObjectLock": "true"}));
    let bucket = &policies["EvidenceBucketPolicy"];
    let put = |who: &str, key: &str| {
        let context: policy::Context = [
            ("aws:SecureTransport", "true"),
            ("aws:PrincipalArn", who),
            ("s3:ObjectCreationOperation", "true"),
            ("s3:if-none-match", "*"),
            ("s3:object-lock-mode", "GOVERNANCE"),
        ]
        .into_iter()
        .collect();
        policy::decide(
            &[bucket],
            "s3:PutObject",
            &object_arn("lr-evidence", key),
            &context,
        )
    };
    let collect = role_arn("CollectRole");
    let sealers = [
        role_arn("SubmitRole"),
        role_arn("PollRole"),
        collect.clone(),
    ];
    let planters = [
        format!("arn:aws:iam::{ACCOUNT}:role/Administrator"),
        format!("arn:aws:iam::{ACCOUNT}:role/data-engineering"),
        format!("arn:aws:iam::{ACCOUNT}:role/lr-stack/sealing/Impostor"),
        role_arn("IntakeRole"),
        format!("arn:aws:iam::{ACCOUNT}:root"),
    ];
    for who in &planters {
        for key in [&k.evidence, &k.manifest, &k.signature] {
            assert_eq!(put(who, key), Deny, "{who} may write {key}");
        }
    }
    // The records a manifest is rendered from are custody too: a planted command record would be
    // sealed as the run's own. Only the stage roles write or delete state.
    let state = |action: &str, who: &str, key: &str| {
        let context: policy::Context = [
            ("aws:SecureTransport", "true"),
            ("aws:PrincipalArn", who),
            ("s3:ObjectCreationOperation", "true"),
        ]
        .into_iter()
        .collect();
        policy::decide(&[bucket], action, &object_arn("lr-evidence", key), &context)
    };
    for key in [&k.run, &k.command, &k.checkpoint, &k.budget, &k.board] {
        for action in ["s3:PutObject", "s3:DeleteObject", "s3:DeleteObjectVersion"] {
            for who in planters.iter().filter(|w| **w != role_arn("IntakeRole")) {
                assert_eq!(state(action, who, key), Deny, "{who} may {action} {key}");
            }
            for stage in ["IntakeRole", "SubmitRole", "PollRole", "CollectRole"] {
                assert_eq!(
                    state(action, &role_arn(stage), key),
                    Silent,
                    "{stage}: {key}"
                );
            }
        }
    }
    for who in &sealers {
        for key in [&k.manifest, &k.signature] {
            assert_eq!(put(who, key), Silent, "{who} may not seal at {key}");
        }
        for key in [&k.run, &k.budget, &k.checkpoint] {
            assert_eq!(put(who, key), Silent, "{who} may not write state {key}");
        }
        let package = put(who, &k.evidence);
        assert_eq!(
            package,
            if *who == collect { Silent } else { Deny },
            "{who}: a package"
        );
    }
}

/// Defect 7: the dead-letter queues took messages from anyone, and an operator's re-drive sends
/// what they hold back into the pipeline under the operator's identity: an alert planted in the
/// alerts DLQ would pass the alerts queue's sender check. Only the stage's own role may put a
/// message in its DLQ; SQS's own moves (no principal) still land.
#[test]
fn a_planted_dead_letter_is_refused_by_the_queue_policy() {
    use crate::policy::Decision::{Deny, Silent};
    let policies = resource_policies(json!({}));
    for (dlq, role) in [
        ("AlertsDeadLetterQueue", "IntakeRole"),
        ("SubmitDeadLetterQueue", "SubmitRole"),
        ("PollDeadLetterQueue", "PollRole"),
        ("CollectDeadLetterQueue", "CollectRole"),
    ] {
        let policy = &policies[&format!("{dlq}Policy")];
        let send = |who: Option<&str>| {
            let mut context: policy::Context = [("aws:SecureTransport", "true")].into();
            if let Some(who) = who {
                context.insert("aws:PrincipalArn", who);
            }
            policy::decide(&[policy], "sqs:SendMessage", &queue_arn(dlq), &context)
        };
        assert_eq!(send(Some(&role_arn(role))), Silent, "{dlq}: its stage");
        assert_eq!(send(None), Silent, "{dlq}: SQS's own move");
        for who in [
            format!("arn:aws:iam::{ACCOUNT}:role/Administrator"),
            format!("arn:aws:iam::{ACCOUNT}:user/operator"),
            role_arn(if role == "IntakeRole" {
                "SubmitRole"
            } else {
                "IntakeRole"
            }),
        ] {
            assert_eq!(send(Some(&who)), Deny, "{dlq}: {who}");
        }
    }
}

/// Poll may run on a second credential, of an app that cannot start a live response: its role then
/// reads that secret and not the main one, so a compromised poll holds no credential that can.
#[test]
fn poll_on_its_own_credential_cannot_read_the_one_that_starts_live_responses() {
    let reader = "arn:aws:secretsmanager:us-east-1:123456789012:secret:lr/defender-reader-XyZ123";
    let roles = static_roles(json!({ "PollCredentialsSecretArn": reader }));
    let reads = |binary: &str, secret: &str| {
        roles[binary].allows("secretsmanager:GetSecretValue", secret, None)
    };
    assert!(reads("poll", reader));
    assert!(!reads("poll", SECRET), "poll may read the main credential");
    for binary in ["submit", "collect"] {
        assert!(reads(binary, SECRET), "{binary}");
        assert!(!reads(binary, reader), "{binary}");
    }
    // Without one, poll shares the main credential, as before.
    let roles = static_roles(json!({}));
    assert!(roles["poll"].allows("secretsmanager:GetSecretValue", SECRET, None));
}

#[test]
fn only_the_named_senders_may_put_alerts_on_the_queue() {
    use crate::policy::Decision::{Allow, Deny};
    let forwarder = "arn:aws:iam::123456789012:role/alert-forwarder";
    let topic = "arn:aws:sns:us-east-1:123456789012:defender-alerts";
    let rule = "arn:aws:events:us-east-1:123456789012:rule/defender-alerts";
    let alerts = queue_arn("AlertsQueue");
    let send = |policy: &Value, caller: &[(&str, &str)]| {
        let mut context: policy::Context = caller.iter().copied().collect();
        context.insert("aws:SecureTransport", "true");
        policy::decide(&[policy], "sqs:SendMessage", &alerts, &context)
    };
    let named = resource_policies(json!({
        "AlertSenderPrincipalArns": forwarder,
        "AlertSourceArns": format!("{topic},{rule}"),
    }));
    let queue = &named["AlertsQueuePolicy"];
    assert_ne!(send(queue, &[("aws:PrincipalArn", forwarder)]), Deny);
    for other in [
        "arn:aws:iam::123456789012:role/developer",
        "arn:aws:iam::123456789012:role/alert-forwarder-2",
        "arn:aws:iam::123456789012:root",
    ] {
        assert_eq!(send(queue, &[("aws:PrincipalArn", other)]), Deny, "{other}");
    }
    // SNS and EventBridge deliver with the topic's or rule's ARN and no principal ARN.
    assert_eq!(send(queue, &[("aws:SourceArn", topic)]), Allow);
    assert_eq!(send(queue, &[("aws:SourceArn", rule)]), Allow);
    let elsewhere = "arn:aws:sns:us-east-1:123456789012:anything";
    assert_eq!(send(queue, &[("aws:SourceArn", elsewhere)]), Deny);
    // A listed source does not let an unlisted principal through.
    assert_eq!(
        send(
            queue,
            &[
                ("aws:PrincipalArn", "arn:aws:iam::123456789012:role/x"),
                ("aws:SourceArn", elsewhere)
            ]
        ),
        Deny
    );
    // Deployed without senders, the queue takes alerts from nobody.
    let none = resource_policies(json!({}));
    let queue = &none["AlertsQueuePolicy"];
    assert_eq!(send(queue, &[("aws:PrincipalArn", forwarder)]), Deny);
    assert_eq!(send(queue, &[("aws:SourceArn", topic)]), Deny);
    let text = serde_json::to_string(queue).unwrap();
    assert!(
        !text.contains("\"\""),
        "no empty ARN in a condition: {text}"
    );
    // Only principals named: no topic or rule gets through.
    let principals = resource_policies(json!({"AlertSenderPrincipalArns": forwarder}));
    let queue = &principals["AlertsQueuePolicy"];
    assert_ne!(send(queue, &[("aws:PrincipalArn", forwarder)]), Deny);
    assert_eq!(send(queue, &[("aws:SourceArn", topic)]), Deny);
    // Only sources named: no principal of the account gets through.
    let sources = resource_policies(json!({"AlertSourceArns": topic}));
    let queue = &sources["AlertsQueuePolicy"];
    assert_eq!(send(queue, &[("aws:SourceArn", topic)]), Allow);
    assert_eq!(send(queue, &[("aws:PrincipalArn", forwarder)]), Deny);
}

// ---------------------------------------------------------------------------------------------
// moto with IAM enforced.

mod tenants;

#[derive(serde::Deserialize)]
struct MotoIam {
    endpoint: String,
    access_key_id: String,
    secret_access_key: String,
}

/// The enforcing moto `./dev test` starts; its absence is an error, not a skip.
fn moto_iam() -> MotoIam {
    let path = std::env::var("LR_MOTO_IAM").unwrap_or_else(|_| {
        panic!(
            "LR_MOTO_IAM is not set: run the tests with `./dev test` (it starts moto with IAM \
             enforced, infra/moto_iam.py, and exports the file holding its endpoint and admin keys)"
        )
    });
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).expect("moto_iam.py's admin file")
}

/// Log lines of every stage, kept to show why a stage failed under its role.
fn logs() -> &'static LogCapture {
    static LOGS: OnceLock<LogCapture> = OnceLock::new();
    LOGS.get_or_init(|| {
        let capture = LogCapture::default();
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .with_writer(capture.clone())
            .try_init();
        capture
    })
}

/// Log lines that say a call was refused.
fn denials(prefix: &str) -> Vec<String> {
    logs()
        .text()
        .lines()
        .filter(|l| {
            l.contains(prefix)
                && (l.contains("AccessDenied")
                    || l.contains("access denied")
                    || l.contains("not authorized"))
        })
        .map(str::to_string)
        .collect()
}

/// One provisioned stack on the enforcing moto, with a user per role.
struct World {
    moto: MotoIam,
    admin: aws_config::SdkConfig,
    stack: local_stack::ProvisionedStack,
    prefix: String,
    roles: policy::Roles,
}

impl World {
    /// A stack deployed as the template does; `parameters` adds template parameters.
    async fn new(sim_credentials_json: &str, extra_users: Value, parameters: Value) -> Self {
        Self::named("iam", sim_credentials_json, extra_users, parameters).await
    }

    /// The same, its names starting with `stem` (a bucket named with "no404" answers 403 for
    /// every missing key: see infra/moto_iam.py).
    async fn named(
        stem: &str,
        sim_credentials_json: &str,
        extra_users: Value,
        parameters: Value,
    ) -> Self {
        Self::with_users(stem, sim_credentials_json, |_| extra_users, parameters).await
    }

    /// The same, with users whose policies name the stack's resources (`users` gets the stack).
    async fn with_users(
        stem: &str,
        sim_credentials_json: &str,
        users: impl FnOnce(&local_stack::ProvisionedStack) -> Value,
        parameters: Value,
    ) -> Self {
        logs();
        let moto = moto_iam();
        let admin = sdk_as(&moto.endpoint, &moto.access_key_id, &moto.secret_access_key).await;
        let prefix = unique(stem);
        let stack = provision(&admin, prefix.clone(), sim_credentials_json)
            .await
            .expect("provisioning on moto with IAM enforced (as its administrator)");
        let sqs = aws_sdk_sqs::Client::new(&admin);
        let mut resources = serde_json::Map::new();
        for (stage, queue, dlq) in QUEUES {
            for (logical, url) in [
                (queue, &stack.queue_urls[stage]),
                (dlq, &stack.dlq_urls[stage]),
            ] {
                let arn = sqs
                    .get_queue_attributes()
                    .queue_url(url)
                    .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                    .send()
                    .await
                    .expect("queue ARN")
                    .attributes()
                    .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn))
                    .cloned()
                    .expect("queue ARN");
                resources.insert(logical.into(), json!({"Ref": url, "Arn": arn}));
            }
        }
        resources.insert(
            "EvidenceBucket".into(),
            json!({"Ref": stack.bucket, "Arn": format!("arn:aws:s3:::{}", stack.bucket)}),
        );
        // moto checks no KMS permissions for SSE-KMS objects or encrypted queues.
        resources.insert(
            "EvidenceKey".into(),
            json!({"Ref": "local", "Arn": format!("arn:aws:kms:{REGION}:{ACCOUNT}:key/local")}),
        );
        resources.insert(
            "CredentialsSecret".into(),
            json!({ "Ref": stack.secret_arn }),
        );
        let key = stack.signing_key_arn.rsplit('/').next().unwrap_or_default();
        resources.insert(
            "ManifestSigningKey".into(),
            json!({"Ref": key, "Arn": stack.signing_key_arn}),
        );
        // The local stack's bucket has Object Lock on (evidence is written with retention); its
        // completion events go to its own bus.
        let mut params = json!({"EnableObjectLock": "true", "EventBusName": stack.event_bus});
        if let (Some(all), Some(more)) = (params.as_object_mut(), parameters.as_object()) {
            all.extend(more.clone());
        }
        let bindings = json!({
            "parameters": params,
            "resources": resources,
            "prefix": prefix,
            "extra_users": users(&stack),
        });
        let roles = policy::roles(
            &bindings,
            true,
            &[
                ("AWS_ENDPOINT_URL", moto.endpoint.clone()),
                ("AWS_ACCESS_KEY_ID", moto.access_key_id.clone()),
                ("AWS_SECRET_ACCESS_KEY", moto.secret_access_key.clone()),
                ("AWS_REGION", REGION.into()),
            ],
        );
        Self {
            moto,
            admin,
            stack,
            prefix,
            roles,
        }
    }

    async fn sdk_of(&self, binary: &str) -> aws_config::SdkConfig {
        let r = &self.roles.functions[binary];
        sdk_as(
            &self.moto.endpoint,
            r.access_key_id.as_deref().expect("user keys"),
            r.secret_access_key.as_deref().expect("user keys"),
        )
        .await
    }

    async fn sdk_of_user(&self, name: &str) -> aws_config::SdkConfig {
        let k = &self.roles.users[name];
        sdk_as(&self.moto.endpoint, &k.access_key_id, &k.secret_access_key).await
    }

    fn store_as(&self, sdk: &aws_config::SdkConfig) -> S3Store {
        S3Store::new(shared::adapters::s3::s3_client(sdk), &self.stack.bucket)
    }

    /// Keys of multipart uploads under `prefix` still open, listed as the administrator.
    async fn unfinished_uploads(&self, prefix: &str) -> Vec<String> {
        shared::adapters::s3::s3_client(&self.admin)
            .list_multipart_uploads()
            .bucket(&self.stack.bucket)
            .prefix(prefix)
            .send()
            .await
            .expect("list uploads as the administrator")
            .uploads()
            .iter()
            .filter_map(|u| u.key().map(str::to_string))
            .collect()
    }

    /// Objects under `prefix`, listed as the administrator.
    async fn keys_under(&self, prefix: &str) -> Vec<String> {
        self.store_as(&self.admin)
            .list(prefix)
            .await
            .expect("list as the administrator")
    }
}

enum Stage {
    Intake(Intake),
    Submit(Box<Submit>),
    Poll(Poll),
    Collect(Collect),
}

impl Stage {
    async fn handle(&self, e: SqsEvent) -> SqsBatchResponse {
        match self {
            Stage::Intake(f) => entry::handle(f, e).await,
            Stage::Submit(f) => entry::handle(&**f, e).await,
            Stage::Poll(f) => entry::handle(f, e).await,
            Stage::Collect(f) => entry::handle(f, e).await,
        }
    }
}

/// One function with its event source, both under the function's role (SAM's
/// AWSLambdaSQSQueueExecutionRole lets the role receive and delete).
struct Deployed {
    binary: &'static str,
    function: Stage,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    batch: i32,
}

impl Deployed {
    /// Receives one batch, hands it to the function and deletes what succeeded; failed messages
    /// come back after a short visibility timeout. Returns (received, failed).
    async fn pump(&self) -> (usize, usize) {
        let out = self
            .sqs
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(self.batch)
            .visibility_timeout(2)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{} cannot receive from its queue under its role: {}",
                    self.binary,
                    aws_sdk_sqs::error::DisplayErrorContext(e)
                )
            });
        let messages = out.messages.unwrap_or_default();
        if messages.is_empty() {
            return (0, 0);
        }
        let queue_name = self.queue_url.rsplit('/').next().unwrap_or_default();
        let mut event = SqsEvent::default();
        for m in &messages {
            let mut msg = SqsMessage::default();
            msg.message_id = m.message_id.clone();
            msg.receipt_handle = m.receipt_handle.clone();
            msg.body = m.body.clone();
            msg.md5_of_body = m.md5_of_body.clone();
            msg.event_source = Some("aws:sqs".into());
            msg.event_source_arn = Some(queue_arn(queue_name));
            msg.aws_region = Some(REGION.into());
            msg.attributes = m
                .attributes()
                .map(|a| {
                    a.iter()
                        .map(|(k, v)| (k.as_str().to_string(), v.clone()))
                        .collect()
                })
                .unwrap_or_default();
            event.records.push(msg);
        }
        let response = self.function.handle(event).await;
        let failed: Vec<&str> = response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.as_str())
            .collect();
        // One DeleteMessage each: AWS authorises DeleteMessageBatch as sqs:DeleteMessage (what
        // the role has), moto as an action of its own.
        for m in messages
            .iter()
            .filter(|m| !failed.contains(&m.message_id().unwrap_or_default()))
        {
            self.sqs
                .delete_message()
                .queue_url(&self.queue_url)
                .receipt_handle(m.receipt_handle().unwrap_or_default())
                .send()
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "{} cannot delete from its queue under its role: {}",
                        self.binary,
                        aws_sdk_sqs::error::DisplayErrorContext(e)
                    )
                });
        }
        (messages.len(), failed.len())
    }
}

/// The four functions as Lambda runs them, each from its environment and its role's credentials.
async fn deploy(world: &World, sim: &mde_sim::SimServer, extra: &[(&str, &str)]) -> Vec<Deployed> {
    let mut out = Vec::new();
    for (stage, binary, batch) in [
        ("alerts", "intake", 10),
        ("submit", "submit", 10),
        ("poll", "poll", 10),
        ("collect", "collect", 1),
    ] {
        let mut base = world.stack.env.clone();
        base.insert(
            "DEAD_LETTER_QUEUE_URL".into(),
            world.stack.dlq_urls[stage].clone(),
        );
        // As the template passes it: the secret's ARN.
        base.insert(
            "MDE_CREDENTIALS_SECRET_ID".into(),
            world.stack.secret_arn.clone(),
        );
        let extra: Vec<(&str, String)> = extra.iter().map(|(k, v)| (*k, v.to_string())).collect();
        let env = function_env(&base, sim, &extra);
        let sdk = world.sdk_of(binary).await;
        let function = match binary {
            "intake" => Stage::Intake(Intake::build(&env, &sdk).await.expect("intake")),
            "submit" => Stage::Submit(Box::new(Submit::build(&env, &sdk).await.expect("submit"))),
            "poll" => Stage::Poll(Poll::build(&env, &sdk).await.expect("poll")),
            _ => Stage::Collect(Collect::build(&env, &sdk).await.expect("collect")),
        };
        out.push(Deployed {
            binary,
            function,
            sqs: aws_sdk_sqs::Client::new(&sdk),
            queue_url: world.stack.queue_urls[stage].clone(),
            batch,
        });
    }
    out
}

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_stage_runs_under_its_own_role_from_alert_to_manifest() {
    let started = Instant::now();
    // A file large enough for three parts, copied with no time budget: collect checkpoints after
    // every part and resumes from the checkpoint in the next invocation.
    let size = 11 * MIB;
    let mut config = sim_config();
    config.devices = vec![device(M1, size)];
    config.sim.time_scale = 20.0;
    // A fresh tenant: submit uploads the triage script, read under its role from the playbooks
    // bucket the template grants (the playbook file and its library folder beside it).
    config.library = vec![];
    let sim = start_sim(config.clone()).await;
    let playbooks = unique("iam-playbooks");
    let uri = format!("s3://{playbooks}/team/playbooks.toml");
    let world = World::new(
        &credentials_json(&config),
        json!({}),
        json!({ "PlaybooksS3Uri": uri }),
    )
    .await;
    let admin_s3 = shared::adapters::s3::s3_client(&world.admin);
    admin_s3
        .create_bucket()
        .bucket(&playbooks)
        .send()
        .await
        .expect("the playbooks bucket");
    let mut files: Vec<(String, Vec<u8>)> = shared::library::bundle::BUNDLED_LIBRARY
        .iter()
        .map(|(n, b)| (format!("team/library/{n}"), b.to_vec()))
        .collect();
    let playbook_file = testkit::library::pinned_bundled_playbooks();
    let pin = shared::hash::sha256_hex(playbook_file.as_bytes());
    files.push(("team/playbooks.toml".into(), playbook_file.into_bytes()));
    for (key, body) in files {
        admin_s3
            .put_object()
            .bucket(&playbooks)
            .key(key)
            .body(body.into())
            .send()
            .await
            .expect("put a playbook file");
    }
    let functions = deploy(
        &world,
        &sim,
        &[
            ("COLLECT_PART_MIB", "5"),
            ("COLLECT_TIME_BUDGET_SECS", "0"),
            ("PLAYBOOKS_S3_URI", &uri),
            ("PLAYBOOKS_SHA256", &pin),
        ],
    )
    .await;

    // An alert pipeline sends an alert (and one that intake refuses) to the alerts queue.
    let admin_sqs = aws_sdk_sqs::Client::new(&world.admin);
    let alert = file_alert("iam-e2e", M1, FILE);
    for body in [alert.to_string(), "{\"not\": \"an alert\"}".to_string()] {
        admin_sqs
            .send_message()
            .queue_url(&world.stack.queue_urls["alerts"])
            .message_body(body)
            .send()
            .await
            .expect("send alert");
    }
    let run = run_id("native", "iam-e2e", M1, "malware-file");
    let manifest_key = shared::store::manifest_key(&run);
    let admin_store = world.store_as(&world.admin);

    let until = Instant::now() + Duration::from_secs(120);
    let manifest = loop {
        let mut busy = false;
        for f in &functions {
            let (received, failed) = f.pump().await;
            busy |= received > 0;
            // A refusal may surface as a failed message or as a "transient" retry (moto answers
            // JSON-protocol calls it refuses in XML, which the SDK cannot read as an error code).
            let refused = denials(&world.prefix);
            assert!(
                refused.is_empty(),
                "{} under its role: a call was refused ({failed} message(s) failed):\n{}",
                f.binary,
                refused.join("\n")
            );
        }
        if let Some(m) = admin_store.get(&manifest_key).await.expect("read manifest") {
            break m;
        }
        assert!(
            Instant::now() < until,
            "no manifest after 120 s; run record: {:?}\nrefusals: {:?}\nlast log lines:\n{}",
            admin_store
                .get(&shared::store::run_key(&run))
                .await
                .ok()
                .flatten()
                .map(|s| String::from_utf8_lossy(&s.body).into_owned()),
            denials(""),
            logs().last_lines(40)
        );
        if !busy {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let m: shared::store::Manifest = serde_json::from_slice(&manifest.body).expect("manifest");
    assert_eq!(m.run_state, RunState::Completed);
    assert_eq!(m.outcome, Some(RunOutcome::Succeeded));
    assert_eq!(m.commands.len(), 2);
    let triage = shared::library::bundle::BUNDLED_LIBRARY
        .iter()
        .find(|(n, _)| *n == "triage.ps1")
        .map(|(_, b)| sha256_hex(b));
    assert_eq!(m.library.len(), 1, "{:?}", m.library);
    assert_eq!(
        m.library[0].sha256, triage,
        "the manifest names the script's version"
    );
    assert_eq!(sim.stats().library_uploads, 1, "submit uploaded the script");
    for c in &m.commands {
        assert_eq!(c.outcome, CommandOutcome::Collected, "{c:?}");
        let key = c.s3_key.as_deref().expect("evidence key");
        let stored = admin_store
            .get(key)
            .await
            .expect("read evidence")
            .expect("evidence stored");
        assert_eq!(Some(sha256_hex(&stored.body)), c.sha256, "{key}");
    }
    let file = &m.commands[1];
    assert_eq!(
        file.sha256_decompressed.as_deref(),
        Some(expected_sha256(M1, FILE, size).as_str())
    );
    // The copy went through checkpoints, all removed, and left no unfinished upload.
    let prefix = format!("state/runs/{run}/checkpoints/");
    assert_eq!(
        world.keys_under(&prefix).await,
        Vec::<String>::new(),
        "left under {prefix}"
    );
    assert_eq!(
        world.unfinished_uploads(&format!("evidence/{run}/")).await,
        Vec::<String>::new()
    );
    assert!(
        world
            .keys_under("state/budget/")
            .await
            .contains(&shared::budget::BUDGET_KEY.to_string()),
        "the budget object was created on the fresh stack"
    );
    // The refused alert went to the alerts DLQ, sent under intake's role.
    let dead = admin_sqs
        .receive_message()
        .queue_url(&world.stack.dlq_urls["alerts"])
        .max_number_of_messages(10)
        .send()
        .await
        .expect("receive from the alerts DLQ");
    assert_eq!(
        dead.messages().len(),
        1,
        "the refused alert is dead-lettered"
    );
    // The roles really are confined (a test that passed because nothing was enforced would
    // say nothing): intake may not read the budget, poll may not write evidence.
    let intake_store = world.store_as(&world.sdk_of("intake").await);
    let denied = intake_store
        .get(shared::budget::BUDGET_KEY)
        .await
        .expect_err("intake has no business with the budget");
    assert!(denied.0.contains("access denied"), "{denied}");
    let poll_store = world.store_as(&world.sdk_of("poll").await);
    let forged = shared::store::evidence_key(&run, 0, CommandType::GetFile);
    assert!(
        poll_store
            .put(&forged, b"forged".to_vec(), Put::Always)
            .await
            .is_err(),
        "poll may not write evidence"
    );
    eprintln!(
        "alert to manifest under the four roles in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_refused_by_iam_names_the_key_and_the_missing_permission() {
    // Reader: may read any object, may not list.
    let reader_policy = json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::*/*"}
    ]});
    let world = World::new(
        "{\"tenant_id\":\"t\",\"client_id\":\"c\",\"client_secret\":\"s\"}",
        json!({ "reader": reader_policy }),
        json!({}),
    )
    .await;
    let admin = world.store_as(&world.admin);
    admin
        .put("state/runs/x/run.json", b"{}".to_vec(), Put::Always)
        .await
        .expect("write as the administrator");

    // May read, may not list: an object that exists is read; one that does not is refused, and
    // the error says what to grant.
    let reader = world.store_as(&world.sdk_of_user("reader").await);
    assert!(
        reader
            .get("state/runs/x/run.json")
            .await
            .expect("read")
            .is_some()
    );
    let e = reader
        .get(keys::BUDGET_KEY)
        .await
        .expect_err("S3 answers 403 to a caller that may not list");
    for needle in [
        keys::BUDGET_KEY,
        "access denied",
        "s3:ListBucket",
        "s3:prefix",
        "s3:GetObject",
    ] {
        assert!(e.0.contains(needle), "{needle:?} not in: {e}");
    }

    // A role of the pipeline may tell its missing keys from forbidden ones.
    let poll = world.store_as(&world.sdk_of("poll").await);
    for key in [
        shared::budget::BUDGET_KEY.to_string(),
        shared::store::run_key(&run_id("native", "nothing", M1, "malware-file")),
    ] {
        assert!(
            poll.get(&key)
                .await
                .expect("a missing key is not an error")
                .is_none(),
            "{key}"
        );
    }
    // Outside what it may read: refused, naming the key and the permission.
    let e = poll
        .get("evidence/x/0-getfile.gz")
        .await
        .expect_err("poll does not read evidence");
    assert!(
        e.0.contains("evidence/x/0-getfile.gz") && e.0.contains("s3:GetObject"),
        "{e}"
    );
}

/// Defect 8: the roles read keys that may be absent with s3:ListBucket limited by s3:prefix, and
/// relied on S3 then answering 404 rather than 403 for a missing key (documented, but never
/// checked on AWS; moto does not model it). In a bucket that answers 403 for every missing key,
/// whoever may list it, each role still reads each key it may find absent as absent (a listing of
/// exactly the key decides), and a key it may neither read nor list is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_key_answered_403_reads_as_absent_by_listing_exactly_that_key() {
    use shared::ports::Uploads;
    let world = World::named(
        "iam-no404",
        "{\"tenant_id\":\"t\",\"client_id\":\"c\",\"client_secret\":\"s\"}",
        json!({}),
        json!({}),
    )
    .await;
    let keys = Keys::new();
    for (binary, u) in uses(&keys) {
        let store = world.store_as(&world.sdk_of(binary).await);
        for key in &u.reads_maybe_absent {
            let got = store.get(key).await.unwrap_or_else(|e| {
                panic!("{binary}: a missing {key} answered 403 was not read as absent: {e}")
            });
            assert!(got.is_none(), "{binary}: {key}");
        }
    }
    let collect = world.store_as(&world.sdk_of("collect").await);
    assert!(
        collect
            .head(&keys.evidence, None)
            .await
            .expect("a missing package is absent")
            .is_none()
    );
    // Present keys still read; a key the role may not list stays a refusal naming it.
    let admin = world.store_as(&world.admin);
    admin
        .put(&keys.run, b"{}".to_vec(), Put::Always)
        .await
        .unwrap();
    assert!(collect.get(&keys.run).await.unwrap().is_some());
    let intake = world.store_as(&world.sdk_of("intake").await);
    let e = intake
        .get(&keys.budget)
        .await
        .expect_err("intake may not read the budget");
    assert!(e.0.contains(&keys.budget) && e.0.contains("403"), "{e}");
}
