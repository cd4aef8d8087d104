use std::collections::BTreeMap;

use super::*;

fn no_stack(
    _: String,
    _: BTreeMap<&'static str, String>,
) -> std::future::Ready<Result<BTreeMap<String, String>>> {
    std::future::ready(Err(Error::failed("no stack expected")))
}

fn file(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), text).unwrap();
    f
}

#[tokio::test]
async fn a_flag_beats_the_environment_which_beats_the_env_file() {
    let f = file(
        "# local\nexport LR_BUCKET=from-file\nLR_SIGNING_KEY_ID='k-file'\n\
         LR_DLQ_URLS=alerts=http://a,intake=http://b\nAWS_REGION=eu-west-1\n",
    );
    let args = SettingsArgs {
        env_file: Some(f.path().into()),
        signing_key_id: Some("k-flag".into()),
        ..Default::default()
    };
    let env = |k: &str| (k == "LR_BUCKET").then(|| "from-env".to_string());
    let s = resolve(&args, &env, no_stack).await.unwrap();
    assert_eq!(s.bucket().unwrap(), "from-env");
    assert_eq!(s.signing_key_id().unwrap(), "k-flag");
    // `intake` is the alerts stage; the later entry wins.
    assert_eq!(s.dlq_urls["alerts"], "http://b");
    assert_eq!(s.aws["AWS_REGION"], "eu-west-1");
    let err = s.alerts_queue_url().unwrap_err().to_string();
    assert!(
        err.contains("--alerts-queue-url") && err.contains("LR_ALERTS_QUEUE_URL"),
        "{err}"
    );
}

#[tokio::test]
async fn the_stack_fills_in_only_what_is_missing() {
    let args = SettingsArgs {
        stack: Some("lr-prod".into()),
        bucket: Some("flag-bucket".into()),
        ..Default::default()
    };
    let outputs = |name: String, _| {
        assert_eq!(name, "lr-prod");
        let o: BTreeMap<String, String> = [
            ("EvidenceBucketName", "stack-bucket"),
            ("SigningKeyArn", "arn:key"),
            ("AlertsQueueUrl", "http://alerts"),
            ("SubmitQueueUrl", "http://submit"),
            ("CollectDeadLetterQueueUrl", "http://collect-dlq"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        std::future::ready(Ok(o))
    };
    let s = resolve(&args, &|_| None, outputs).await.unwrap();
    assert_eq!(s.bucket().unwrap(), "flag-bucket");
    assert_eq!(s.signing_key_id().unwrap(), "arn:key");
    assert_eq!(s.queue_url("alerts").unwrap(), "http://alerts");
    assert_eq!(s.queue_url("submit").unwrap(), "http://submit");
    assert!(s.queue_url("poll").is_err());
    assert_eq!(
        s.dlqs(None).unwrap(),
        vec![("collect", "http://collect-dlq".into())]
    );
}

#[test]
fn malformed_settings_are_refused_with_where_they_came_from() {
    assert_eq!(parse_env_file("A=1\nnot a line\n").unwrap_err().0, 2);
    let e = parse_stage_urls("alerts=x,bogus=y", "--dlq-urls")
        .unwrap_err()
        .to_string();
    assert!(e.contains("--dlq-urls") && e.contains("bogus"), "{e}");
    assert!(parse_stage_urls("alerts", "x").is_err());
}

#[tokio::test]
async fn defender_settings_and_the_playbooks_come_from_the_environment_or_the_env_file() {
    let f = file(
        "MDE_CREDENTIALS_SECRET_ID=lr/file\nMDE_API_BASE_URL=http://127.0.0.1:9/\n\
         LR_PLAYBOOKS=s3://b/playbooks.toml\n",
    );
    let args = SettingsArgs {
        env_file: Some(f.path().into()),
        ..Default::default()
    };
    let env = |k: &str| (k == "MDE_CREDENTIALS_SECRET_ID").then(|| "lr/env".to_string());
    let s = resolve(&args, &env, no_stack).await.unwrap();
    let d = s.defender().unwrap();
    assert_eq!(d.credentials_secret_id, "lr/env");
    assert_eq!(d.api_base, "http://127.0.0.1:9");
    assert_eq!(d.login_base, "https://login.microsoftonline.com");
    assert_eq!(s.playbooks.as_deref(), Some("s3://b/playbooks.toml"));

    let s = resolve(&SettingsArgs::default(), &|_| None, no_stack)
        .await
        .unwrap();
    assert!(s.playbooks.is_none());
    let e = s.defender().unwrap_err().to_string();
    assert!(
        e.contains("MDE_CREDENTIALS_SECRET_ID") && e.contains("--env-file"),
        "{e}"
    );
}
