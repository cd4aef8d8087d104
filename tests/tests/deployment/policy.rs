//! The roles as deployed (infra/role_policies.py: the template through the pinned SAM translator,
//! intrinsics resolved) and an evaluator of identity policies good enough to ask what a role may do.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The SAM virtualenv's Python (`./dev test` installs it and exports LR_SAM_PYTHON).
fn sam_python() -> PathBuf {
    let path = std::env::var("LR_SAM_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(ROOT).join(".venv/sam/bin/python"));
    assert!(
        path.exists(),
        "{} does not exist: run the tests with `./dev test` (it installs the pinned SAM translator)",
        path.display()
    );
    path
}

/// One function's role.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Role {
    pub policies: Vec<NamedPolicy>,
    pub managed_policy_arns: Vec<String>,
    /// With `create_users`: the keys of the IAM user carrying exactly this role's policies.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct NamedPolicy {
    pub document: Value,
}

impl Role {
    pub fn documents(&self) -> Vec<&Value> {
        self.policies.iter().map(|p| &p.document).collect()
    }

    /// Whether the role's inline policies allow `action` on `resource` (with `s3:prefix` in the
    /// request context when given, as for ListBucket).
    pub fn allows(&self, action: &str, resource: &str, prefix: Option<&str>) -> bool {
        allowed(&self.documents(), action, resource, prefix)
    }
}

/// Keys of an extra IAM user a test asked for.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct UserKeys {
    pub access_key_id: String,
    pub secret_access_key: String,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct Roles {
    /// By function binary: intake, submit, poll, collect.
    pub functions: BTreeMap<String, Role>,
    #[serde(default)]
    pub users: BTreeMap<String, UserKeys>,
    /// The bucket and queue policies, by logical id.
    #[serde(default)]
    pub resource_policies: BTreeMap<String, Value>,
}

/// The roles, resolved against `bindings` (see infra/role_policies.py). With `create_users`, also
/// creates their IAM users (and `bindings.extra_users`) on the endpoint in `aws_env` (moto with
/// IAM enforced) and returns their keys.
pub fn roles(bindings: &Value, create_users: bool, aws_env: &[(&str, String)]) -> Roles {
    run_role_policies(
        bindings,
        &[create_users.then_some("--create-users")],
        aws_env,
    )
}

/// The roles and the resolved bucket and queue policies (`bindings` must name every resource
/// those policies refer to).
pub fn with_resource_policies(bindings: &Value) -> Roles {
    run_role_policies(bindings, &[Some("--resource-policies")], &[])
}

fn run_role_policies(
    bindings: &Value,
    flags: &[Option<&str>],
    aws_env: &[(&str, String)],
) -> Roles {
    let mut cmd = Command::new(sam_python());
    cmd.arg(format!("{ROOT}/infra/role_policies.py")).arg("-");
    cmd.args(flags.iter().flatten());
    for (k, v) in aws_env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run infra/role_policies.py");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(bindings.to_string().as_bytes())
        .expect("write bindings");
    let out = child.wait_with_output().expect("role_policies.py ends");
    assert!(
        out.status.success(),
        "infra/role_policies.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("role_policies.py prints JSON")
}

fn as_list(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(a) => a.iter().collect(),
        Value::Null => vec![],
        other => vec![other],
    }
}

