//! `lrctl tenants check` against two simulated tenants, one whose consent lacks a permission (and
//! whose poll app lacks Machine.Read.All), and
//! `--tenant` keeping `runs` and `verify --all` to one tenant's prefix.

use mde_sim::{Client, SimConfig};
use shared::ids::{RunId, TenantKey};

use crate::common::*;

/// A tenant's simulator: its app granted `roles` in Entra tenant `entra`.
async fn tenant_sim(entra: &str, roles: &[&str]) -> (mde_sim::SimServer, Client) {
    let client = Client {
        tenant_id: entra.into(),
        client_id: format!("app-{entra}"),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        ..Client::default()
    };
    let config = SimConfig {
        clients: vec![client.clone()],
        ..SimConfig::default()
    };
    (testkit::sim::start_sim(config).await, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_check_names_a_tenant_missing_a_permission_and_its_consent_link() {
    let (acme_entra, globex_entra) = (
        "a1a1a1a1-0000-4000-8000-000000000001",
        "b2b2b2b2-0000-4000-8000-000000000002",
    );
    let (acme, acme_app) = tenant_sim(acme_entra, &mde_sim::PIPELINE_ROLES).await;
    let globex_app = Client {
        tenant_id: globex_entra.into(),
        client_id: format!("app-{globex_entra}"),
        roles: vec!["Machine.LiveResponse".into(), "Machine.Read.All".into()],
        ..Client::default()
    };
    // Globex's poll reads through an app of its own, consented without Machine.Read.All.
    let globex_poll = Client {
        tenant_id: globex_entra.into(),
        client_id: format!("poll-{globex_entra}"),
        client_secret: "poll-secret".into(),
        roles: vec!["Machine.LiveResponse".into()],
        ..Client::default()
    };
    let globex = testkit::sim::start_sim(SimConfig {
        clients: vec![globex_app.clone(), globex_poll.clone()],
        ..SimConfig::default()
    })
    .await;
    let sdk = testkit::aws::aws().await;
    let sm = aws_sdk_secretsmanager::Client::new(&sdk);
    let secret = |app: &Client, key: &str| {
        let sm = sm.clone();
        let (name, body) = (
            testkit::aws::unique(&format!("lr-tenants/{key}")),
            serde_json::json!({"tenant_id": "home", "client_id": app.client_id, "client_secret": app.client_secret})
                .to_string(),
        );
        async move {
            sm.create_secret()
                .name(&name)
                .secret_string(body)
                .send()
                .await
                .expect("a tenant's secret");
            name
        }
    };
    let poll_secret = secret(&globex_poll, "globex-poll").await;
    let mut entries = String::new();
    for (key, entra, sim, app, poll) in [
        ("acme", acme_entra, &acme, &acme_app, String::new()),
        (
            "globex",
            globex_entra,
            &globex,
            &globex_app,
            format!("poll_credentials_secret = \"{poll_secret}\"\n"),
        ),
    ] {
        let name = secret(app, key).await;
        entries.push_str(&format!(
            "[[tenants]]\nkey = \"{key}\"\nentra_tenant_id = \"{entra}\"\napi_base = \"{}\"\nlogin_base = \"{}\"\ncredentials_secret = \"{name}\"\n{poll}senders = [{{ principal = \"AIDAIT2UOQQY3AUEKVGXU\" }}]\n\n",
            sim.api_base, sim.login_base
        ));
    }
    let dir = std::env::temp_dir().join(testkit::aws::unique("lrctl-tenants"));
    std::fs::create_dir_all(&dir).unwrap();
    let registry = dir.join("tenants.toml");
    std::fs::write(&registry, entries).unwrap();
    let mut env: Vec<(String, String)> = aws_env()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    env.push(("LR_TENANTS".into(), registry.display().to_string()));

    let out = lrctl(&env, &["tenants", "check", "acme"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let out = lrctl(&env, &["--json", "tenants", "check"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let by = |k: &str| {
        reports
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["tenant"] == k)
            .unwrap()
            .clone()
    };
    assert_eq!(by("acme")["ok"], true, "{reports}");
    let g = by("globex");
    assert_eq!(g["ok"], false);
    let failed: Vec<&serde_json::Value> = g["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .collect();
    let names: Vec<&str> = failed
        .iter()
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec![
            "Library.Manage",
            "library",
            "poll Machine.Read.All",
            "poll machine actions"
        ],
        "{g}"
    );
    let poll_fix = failed[2]["fix"].as_str().unwrap();
    assert!(
        poll_fix.contains(&format!("adminconsent?client_id={}", globex_poll.client_id)),
        "the poll app's own consent link: {poll_fix}"
    );
    let fix = failed[0]["fix"].as_str().unwrap();
    assert!(
        fix.contains(&format!(
            "{}/{globex_entra}/adminconsent?client_id={}",
            globex.login_base, globex_app.client_id
        )),
        "{fix}"
    );
    // The table says it too, and never prints a secret or a token.
    let out = lrctl(&env, &["tenants", "check"]).await;
    let text = said(&out);
    assert!(
        text.contains("MISSING") && text.contains("adminconsent"),
        "{text}"
    );
    assert!(
        !text.contains(&globex_app.client_secret) && !text.contains("eyJ"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_flag_keeps_runs_and_verify_to_that_tenants_prefix() {
    let sdk = testkit::aws::aws().await;
    let stack = testkit::aws::provision(&sdk, testkit::aws::unique("lrctl-tenant"), "{}")
        .await
        .expect("provisioning on moto");
    let s3 = shared::adapters::s3::s3_client(&sdk);
    let run = |t: &str| {
        RunId::derive_for(
            Some(&TenantKey::parse(t).unwrap()),
            "native",
            "a-1",
            &"a".repeat(40),
            "malware-file",
        )
    };
    let (acme, globex) = (run("acme"), run("globex"));
    let (pkg, inner, size) = package(2_000, 7);
    let store = shared::adapters::s3::S3Store::new(s3.clone(), &stack.bucket);
    let action = shared::defender::ActionId::parse("7f0a8b9c-1d2e-4f30-8a4b-5c6d7e8f9a0d").unwrap();
    for r in [&acme, &globex] {
        seed_run(
            &s3,
            &stack.bucket,
            r,
            vec![(0, pkg.clone(), inner.clone(), size)],
            false,
        )
        .await;
        let record = testkit::records::collecting_run(
            r,
            "a-1",
            &shared::defender::MachineId::parse(&"a".repeat(40)).unwrap(),
            vec![shared::defender::Command::get_file(FILE)],
            &action,
        );
        testkit::records::put_run(&store, &record).await;
    }
    let env = settings(&stack);
    let mut acme_env = env.clone();
    acme_env.push(("LR_TENANT".into(), "acme".into()));

    let out = lrctl(&acme_env, &["--json", "runs"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let text = stdout(&out);
    assert!(
        text.contains(acme.as_str()) && !text.contains(globex.as_str()),
        "{text}"
    );
    let out = lrctl(&env, &["--json", "runs"]).await;
    let text = stdout(&out);
    assert!(
        text.contains(acme.as_str()) && text.contains(globex.as_str()),
        "{text}"
    );

    let out = lrctl(&acme_env, &["verify", "--all"]).await;
    let text = said(&out);
    assert!(
        text.contains(acme.as_str()) && !text.contains(globex.as_str()),
        "{text}"
    );
    // Another tenant's run, named with --tenant acme: refused as a usage error, nothing read.
    let out = lrctl(&acme_env, &["verify", globex.as_str()]).await;
    assert_eq!(out.status.code(), Some(2), "{}", said(&out));
    assert!(said(&out).contains("not tenant acme's"), "{}", said(&out));
}
