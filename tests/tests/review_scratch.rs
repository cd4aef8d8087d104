//! Review scratch: concrete interleavings that break the run lifecycle. Delete before finishing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use shared::alerts::playbook::Playbooks;
use shared::budget;
use shared::clock::{Clock, ManualClock};
use shared::config::{CollectConfig, IntakeConfig, PollConfig, SubmitConfig};
use shared::defender::{
    ActionFilter, ActionId, ActionStatus, CommandResult, CommandStatus, DefenderError,
    DownloadLink, LiveResponseRequest, MachineAction, MachineId,
};
use shared::messages::Delivery;
use shared::ports::{
    Defender, Download, Fetch, ObjectStore, Put, PutResult, Queue, QueueError, StoreError, Stored,
    Upload,
};
use shared::secret::Secret;
use shared::stages::{Done, StageError};
use shared::store::{CommandRecord, Manifest, RunRecord, command_key, manifest_key, run_key};
use tests::fakes::{MemQueue, MemStore, Sent};
use time::OffsetDateTime;

const M: &str = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07";

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Running,
    Done,
    Forbidden,
    /// cancel answers Cancelled without a commands array
    CancelNoCommands,
}

struct Def<'a> {
    clock: &'a ManualClock,
    mode: Mutex<Mode>,
    actions: Mutex<Vec<(ActionId, String, Vec<shared::defender::Command>, bool)>>,
}

impl Def<'_> {
    fn view(&self, i: usize, cancelled_reply: bool) -> MachineAction {
        let a = self.actions.lock().unwrap()[i].clone();
        let mode = *self.mode.lock().unwrap();
        let status = if a.3 {
            ActionStatus::Cancelled
        } else if mode == Mode::Done {
            ActionStatus::Succeeded
        } else {
            ActionStatus::InProgress
        };
        let done = status == ActionStatus::Succeeded;
        MachineAction {
            id: a.0,
            kind: Some("LiveResponse".into()),
            requestor: None,
            requestor_comment: Some(a.1),
            status,
            machine_id: MachineId::parse(M).unwrap(),
            computer_dns_name: None,
            creation_date_time_utc: None,
            last_update_date_time_utc: None,
            cancellation_requestor: None,
            cancellation_comment: None,
            cancellation_date_time_utc: None,
            commands: if cancelled_reply {
                vec![]
            } else {
                a.2.iter()
                    .enumerate()
                    .map(|(i, c)| CommandResult {
                        index: i as u32,
                        start_time: None,
                        end_time: None,
                        command_status: if done {
                            CommandStatus::Completed
                        } else {
                            CommandStatus::Created
                        },
                        errors: vec![],
                        command: c.clone(),
                    })
                    .collect()
            },
        }
    }
}

impl Defender for Def<'_> {
    async fn run_live_response(
        &self,
        _m: &MachineId,
        req: &LiveResponseRequest,
    ) -> Result<MachineAction, DefenderError> {
        let busy = *self.mode.lock().unwrap() == Mode::Running
            && self.actions.lock().unwrap().iter().any(|a| !a.3);
        if busy {
            return Err(DefenderError::DeviceBusy {
                message: "ActiveRequestAlreadyExists".into(),
            });
        }
        let n = {
            let mut a = self.actions.lock().unwrap();
            a.push((
                ActionId::parse(&format!("00000000-0000-0000-0000-{:012}", a.len())).unwrap(),
                req.comment.clone(),
                req.commands.clone(),
                false,
            ));
            a.len() - 1
        };
        Ok(self.view(n, false))
    }
    async fn get_machine_action(&self, _id: &ActionId) -> Result<MachineAction, DefenderError> {
        if *self.mode.lock().unwrap() == Mode::Forbidden {
            return Err(DefenderError::Unauthorized {
                status: 403,
                message: "flaky token".into(),
            });
        }
        Ok(self.view(0, false))
    }
    async fn list_machine_actions(
        &self,
        _f: &ActionFilter,
    ) -> Result<Vec<MachineAction>, DefenderError> {
        let n = self.actions.lock().unwrap().len();
        Ok((0..n).map(|i| self.view(i, false)).collect())
    }
    async fn result_download_link(
        &self,
        id: &ActionId,
        index: u32,
    ) -> Result<DownloadLink, DefenderError> {
        let se = (self.clock.now() + time::Duration::minutes(30))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        Ok(DownloadLink {
            url: Secret::new(format!(
                "https://acct.blob.core.windows.net/c/{id}/{index}?se={}&sig=x",
                se.replace(':', "%3A")
            )),
            expires_at: None,
        })
    }
    async fn cancel_machine_action(
        &self,
        _id: &ActionId,
        _c: &str,
    ) -> Result<MachineAction, DefenderError> {
        let no_cmds = *self.mode.lock().unwrap() == Mode::CancelNoCommands;
        self.actions.lock().unwrap()[0].3 = true;
        Ok(self.view(0, no_cmds))
    }
}

