//! The local stack's provisioning against moto: queues with DLQs and redrive, the bucket's
//! protections, and the secret, with the settings the deployment template uses.

use aws_sdk_sqs::types::QueueAttributeName;
use local_stack::{
    MAX_RECEIVE_COUNT, ProvisionOptions, QUEUES, StackNames, VISIBILITY_FACTOR, provision,
};
use testkit::aws::{aws, unique};

#[tokio::test]
async fn provisions_queues_bucket_and_secret_idempotently() {
    let sdk = aws().await;
    let names = StackNames {
        prefix: unique("lrt"),
    };
    let creds = r#"{"tenant_id":"t","client_id":"c","client_secret":"s"}"#;
    let local = ProvisionOptions {
        tls_only_policy: false,
    };
    let stack = provision(&sdk, &names, creds, local).await.unwrap();
    let again = provision(&sdk, &names, creds, local).await.unwrap();
    assert_eq!(
        stack.queue_urls, again.queue_urls,
        "provisioning twice changes nothing"
    );

    let sqs = aws_sdk_sqs::Client::new(&sdk);
    for q in QUEUES {
        let url = &stack.queue_urls[q.stage];
        assert_eq!(stack.env[q.url_var], *url);
        let attrs = sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .unwrap();
        let attrs = attrs.attributes().unwrap();
        assert_eq!(
            attrs[&QueueAttributeName::VisibilityTimeout],
            (q.function_timeout_secs * VISIBILITY_FACTOR).to_string(),
            "{}",
            q.stage
        );
        let redrive: serde_json::Value =
            serde_json::from_str(&attrs[&QueueAttributeName::RedrivePolicy]).unwrap();
        assert_eq!(
            redrive["maxReceiveCount"].to_string().trim_matches('"'),
            MAX_RECEIVE_COUNT.to_string()
        );
        assert!(
            redrive["deadLetterTargetArn"]
                .as_str()
                .unwrap()
                .ends_with(&names.dlq(q.stage)),
            "{redrive}"
        );
    }

    let s3 = shared::adapters::s3::s3_client(&sdk);
    let enc = s3
        .get_bucket_encryption()
        .bucket(&stack.bucket)
        .send()
        .await
        .unwrap();
    let rule = &enc.server_side_encryption_configuration().unwrap().rules()[0];
    assert_eq!(
        rule.apply_server_side_encryption_by_default()
            .unwrap()
            .sse_algorithm()
            .as_str(),
        "aws:kms"
    );
    // moto 5.2.5 answers GetBucketVersioning with a root element the SDK rejects, so versioning
    // is shown by its effect: two writes of one key leave two versions.
    for body in ["one", "two"] {
        s3.put_object()
            .bucket(&stack.bucket)
            .key("probe")
            .body(body.as_bytes().to_vec().into())
            .send()
            .await
            .unwrap();
    }
    let versions = s3
        .list_object_versions()
        .bucket(&stack.bucket)
        .prefix("probe")
        .send()
        .await
        .unwrap();
    assert_eq!(versions.versions().len(), 2);
    let pab = s3
        .get_public_access_block()
        .bucket(&stack.bucket)
        .send()
        .await
        .unwrap();
    let pab = pab.public_access_block_configuration().unwrap();
    assert_eq!(pab.block_public_acls(), Some(true));
    assert_eq!(pab.restrict_public_buckets(), Some(true));

    let sm = aws_sdk_secretsmanager::Client::new(&sdk);
    let secret = sm
        .get_secret_value()
        .secret_id(&stack.env["MDE_CREDENTIALS_SECRET_ID"])
        .send()
        .await
        .unwrap();
    assert_eq!(secret.secret_string(), Some(creds));
}

#[tokio::test]
async fn the_tls_only_policy_refuses_plain_http() {
    let sdk = aws().await;
    let names = StackNames {
        prefix: unique("lrt"),
    };
    let creds = r#"{"tenant_id":"t","client_id":"c","client_secret":"s"}"#;
    let stack = provision(
        &sdk,
        &names,
        creds,
        ProvisionOptions {
            tls_only_policy: true,
        },
    )
    .await
    .unwrap();
    let s3 = shared::adapters::s3::s3_client(&sdk);
    let policy = s3
        .get_bucket_policy()
        .bucket(&stack.bucket)
        .send()
        .await
        .unwrap();
    assert!(policy.policy().unwrap().contains("aws:SecureTransport"));
    // moto speaks plain HTTP, so the policy must deny this write.
    let denied = s3
        .put_object()
        .bucket(&stack.bucket)
        .key("probe")
        .body(b"x".to_vec().into())
        .send()
        .await;
    assert_eq!(
        denied
            .unwrap_err()
            .raw_response()
            .map(|r| r.status().as_u16()),
        Some(403)
    );
}

/// The benchmarks' CAS proxy passes answers through unchanged: a HEAD keeps the object's length
/// (one that said 0 bytes made every duplicate collector find a "different" object under its
/// evidence key and fail the command), and two writes conditioned on the same ETag cannot both
/// win, as in S3.
#[tokio::test]
async fn the_cas_proxy_keeps_head_lengths_and_lets_one_conditional_write_win() {
    let proxy = testkit::cas_proxy::start(&testkit::aws::moto_endpoint()).await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(
            &testkit::aws::sdk_as(&proxy, "testing", "testing").await,
        )
        .force_path_style(true)
        .build(),
    );
    let bucket = unique("lrt-proxy");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let put = s3
        .put_object()
        .bucket(&bucket)
        .key("k")
        .body(vec![7u8; 16407].into())
        .send()
        .await
        .unwrap();
    let head = s3
        .head_object()
        .bucket(&bucket)
        .key("k")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(16407), "HEAD through the proxy");
    let etag = put.e_tag().unwrap().to_string();
    let write = |body: &'static [u8]| {
        s3.put_object()
            .bucket(&bucket)
            .key("k")
            .if_match(&etag)
            .body(body.to_vec().into())
            .send()
    };
    let (a, b) = tokio::join!(write(b"a"), write(b"b"));
    assert_eq!(
        [a.is_ok(), b.is_ok()].iter().filter(|w| **w).count(),
        1,
        "exactly one write conditioned on the same ETag wins"
    );
}
