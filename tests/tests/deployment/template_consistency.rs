//! The deployment template against the code: every function maps to a workspace binary, sets
//! exactly the environment variables its configuration reads (and enough of them to start), and
//! the queue settings match what the local stack provisions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use serde_yaml::Value;
use shared::config::Env;
use shared::entry::{Collect, Function, Intake, Poll, Submit};

/// Serves a fixed map and remembers every name asked for.
struct RecordingEnv {
    values: BTreeMap<String, String>,
    asked: Mutex<BTreeSet<String>>,
}

impl Env for RecordingEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.asked.lock().unwrap().insert(name.to_string());
        self.values.get(name).cloned()
    }
}

fn template() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../infra/template.yaml");
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn untag(v: &Value) -> &Value {
    match v {
        Value::Tagged(t) => &t.value,
        other => other,
    }
}

fn tag(v: &Value) -> Option<String> {
    match v {
        Value::Tagged(t) => Some(t.tag.to_string()),
        _ => None,
    }
}

/// A value of the kind the template would give this variable at deploy time.
fn sample(name: &str, params: &Value) -> String {
    let default = |p: &str| {
        let d = &params[p]["Default"];
        d.as_str()
            .map(str::to_string)
            .or_else(|| d.as_u64().map(|n| n.to_string()))
            .unwrap()
    };
    match name {
        n if n.ends_with("_QUEUE_URL") => {
            "https://sqs.us-east-1.amazonaws.com/123456789012/q".into()
        }
        "EVIDENCE_BUCKET" => "lr-evidence-123".into(),
        "MDE_CLOUD" => default("MdeCloud"),
        "MDE_API_BASE_URL" => "https://api-eu.securitycenter.microsoft.com".into(),
        "MDE_LOGIN_BASE_URL" => "https://login.microsoftonline.com".into(),
        "MDE_TOKEN_SCOPE" => "https://api.securitycenter.microsoft.com/.default".into(),
        "MDE_CREDENTIALS_SECRET_ID" => {
            "arn:aws:secretsmanager:us-east-1:123456789012:secret:x".into()
        }
        "POLL_DELAYS_SECS" => default("PollDelaysSecs"),
        "RETRY_BASE_SECS" => default("RetryBaseSecs"),
        "RETRY_MAX_SECS" => default("RetryMaxSecs"),
        "DOWNLOAD_ALLOWED_HOSTS" => default("DownloadAllowedHosts"),
        "PLAYBOOKS_S3_URI" => "s3://playbooks-bucket/playbooks.toml".into(),
        "PLAYBOOKS_SHA256" => "ab".repeat(32),
        "TENANTS_S3_URI" => "s3://config-bucket/tenants.toml".into(),
        "TENANTS_SHA256" => "cd".repeat(32),
        "MAX_RUN_DEADLINE_SECS" => "7200".into(),
        "BUDGET_RUNNING_SESSIONS" => default("BudgetRunningSessions"),
        "EVIDENCE_RETENTION_DAYS" => default("ObjectLockRetentionDays"),
        "EVIDENCE_RETENTION_MODE" => default("ObjectLockMode"),
        "SIGNING_KEY_ID" => "arn:aws:kms:us-east-1:123456789012:key/k-2".into(),
        "EVENT_BUS_NAME" => default("EventBusName"),
        "LIBRARY_SYNC" => default("LibrarySync"),
        "POLL_STATUS" => default("PollStatus"),
        other => panic!(
            "the template sets {other}, which this test does not know: add it here and to the code"
        ),
    }
}

fn check_config(binary: &str, env: &RecordingEnv) -> Result<(), String> {
    match binary {
        "intake" => Intake::config(env).map(|_| ()).map_err(|e| e.to_string()),
        "submit" => Submit::config(env).map(|_| ()).map_err(|e| e.to_string()),
        "poll" => Poll::config(env).map(|_| ()).map_err(|e| e.to_string()),
        "collect" => Collect::config(env).map(|_| ()).map_err(|e| e.to_string()),
        other => Err(format!("no entry point for binary {other}")),
    }
}

fn functions(t: &Value) -> Vec<(String, &Value)> {
    t["Resources"]
        .as_mapping()
        .unwrap()
        .iter()
        .filter(|(_, r)| r["Type"] == "AWS::Serverless::Function")
        .map(|(k, r)| (k.as_str().unwrap().to_string(), r))
        .collect()
}

#[test]
fn every_function_maps_to_a_workspace_binary_and_back() {
    let t = template();
    let in_template: BTreeSet<String> = functions(&t)
        .iter()
        .map(|(name, r)| {
            assert_eq!(r["Metadata"]["BuildMethod"], "rust-cargolambda", "{name}");
            r["Metadata"]["BuildProperties"]["Binary"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../functions");
    let mut in_workspace = BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let manifest = entry.unwrap().path().join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest).unwrap();
        let name = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("name = \"")
                    .and_then(|r| r.strip_suffix('"'))
            })
            .unwrap();
        in_workspace.insert(name.to_string());
    }
    assert_eq!(in_template, in_workspace);
}

