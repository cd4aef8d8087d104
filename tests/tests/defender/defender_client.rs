//! The shared Defender client against the simulator: every endpoint and every error class.

use std::io::Read;
use std::time::Duration;

use mde_sim::{EndpointFaults, Faults};
use shared::adapters::secrets::SecretsManagerCredentials;
use shared::defender::{
    ActionFilter, ActionStatus, Command, CommandStatus, CommandType, DefenderError, LibraryUpload,
    LiveResponseRequest, Next, StaticCredentials, Transcript,
};
use testkit::aws::{aws, unique};
use testkit::content::expected_file;
use testkit::sim::{
    FILE, M1, M2, SCOPE, client, client_with, download, machine_id, sim_config, sim_credentials,
    start_sim,
};

fn request(commands: Vec<Command>) -> LiveResponseRequest {
    LiveResponseRequest {
        commands,
        comment: "integration test".into(),
    }
}

#[tokio::test]
async fn every_endpoint_round_trips() {
    let config = sim_config();
    let sim = start_sim(config.clone()).await;
    let client = client(&sim, &config);

    let action = client
        .run_live_response(
            &machine_id(M1),
            &request(vec![
                Command::run_script("triage.ps1", Some("-Full")),
                Command::get_file(FILE),
            ]),
        )
        .await
        .unwrap();
    assert_eq!(action.status, ActionStatus::Pending);
    assert_eq!(action.machine_id, machine_id(M1));
    assert_eq!(action.commands.len(), 2);
    assert_eq!(action.commands[1].command_status, CommandStatus::Created);
    assert_eq!(
        action.requestor_comment.as_deref(),
        Some("integration test")
    );

    let same = client.get_machine_action(&action.id).await.unwrap();
    assert_eq!(same.id, action.id);

    let listed = client
        .list_machine_actions(
            &ActionFilter {
                machine_id: Some(machine_id(M1)),
                live_response_only: true,
                ..ActionFilter::default()
            },
            Some(10),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        listed.iter().map(|a| a.id.clone()).collect::<Vec<_>>(),
        vec![action.id.clone()]
    );
    let none = client
        .list_machine_actions(
            &ActionFilter {
                machine_id: Some(machine_id(M2)),
                ..ActionFilter::default()
            },
            None,
            None,
        )
        .await
        .unwrap();
    assert!(none.is_empty());

    sim.advance(time::Duration::seconds(60));
    let done = client.get_machine_action(&action.id).await.unwrap();
    assert_eq!(done.status, ActionStatus::Succeeded);

    let link = client.result_download_link(&done.id, 0).await.unwrap();
    let expiry = link.expires_at.expect("se parsed");
    assert!(expiry > sim.now() + time::Duration::minutes(29));
    let body = download(&link).await;
    let t: Transcript = serde_json::from_slice(&body).unwrap();
    assert_eq!(t.exit_code, Some(0));
    assert_eq!(t.script_output, "triage of host-1e5bc9.test");

    let link = client.result_download_link(&done.id, 1).await.unwrap();
    let gz = download(&link).await;
    let mut file = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut file)
        .unwrap();
    assert_eq!(file, expected_file(M1, FILE, 200_000));

    // Cancel a session that is still pending.
    let other = client
        .run_live_response(&machine_id(M2), &request(vec![Command::get_file(FILE)]))
        .await
        .unwrap();
    let cancelled = client
        .cancel_machine_action(&other.id, "deadline reached")
        .await
        .unwrap();
    assert_eq!(cancelled.status, ActionStatus::Cancelled);
    assert_eq!(
        cancelled.cancellation_comment.as_deref(),
        Some("deadline reached")
    );

    // Library.
    let up = client
        .upload_library_file(&LibraryUpload {
            file_name: "collect.ps1".into(),
            content: bytes::Bytes::from_static(b"Get-Process"),
            description: "collects".into(),
            parameters_description: Some("-Full".into()),
            has_parameters: true,
            override_if_exists: false,
        })
        .await
        .unwrap();
    assert_eq!(up.file_name, "collect.ps1");
    assert!(up.has_parameters);
    let names: Vec<String> = client
        .list_library()
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.file_name)
        .collect();
    assert!(
        names.contains(&"collect.ps1".to_string()) && names.contains(&"triage.ps1".to_string())
    );
    client.delete_library_file("collect.ps1").await.unwrap();
    let err = client.delete_library_file("collect.ps1").await.unwrap_err();
    assert!(matches!(err, DefenderError::NotFound { .. }), "{err}");
}