fn env() -> HashMap<&'static str, &'static str> {
    [
        ("EVIDENCE_BUCKET", "evidence"),
        (
            "SUBMIT_QUEUE_URL",
            "https://sqs.us-east-1.amazonaws.com/1/submit",
        ),
        (
            "POLL_QUEUE_URL",
            "https://sqs.us-east-1.amazonaws.com/1/poll",
        ),
        (
            "COLLECT_QUEUE_URL",
            "https://sqs.us-east-1.amazonaws.com/1/collect",
        ),
        (
            "DEAD_LETTER_QUEUE_URL",
            "https://sqs.us-east-1.amazonaws.com/1/dlq",
        ),
        ("MDE_CREDENTIALS_SECRET_ID", "s"),
        ("COLLECT_PART_MIB", "5"),
    ]
    .into_iter()
    .collect()
}

fn last_sent(q: &MemQueue, suffix: &str) -> Delivery {
    let sent = q.sent.lock().unwrap();
    sent.iter()
        .rev()
        .find_map(|s| match s {
            Sent::Message {
                id, queue, body, ..
            } if queue.ends_with(suffix) => Some(Delivery::new(id, body)),
            _ => None,
        })
        .expect("a sent message")
}

fn all_sent(q: &MemQueue, suffix: &str) -> Vec<Delivery> {
    q.sent
        .lock()
        .unwrap()
        .iter()
        .filter_map(|s| match s {
            Sent::Message {
                id, queue, body, ..
            } if queue.ends_with(suffix) => Some(Delivery::new(id, body)),
            _ => None,
        })
        .collect()
}

async fn read<T: serde::de::DeserializeOwned>(store: &MemStore, key: &str) -> Option<T> {
    let s = store.get(key).await.unwrap()?;
    Some(serde_json::from_slice(&s.body).unwrap())
}

/// A queue on which the poll job is delivered (and handled) before `send` returns to the submitter:
/// the submitter's naming write lands after the poll job's first delivery (first_poll_delay passed).
struct EagerPollQueue<'a> {
    inner: &'a MemQueue,
    store: &'a MemStore,
    defender: &'a Def<'a>,
    clock: &'a ManualClock,
    poll_cfg: &'a PollConfig,
    result: Mutex<Option<Result<Done, StageError>>>,
}

impl Queue for EagerPollQueue<'_> {
    async fn send(&self, url: &str, body: &str, delay: Duration) -> Result<String, QueueError> {
        let id = self.inner.send(url, body, delay).await?;
        if url.ends_with("/poll") {
            self.clock.advance(delay + Duration::from_secs(1));
            let r = shared::stages::poll::handle(
                self.poll_cfg,
                self.store,
                self.inner,
                self.defender,
                self.clock,
                &Delivery::new(&id, body),
            )
            .await;
            *self.result.lock().unwrap() = Some(r);
        }
        Ok(id)
    }
    async fn send_rejected(
        &self,
        a: &str,
        b: &str,
        c: &str,
        d: &str,
        e: &str,
    ) -> Result<(), QueueError> {
        self.inner.send_rejected(a, b, c, d, e).await
    }
}

