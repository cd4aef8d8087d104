//! Tenants on moto with IAM enforced: the four stages under their roles read the tenant registry
//! and a tenant's secret as the template grants them (and nothing more), and the tenant analyst's
//! policy from docs/tenants.md, applied as written, lets an analyst of one tenant list and read
//! that tenant's runs and neither list nor read another tenant's or a single-tenant run's (the dot
//! after the tenant key keeps `acme-x` out of `acme`'s prefix).

use super::*;

/// The policy docs/tenants.md gives, for `tenant` in `bucket` (the keys' ARNs from the stack).
fn documented_policy(stack: &local_stack::ProvisionedStack, tenant: &str) -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/tenants.md");
    let doc = std::fs::read_to_string(path).expect("docs/tenants.md");
    let section = doc
        .split("### 5. The analyst's policy")
        .nth(1)
        .expect("the analyst's policy section");
    let block = section
        .split("```json\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a JSON policy in the section");
    let text = block
        .replace("BUCKET", &stack.bucket)
        .replace("TENANT", tenant)
        .replace(
            "EVIDENCE_KEY_ARN",
            &format!("arn:aws:kms:{REGION}:{ACCOUNT}:key/local"),
        )
        .replace("SIGNING_KEY_ARN", &stack.signing_key_arn);
    serde_json::from_str(&text).expect("the documented policy is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_analyst_lists_and_reads_that_tenants_runs_and_no_other_tenants() {
    let world = World::with_users(
        "iam-tenants",
        "{\"tenant_id\":\"t\",\"client_id\":\"c\",\"client_secret\":\"s\"}",
        |stack| json!({ "analyst-acme": documented_policy(stack, "acme") }),
        json!({}),
    )
    .await;
    let run = |tenant: Option<&str>| {
        let t = tenant.map(|t| shared::ids::TenantKey::parse(t).unwrap());
        RunId::derive_for(t.as_ref(), "native", "a-1", M1, "malware-file")
    };
    let (acme, acme_x, globex, single) = (
        run(Some("acme")),
        run(Some("acme-x")),
        run(Some("globex")),
        run(None),
    );
    let admin = world.store_as(&world.admin);
    for r in [&acme, &acme_x, &globex, &single] {
        for key in [
            keys::manifest_key(r),
            keys::evidence_key(r, 0, shared::defender::CommandType::GetFile),
            keys::run_key(r),
        ] {
            admin
                .put(&key, b"{}".to_vec(), Put::Always)
                .await
                .expect("write as the administrator");
        }
    }
    let analyst = world.store_as(&world.sdk_of_user("analyst-acme").await);

    // Its own tenant's runs: read, listed, and a missing key of them reads as absent.
    for key in [
        keys::manifest_key(&acme),
        keys::evidence_key(&acme, 0, shared::defender::CommandType::GetFile),
        keys::run_key(&acme),
    ] {
        assert!(analyst.get(&key).await.expect(&key).is_some(), "{key}");
    }
    assert!(
        analyst
            .get(&keys::signature_key(&acme))
            .await
            .expect("a missing key of its own tenant is a 404")
            .is_none()
    );
    let listed = analyst.list("evidence/acme.").await.expect("list its runs");
    assert_eq!(
        listed,
        vec![
            keys::evidence_key(&acme, 0, shared::defender::CommandType::GetFile),
            keys::manifest_key(&acme),
        ]
    );
    assert!(
        analyst
            .list("state/runs/acme.")
            .await
            .expect("list its records")
            .contains(&keys::run_key(&acme))
    );

    // Another tenant's, a tenant whose key starts the same, a single-tenant run: neither read nor
    // listed; nor the whole bucket.
    for other in [&acme_x, &globex, &single] {
        for key in [keys::manifest_key(other), keys::run_key(other)] {
            assert!(analyst.get(&key).await.is_err(), "{key} was readable");
        }
    }
    for prefix in [
        "evidence/",
        "evidence/globex.",
        "evidence/acme-x.",
        "state/",
        "",
    ] {
        assert!(
            analyst.list(prefix).await.is_err(),
            "{prefix:?} was listable"
        );
    }
}