#[tokio::test]
async fn error_classes_tell_the_caller_what_to_do() {
    let mut config = sim_config();
    config.limits.submissions_per_minute = 1000;
    let sim = start_sim(config.clone()).await;
    let client = client(&sim, &config);

    let err = client
        .run_live_response(
            &machine_id("ffffffffffffffffffffffffffffffffffffffff"),
            &request(vec![Command::get_file(FILE)]),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, DefenderError::NotFound { ref code, .. } if code == "ResourceNotFound"),
        "{err}"
    );
    assert_eq!(err.next(), Next::GiveUp);

    let first = client
        .run_live_response(&machine_id(M1), &request(vec![Command::get_file(FILE)]))
        .await
        .unwrap();
    let err = client
        .run_live_response(&machine_id(M1), &request(vec![Command::get_file(FILE)]))
        .await
        .unwrap_err();
    assert!(matches!(err, DefenderError::DeviceBusy { .. }), "{err}");
    assert_eq!(err.next(), Next::RetryAfter(None));

    // Asking for a result before the command completed is a plain rejection.
    let err = client.result_download_link(&first.id, 0).await.unwrap_err();
    assert!(
        matches!(err, DefenderError::Rejected { status: 400, .. }),
        "{err}"
    );
    assert_eq!(err.next(), Next::GiveUp);

    let fault = |f: EndpointFaults| {
        let mut faults = Faults {
            seed: 3,
            ..Faults::default()
        };
        faults.endpoints.insert("get_action".into(), f);
        faults
    };
    sim.set_faults(fault(EndpointFaults {
        p429: 1.0,
        ..Default::default()
    }));
    let err = client.get_machine_action(&first.id).await.unwrap_err();
    assert!(
        matches!(err, DefenderError::RateLimited { retry_after: Some(d) } if d >= Duration::from_secs(1)),
        "{err}"
    );
    sim.set_faults(fault(EndpointFaults {
        p429: 1.0,
        p429_without_retry_after: 1.0,
        ..Default::default()
    }));
    let err = client.get_machine_action(&first.id).await.unwrap_err();
    assert!(
        matches!(err, DefenderError::RateLimited { retry_after: None }),
        "{err}"
    );
    sim.set_faults(fault(EndpointFaults {
        p500: 1.0,
        ..Default::default()
    }));
    let err = client.get_machine_action(&first.id).await.unwrap_err();
    assert!(matches!(err, DefenderError::Transient { .. }), "{err}");
    sim.set_faults(fault(EndpointFaults {
        p503: 1.0,
        ..Default::default()
    }));
    let err = client.get_machine_action(&first.id).await.unwrap_err();
    assert!(matches!(err, DefenderError::Transient { .. }), "{err}");
    assert_eq!(err.next(), Next::RetryAfter(None));
    sim.set_faults(Faults::default());

    // The documented limit, not an injected fault: 100 status calls a minute.
    for _ in 0..100 {
        client.get_machine_action(&first.id).await.unwrap();
    }
    let err = client.get_machine_action(&first.id).await.unwrap_err();
    assert!(
        matches!(
            err,
            DefenderError::RateLimited {
                retry_after: Some(_)
            }
        ),
        "{err}"
    );

    // Wrong credentials: the token endpoint refuses, nothing to retry.
    let mut bad = sim_credentials(&config);
    bad.client_secret = shared::Secret::new("wrong".into());
    let err = client_with(&sim, StaticCredentials(bad))
        .list_library()
        .await
        .unwrap_err();
    assert!(matches!(err, DefenderError::Credentials(_)), "{err}");
    assert!(!err.to_string().contains("wrong"));

    // Nothing listening: transient.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let http = shared::defender::http_client(Duration::from_secs(5)).unwrap();
    let auth = shared::defender::TokenProvider::new(
        StaticCredentials(sim_credentials(&config)),
        http.clone(),
        &format!("http://{closed}/login"),
        SCOPE,
    );
    let err = shared::defender::DefenderClient::new(http, &format!("http://{closed}"), auth)
        .list_library()
        .await
        .unwrap_err();
    assert!(matches!(err, DefenderError::Transient { .. }), "{err}");
}

