//! The hostile-input corpus (`tests/corpus/hostile-alerts.jsonl`) through the intake stage: each
//! case is refused with its expected code, its original body goes to the dead-letter queue intact
//! with the reason, and a good alert in the same batch goes through.

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use shared::adapters::memory::{MemQueue, MemStore, Sent};
use shared::alerts::playbook::Playbooks;
use shared::stages::settings::IntakeConfig;
use testkit::alerts::{corpus, native_alert};
use testkit::configs::intake_config;
use testkit::sim::M1;

fn message(id: usize, body: &str) -> SqsMessage {
    let mut m = SqsMessage::default();
    m.message_id = Some(format!("m-{id}"));
    m.body = Some(body.to_string());
    m
}

#[test]
fn the_corpus_has_at_least_fifty_cases_with_distinct_names() {
    let c = corpus();
    assert!(c.len() >= 50, "{} cases", c.len());
    let names: std::collections::BTreeSet<_> = c.iter().map(|x| &x.0).collect();
    assert_eq!(names.len(), c.len());
}

#[tokio::test]
async fn every_hostile_alert_is_refused_with_its_code_and_kept_intact() {
    let cfg = IntakeConfig {
        dead_letter_queue_url: "alerts-dlq".into(),
        ..intake_config()
    };
    let playbooks = Playbooks::bundled().unwrap();
    let store = MemStore::default();
    let queue = MemQueue::default();
    let cases = corpus();
    let good = native_alert(
        "good-1",
        M1,
        "Malware",
        &[("file_path", "C:\\Users\\a\\x.exe")],
    )
    .to_string();
    let mut event = SqsEvent::default();
    for (i, (_, body, _)) in cases.iter().enumerate() {
        event.records.push(message(i, body));
    }
    event.records.push(message(cases.len(), &good));
    event.records.push(message(cases.len() + 1, ""));
    let response = shared::batch::handle(
        event,
        "intake",
        &cfg.dead_letter_queue_url,
        &queue,
        8,
        |msg| {
            let (cfg, playbooks, store, queue) = (&cfg, &playbooks, &store, &queue);
            async move {
                shared::stages::intake::handle(
                    cfg,
                    shared::stages::intake::Rules::single(playbooks),
                    store,
                    queue,
                    &msg,
                    time::OffsetDateTime::now_utc(),
                )
                .await
            }
        },
    )
    .await;
    assert!(
        response.batch_item_failures.is_empty(),
        "nothing is left for redelivery"
    );

    let sent = queue.sent.lock().unwrap().clone();
    let mut wrong = Vec::new();
    for (name, body, code) in &cases {
        let got = sent.iter().find_map(|s| match s {
            Sent::Rejected {
                body: b,
                code,
                reason,
                ..
            } if b == body => Some(format!("{code}: {reason}")),
            _ => None,
        });
        if !got
            .as_deref()
            .is_some_and(|g| g.starts_with(&format!("{code}:")))
        {
            wrong.push(format!("{name}: expected {code}, got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    for (name, body, code) in &cases {
        let rejected = sent.iter().find_map(|s| match s {
            Sent::Rejected {
                body: b,
                code,
                reason,
                dlq,
                stage,
            } if b == body => Some((code, reason, dlq, stage)),
            _ => None,
        });
        let (got, reason, dlq, stage) =
            rejected.unwrap_or_else(|| panic!("{name}: not dead-lettered"));
        assert_eq!(got, code, "{name}: {reason}");
        assert!(!reason.is_empty(), "{name}");
        assert_eq!((dlq.as_str(), stage.as_str()), ("alerts-dlq", "intake"));
        assert!(reason.len() < 2000, "{name}: the reason stays short");
    }
    assert!(
        sent.iter()
            .any(|s| matches!(s, Sent::Rejected { code, .. } if code == "empty_body"))
    );
    let submitted: Vec<_> = sent
        .iter()
        .filter(|s| matches!(s, Sent::Message { queue, .. } if queue == "submit"))
        .collect();
    assert_eq!(submitted.len(), 1, "only the good alert goes on");
    let runs: Vec<String> = store.objects.lock().unwrap().keys().cloned().collect();
    assert_eq!(
        runs.len(),
        1,
        "only the good alert made a run record: {runs:?}"
    );
}

#[test]
fn the_parser_never_panics_on_mutations_of_the_corpus() {
    // A cheap, deterministic stand-in for the fuzz target: truncations and byte flips of every case.
    for (_, body, _) in corpus() {
        let bytes = body.as_bytes();
        for cut in (0..bytes.len()).step_by((bytes.len() / 16).max(1)) {
            let s = String::from_utf8_lossy(&bytes[..cut]);
            let _ = shared::alerts::parse(&s);
        }
        let mut flipped = bytes.to_vec();
        for i in (0..flipped.len()).step_by(7) {
            flipped[i] ^= 0x20;
        }
        let _ = shared::alerts::parse(&String::from_utf8_lossy(&flipped));
    }
}

/// Defender alerts whose file names are odd (`tests/corpus/unfetchable-files.jsonl`). A name
/// Windows refuses (made on the endpoint through `\\?\` by an attacker) cannot be fetched: the value
/// is dropped and recorded, and the alert still runs the next playbook that fits (triage), so that a
/// file's name cannot stop all collection for its alert. A legal but odd name (`refused: null`) is
/// fetched as it is, literally.
#[tokio::test]
async fn an_unfetchable_file_name_does_not_stop_collection() {
    #[derive(serde::Deserialize)]
    struct Case {
        name: String,
        body: String,
        /// The value refused, if any (else the file is fetched as named, by malware-file).
        refused: Option<String>,
        /// Which playbook refused it (malware-file unless said).
        refused_by: Option<String>,
        /// Which playbook runs instead (triage unless said).
        playbook: Option<String>,
    }
    let cfg = IntakeConfig {
        dead_letter_queue_url: "alerts-dlq".into(),
        ..intake_config()
    };
    let playbooks = Playbooks::bundled().unwrap();
    let cases: Vec<Case> = include_str!("../../corpus/unfetchable-files.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("corpus line"))
        .collect();
    assert!(cases.len() >= 5);
    for case in cases {
        let store = MemStore::default();
        let queue = MemQueue::default();
        let done = shared::stages::intake::handle(
            &cfg,
            shared::stages::intake::Rules::single(&playbooks),
            &store,
            &queue,
            &shared::messages::Delivery::new("case", case.body.clone()),
            time::OffsetDateTime::now_utc(),
        )
        .await
        .unwrap_or_else(|e| panic!("{}: refused: {e}", case.name));
        let run = done.run_id.expect("a run");
        let (rec, _) = shared::store::load_run(&store, &run)
            .await
            .unwrap()
            .unwrap();
        let get_file = rec
            .commands
            .iter()
            .find(|c| c.kind == shared::defender::CommandType::GetFile);
        let Some(refused) = case.refused else {
            assert_eq!(rec.playbook, "malware-file", "{}", case.name);
            assert!(rec.refused_parameters.is_empty(), "{}", case.name);
            let path = get_file.and_then(|c| c.param("Path")).expect("a GetFile");
            assert_eq!(
                Some(path),
                rec.alert.parameters.get("file_path").map(String::as_str)
            );
            assert!(
                path.contains('{'),
                "{}: fetched literally: {path}",
                case.name
            );
            continue;
        };
        let runs = case.playbook.as_deref().unwrap_or("triage");
        assert_eq!(rec.playbook, runs, "{}", case.name);
        let by = case.refused_by.as_deref().unwrap_or("malware-file");
        assert_eq!(
            rec.refused_parameters
                .iter()
                .map(|r| (r.name.as_str(), r.playbook.as_str()))
                .collect::<Vec<_>>(),
            [(refused.as_str(), by)],
            "{}",
            case.name
        );
        assert!(
            !rec.refused_parameters[0].reason.is_empty(),
            "{}: the reason is kept",
            case.name
        );
        if runs == "triage" {
            assert!(
                get_file.is_none(),
                "{}: nothing is fetched under the refused name",
                case.name
            );
        } else {
            let path = get_file.and_then(|c| c.param("Path"));
            assert_eq!(
                path,
                rec.alert.parameters.get("file_path").map(String::as_str),
                "{}: fetched literally",
                case.name
            );
        }
    }
}
