//! A run deleted from a versioned bucket does not vanish from `verify --all` (found by review):
//! whoever can write the bucket may put delete markers (Object Lock allows them) on a run's
//! evidence objects, manifest, signature and run record. `verify` reads the versions, and a key
//! whose latest version is a delete marker is a problem naming it; a checkpoint the pipeline itself
//! deleted is not.

use crate::common::{FILE, fleet, lrctl, said, settings};
use testkit::sim::machine;
use testkit::stack::Stack;

const FLEET: u64 = 0x1c7_9100_0000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_deleted_with_delete_markers_does_not_vanish_from_verify_all() {
    let ids: Vec<String> = (0..2).map(|i| machine(FLEET, i)).collect();
    let stack = Stack::start(fleet(&ids, 20_000), &[]).await;
    let env = settings(&stack.stack);
    let mut runs = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        runs.push(
            stack
                .send_file_alert(&format!("review2-{i}"), id, FILE)
                .await,
        );
    }
    stack.manifests(&runs, 90).await;
    let sig = shared::store::signature_key(&runs[0]);
    for _ in 0..120 {
        if stack.object(&sig).await.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    // The pipeline deletes its own checkpoints: such a delete marker is no finding.
    let checkpoint = format!("state/runs/{}/checkpoints/1.json", runs[1]);
    stack
        .s3
        .put_object()
        .bucket(&stack.stack.bucket)
        .key(&checkpoint)
        .body(b"{}".to_vec().into())
        .send()
        .await
        .unwrap();
    stack
        .s3
        .delete_object()
        .bucket(&stack.stack.bucket)
        .key(&checkpoint)
        .send()
        .await
        .unwrap();
    let out = lrctl(&env, &["verify", "--all"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let a = &runs[0];
    let listed = stack
        .s3
        .list_objects_v2()
        .bucket(&stack.stack.bucket)
        .prefix(format!("evidence/{a}/"))
        .send()
        .await
        .unwrap();
    let mut keys: Vec<String> = listed
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect();
    keys.push(shared::store::run_key(a));
    for key in &keys {
        stack
            .s3
            .delete_object()
            .bucket(&stack.stack.bucket)
            .key(key)
            .send()
            .await
            .unwrap();
    }
    let out = lrctl(&env, &["verify", "--all"]).await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.code() != Some(0) && text.contains(a.as_str()),
        "run {a} was deleted with delete markers ({keys:?}) and verify --all passes without \
         naming it:\n{}",
        said(&out)
    );
    for key in &keys {
        assert!(
            text.contains(&format!("{key}: was deleted")),
            "{key} is named as deleted:\n{}",
            said(&out)
        );
    }
    // `verify RUN` says the same of that run.
    let out = lrctl(&env, &["verify", a.as_str()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("{}: was deleted", shared::store::manifest_key(a))),
        "{}",
        said(&out)
    );
}