#[tokio::test(start_paused = true)]
async fn poll_job_delivered_before_submit_names_it_leaves_a_stuck_run() {
    let clock = ManualClock::at(OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap());
    let store = MemStore::default();
    let queue = MemQueue::default();
    let e = env();
    let intake_cfg = IntakeConfig::from_env(&e).unwrap();
    let submit_cfg = SubmitConfig::from_env(&e).unwrap();
    let poll_cfg = PollConfig::from_env(&e).unwrap();
    let def = Def {
        clock: &clock,
        mode: Mutex::new(Mode::Running),
        actions: Mutex::new(vec![]),
    };
    let playbooks = Playbooks::bundled().unwrap();
    let alert =
        tests::native_alert("a-1", M, "Malware", &[("file_path", "C:\\x\\evil.exe")]).to_string();
    let done = shared::stages::intake::handle(
        &intake_cfg,
        &playbooks,
        &store,
        &queue,
        &alert,
        clock.now(),
    )
    .await
    .unwrap();
    let run_id = done.run_id.unwrap();
    let submit_msg = last_sent(&queue, "/submit");
    let eager = EagerPollQueue {
        inner: &queue,
        store: &store,
        defender: &def,
        clock: &clock,
        poll_cfg: &poll_cfg,
        result: Mutex::new(None),
    };
    let s = shared::stages::submit::handle(&submit_cfg, &store, &eager, &def, &clock, &submit_msg)
        .await;
    println!("submit: {s:?}");
    println!(
        "poll job (first delivery): {:?}",
        eager.result.lock().unwrap()
    );
    let run: RunRecord = read(&store, &run_key(&run_id)).await.unwrap();
    println!("run: state {:?}, chain {:?}", run.state, run.chain);
    let polls = all_sent(&queue, "/poll");
    println!(
        "poll messages ever sent: {:?}",
        polls.iter().map(|d| &d.id).collect::<Vec<_>>()
    );
    // A duplicate alert does not resend anything for a Submitted run.
    let again = shared::stages::intake::handle(
        &intake_cfg,
        &playbooks,
        &store,
        &queue,
        &alert,
        clock.now(),
    )
    .await
    .unwrap();
    println!("duplicate alert: {} {}", again.outcome, again.detail);
    let held = budget::held_sessions(&store, &submit_cfg.budget, &clock)
        .await
        .unwrap();
    println!("sessions held: {held:?}");
    assert_eq!(run.state, shared::store::RunState::Submitted);
    assert_eq!(
        polls.len(),
        1,
        "the only poll job was consumed as a duplicate"
    );
    assert_eq!(run.chain.holder.as_deref(), Some(polls[0].id.as_str()));
    assert!(
        read::<Manifest>(&store, &manifest_key(&run_id))
            .await
            .is_none()
    );
    println!("STUCK: the run names a consumed message; no live message; session held; no manifest");
}

/// A store that fails the next put of a run.json once armed (a crash between finalize's fan-out and
/// its run write).
struct FlakyStore<'a> {
    inner: &'a MemStore,
    fail_run_put: AtomicBool,
}

impl ObjectStore for FlakyStore<'_> {
    async fn get(&self, key: &str) -> Result<Option<Stored>, StoreError> {
        self.inner.get(key).await
    }
    async fn put(&self, key: &str, body: Vec<u8>, c: Put) -> Result<PutResult, StoreError> {
        if key.ends_with("/run.json") && self.fail_run_put.swap(false, Ordering::SeqCst) {
            return Err(StoreError("killed".into()));
        }
        self.inner.put(key, body, c).await
    }
    async fn list(&self, p: &str) -> Result<Vec<String>, StoreError> {
        self.inner.list(p).await
    }
    async fn delete(&self, k: &str) -> Result<(), StoreError> {
        self.inner.delete(k).await
    }
    async fn open_read(&self, k: &str) -> Result<shared::ports::ByteStream, StoreError> {
        self.inner.open_read(k).await
    }
    async fn begin_upload(&self, k: &str) -> Result<String, StoreError> {
        self.inner.begin_upload(k).await
    }
    async fn upload_part(
        &self,
        k: &str,
        id: &str,
        n: i32,
        b: Bytes,
    ) -> Result<Upload<String>, StoreError> {
        self.inner.upload_part(k, id, n, b).await
    }
    async fn complete_upload(
        &self,
        k: &str,
        id: &str,
        p: Vec<(i32, String)>,
    ) -> Result<Upload<()>, StoreError> {
        self.inner.complete_upload(k, id, p).await
    }
    async fn abort_upload(&self, k: &str, id: &str) -> Result<(), StoreError> {
        self.inner.abort_upload(k, id).await
    }
    async fn publish(
        &self,
        f: &str,
        t: &str,
        m: std::collections::BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        self.inner.publish(f, t, m).await
    }
}

