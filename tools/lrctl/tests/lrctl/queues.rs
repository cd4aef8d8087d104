//! lrctl and the queues (moto and the simulator): `send` puts an alert on the alerts queue that
//! becomes a run; `dlq` lists a refused message without consuming it; `dlq --redrive` moves it
//! back to the alerts queue, where intake refuses it again.

use std::time::{Duration, Instant};

use crate::common::{FILE, fleet, lrctl, said, settings, stdout};
use testkit::alerts::run_id;
use testkit::sim::machine;
use testkit::stack::{Stack, file_alert};

/// This file's fleet of machine ids.
const FLEET: u64 = 0x1c7_2000_0000;

/// The alerts dead-letter queue's messages as `lrctl --json dlq --stage alerts` lists them.
async fn dead(env: &[(String, String)]) -> Vec<serde_json::Value> {
    let out = lrctl(env, &["--json", "dlq", "--stage", "alerts"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("dlq --json");
    v["messages"].as_array().unwrap().clone()
}

/// Lists until `until` holds of the messages (panics after 40 s).
async fn dead_until(
    env: &[(String, String)],
    until: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let end = Instant::now() + Duration::from_secs(40);
    loop {
        let m = dead(env).await;
        if until(&m) {
            return m;
        }
        assert!(
            Instant::now() < end,
            "dead letters never became as expected: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn send_makes_a_run_and_dlq_lists_and_redrives_refused_messages() {
    let id = machine(FLEET, 0);
    let stack = Stack::start(fleet(std::slice::from_ref(&id), 1000), &[]).await;
    let env = settings(&stack.stack);
    let tmp = tempfile::tempdir().unwrap();

    // send: the alert becomes a run.
    let alert = tmp.path().join("alert.json");
    std::fs::write(&alert, file_alert("lrctl-send-1", &id, FILE).to_string()).unwrap();
    let out = lrctl(&env, &["send", alert.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert!(!stdout(&out).trim().is_empty(), "prints the message id");
    let m = stack
        .manifest(&run_id("native", "lrctl-send-1", &id, "malware-file"), 60)
        .await;
    assert_eq!(m.outcome, Some(shared::store::RunOutcome::Succeeded));

    // dlq: intake refuses an alert with nothing in it; the listing shows why, twice (listing
    // does not consume).
    let body = r#"{"schema":"lr.alert/v1"}"#;
    stack.send_alert(body).await;
    let first = dead_until(&env, |m| !m.is_empty()).await;
    assert_eq!(first.len(), 1, "{first:?}");
    let letter = &first[0];
    assert_eq!(letter["stage"], "alerts");
    assert_eq!(letter["body"], body);
    let code = letter["code"].as_str().unwrap();
    assert!(!code.is_empty() && code != "exhausted receives", "{letter}");
    let again = dead(&env).await;
    assert_eq!(again.len(), 1, "listing consumed the message: {again:?}");
    assert_eq!(again[0]["message_id"], letter["message_id"]);
    let out = lrctl(&env, &["dlq"]).await;
    let text = stdout(&out);
    assert!(
        text.contains(code) && text.contains("lr.alert/v1"),
        "{}",
        said(&out)
    );

    // A redrive off a terminal needs --yes; without it nothing moves.
    let out = lrctl(&env, &["dlq", "--redrive"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", said(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--yes"),
        "{}",
        said(&out)
    );
    assert_eq!(dead(&env).await.len(), 1);

    // --redrive --yes moves it back to the alerts queue; intake refuses it again, so it comes
    // back to the dead-letter queue as a new message.
    let old_id = letter["message_id"].as_str().unwrap().to_string();
    let out = lrctl(&env, &["dlq", "--stage", "intake", "--redrive", "--yes"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert!(
        stdout(&out).contains(&format!("moved {old_id}")),
        "{}",
        said(&out)
    );
    let back = dead_until(&env, |m| {
        m.len() == 1 && m[0]["message_id"].as_str() != Some(old_id.as_str())
    })
    .await;
    assert_eq!(back[0]["body"], body);
    assert_eq!(back[0]["code"], code);
    stack.stop().await;
}

/// An alert refused by the tenant check (its sender may not start runs in the tenant it names) is
/// never re-driven: re-sent by the operator, it would be checked against the operator's identity
/// instead of its sender's. Other refused alerts are moved as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_keeps_an_alert_refused_by_the_tenant_sender_check() {
    use shared::codes::RejectCode;
    use shared::ports::{Queue, Rejection};
    let sdk = testkit::aws::aws().await;
    let stack = testkit::aws::provision(&sdk, testkit::aws::unique("lrctl-redrive"), "{}")
        .await
        .expect("provisioning on moto");
    let env = settings(&stack);
    let queue = shared::adapters::sqs::SqsQueue::new(aws_sdk_sqs::Client::new(&sdk));
    let (foreign, unmatched) = (
        r#"{"schema":"lr.alert/v1","tenant":"globex","note":"from acme's forwarder"}"#,
        r#"{"schema":"lr.alert/v1","note":"matched no playbook"}"#,
    );
    for (body, code) in [
        (foreign, RejectCode::SenderNotAllowed),
        (unmatched, RejectCode::NoPlaybook),
    ] {
        queue
            .send_rejected(
                &stack.dlq_urls["alerts"],
                body,
                &Rejection {
                    stage: "intake",
                    code,
                    reason: "refused",
                },
            )
            .await
            .expect("a dead letter");
    }
    dead_until(&env, |m| m.len() == 2).await;
    let out = lrctl(&env, &["dlq", "--stage", "alerts", "--redrive", "--yes"]).await;
    let text = said(&out);
    assert!(
        text.contains("kept") && text.contains("sender_not_allowed"),
        "{text}"
    );
    let left = dead_until(&env, |m| m.len() == 1).await;
    assert_eq!(
        left[0]["body"], foreign,
        "the foreign alert stays for a person"
    );
    let moved = aws_sdk_sqs::Client::new(&sdk)
        .receive_message()
        .queue_url(&stack.queue_urls["alerts"])
        .max_number_of_messages(10)
        .wait_time_seconds(1)
        .send()
        .await
        .expect("receive");
    let bodies: Vec<&str> = moved.messages().iter().filter_map(|m| m.body()).collect();
    assert_eq!(bodies, vec![unmatched]);
}
