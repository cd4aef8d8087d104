//! Everything logged at TRACE while reading the secret, getting tokens, refreshing after a 401,
//! calling the API and downloading a result holds neither the client secret, nor a token, nor a
//! link signature.

use shared::adapters::secrets::SecretsManagerCredentials;
use shared::defender::{Command, LiveResponseRequest};
use testkit::aws::{aws, unique};
use testkit::logs::LogCapture;
use testkit::sim::{
    FILE, M1, client_with, credentials_json, download, machine_id, sim_config, start_sim,
};

#[tokio::test]
async fn no_secret_or_token_reaches_the_logs() {
    let capture = LogCapture::default();
    tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::TRACE)
        .with_current_span(true)
        .with_span_list(true)
        .with_writer(capture.clone())
        .init();

    let mut config = sim_config();
    config.clients[0].client_secret = "S3cr3t-Value-That-Must-Not-Leak".into();
    let sim = start_sim(config.clone()).await;
    let sdk = aws().await;
    let sm = aws_sdk_secretsmanager::Client::new(&sdk);
    let name = unique("lr-test/logs");
    let c = &config.clients[0];
    sm.create_secret()
        .name(&name)
        .secret_string(credentials_json(&config))
        .send()
        .await
        .unwrap();
    let client = client_with(&sim, SecretsManagerCredentials::new(sm, &name));
    let action = client
        .run_live_response(
            &machine_id(M1),
            &LiveResponseRequest {
                commands: vec![Command::get_file(FILE)],
                comment: "log scan".into(),
            },
        )
        .await
        .unwrap();
    sim.advance(time::Duration::seconds(3600)); // forces a 401 and a refresh
    let done = client.get_machine_action(&action.id).await.unwrap();
    tracing::info!(?done, "fetched");
    let link = client.result_download_link(&done.id, 0).await.unwrap();
    tracing::info!(?link, "link");
    let body = download(&link).await;
    assert!(!body.is_empty());

    let logs = String::from_utf8(capture.bytes()).unwrap();
    assert!(
        logs.len() > 1000,
        "the capture saw the run ({} bytes)",
        logs.len()
    );
    assert!(
        logs.contains(action.id.as_str()),
        "spans carry the action id"
    );
    let tokens = sim.issued_tokens();
    assert_eq!(tokens.len(), 2);
    let sig = url::Url::parse(link.url.expose())
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "sig")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    let mut needles = vec![c.client_secret.clone(), sig.clone()];
    needles.extend(tokens);
    for needle in needles {
        assert!(!logs.contains(&needle), "a secret value reached the logs");
    }
}