/// Arms the store failure when a collect job is sent.
struct ArmQueue<'a> {
    inner: &'a MemQueue,
    store: &'a FlakyStore<'a>,
}

impl Queue for ArmQueue<'_> {
    async fn send(&self, url: &str, body: &str, delay: Duration) -> Result<String, QueueError> {
        if url.ends_with("/collect") {
            self.store.fail_run_put.store(true, Ordering::SeqCst);
        }
        self.inner.send(url, body, delay).await
    }
    async fn send_rejected(
        &self,
        a: &str,
        b: &str,
        c: &str,
        d: &str,
        e: &str,
    ) -> Result<(), QueueError> {
        self.inner.send_rejected(a, b, c, d, e).await
    }
}

/// Downloads a small package; the first open runs `during` (the poll redelivery) before answering.
struct HookFetch<'a> {
    hook: Mutex<Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>>>,
}

impl Fetch for HookFetch<'_> {
    async fn open(&self, _url: &Secret<String>, from: u64) -> Result<Download, String> {
        let hook = self.hook.lock().unwrap().take();
        if let Some(h) = hook {
            h.await;
        }
        let body = vec![7u8; 3000];
        let rest = body[from as usize..].to_vec();
        Ok(Download {
            content_length: Some(rest.len() as u64),
            stream: Box::pin(futures_util::stream::iter([Ok(Bytes::from(rest))])),
        })
    }
}

async fn setup_finalize_crash<'a>(
    clock: &'a ManualClock,
    mem: &'a MemStore,
    queue: &'a MemQueue,
    def: &'a Def<'a>,
    flaky: &'a FlakyStore<'a>,
) -> (shared::ids::RunId, Delivery) {
    let e = env();
    let intake_cfg = IntakeConfig::from_env(&e).unwrap();
    let submit_cfg = SubmitConfig::from_env(&e).unwrap();
    let poll_cfg = PollConfig::from_env(&e).unwrap();
    let playbooks = Playbooks::bundled().unwrap();
    let alert =
        tests::native_alert("a-2", M, "Malware", &[("file_path", "C:\\x\\evil.exe")]).to_string();
    let run_id =
        shared::stages::intake::handle(&intake_cfg, &playbooks, mem, queue, &alert, clock.now())
            .await
            .unwrap()
            .run_id
            .unwrap();
    let sm = last_sent(queue, "/submit");
    shared::stages::submit::handle(&submit_cfg, mem, queue, def, clock, &sm)
        .await
        .unwrap();
    let p1 = last_sent(queue, "/poll");
    clock.advance(Duration::from_secs(20));
    *def.mode.lock().unwrap() = Mode::Done;
    let arm = ArmQueue {
        inner: queue,
        store: flaky,
    };
    let r = shared::stages::poll::handle(&poll_cfg, flaky, &arm, def, clock, &p1).await;
    println!("poll p1, first delivery (crashes after the fan-out): {r:?}");
    (run_id, p1)
}