#[test]
fn each_function_sets_exactly_the_variables_its_configuration_reads() {
    let t = template();
    let params = &t["Parameters"];
    for (name, r) in functions(&t) {
        let binary = r["Metadata"]["BuildProperties"]["Binary"].as_str().unwrap();
        let vars = r["Properties"]["Environment"]["Variables"]
            .as_mapping()
            .unwrap();
        let mut always = BTreeMap::new();
        let mut conditional = BTreeMap::new();
        for (k, v) in vars {
            let k = k.as_str().unwrap().to_string();
            let value = sample(&k, params);
            // `!If [cond, x, !Ref AWS::NoValue]` leaves the variable out when the condition is false.
            let optional = tag(v).as_deref() == Some("!If")
                && untag(v)[2]
                    == Value::Tagged(Box::new(serde_yaml::value::TaggedValue {
                        tag: serde_yaml::value::Tag::new("Ref"),
                        value: Value::String("AWS::NoValue".into()),
                    }));
            if optional {
                conditional.insert(k, value);
            } else {
                always.insert(k, value);
            }
        }
        // With every variable: starts, and reads each one.
        let full = RecordingEnv {
            values: always
                .clone()
                .into_iter()
                .chain(conditional.clone())
                .collect(),
            asked: Mutex::new(BTreeSet::new()),
        };
        check_config(binary, &full)
            .unwrap_or_else(|e| panic!("{name} with all its variables: {e}"));
        let asked = full.asked.into_inner().unwrap();
        for k in always.keys().chain(conditional.keys()) {
            assert!(
                asked.contains(k),
                "{name} sets {k}, which {binary} never reads"
            );
        }
        // Without the conditional ones: still starts.
        let minimal = RecordingEnv {
            values: always,
            asked: Mutex::new(BTreeSet::new()),
        };
        check_config(binary, &minimal)
            .unwrap_or_else(|e| panic!("{name} without its optional variables: {e}"));
    }
}

#[test]
fn queues_event_sources_and_recursion_match_the_runtime_rules() {
    let t = template();
    let resources = &t["Resources"];
    let timeouts: BTreeMap<&str, u64> = local_stack::QUEUES
        .iter()
        .map(|q| (q.stage, q.function_timeout_secs as u64))
        .collect();
    let stage_of = |function: &str| match function {
        "IntakeFunction" => "alerts",
        "SubmitFunction" => "submit",
        "PollFunction" => "poll",
        "CollectFunction" => "collect",
        other => panic!("unknown function {other}"),
    };
    for (name, r) in functions(&t) {
        let timeout = r["Properties"]["Timeout"].as_u64().unwrap();
        let stage = stage_of(&name);
        assert_eq!(
            timeout, timeouts[stage],
            "{name}: the local stack provisions the same timeout"
        );
        let events = r["Properties"]["Events"].as_mapping().unwrap();
        assert_eq!(events.len(), 1, "{name}");
        let (_, event) = events.iter().next().unwrap();
        assert_eq!(event["Type"], "SQS");
        assert_eq!(
            event["Properties"]["FunctionResponseTypes"][0], "ReportBatchItemFailures",
            "{name}"
        );
        assert!(
            event["Properties"]["ScalingConfig"]["MaximumConcurrency"] != Value::Null,
            "{name}"
        );
        let queue_ref = untag(&event["Properties"]["Queue"]).as_str().unwrap();
        let queue = queue_ref.trim_end_matches(".Arn");
        let visibility = resources[queue]["Properties"]["VisibilityTimeout"]
            .as_u64()
            .unwrap();
        assert!(
            visibility >= 6 * timeout,
            "{queue}: visibility {visibility} < 6 x {timeout}"
        );
        assert_eq!(visibility, timeout * local_stack::VISIBILITY_FACTOR as u64);
        let redrive = &resources[queue]["Properties"]["RedrivePolicy"];
        assert_eq!(
            redrive["maxReceiveCount"].as_u64(),
            Some(local_stack::MAX_RECEIVE_COUNT as u64)
        );
        let dlq = untag(&redrive["deadLetterTargetArn"])
            .as_str()
            .unwrap()
            .trim_end_matches(".Arn");
        assert_eq!(resources[dlq]["Type"], "AWS::SQS::Queue");
        let self_triggering = matches!(stage, "submit" | "poll" | "collect");
        if self_triggering {
            assert_eq!(
                r["Properties"]["RecursiveLoop"], "Allow",
                "{name} re-enqueues itself"
            );
        }
    }
    let bucket = &resources["EvidenceBucket"]["Properties"];
    let sse = &bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"];
    assert_eq!(sse["SSEAlgorithm"], "aws:kms");
    assert_eq!(bucket["VersioningConfiguration"]["Status"], "Enabled");
    assert_eq!(
        bucket["PublicAccessBlockConfiguration"]["RestrictPublicBuckets"],
        true
    );
    let policy = serde_yaml::to_string(&resources["EvidenceBucketPolicy"]).unwrap();
    assert!(policy.contains("aws:SecureTransport"));
    for output in ["AlertsQueueUrl", "AlertsQueueArn", "EvidenceBucketName"] {
        assert!(t["Outputs"][output] != Value::Null, "output {output}");
    }
}

