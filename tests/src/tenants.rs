//! Several Defender tenants on the local stack: a simulated tenant's app, its secret in moto, its
//! registry entry pointing at its own simulator, and the registry deployed (in the stack's bucket,
//! pinned) before the stages start.

use mde_sim::{Client, SimServer};

use crate::stack::Stack;

/// The sender moto reports for every message (its stand-in for the caller's unique id).
pub const MOTO_SENDER: &str = "AIDAIT2UOQQY3AUEKVGXU";

/// Tenant `key`'s app in Entra tenant `entra`, granted what the pipeline needs.
pub fn client(key: &str, entra: &str) -> Client {
    Client {
        tenant_id: entra.into(),
        client_id: format!("app-of-{key}"),
        client_secret: format!("secret-of-{key}"),
        requestor: format!("lr-{key}"),
        ..Client::default()
    }
}

/// A secret in moto holding `client`'s credentials (its `tenant_id` the app's home tenant: the
/// registry says where the token is asked for); returns its name.
pub async fn secret(sdk: &aws_config::SdkConfig, key: &str, client: &Client) -> String {
    let name = crate::aws::unique(&format!("lr-{key}"));
    aws_sdk_secretsmanager::Client::new(sdk)
        .create_secret()
        .name(&name)
        .secret_string(
            serde_json::json!({"tenant_id": "00000000-0000-4000-8000-00000000ffff", "client_id": client.client_id, "client_secret": client.client_secret})
                .to_string(),
        )
        .send()
        .await
        .expect("a tenant's secret");
    name
}

/// A registry entry for tenant `key` on `sim` with `secret`, moto's sender allowed, and `extra`
/// lines (limits, playbooks).
pub fn entry(key: &str, entra: &str, sim: &SimServer, secret: &str, extra: &str) -> String {
    format!(
        r#"
[[tenants]]
key = "{key}"
entra_tenant_id = "{entra}"
api_base = "{}"
login_base = "{}"
credentials_secret = "{secret}"
senders = [{{ principal = "{MOTO_SENDER}" }}]
{extra}
"#,
        sim.api_base, sim.login_base
    )
}

/// Puts `text` in the stack's bucket and points the functions at it, pinned (start or restart
/// the stages after).
pub async fn deploy_registry(stack: &mut Stack, text: &str) {
    let key = format!("config/{}.toml", crate::aws::unique("tenants"));
    stack
        .s3
        .put_object()
        .bucket(&stack.stack.bucket)
        .key(&key)
        .body(text.as_bytes().to_vec().into())
        .send()
        .await
        .expect("the registry in S3");
    stack.env.insert(
        "TENANTS_S3_URI".into(),
        format!("s3://{}/{key}", stack.stack.bucket),
    );
    stack.env.insert(
        "TENANTS_SHA256".into(),
        crate::content::sha256_hex(text.as_bytes()),
    );
}

/// An alert body for `tenant` (none: no tenant named): [`crate::stack::file_alert`] with its
/// category.
pub fn alert(
    tenant: Option<&str>,
    alert_id: &str,
    machine: &str,
    path: &str,
    category: &str,
) -> String {
    let mut a = crate::stack::file_alert(alert_id, machine, path);
    a["category"] = category.into();
    if let Some(t) = tenant {
        a["tenant"] = t.into();
    }
    a.to_string()
}