#[tokio::test(start_paused = true)]
async fn give_up_after_a_crashed_finalize_overwrites_a_collecting_command() {
    let clock = ManualClock::at(OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap());
    let mem = MemStore::default();
    let queue = MemQueue::default();
    let def = Def {
        clock: &clock,
        mode: Mutex::new(Mode::Running),
        actions: Mutex::new(vec![]),
    };
    let flaky = FlakyStore {
        inner: &mem,
        fail_run_put: AtomicBool::new(false),
    };
    let (run_id, p1) = setup_finalize_crash(&clock, &mem, &queue, &def, &flaky).await;
    let e = env();
    let poll_cfg = PollConfig::from_env(&e).unwrap();
    let collect_cfg = CollectConfig::from_env(&e).unwrap();
    let collects = all_sent(&queue, "/collect");
    println!("collect jobs sent: {}", collects.len());
    // The collect job for command 1 is mid-copy when p1 comes back and Defender answers 403 once.
    clock.advance(Duration::from_secs(30));
    let redelivery = async {
        *def.mode.lock().unwrap() = Mode::Forbidden;
        let r = shared::stages::poll::handle(&poll_cfg, &mem, &queue, &def, &clock, &p1).await;
        println!("poll p1 redelivered (one 403): {r:?}");
        *def.mode.lock().unwrap() = Mode::Done;
    };
    let fetch = HookFetch {
        hook: Mutex::new(Some(Box::pin(redelivery))),
    };
    let c = &collects[1];
    let r =
        shared::stages::collect::handle(&collect_cfg, &mem, &queue, &def, &fetch, &clock, c).await;
    println!("collect of command 1 (mid-copy during the above): {r:?}");
    let r0 = shared::stages::collect::handle(
        &collect_cfg,
        &mem,
        &queue,
        &def,
        &fetch,
        &clock,
        &collects[0],
    )
    .await;
    println!("collect of command 0 (after): {r0:?}");
    let manifest: Manifest = read(&mem, &manifest_key(&run_id))
        .await
        .expect("a manifest");
    let run: RunRecord = read(&mem, &run_key(&run_id)).await.unwrap();
    println!("run: {:?} {:?} {:?}", run.state, run.outcome, run.reason);
    println!(
        "defender action: cancelled={}",
        def.actions.lock().unwrap()[0].3
    );
    for c in &manifest.commands {
        let rec: CommandRecord = read(&mem, &command_key(&run_id, c.index)).await.unwrap();
        println!(
            "command {}: manifest says {:?} ({:?}); record says {:?} s3_key {:?}",
            c.index, c.outcome, c.reason, rec.outcome, rec.s3_key
        );
    }
    let keys = mem.list(&format!("runs/{run_id}/evidence/")).await.unwrap();
    println!("evidence objects: {keys:?}");
    let rec1: CommandRecord = read(&mem, &command_key(&run_id, 1)).await.unwrap();
    assert_ne!(
        manifest.commands[1].outcome, rec1.outcome,
        "manifest and command record disagree"
    );
}

#[tokio::test(start_paused = true)]
async fn a_cancel_reply_without_commands_erases_the_commands_from_the_manifest() {
    let clock = ManualClock::at(OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap());
    let store = MemStore::default();
    let queue = MemQueue::default();
    let e = env();
    let intake_cfg = IntakeConfig::from_env(&e).unwrap();
    let submit_cfg = SubmitConfig::from_env(&e).unwrap();
    let poll_cfg = PollConfig::from_env(&e).unwrap();
    let def = Def {
        clock: &clock,
        mode: Mutex::new(Mode::Running),
        actions: Mutex::new(vec![]),
    };
    let playbooks = Playbooks::bundled().unwrap();
    let alert =
        tests::native_alert("a-3", M, "Malware", &[("file_path", "C:\\x\\evil.exe")]).to_string();
    let run_id = shared::stages::intake::handle(
        &intake_cfg,
        &playbooks,
        &store,
        &queue,
        &alert,
        clock.now(),
    )
    .await
    .unwrap()
    .run_id
    .unwrap();
    let asked = read::<RunRecord>(&store, &run_key(&run_id))
        .await
        .unwrap()
        .commands
        .len();
    let sm = last_sent(&queue, "/submit");
    shared::stages::submit::handle(&submit_cfg, &store, &queue, &def, &clock, &sm)
        .await
        .unwrap();
    let p = last_sent(&queue, "/poll");
    clock.advance(Duration::from_secs(5 * 3600)); // past the 240-minute deadline
    *def.mode.lock().unwrap() = Mode::CancelNoCommands;
    let r = shared::stages::poll::handle(&poll_cfg, &store, &queue, &def, &clock, &p).await;
    println!("poll past the deadline: {r:?}");
    let m: Manifest = read(&store, &manifest_key(&run_id)).await.unwrap();
    println!(
        "asked {asked} commands; manifest lists {}",
        m.commands.len()
    );
    assert_eq!(m.commands.len(), 0);
}

/// A store that runs `hook` the first time the budget is read (the duplicate's acquire_submission).
struct HookStore<'a> {
    inner: &'a MemStore,
    hook: Mutex<Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>>>,
}