#[tokio::test]
async fn an_expired_token_is_refreshed_once_and_the_call_goes_through() {
    let config = sim_config();
    let sim = start_sim(config.clone()).await;
    let client = client(&sim, &config);
    client.list_library().await.unwrap();
    client.list_library().await.unwrap();
    assert_eq!(sim.issued_tokens().len(), 1, "the token is cached");
    // Defender's clock moves past the token's lifetime while ours did not: the API says 401.
    sim.advance(time::Duration::seconds(3600));
    client.list_library().await.unwrap();
    assert_eq!(sim.issued_tokens().len(), 2);
    assert_eq!(sim.stats().calls["library_list"]["401"], 1);
}

#[tokio::test]
async fn an_absurd_expires_in_does_not_crash_the_client() {
    let mut config = sim_config();
    config.sim.token_lifetime_secs = u64::MAX;
    let sim = start_sim(config.clone()).await;
    let client = client(&sim, &config);
    client.list_library().await.unwrap();
    client.list_library().await.unwrap();
    assert_eq!(sim.issued_tokens().len(), 1, "the token is cached");
}

#[tokio::test]
async fn tokens_are_refreshed_ahead_of_expiry() {
    let mut config = sim_config();
    config.sim.token_lifetime_secs = 20;
    config.sim.time_scale = 10.0; // expires_in = 2 real seconds
    let sim = start_sim(config.clone()).await;
    let client = client(&sim, &config);
    client.list_library().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1700)).await;
    client.list_library().await.unwrap();
    assert_eq!(
        sim.issued_tokens().len(),
        2,
        "a new token before the old one lapsed"
    );
    assert!(
        !sim.stats().calls["library_list"].contains_key("401"),
        "no call was refused"
    );
}

#[tokio::test]
async fn credentials_come_from_secrets_manager_and_follow_rotation() {
    let config = sim_config();
    let sim = start_sim(config.clone()).await;
    let sdk = aws().await;
    let sm = aws_sdk_secretsmanager::Client::new(&sdk);
    let name = unique("lr-test/defender");
    let c = &config.clients[0];
    let body = |secret: &str| {
        serde_json::json!({"tenant_id": c.tenant_id, "client_id": c.client_id, "client_secret": secret}).to_string()
    };
    sm.create_secret()
        .name(&name)
        .secret_string(body(&c.client_secret))
        .send()
        .await
        .unwrap();
    let client = client_with(&sim, SecretsManagerCredentials::new(sm.clone(), &name));
    client.list_library().await.unwrap();

    // Rotation: a new secret in Secrets Manager and at the identity provider; the old token lapses.
    sm.put_secret_value()
        .secret_id(&name)
        .secret_string(body("rotated-secret"))
        .send()
        .await
        .unwrap();
    sim.set_client_secret(&c.client_id, "rotated-secret");
    sim.advance(time::Duration::seconds(3600));
    client.list_library().await.unwrap();
    assert_eq!(sim.issued_tokens().len(), 2);
}