/// The signing key's Deny spares exactly the roles that seal runs, whatever the stack is called:
/// they sit under a path made of the stack name (never shortened, unlike the role names
/// CloudFormation generates, which are cut to 64 characters), and nothing else does.
#[test]
fn only_the_roles_that_seal_runs_may_sign_for_any_stack_name() {
    let t = template();
    let resources = &t["Resources"];
    let statements = resources["ManifestSigningKey"]["Properties"]["KeyPolicy"]["Statement"]
        .as_sequence()
        .expect("a key policy");
    let deny = statements
        .iter()
        .find(|s| s["Effect"] == "Deny" && s["Action"] == "kms:Sign")
        .expect("a Deny on kms:Sign");
    let pattern = untag(&deny["Condition"]["ArnNotLike"]["aws:PrincipalArn"])
        .as_str()
        .expect("one ARN pattern")
        .to_string();
    let glob = |pat: &str, s: &str| {
        let rx = regex_lite_glob(pat);
        rx(s)
    };
    for (name, role) in resources.as_mapping().unwrap() {
        if role["Type"] != "AWS::IAM::Role" {
            continue;
        }
        let name = name.as_str().unwrap();
        let path = role["Properties"]["Path"].clone();
        let seals = ["SubmitRole", "PollRole", "CollectRole"].contains(&name);
        for len in [1usize, 20, 40, 49, 64, 128] {
            let stack = "s".repeat(len);
            let sub = |v: &str| {
                v.replace("${AWS::StackName}", &stack)
                    .replace("${AWS::Partition}", "aws")
                    .replace("${AWS::AccountId}", "123456789012")
            };
            let path = untag(&path).as_str().map(sub).unwrap_or_else(|| "/".into());
            // CloudFormation's generated name: cut to fit 64 characters with its suffix.
            let generated: String = format!("{stack}-{name}").chars().take(51).collect();
            let arn = format!("arn:aws:iam::123456789012:role{path}{generated}-ABCDEFGHIJKL");
            assert_eq!(
                glob(&sub(&pattern), &arn),
                seals,
                "{name} with a {len}-character stack name ({arn}) against {pattern}"
            );
        }
    }
}

/// A matcher for an IAM ARN pattern (`*` any run of characters, `?` one).
fn regex_lite_glob(pattern: &str) -> impl Fn(&str) -> bool + '_ {
    fn matches(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => matches(&p[1..], s) || (!s.is_empty() && matches(p, &s[1..])),
            (Some(b'?'), Some(_)) => matches(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => matches(&p[1..], &s[1..]),
            _ => false,
        }
    }
    move |s: &str| matches(pattern.as_bytes(), s.as_bytes())
}

/// The variables `docs/configuration.md` lists: the first column of its table, in backticks.
fn documented_variables() -> BTreeSet<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md");
    let page = std::fs::read_to_string(path).unwrap();
    page.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`'))
        .map(|(name, _)| name.to_string())
        .filter(|name| {
            name.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .collect()
}

/// Docs that cannot drift: every environment variable a function's code reads (its configuration
/// with every variable unset and with every variable the template sets, and the logging set-up)
/// has a row in `docs/configuration.md`, and the page lists no variable the code never reads.
#[test]
fn every_variable_the_code_reads_is_documented_and_nothing_else() {
    let t = template();
    let params = &t["Parameters"];
    let mut read = BTreeSet::new();
    for (_, r) in functions(&t) {
        let binary = r["Metadata"]["BuildProperties"]["Binary"].as_str().unwrap();
        let values: BTreeMap<String, String> = r["Properties"]["Environment"]["Variables"]
            .as_mapping()
            .unwrap()
            .keys()
            .map(|k| {
                let k = k.as_str().unwrap().to_string();
                let v = sample(&k, params);
                (k, v)
            })
            .collect();
        for values in [values, BTreeMap::new()] {
            let env = RecordingEnv {
                values,
                asked: Mutex::new(BTreeSet::new()),
            };
            // Without its variables a configuration stops at the first one required: only the
            // names asked until then count, which the full run asks too.
            let _ = check_config(binary, &env);
            read.extend(env.asked.into_inner().unwrap());
        }
    }
    let logging = RecordingEnv {
        values: BTreeMap::new(),
        asked: Mutex::new(BTreeSet::new()),
    };
    shared::logging::settings(&logging);
    read.extend(logging.asked.into_inner().unwrap());
    let documented = documented_variables();
    let undocumented: Vec<_> = read.difference(&documented).collect();
    let unread: Vec<_> = documented.difference(&read).collect();
    assert!(
        undocumented.is_empty(),
        "read by the code but not in docs/configuration.md: {undocumented:?}"
    );
    assert!(
        unread.is_empty(),
        "in docs/configuration.md but read by no function: {unread:?}"
    );
}