impl ObjectStore for HookStore<'_> {
    async fn get(&self, key: &str) -> Result<Option<Stored>, StoreError> {
        if key == budget::BUDGET_KEY {
            let h = self.hook.lock().unwrap().take();
            if let Some(h) = h {
                h.await;
            }
        }
        self.inner.get(key).await
    }
    async fn put(&self, key: &str, body: Vec<u8>, c: Put) -> Result<PutResult, StoreError> {
        self.inner.put(key, body, c).await
    }
    async fn list(&self, p: &str) -> Result<Vec<String>, StoreError> {
        self.inner.list(p).await
    }
    async fn delete(&self, k: &str) -> Result<(), StoreError> {
        self.inner.delete(k).await
    }
    async fn open_read(&self, k: &str) -> Result<shared::ports::ByteStream, StoreError> {
        self.inner.open_read(k).await
    }
    async fn begin_upload(&self, k: &str) -> Result<String, StoreError> {
        self.inner.begin_upload(k).await
    }
    async fn upload_part(
        &self,
        k: &str,
        id: &str,
        n: i32,
        b: Bytes,
    ) -> Result<Upload<String>, StoreError> {
        self.inner.upload_part(k, id, n, b).await
    }
    async fn complete_upload(
        &self,
        k: &str,
        id: &str,
        p: Vec<(i32, String)>,
    ) -> Result<Upload<()>, StoreError> {
        self.inner.complete_upload(k, id, p).await
    }
    async fn abort_upload(&self, k: &str, id: &str) -> Result<(), StoreError> {
        self.inner.abort_upload(k, id).await
    }
    async fn publish(
        &self,
        f: &str,
        t: &str,
        m: std::collections::BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        self.inner.publish(f, t, m).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_concurrent_duplicate_submit_rewinds_a_submitted_run_and_strands_it() {
    let clock = ManualClock::at(OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap());
    let mem = MemStore::default();
    let queue = MemQueue::default();
    let e = env();
    let intake_cfg = IntakeConfig::from_env(&e).unwrap();
    let submit_cfg = SubmitConfig::from_env(&e).unwrap();
    let poll_cfg = PollConfig::from_env(&e).unwrap();
    let def = Def {
        clock: &clock,
        mode: Mutex::new(Mode::Running),
        actions: Mutex::new(vec![]),
    };
    let playbooks = Playbooks::bundled().unwrap();
    let alert =
        tests::native_alert("a-4", M, "Malware", &[("file_path", "C:\\x\\evil.exe")]).to_string();
    let run_id =
        shared::stages::intake::handle(&intake_cfg, &playbooks, &mem, &queue, &alert, clock.now())
            .await
            .unwrap()
            .run_id
            .unwrap();
    let sm = last_sent(&queue, "/submit");
    // Two receipts of the same submit message run at once (SQS at-least-once): the second (Y)
    // passes claim while the run is Received, then the first (X) runs to completion.
    let x = async {
        let r = shared::stages::submit::handle(&submit_cfg, &mem, &queue, &def, &clock, &sm).await;
        println!("X: {r:?}");
    };
    let hs = HookStore {
        inner: &mem,
        hook: Mutex::new(Some(Box::pin(x))),
    };
    let y = shared::stages::submit::handle(&submit_cfg, &hs, &queue, &def, &clock, &sm).await;
    println!("Y: {y:?}");
    let run: RunRecord = read(&mem, &run_key(&run_id)).await.unwrap();
    println!(
        "run after both: state {:?}, action {:?}, chain {:?}",
        run.state, run.action_id, run.chain
    );
    let polls = all_sent(&queue, "/poll");
    let submits = all_sent(&queue, "/submit");
    println!("poll jobs {}, submit jobs {}", polls.len(), submits.len());
    clock.advance(Duration::from_secs(20));
    let p = shared::stages::poll::handle(&poll_cfg, &mem, &queue, &def, &clock, &polls[0]).await;
    println!("poll job: {p:?}");
    let run: RunRecord = read(&mem, &run_key(&run_id)).await.unwrap();
    let held = budget::held_sessions(&mem, &submit_cfg.budget, &clock)
        .await
        .unwrap();
    println!(
        "final: state {:?}; live Defender actions {}; sessions held {held:?}; messages after: submit {} poll {}",
        run.state,
        def.actions.lock().unwrap().len(),
        all_sent(&queue, "/submit").len(),
        all_sent(&queue, "/poll").len()
    );
    assert_eq!(run.state, shared::store::RunState::Submitting);
}