/// The stages under their roles, the template deployed with a tenant registry: intake reads the
/// registry from its bucket, submit and collect the tenant's secret under `TenantSecretsPrefix`,
/// and a tenant's alert becomes a manifest under its tenant's prefix with no call refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_stage_under_its_role_runs_a_tenants_alert_with_the_registry_and_secret_granted() {
    let mut config = sim_config();
    config.devices = vec![device(M1, 50_000)];
    config.sim.time_scale = 20.0;
    let sim = start_sim(config.clone()).await;
    let config_bucket = unique("iam-tenants");
    let uri = format!("s3://{config_bucket}/tenants.toml");
    let secrets_prefix = format!("{}/", unique("lr-tenants"));
    let world = World::new(
        &credentials_json(&config),
        json!({}),
        json!({ "TenantsS3Uri": uri, "TenantSecretsPrefix": secrets_prefix }),
    )
    .await;
    let secret = aws_sdk_secretsmanager::Client::new(&world.admin)
        .create_secret()
        .name(format!("{secrets_prefix}acme"))
        .secret_string(credentials_json(&config))
        .send()
        .await
        .expect("the tenant's secret, as the administrator")
        .arn
        .expect("its ARN");
    let entra = &config.clients[0].tenant_id;
    let registry = format!(
        r#"[[tenants]]
key = "acme"
entra_tenant_id = "{entra}"
api_base = "{}"
login_base = "{}"
credentials_secret = "{secret}"
senders = [{{ principal = "AIDAIT2UOQQY3AUEKVGXU" }}]
"#,
        sim.api_base, sim.login_base
    );
    let admin_s3 = shared::adapters::s3::s3_client(&world.admin);
    admin_s3
        .create_bucket()
        .bucket(&config_bucket)
        .send()
        .await
        .expect("the registry's bucket");
    admin_s3
        .put_object()
        .bucket(&config_bucket)
        .key("tenants.toml")
        .body(registry.clone().into_bytes().into())
        .send()
        .await
        .expect("the registry");
    let pin = sha256_hex(registry.as_bytes());
    let functions = deploy(
        &world,
        &sim,
        &[("TENANTS_S3_URI", &uri), ("TENANTS_SHA256", &pin)],
    )
    .await;
    let mut alert = file_alert("iam-tenant", M1, FILE);
    alert["tenant"] = "acme".into();
    aws_sdk_sqs::Client::new(&world.admin)
        .send_message()
        .queue_url(&world.stack.queue_urls["alerts"])
        .message_body(alert.to_string())
        .send()
        .await
        .expect("send alert");
    let acme = shared::ids::TenantKey::parse("acme").unwrap();
    let run = RunId::derive_for(Some(&acme), "native", "iam-tenant", M1, "malware-file");
    let admin_store = world.store_as(&world.admin);
    let until = Instant::now() + Duration::from_secs(120);
    let manifest = loop {
        let mut busy = false;
        for f in &functions {
            busy |= f.pump().await.0 > 0;
            let refused = denials(&world.prefix);
            assert!(
                refused.is_empty(),
                "{} under its role: a call was refused:\n{}",
                f.binary,
                refused.join("\n")
            );
        }
        if let Some(m) = admin_store
            .get(&keys::manifest_key(&run))
            .await
            .expect("read manifest")
        {
            break m;
        }
        assert!(
            Instant::now() < until,
            "no manifest after 120 s; last log lines:\n{}",
            logs().last_lines(40)
        );
        if !busy {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let m: shared::store::Manifest = serde_json::from_slice(&manifest.body).expect("manifest");
    assert_eq!(m.outcome, Some(RunOutcome::Succeeded), "{:?}", m.reason);
    assert_eq!(m.tenant, Some(acme));
    assert!(
        world
            .keys_under("state/budget/tenants/")
            .await
            .contains(&"state/budget/tenants/acme.json".to_string())
    );
    // Confined all the same: intake reads the registry, not the tenant's secret.
    let intake = aws_sdk_secretsmanager::Client::new(&world.sdk_of("intake").await);
    assert!(
        intake
            .get_secret_value()
            .secret_id(&secret)
            .send()
            .await
            .is_err(),
        "intake may not read a tenant's secret"
    );
}
