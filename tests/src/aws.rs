//! moto and the AWS SDK: the endpoint, SDK configuration for a caller, unique names.

/// moto's endpoint; the tests need the real emulator, so its absence is an error, not a skip.
pub fn moto_endpoint() -> String {
    std::env::var("LR_MOTO_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "LR_MOTO_ENDPOINT is not set: run the tests with `./dev test` (it starts moto), \
             or start one with `./dev moto` and export what it prints"
        )
    })
}

/// SDK configuration for `endpoint` with these keys (us-east-1).
pub async fn sdk_as(endpoint: &str, key: &str, secret: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            key, secret, None, None, "tests",
        ))
        .load()
        .await
}

/// SDK configuration pointed at moto.
pub async fn aws() -> aws_config::SdkConfig {
    sdk_as(&moto_endpoint(), "testing", "testing").await
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// The local stack's queues, bucket and secret under a unique `prefix`, as the local runner
/// provisions them (no TLS-only bucket policy: moto speaks plain HTTP).
pub async fn provision(
    sdk: &aws_config::SdkConfig,
    prefix: String,
    credentials_json: &str,
) -> Result<local_stack::ProvisionedStack, local_stack::ProvisionError> {
    local_stack::provision(
        sdk,
        &local_stack::StackNames { prefix },
        credentials_json,
        local_stack::ProvisionOptions {
            tls_only_policy: false,
        },
    )
    .await
}