/// IAM's wildcards: `*` any run of characters, `?` one character.
pub fn glob(pattern: &str, value: &str) -> bool {
    fn go(p: &[char], v: &[char]) -> bool {
        match p.split_first() {
            None => v.is_empty(),
            Some(('*', rest)) => (0..=v.len()).any(|i| go(rest, &v[i..])),
            Some(('?', rest)) => !v.is_empty() && go(rest, &v[1..]),
            Some((c, rest)) => v.first() == Some(c) && go(rest, &v[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let v: Vec<char> = value.chars().collect();
    go(&p, &v)
}

fn any_matches(patterns: &Value, value: &str, ignore_case: bool) -> bool {
    as_list(patterns).iter().any(|p| {
        let p = p.as_str().expect("a string in the policy");
        if ignore_case {
            glob(&p.to_ascii_lowercase(), &value.to_ascii_lowercase())
        } else {
            glob(p, value)
        }
    })
}

/// What a request carries that a condition may ask about: `s3:prefix` (ListBucket),
/// `aws:PrincipalArn`, `aws:SourceArn`, `s3:if-none-match`, `s3:object-lock-mode`,
/// `s3:ObjectCreationOperation`.
pub type Context<'a> = BTreeMap<&'a str, &'a str>;

const KNOWN_KEYS: [&str; 7] = [
    "s3:prefix",
    "aws:SecureTransport",
    "aws:PrincipalArn",
    "aws:SourceArn",
    "s3:if-none-match",
    "s3:object-lock-mode",
    "s3:ObjectCreationOperation",
];

fn condition_holds(op: &str, key: &str, expected: &Value, context: &Context) -> bool {
    assert!(
        KNOWN_KEYS.contains(&key),
        "the evaluator does not know the condition key {key}; teach it"
    );
    let values: Vec<&str> = as_list(expected)
        .iter()
        .map(|v| v.as_str().expect("a string condition value"))
        .collect();
    if op == "Null" {
        // "Null": "true" holds when the request lacks the key.
        return values
            .iter()
            .all(|v| (*v == "true") != context.contains_key(key));
    }
    let (base, if_exists) = match op.strip_suffix("IfExists") {
        Some(b) => (b, true),
        None => (op, false),
    };
    let Some(actual) = context.get(key).copied() else {
        return if_exists || base.contains("Not");
    };
    match base {
        "StringEquals" | "ArnEquals" => values.contains(&actual),
        "StringNotEquals" | "ArnNotEquals" => !values.contains(&actual),
        "StringLike" | "ArnLike" => values.iter().any(|v| glob(v, actual)),
        "StringNotLike" | "ArnNotLike" => !values.iter().any(|v| glob(v, actual)),
        "Bool" => values.contains(&actual),
        other => panic!("the evaluator does not know the condition operator {other}"),
    }
}

fn applies(st: &Value, action: &str, resource: &str, context: &Context) -> bool {
    let action_ok = match (st.get("Action"), st.get("NotAction")) {
        (Some(a), _) => any_matches(a, action, true),
        (None, Some(na)) => !any_matches(na, action, true),
        (None, None) => false,
    };
    let resource_ok = match (st.get("Resource"), st.get("NotResource")) {
        (Some(r), _) => any_matches(r, resource, false),
        (None, Some(nr)) => !any_matches(nr, resource, false),
        (None, None) => false,
    };
    if !action_ok || !resource_ok {
        return false;
    }
    let Some(conditions) = st.get("Condition").and_then(Value::as_object) else {
        return true;
    };
    conditions.iter().all(|(op, pairs)| {
        pairs
            .as_object()
            .expect("condition block")
            .iter()
            .all(|(key, expected)| condition_holds(op, key, expected, context))
    })
}

/// What the statements say about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// An explicit deny: nothing else can allow it.
    Deny,
    /// No statement speaks of it.
    Silent,
}

/// IAM's rule: an explicit deny wins, else any allow, else nothing. Statements with a `Principal`
/// (resource policies) are taken to name the caller: test them with callers they name.
pub fn decide(documents: &[&Value], action: &str, resource: &str, context: &Context) -> Decision {
    let mut decision = Decision::Silent;
    for doc in documents {
        for st in as_list(&doc["Statement"]) {
            if applies(st, action, resource, context) {
                match st["Effect"].as_str() {
                    Some("Deny") => return Decision::Deny,
                    Some("Allow") => decision = Decision::Allow,
                    other => panic!("statement effect {other:?}"),
                }
            }
        }
    }
    decision
}

/// Identity policies: allowed when some statement allows and none denies.
pub fn allowed(documents: &[&Value], action: &str, resource: &str, prefix: Option<&str>) -> bool {
    let context: Context = prefix.map(|p| ("s3:prefix", p)).into_iter().collect();
    decide(documents, action, resource, &context) == Decision::Allow
}

// ---------------------------------------------------------------------------------------------
// A stack named after the template's logical ids, to resolve roles and policies without a deployment.

pub const ACCOUNT: &str = "123456789012";
pub const REGION: &str = "us-east-1";

/// The pipeline's queues: (stage as the local stack names it, logical id in the template).
pub const QUEUES: [(&str, &str, &str); 4] = [
    ("alerts", "AlertsQueue", "AlertsDeadLetterQueue"),
    ("submit", "SubmitQueue", "SubmitDeadLetterQueue"),
    ("poll", "PollQueue", "PollDeadLetterQueue"),
    ("collect", "CollectQueue", "CollectDeadLetterQueue"),
];

/// A queue's ARN in that stack.
pub fn queue_arn(name: &str) -> String {
    format!("arn:aws:sqs:{REGION}:{ACCOUNT}:{name}")
}

/// A role's ARN in that stack (the sealing roles under their path, as the template puts them).
pub fn role_arn(logical: &str) -> String {
    let path = if logical == "IntakeRole" {
        ""
    } else {
        "lr-stack/sealing/"
    };
    format!("arn:aws:iam::{ACCOUNT}:role/{path}{logical}")
}

/// The credentials secret's ARN in that stack.
pub const SECRET: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:lr/defender-AbCdEf";

/// What CloudFormation would resolve, for a stack whose resources are named after their logical ids.
pub fn symbolic_bindings(parameters: Value) -> Value {
    let mut resources = serde_json::Map::new();
    resources.insert(
        "EvidenceBucket".into(),
        json!({"Ref": "lr-evidence", "Arn": "arn:aws:s3:::lr-evidence"}),
    );
    resources.insert(
        "EvidenceKey".into(),
        json!({"Ref": "k-1", "Arn": format!("arn:aws:kms:{REGION}:{ACCOUNT}:key/k-1")}),
    );
    resources.insert(
        "ManifestSigningKey".into(),
        json!({"Ref": "k-2", "Arn": format!("arn:aws:kms:{REGION}:{ACCOUNT}:key/k-2")}),
    );
    resources.insert("CredentialsSecret".into(), json!({ "Ref": SECRET }));
    for role in ["IntakeRole", "SubmitRole", "PollRole", "CollectRole"] {
        resources.insert(role.into(), json!({"Ref": role, "Arn": role_arn(role)}));
    }
    for (_, queue, dlq) in QUEUES {
        for q in [queue, dlq] {
            resources.insert(
                q.into(),
                json!({"Ref": format!("https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{q}"), "Arn": queue_arn(q)}),
            );
        }
    }
    json!({"parameters": parameters, "resources": resources})
}

/// The roles with the bucket and queue policies, resolved with these template parameters for the
/// stack of [`symbolic_bindings`] (plus its access-log bucket).
pub fn symbolic_roles_and_policies(parameters: Value) -> Roles {
    let mut bindings = symbolic_bindings(parameters);
    bindings["resources"]["AccessLogBucket"] =
        json!({"Ref": "lr-logs", "Arn": "arn:aws:s3:::lr-logs"});
    with_resource_policies(&bindings)
}

/// The bucket and queue policies, resolved with these template parameters.
pub fn resource_policies(parameters: Value) -> BTreeMap<String, Value> {
    symbolic_roles_and_policies(parameters).resource_policies
}

#[test]
fn the_evaluator_reads_wildcards_and_prefix_conditions_as_iam_does() {
    assert!(glob("runs/*/run.json", "runs/abc/run.json"));
    assert!(glob("runs/*/run.json", "runs/a/b/run.json"));
    assert!(!glob("runs/*/run.json", "runs/abc/run.jsonx"));
    assert!(glob("budget/corrupt-*", "budget/corrupt-1.json"));
    assert!(glob("a?c", "abc") && !glob("a?c", "ac"));
    let doc = serde_json::json!({"Statement": [
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::b",
         "Condition": {"StringLike": {"s3:prefix": ["runs/*/run.json"]}}},
        {"Effect": "Allow", "Action": ["s3:Get*"], "Resource": "arn:aws:s3:::b/*"},
        {"Effect": "Deny", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/secret/*"},
    ]});
    let docs = [&doc];
    assert!(allowed(
        &docs,
        "s3:ListBucket",
        "arn:aws:s3:::b",
        Some("runs/x/run.json")
    ));
    assert!(!allowed(
        &docs,
        "s3:ListBucket",
        "arn:aws:s3:::b",
        Some("runs/")
    ));
    assert!(!allowed(&docs, "s3:ListBucket", "arn:aws:s3:::b", None));
    assert!(allowed(&docs, "S3:GETOBJECT", "arn:aws:s3:::b/x", None));
    assert!(!allowed(
        &docs,
        "s3:GetObject",
        "arn:aws:s3:::b/secret/x",
        None
    ));
    assert!(!allowed(&docs, "s3:PutObject", "arn:aws:s3:::b/x", None));
}