#[tokio::test]
async fn secrets_manager_errors_name_the_secret_and_the_problem() {
    let sdk = aws().await;
    let sm = aws_sdk_secretsmanager::Client::new(&sdk);
    let missing = SecretsManagerCredentials::new(sm.clone(), unique("lr-test/missing"));
    use shared::defender::CredentialSource;
    let err = missing.fetch().await.unwrap_err();
    assert!(
        matches!(err, DefenderError::Credentials(ref m) if m.contains("lr-test/missing")),
        "{err}"
    );

    let name = unique("lr-test/malformed");
    sm.create_secret()
        .name(&name)
        .secret_string(r#"{"tenant_id":"t","client_id":"c","clientSecret":"SUPERSECRET"}"#)
        .send()
        .await
        .unwrap();
    let err = SecretsManagerCredentials::new(sm, &name)
        .fetch()
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&name) && text.contains("clientSecret"),
        "{text}"
    );
    assert!(!text.contains("SUPERSECRET"), "{text}");
}

#[tokio::test]
async fn put_file_commands_have_no_result() {
    assert!(!CommandType::PutFile.has_result());
    let config = sim_config();
    let sim = start_sim(config.clone()).await;
    let client = client(&sim, &config);
    let a = client
        .run_live_response(
            &machine_id(M1),
            &request(vec![
                Command::put_file("triage.ps1"),
                Command::run_script("triage.ps1", None),
            ]),
        )
        .await
        .unwrap();
    sim.advance(time::Duration::seconds(120));
    let done = client.get_machine_action(&a.id).await.unwrap();
    assert_eq!(done.status, ActionStatus::Succeeded);
    let err = client.result_download_link(&a.id, 0).await.unwrap_err();
    assert!(matches!(err, DefenderError::Rejected { .. }));
    assert!(client.result_download_link(&a.id, 1).await.is_ok());
}

/// A server on loopback that answers every request with `status` and a chunked body of `mib`
/// MiB (no Content-Length: the client cannot refuse it by the header alone). Returns its base URL.
async fn flood(mib: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let start = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
                if sock.write_all(start.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b' '; 1 << 20];
                for _ in 0..mib {
                    let frame = format!("{:x}\r\n", chunk.len());
                    if sock.write_all(frame.as_bytes()).await.is_err()
                        || sock.write_all(&chunk).await.is_err()
                        || sock.write_all(b"\r\n").await.is_err()
                    {
                        return;
                    }
                }
                let _ = sock.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    base
}

/// Defect 7: Defender's and the token endpoint's response bodies were read whole, without a
/// limit: anything that could answer in their place could fill the function's memory. A body
/// over the limit is refused while it is read.
#[tokio::test]
async fn an_oversized_response_body_is_refused_not_read_whole() {
    let config = sim_config();
    let sim = start_sim(config.clone()).await;
    let http = shared::defender::http_client(Duration::from_secs(30)).unwrap();
    let source = StaticCredentials(testkit::sim::sim_credentials(&config));
    // The API answers 64 MiB of whitespace (valid JSON would follow, never read).
    let auth =
        shared::defender::TokenProvider::new(source.clone(), http.clone(), &sim.login_base, SCOPE);
    let api = shared::defender::DefenderClient::new(http.clone(), &flood(64).await, auth);
    let id = shared::defender::ActionId::parse("00000000-0000-0000-0000-000000000001").unwrap();
    let e = api.get_machine_action(&id).await.expect_err("refused");
    assert!(
        matches!(&e, DefenderError::InvalidResponse(m) if m.contains("larger than")),
        "{e}"
    );
    // The token endpoint answers 2 MiB.
    let auth = shared::defender::TokenProvider::new(source, http.clone(), &flood(2).await, SCOPE);
    let api = shared::defender::DefenderClient::new(http, &sim.api_base, auth);
    let e = api.get_machine_action(&id).await.expect_err("refused");
    assert!(e.to_string().contains("larger than"), "{e}");
}
