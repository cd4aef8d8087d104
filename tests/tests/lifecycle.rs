//! The run lifecycle as a model: the four stages over in-memory ports, driven by a seeded random
//! scheduler that delivers messages out of order, delivers some twice (SQS is at least once),
//! kills a handler at a random await point on S3 or SQS (its message comes back), and has a fake
//! Defender answer 401/403/404/429/5xx, unreadable bodies, lost answers, refused cancels, broken
//! downloads and devices that never come online. After every schedule it checks the invariants:
//! every run ends with one manifest that accounts for every command; at most one live response per
//! run; no session left held; no message circulating past a bound; Defender's GET and submission
//! limits never exceeded where Defender counts; every evidence object matches its recorded SHA-256;
//! every manifest carries a signature that verifies offline over its exact bytes; every run's
//! completion event is published, agrees with the manifest, and goes out once (twice only when a
//! handler died between publishing and recording it). Signing and publishing fail and are killed
//! too. The live response library starts empty (submit uploads the triage script), stale (it
//! replaces it) or holding someone else's file of that name (every run ends before submission,
//! naming it, and the file is untouched), and its API fails as Defender's can; every submitted
//! run's manifest names the bundle's version of the script.
//!
//! About half the schedules serve two tenants from a tenant registry, each with its own Defender,
//! budget and devices: every invariant holds per tenant, and no run acts in another tenant's
//! Defender.
//!
//! `LIFECYCLE_SEED=<n>` replays one schedule; `LIFECYCLE_SCHEDULES=<n>` explores more.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use shared::adapters::memory::{MemEvents, MemQueue, MemSigner, MemStore, Sent};
use shared::alerts::playbook::Playbooks;
use shared::budget::{self, BudgetConfig};
use shared::clock::{Clock, ManualClock};
use shared::custody::event::RunFinished;
use shared::custody::signature::{ManifestSignature, check_statement, verify_offline};
use shared::defender::{ActionId, DefenderError, MachineId};
use shared::ids::{RunId, TenantKey};
use shared::messages::Delivery;
use shared::ports::{
    BoxFuture, Download, Events, Fetch, Notary, NotaryError, ObjectStore, Put, Queue, QueueError,
    Rejection, Signer,
};
use shared::secret::Secret;
use shared::stages::Ports;
use shared::stages::settings::{CollectConfig, IntakeConfig, PollConfig, SubmitConfig};
use shared::stages::{Done, StageError};
use shared::store::{CommandOutcome, Manifest, RunRecord, manifest_key, run_key};
use shared::tenants::{Limits, Registry, Tenancy};
use testkit::alerts::native_alert;
use testkit::content::sha256_hex;
use testkit::defender::{Device, Model, ModelCall};
use testkit::records::{collect_job, seed_collecting_run};
use testkit::seeded::{Rng, seed_from_env};
use testkit::store::Hooked;
use time::OffsetDateTime;

const MINUTE: Duration = Duration::from_secs(60);
/// The forwarder both tenants of a two-tenant schedule allow.
const FORWARDER: &str = "AROAEXAMPLEFORWARDER01";

/// Kills the handler at its n-th operation on S3 or SQS: the operation never returns and the
/// scheduler drops the handler's future there, as a Lambda timeout or crash would.
struct Kill {
    countdown: AtomicI64,
    tripped: tokio::sync::Notify,
    /// While two handlers run at once, each S3 or SQS operation lets the other go first.
    interleave: std::sync::atomic::AtomicBool,
}

impl Kill {
    async fn point(&self) {
        if self.interleave.load(Ordering::SeqCst) {
            tokio::task::yield_now().await;
        }
        if self.countdown.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.tripped.notify_one();
            std::future::pending::<()>().await;
        }
    }
    fn arm(&self, after: i64) {
        self.countdown.store(after, Ordering::SeqCst);
    }
}

struct KQueue<'a> {
    inner: &'a MemQueue,
    kill: &'a Kill,
}

impl Queue for KQueue<'_> {
    async fn send(&self, url: &str, body: &str, delay: Duration) -> Result<String, QueueError> {
        self.kill.point().await;
        self.inner.send(url, body, delay).await
    }
    async fn send_rejected(
        &self,
        dlq: &str,
        body: &str,
        why: &Rejection<'_>,
    ) -> Result<(), QueueError> {
        self.kill.point().await;
        self.inner.send_rejected(dlq, body, why).await
    }
}

/// The live response library with Defender's failures: a call may be throttled or fail.
struct FlakyLibrary {
    inner: shared::adapters::memory::MemLibrary,
    rng: Mutex<Rng>,
    fault_rate: f64,
    faults_on: std::sync::atomic::AtomicBool,
}

impl FlakyLibrary {
    fn fault(&self) -> Option<DefenderError> {
        if !self.faults_on.load(Ordering::SeqCst) {
            return None;
        }
        let mut rng = self.rng.lock().unwrap();
        if !rng.chance(self.fault_rate) {
            return None;
        }
        Some(if rng.chance(0.5) {
            DefenderError::RateLimited {
                retry_after: Some(Duration::from_secs(1 + rng.below(30))),
            }
        } else {
            DefenderError::Transient {
                reason: "HTTP 503".into(),
            }
        })
    }
}

impl shared::ports::LibraryApi for FlakyLibrary {
    fn list(&self) -> BoxFuture<'_, Result<Vec<shared::defender::LibraryFile>, DefenderError>> {
        match self.fault() {
            Some(e) => Box::pin(async move { Err(e) }),
            None => self.inner.list(),
        }
    }
    fn upload<'a>(
        &'a self,
        upload: &'a shared::defender::LibraryUpload,
    ) -> BoxFuture<'a, Result<shared::defender::LibraryFile, DefenderError>> {
        match self.fault() {
            Some(e) => Box::pin(async move { Err(e) }),
            None => self.inner.upload(upload),
        }
    }
}

/// What the library holds for the triage script when a schedule starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LibraryStart {
    Empty,
    StaleOurs,
    Theirs,
}

/// The notary with kill points and faults: a signature or a publish may fail (as a throttled KMS or
/// EventBridge would), and a handler may die before signing, before publishing, or after
/// publishing and before recording it (the one place a second event is allowed).
struct KNotary<'a> {
    signer: &'a MemSigner,
    events: &'a MemEvents,
    kill: &'a Kill,
    rng: Mutex<Rng>,
    fault_rate: f64,
    /// Off for a message's last receive, as kills are.
    faults_on: std::sync::atomic::AtomicBool,
    /// Runs whose publishing handler was killed after its event went out.
    killed_after_publish: Mutex<Vec<String>>,
}

impl KNotary<'_> {
    fn fault(&self, what: &str) -> Result<(), NotaryError> {
        if self.faults_on.load(Ordering::SeqCst) && self.rng.lock().unwrap().chance(self.fault_rate)
        {
            return Err(NotaryError(format!("{what} throttled")));
        }
        Ok(())
    }
}

impl Signer for KNotary<'_> {
    fn key_id(&self) -> &str {
        self.signer.key_id()
    }
    fn sign<'a>(&'a self, message: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, NotaryError>> {
        Box::pin(async move {
            self.kill.point().await;
            self.fault("KMS Sign")?;
            self.signer.sign(message).await
        })
    }
    fn verify<'a>(
        &'a self,
        message: &'a [u8],
        der: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, NotaryError>> {
        Box::pin(async move {
            self.kill.point().await;
            self.fault("KMS Verify")?;
            self.signer.verify(message, der).await
        })
    }
}

impl Events for KNotary<'_> {
    fn publish<'a>(
        &'a self,
        source: &'a str,
        detail_type: &'a str,
        detail: &'a str,
    ) -> BoxFuture<'a, Result<(), NotaryError>> {
        Box::pin(async move {
            self.kill.point().await;
            self.fault("PutEvents")?;
            self.events.publish(source, detail_type, detail).await?;
            let run = serde_json::from_str::<serde_json::Value>(detail)
                .ok()
                .and_then(|v| v["run_id"].as_str().map(str::to_string))
                .unwrap_or_default();
            self.killed_after_publish.lock().unwrap().push(run.clone());
            self.kill.point().await;
            // Not killed: the publish is recorded by the caller.
            let mut k = self.killed_after_publish.lock().unwrap();
            if let Some(i) = k.iter().rposition(|r| *r == run) {
                k.remove(i);
            }
            Ok(())
        })
    }
}

/// The package behind a link: bytes derived from the link's path, so any copy can be checked.
fn package(path: &str) -> Vec<u8> {
    let seed = Sha256::digest(path.as_bytes());
    let len = 1000 + (seed[0] as usize) * 40_000;
    (0..len).map(|i| seed[i % 32] ^ (i as u8)).collect()
}

struct FakeFetch<'a> {
    rng: &'a Mutex<Rng>,
    fault_rate: f64,
}

impl Fetch for FakeFetch<'_> {
    async fn open(&self, url: &Secret<String>, from: u64) -> Result<Download, String> {
        let path = url
            .expose()
            .split('?')
            .next()
            .unwrap_or_default()
            .to_string();
        let body = package(&path);
        let (fail_open, cut) = {
            let mut rng = self.rng.lock().unwrap();
            (
                rng.chance(self.fault_rate),
                rng.chance(self.fault_rate)
                    .then(|| rng.below(body.len() as u64)),
            )
        };
        if fail_open {
            return Err("download answered HTTP 503".into());
        }
        let from = (from as usize).min(body.len());
        let rest = body[from..].to_vec();
        let content_length = Some(rest.len() as u64);
        let mut chunks: Vec<Result<Bytes, String>> = rest
            .chunks(7_000)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        if let Some(cut) = cut {
            let keep = (cut as usize / 7_000).min(chunks.len());
            chunks.truncate(keep);
            chunks.push(Err("download broke off".into()));
        }
        Ok(Download {
            content_length,
            stream: Box::pin(futures_util::stream::iter(chunks)),
        })
    }
}

fn env(extra: &[(&'static str, &'static str)]) -> HashMap<&'static str, &'static str> {
    let mut e: HashMap<&'static str, &'static str> = [
        ("EVIDENCE_BUCKET", "evidence"),
        (
            "SUBMIT_QUEUE_URL",
            "https://sqs.us-east-1.amazonaws.com/123456789012/submit",
        ),
        (
            "POLL_QUEUE_URL",
            "https://sqs.us-east-1.amazonaws.com/123456789012/poll",
        ),
        (
            "COLLECT_QUEUE_URL",
            "https://sqs.us-east-1.amazonaws.com/123456789012/collect",
        ),
        (
            "DEAD_LETTER_QUEUE_URL",
            "https://sqs.us-east-1.amazonaws.com/123456789012/dlq",
        ),
        ("MDE_CREDENTIALS_SECRET_ID", "s"),
        ("RETRY_BASE_SECS", "2"),
        ("RETRY_MAX_SECS", "120"),
        ("COLLECT_PART_MIB", "5"),
    ]
    .into_iter()
    .collect();
    for (k, v) in extra {
        e.insert(k, v);
    }
    e
}

struct Message {
    last_failure: String,
    id: String,
    queue: String,
    body: String,
    visible_at: OffsetDateTime,
    receives: u32,
}

/// The outcome of one schedule, for the summary line.
#[derive(Default, Debug, PartialEq)]
struct Tally {
    concurrent: u64,
    deliveries: u64,
    kills: u64,
    duplicates: u64,
    dead_lettered: u64,
    events: u64,
    outcomes: BTreeMap<String, u64>,
    /// Schedules with two tenants from a registry.
    two_tenants: u64,
}

const RUNS: usize = 6;
const MAX_RECEIVES: u32 = 5;
/// No schedule of six runs needs this many deliveries unless something circulates.
const MAX_DELIVERIES: u64 = 6_000;

async fn schedule(seed: u64) -> Result<Tally, String> {
    let mut rng = Rng::new(seed);
    let fault_rate = [0.0, 0.05, 0.15, 0.3][rng.below(4) as usize];
    let kill_rate = [0.0, 0.05, 0.2][rng.below(3) as usize];
    let dup_rate = [0.0, 0.1, 0.3][rng.below(3) as usize];
    let concurrency = [0.0, 0.1, 0.3][rng.below(3) as usize];
    // One tenant, or two from a tenant registry: each with its own Defender, budget and devices,
    // its alerts sent by a forwarder both tenants allow.
    let tenants: Vec<Option<TenantKey>> = if rng.chance(0.5) {
        vec![
            Some(TenantKey::parse("t1").unwrap()),
            Some(TenantKey::parse("t2").unwrap()),
        ]
    } else {
        vec![None]
    };
    let t0 = OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap();
    // The stages' jitter comes from the seed too: a printed seed replays the same schedule.
    let clock = ManualClock::seeded(t0, seed);
    let store = MemStore::default();
    let queue = MemQueue::default();
    let kill = Kill {
        countdown: AtomicI64::new(0),
        tripped: tokio::sync::Notify::new(),
        interleave: std::sync::atomic::AtomicBool::new(false),
    };
    let mut devices: Vec<HashMap<MachineId, Device>> = vec![HashMap::new(); tenants.len()];
    let mut alerts = Vec::new();
    for i in 0..RUNS {
        let slot = i % tenants.len();
        let machine = format!("{:040x}", seed.wrapping_mul(31).wrapping_add(i as u64 % 4));
        let device = if rng.chance(0.2) {
            Device::Offline
        } else {
            Device::Online {
                runs_for: Duration::from_secs(5 + rng.below(1200)),
            }
        };
        devices[slot]
            .entry(MachineId::parse(&machine).unwrap())
            .or_insert(device);
        let mut alert = native_alert(
            &format!("a{seed}-{i}"),
            &machine,
            "Malware",
            &[("file_path", "C:\\Users\\x\\evil.exe")],
        );
        if let Some(t) = &tenants[slot] {
            alert["tenant"] = t.as_str().into();
        }
        alerts.push(alert.to_string());
    }
    let defenders: Vec<Model> = devices
        .into_iter()
        .enumerate()
        .map(|(k, d)| Model::new(&clock, d).with_faults(seed ^ 0xDEF ^ k as u64, fault_rate))
        .collect();
    let tenancy = match tenants.as_slice() {
        [None] => Tenancy::Single,
        _ => {
            let mut text = String::new();
            for (k, t) in tenants.iter().flatten().enumerate() {
                text.push_str(&format!(
                    "[[tenants]]\nkey = \"{t}\"\nentra_tenant_id = \"00000000-0000-4000-8000-00000000000{k}\"\ncredentials_secret = \"lr/{t}\"\nsenders = [{{ principal = \"{FORWARDER}\" }}]\n"
                ));
            }
            Tenancy::Registry(Registry::from_toml(&text, None).unwrap())
        }
    };
    // The run's tenant's slot: its Defender and its stages' settings.
    let slot_of = |body: &str| -> usize {
        shared::messages::run_of(body)
            .and_then(|r| r.tenant())
            .and_then(|t| tenants.iter().position(|x| x.as_ref() == Some(&t)))
            .unwrap_or(0)
    };
    let signer = MemSigner::seeded((seed % 250) as u8 + 1);
    let events = MemEvents::default();
    let knotary = KNotary {
        signer: &signer,
        events: &events,
        kill: &kill,
        rng: Mutex::new(Rng::new(seed ^ 0x5167)),
        fault_rate: fault_rate / 2.0,
        faults_on: std::sync::atomic::AtomicBool::new(true),
        killed_after_publish: Mutex::new(Vec::new()),
    };
    let notary = Notary {
        signer: &knotary,
        events: &knotary,
    };
    let fetch_rng = Mutex::new(Rng::new(seed ^ 0xFE7));
    let fetch = FakeFetch {
        rng: &fetch_rng,
        fault_rate: fault_rate / 2.0,
    };
    let e = env(&[("MAX_RUN_DEADLINE_SECS", "3600")]);
    let intake_cfg = IntakeConfig::from_env(&e).unwrap();
    let submit_cfg = SubmitConfig::from_env(&e).unwrap();
    let poll_cfg = PollConfig::from_env(&e).unwrap();
    let mut collect_cfg = CollectConfig::from_env(&e).unwrap();
    // Small time budget: long copies are handed over through checkpoints.
    collect_cfg.time_budget = Duration::from_millis(rng.below(3));
    // Each tenant's settings: its own budget (object, lane, limits), as the functions build them.
    let cfgs: Vec<(SubmitConfig, PollConfig, CollectConfig)> = tenants
        .iter()
        .map(|t| {
            let budget: BudgetConfig = match t {
                None => submit_cfg.budget.clone(),
                Some(t) => submit_cfg.budget.for_tenant(t, &Limits::default()),
            };
            (
                SubmitConfig {
                    budget: budget.clone(),
                    ..submit_cfg.clone()
                },
                PollConfig {
                    budget: budget.clone(),
                    ..poll_cfg.clone()
                },
                CollectConfig {
                    budget,
                    ..collect_cfg.clone()
                },
            )
        })
        .collect();
    let playbooks = Playbooks::bundled().unwrap();
    let bundle = shared::library::Bundle::bundled(playbooks.library_files()).unwrap();
    let triage = bundle
        .get("triage.ps1")
        .and_then(|f| f.sha256.clone())
        .unwrap();
    let triage_name = shared::library::versioned_name("triage.ps1", &triage);
    let librarian = shared::library::Librarian::new(bundle, shared::library::SyncMode::Upload);
    let library = FlakyLibrary {
        inner: Default::default(),
        rng: Mutex::new(Rng::new(seed ^ 0x11B)),
        fault_rate: fault_rate / 2.0,
        faults_on: std::sync::atomic::AtomicBool::new(true),
    };
    let library_start = [
        LibraryStart::Empty,
        LibraryStart::Empty,
        LibraryStart::StaleOurs,
        LibraryStart::Theirs,
    ][rng.below(4) as usize];
    let theirs = b"Write-Output 'the IR team''s triage'";
    match library_start {
        LibraryStart::Empty => {}
        LibraryStart::StaleOurs => library.inner.seed(
            &triage_name,
            b"Write-Output 'v0'",
            &playbooks.library_files()[0].managed_description(),
        ),
        LibraryStart::Theirs => library.inner.seed(&triage_name, theirs, "uploaded by hand"),
    }
    let library_sync = shared::library::LibrarySync {
        keeper: &librarian,
        api: &library,
    };

    let mut pool: Vec<Message> = Vec::new();
    let mut sent_seen = 0usize;
    let mut tally = Tally {
        two_tenants: (tenants.len() == 2) as u64,
        ..Tally::default()
    };
    let mut run_ids = Vec::new();
    let slot_of_run = |r: &RunId| slot_of(&format!("{{\"run_id\": \"{r}\"}}"));
    // The store with a kill point at every operation.
    let kstore = Hooked::new(&store).before(|_| {
        let kill = &kill;
        Box::pin(async move {
            kill.point().await;
            Ok(())
        })
    });
    let kqueue = KQueue {
        inner: &queue,
        kill: &kill,
    };
    // Alerts arrive through intake (each alert possibly twice: duplicate alerts).
    for alert in &alerts {
        for _ in 0..(1 + rng.chance(dup_rate) as u32) {
            let done = shared::stages::intake::handle(
                &intake_cfg,
                shared::stages::intake::Rules {
                    playbooks: &playbooks,
                    tenancy: &tenancy,
                },
                &store,
                &queue,
                &shared::messages::Delivery::new("alert", alert.clone())
                    .from_sender(Some(format!("{FORWARDER}:forwarder"))),
                clock.now(),
            )
            .await
            .map_err(|e| format!("intake refused a good alert: {e}"))?;
            if let Some(r) = done.run_id
                && !run_ids.contains(&r)
            {
                run_ids.push(r);
            }
        }
    }
    loop {
        // Collect what the last handler sent.
        {
            let sent = queue.sent.lock().unwrap();
            for s in &sent[sent_seen..] {
                match s {
                    Sent::Message {
                        id,
                        queue,
                        body,
                        delay,
                    } => pool.push(Message {
                        last_failure: String::new(),
                        id: id.clone(),
                        queue: queue.clone(),
                        body: body.clone(),
                        visible_at: clock.now() + time::Duration::try_from(*delay).unwrap(),
                        receives: 0,
                    }),
                    Sent::Rejected { .. } => tally.dead_lettered += 1,
                }
            }
            sent_seen = sent.len();
        }
        if pool.is_empty() {
            break;
        }
        tally.deliveries += 1;
        if tally.deliveries > MAX_DELIVERIES {
            return Err(format!(
                "messages still circulating after {MAX_DELIVERIES} deliveries"
            ));
        }
        // The earliest visible message, or sometimes any visible one (out of order).
        let earliest = pool.iter().map(|m| m.visible_at).min().unwrap();
        if earliest > clock.now() {
            // The manual clock counts whole milliseconds.
            clock.set(earliest + time::Duration::milliseconds(1));
        }
        let visible: Vec<usize> = (0..pool.len())
            .filter(|i| pool[*i].visible_at <= clock.now())
            .collect();
        let pick = visible[rng.below(visible.len() as u64) as usize];
        pool[pick].receives += 1;
        let msg = Delivery::new(&pool[pick].id, &pool[pick].body);
        let q = pool[pick].queue.clone();
        // A message's last receive is never killed: five kills in a row send any message to the
        // dead-letter queue, which says nothing about the pipeline.
        let last_chance = pool[pick].receives >= MAX_RECEIVES;
        let killed_at = (!last_chance && rng.chance(kill_rate)).then(|| 1 + rng.below(12) as i64);
        kill.arm(killed_at.unwrap_or(i64::MAX));
        knotary.faults_on.store(!last_chance, Ordering::SeqCst);
        library.faults_on.store(!last_chance, Ordering::SeqCst);
        macro_rules! dispatch {
            ($q:expr, $msg:expr) => {
                async {
                    let slot = slot_of(&$msg.body);
                    let (submit_cfg, poll_cfg, collect_cfg) = &cfgs[slot];
                    let defender = &defenders[slot];
                    match $q.rsplit('/').next().unwrap_or_default() {
                        "submit" => {
                            shared::stages::submit::handle(
                                submit_cfg,
                                Ports::new(&kstore, &kqueue, defender, notary, &clock),
                                library_sync,
                                $msg,
                            )
                            .await
                        }
                        "poll" => {
                            shared::stages::poll::handle(
                                poll_cfg,
                                Ports::new(&kstore, &kqueue, defender, notary, &clock),
                                &library,
                                $msg,
                            )
                            .await
                        }
                        "collect" => {
                            shared::stages::collect::handle(
                                collect_cfg,
                                Ports::new(&kstore, &kqueue, defender, notary, &clock),
                                &fetch,
                                $msg,
                            )
                            .await
                        }
                        other => panic!("no stage for queue {other}"),
                    }
                }
            };
        }
        // Sometimes a second handler runs at the same time, interleaved at every S3 and SQS
        // operation: another visible message, or a second copy of the same one (SQS can hand a
        // message to two consumers when its visibility lapses mid-handling).
        // Not for collect: its visibility timeout (5400 s) outlasts its function timeout (900 s),
        // so a copy of a collect job only comes after the first one finished or died. (Two copies
        // copying at once would each publish; the first final record stands, but if that one is a
        // failure the other's object is not in the manifest: see docs/architecture.md, the limits of
        // one message acting for a run.)
        let second = rng.chance(concurrency).then(|| {
            if rng.chance(0.5) && !q.ends_with("/collect") {
                pick
            } else {
                visible[rng.below(visible.len() as u64) as usize]
            }
        });
        let second = second.filter(|o| *o != pick || !q.ends_with("/collect"));
        let handled = match second {
            None => {
                tokio::select! {
                    r = dispatch!(q, &msg) => Some(r),
                    _ = kill.tripped.notified() => None,
                }
            }
            Some(other) => {
                tally.concurrent += 1;
                let msg2 = Delivery::new(&pool[other].id, &pool[other].body);
                let q2 = pool[other].queue.clone();
                if other != pick {
                    pool[other].receives += 1;
                }
                // No kills while two run at once (a tripped kill would hold the pair forever).
                kill.arm(i64::MAX);
                kill.interleave.store(true, Ordering::SeqCst);
                let (r1, r2) = tokio::join!(dispatch!(q, &msg), dispatch!(q2, &msg2));
                kill.interleave.store(false, Ordering::SeqCst);
                match r2 {
                    Err(StageError::Reject { code, reason }) => {
                        return Err(format!("a stage message was refused ({code}): {reason}"));
                    }
                    Err(StageError::Retry(why)) if other != pick => {
                        pool[other].last_failure = why;
                        pool[other].visible_at = clock.now() + time::Duration::seconds(30);
                    }
                    Ok(_) if other != pick => {
                        pool[other].last_failure.clear();
                        // Handled: deleted (swap_remove below keeps indices of others stable
                        // only for `pick`, so mark it visible far later and drop it there).
                        pool[other].receives = u32::MAX;
                    }
                    _ => {}
                }
                Some(r1)
            }
        };
        kill.arm(i64::MAX);
        clock.advance(Duration::from_millis(200));
        let keep = match handled {
            None => {
                tally.kills += 1;
                pool[pick].last_failure = "killed".into();
                true
            }
            Some(Err(StageError::Retry(why))) => {
                pool[pick].last_failure = why;
                true
            }
            Some(Err(StageError::Reject { code, reason })) => {
                return Err(format!("a stage message was refused ({code}): {reason}"));
            }
            Some(Ok(Done { outcome, .. })) => {
                pool[pick].last_failure.clear();
                *tally.outcomes.entry(outcome.to_string()).or_default() += 1;
                // SQS may deliver a handled message again before its delete lands.
                let again = rng.chance(dup_rate);
                tally.duplicates += again as u64;
                again
            }
        };
        if keep && pool[pick].receives < MAX_RECEIVES {
            pool[pick].visible_at = clock.now() + time::Duration::seconds(30);
        } else {
            if keep && !pool[pick].last_failure.is_empty() {
                return Err(format!(
                    "a {q} message went to the dead-letter queue after {MAX_RECEIVES} receives: {} (last: {})",
                    pool[pick].body, pool[pick].last_failure
                ));
            }
            pool.swap_remove(pick);
        }
        pool.retain(|m| m.receives != u32::MAX);
    }

    // Invariants.
    let in_library = library.inner.sha256(&triage_name);
    let want = match library_start {
        LibraryStart::Theirs => sha256_hex(theirs),
        _ => triage.clone(),
    };
    let actions: Vec<_> = defenders.iter().flat_map(|d| d.actions()).collect();
    let submitted_any = !actions.is_empty();
    if (library_start == LibraryStart::Theirs || submitted_any)
        && in_library.as_deref() != Some(want.as_str())
    {
        return Err(format!(
            "the library holds triage.ps1 {in_library:?} after a schedule starting {library_start:?}; expected {want}"
        ));
    }
    // What the device was asked to run is the bundle's version, by a name only those bytes have.
    for a in &actions {
        for c in &a.commands {
            if let Some(script) = c.command.param("ScriptName")
                && script != triage_name
            {
                return Err(format!(
                    "action {} runs {script}, not the bundle's {triage_name}",
                    a.id
                ));
            }
        }
    }
    for run_id in &run_ids {
        let run: RunRecord = read(&store, &run_key(run_id)).await?;
        let manifest: Manifest = read(&store, &manifest_key(run_id))
            .await
            .map_err(|e| format!("run {run_id} ({:?}, {:?}): {e}", run.state, run.reason))?;
        if !run.state.is_final() {
            return Err(format!("run {run_id} ended {:?}", run.state));
        }
        if library_start == LibraryStart::Theirs {
            let reason = manifest.reason.clone().unwrap_or_default();
            // Never submitted; ended naming the file, or, since the run now waits for a person
            // to remove it (retried), after its attempts ran out (the last may have met a fault).
            let named = reason.contains(&triage_name) || reason.starts_with("gave up after");
            if manifest.action.is_some() || !named {
                return Err(format!(
                    "run {run_id}: someone else's triage.ps1 is in the library, yet the run was submitted or ended for another reason ({reason})"
                ));
            }
        } else if manifest.action.is_some()
            && (manifest.library.len() != 1
                || manifest.library[0].sha256.as_deref() != Some(triage.as_str()))
        {
            return Err(format!(
                "run {run_id}: submitted, but its manifest names library {:?}, not triage.ps1 {triage}",
                manifest.library
            ));
        }
        if manifest.commands.len() != run.commands.len() {
            return Err(format!(
                "run {run_id}: the manifest lists {} of {} commands",
                manifest.commands.len(),
                run.commands.len()
            ));
        }
        for c in &manifest.commands {
            let rec: shared::store::CommandRecord =
                read(&store, &shared::store::command_key(run_id, c.index)).await?;
            if rec.outcome != c.outcome || rec.sha256 != c.sha256 {
                return Err(format!(
                    "run {run_id}: command {} is {:?} in the manifest but {:?} in its record",
                    c.index, c.outcome, rec.outcome
                ));
            }
            if c.outcome == CommandOutcome::Collecting {
                return Err(format!(
                    "run {run_id}: command {} still collecting",
                    c.index
                ));
            }
            if c.outcome == CommandOutcome::Collected {
                let key = c.s3_key.clone().unwrap_or_default();
                let body = store
                    .get(&key)
                    .await
                    .unwrap()
                    .ok_or(format!("{key} is missing"))?
                    .body;
                if Some(sha256_hex(&body)) != c.sha256 {
                    return Err(format!("{key} does not match its recorded SHA-256"));
                }
            }
        }
        // The signature binds the manifest's exact bytes and verifies offline.
        let mkey = manifest_key(run_id);
        let manifest_bytes = store.get(&mkey).await.unwrap().unwrap().body;
        let sig: ManifestSignature = read(&store, &shared::store::signature_key(run_id)).await?;
        check_statement(&sig, run_id, &mkey, &manifest_bytes)
            .and_then(|_| verify_offline(&sig, &signer.public_key()))
            .map_err(|e| format!("run {run_id}: {e}"))?;
        // One event, that says what the manifest says (two only when a handler died between
        // publishing and recording it).
        let published: Vec<RunFinished> = events
            .published
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(_, _, d)| serde_json::from_str::<RunFinished>(d).ok())
            .filter(|e| &e.run_id == run_id)
            .collect();
        let may_repeat = knotary
            .killed_after_publish
            .lock()
            .unwrap()
            .iter()
            .filter(|r| *r == run_id.as_str())
            .count();
        if published.is_empty() || published.len() > 1 + may_repeat {
            return Err(format!(
                "run {run_id}: {} completion events ({may_repeat} handler(s) died after publishing)",
                published.len()
            ));
        }
        if run
            .announcement
            .as_ref()
            .and_then(|a| a.published_at)
            .is_none()
        {
            return Err(format!(
                "run {run_id}: its event is not recorded as published"
            ));
        }
        for e in &published {
            if e.manifest.sha256 != sha256_hex(&manifest_bytes)
                || e.state != manifest.run_state
                || e.outcome != manifest.outcome
                || e.commands.len() != manifest.commands.len()
                || e.event_id != run_id.as_str()
            {
                return Err(format!(
                    "run {run_id}: the event disagrees with the manifest: {e:?}"
                ));
            }
        }
        tally.events += published.len() as u64;
        for key in store.list(&format!("evidence/{run_id}/")).await.unwrap() {
            if key != shared::store::manifest_key(run_id)
                && key != shared::store::signature_key(run_id)
                && !manifest
                    .commands
                    .iter()
                    .any(|c| c.s3_key.as_deref() == Some(key.as_str()))
            {
                return Err(format!("{key} is evidence the manifest does not list"));
            }
        }
        let tag = run_id.comment_tag();
        let made_in = |d: &Model| {
            d.actions()
                .iter()
                .filter(|a| {
                    a.requestor_comment
                        .as_deref()
                        .and_then(|c| c.split_whitespace().next())
                        == Some(tag.as_str())
                })
                .count()
        };
        let made = made_in(&defenders[slot_of_run(run_id)]);
        if made > 1 {
            return Err(format!("run {run_id}: {made} live responses"));
        }
        // Never in another tenant's Defender.
        let elsewhere: usize = defenders.iter().map(made_in).sum::<usize>() - made;
        if elsewhere > 0 {
            return Err(format!(
                "run {run_id}: {elsewhere} live response(s) in another tenant's Defender"
            ));
        }
        *tally
            .outcomes
            .entry(format!("run_{:?}", manifest.outcome))
            .or_default() += 1;
    }
    // Every invariant of Defender's side, tenant by tenant: its own Defender, budget and limits.
    for (slot, defender) in defenders.iter().enumerate() {
        let budget_cfg = &cfgs[slot].0.budget;
        let strangers = defender.strangers();
        if !strangers.is_empty() {
            return Err(format!(
                "the pipeline asked tenant {:?}'s Defender about what it never made: {strangers:?}",
                tenants[slot]
            ));
        }
        let held = budget::held_sessions(&store, budget_cfg, &clock)
            .await
            .unwrap();
        if !held.is_empty() {
            return Err(format!(
                "sessions of tenant {:?} still held after every run ended: {held:?}",
                tenants[slot]
            ));
        }
        let most = |stamps: &[i64]| {
            let mut s = stamps.to_vec();
            s.sort();
            (0..s.len())
                .map(|i| s[i..].iter().take_while(|t| **t - s[i] < 60_000).count())
                .max()
                .unwrap_or(0)
        };
        let ms = |calls: Vec<OffsetDateTime>| -> Vec<i64> {
            calls.into_iter().map(shared::clock::unix_ms).collect()
        };
        let gets = most(&ms(defender.calls(&[
            ModelCall::Get,
            ModelCall::List,
            ModelCall::Link,
            ModelCall::Cancel,
        ])));
        if gets > budget_cfg.gets_per_minute as usize {
            return Err(format!("{gets} GETs in one minute"));
        }
        let posts = most(&ms(defender.calls(&[ModelCall::Submit])));
        if posts > budget_cfg.submissions_per_minute as usize {
            return Err(format!("{posts} submissions in one minute"));
        }
    }
    let _ = MINUTE;
    Ok(tally)
}

async fn read<T: serde::de::DeserializeOwned>(store: &MemStore, key: &str) -> Result<T, String> {
    let s = store.get(key).await.unwrap().ok_or(format!("no {key}"))?;
    serde_json::from_slice(&s.body).map_err(|e| format!("{key}: {e}"))
}

#[tokio::test(start_paused = true)]
async fn every_schedule_of_one_tenant_or_two_keeps_the_lifecycle_invariants() {
    let first = seed_from_env("LIFECYCLE_SEED");
    let n: u64 = std::env::var("LIFECYCLE_SCHEDULES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if std::env::var("LIFECYCLE_SEED").is_ok() {
            1
        } else {
            60
        });
    let started = std::time::Instant::now();
    let mut total = Tally::default();
    for k in 0..n {
        let seed = first.wrapping_add(k);
        match schedule(seed).await {
            Ok(t) => {
                total.deliveries += t.deliveries;
                total.kills += t.kills;
                total.duplicates += t.duplicates;
                total.concurrent += t.concurrent;
                total.dead_lettered += t.dead_lettered;
                total.events += t.events;
                total.two_tenants += t.two_tenants;
                for (o, c) in t.outcomes {
                    *total.outcomes.entry(o).or_default() += c;
                }
            }
            Err(e) => panic!("schedule failed: {e}\nreplay with LIFECYCLE_SEED={seed}"),
        }
    }
    println!(
        "lifecycle: {n} schedules of {RUNS} runs ({} of them over two tenants) from seed {first} in {:.1}s; {} deliveries, {} kills, {} duplicate deliveries, {} concurrent pairs, {} events; {:?}",
        total.two_tenants,
        started.elapsed().as_secs_f64(),
        total.deliveries,
        total.kills,
        total.duplicates,
        total.concurrent,
        total.events,
        total.outcomes
    );
}

/// Seeds that once found a bug: each still keeps every invariant. A seed replays its schedule only
/// while the stages make the same calls in the same order (and the model answers them the same
/// way), so a seed kept here guards less after each change; the bug it found has a directed test
/// where one was written.
/// - 1796051785961714617: poll died after marking its run Collecting and before giving the
///   session back; the redelivery found the run past its stage and left the session held
///   (found before `testkit::defender::Model` replaced the model's own Defender: the schedule
///   it makes now differs).
#[tokio::test(start_paused = true)]
async fn schedules_that_found_bugs_keep_the_invariants() {
    for seed in [1_796_051_785_961_714_617u64] {
        if let Err(e) = schedule(seed).await {
            panic!("schedule {seed} failed again: {e}");
        }
    }
}

/// A printed seed replays its schedule exactly: the same deliveries, kills, duplicates, concurrent
/// pairs and outcomes, twice over (the stages' jitter comes from the seeded clock).
#[tokio::test(start_paused = true)]
async fn a_seed_replays_the_same_schedule() {
    let first = seed_from_env("LIFECYCLE_SEED");
    for k in 0..3 {
        let seed = first.wrapping_add(k);
        let once = schedule(seed).await;
        let again = schedule(seed).await;
        assert_eq!(once, again, "seed {seed} did not replay");
    }
}

/// A stored checkpoint is never trusted: garbage, a part size of 0 (which looped), a hash state with
/// 65 pending bytes (which panicked), parts out of order, another command's evidence key, or a
/// checkpoint from before an upgrade (format 1, naming a staging key) are each discarded, and the
/// copy starts over and lands whole.
#[tokio::test(start_paused = true)]
async fn a_corrupt_checkpoint_is_discarded_and_the_copy_starts_over() {
    use shared::store::keys::checkpoint_key;
    let t0 = OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap();
    let clock = ManualClock::at(t0);
    let machine = MachineId::parse(&"b".repeat(40)).unwrap();
    let commands = vec![shared::defender::Command {
        kind: shared::defender::CommandType::GetFile,
        params: vec![shared::defender::Param {
            key: "Path".into(),
            value: "C:\\x.exe".into(),
        }],
    }];
    let e = env(&[]);
    let collect_cfg = CollectConfig::from_env(&e).unwrap();
    let fetch_rng = Mutex::new(Rng::new(1));
    let fetch = FakeFetch {
        rng: &fetch_rng,
        fault_rate: 0.0,
    };
    let run_id = RunId::derive("t", "corrupt", machine.as_str(), "p");
    let own = shared::store::evidence_key(&run_id, 0, shared::defender::CommandType::GetFile);
    let good_hash = r#"{"state":[0,0,0,0,0,0,0,0],"len":0,"pending":""}"#;
    let bad_hash = format!(
        r#"{{"state":[0,0,0,0,0,0,0,0],"len":65,"pending":"{}"}}"#,
        "00".repeat(65)
    );
    let checkpoint = |key: &str, part_size: u64, parts: &str, offset: u64, hash: &str| {
        format!(
            r#"{{"v":2,"key":"{key}","upload_id":"u","part_size":{part_size},"parts":{parts},"offset":{offset},"package_len":null,"sha256":{hash},"invocations":1}}"#
        )
    };
    let other = shared::store::evidence_key(
        &RunId::derive("t", "other", machine.as_str(), "p"),
        0,
        shared::defender::CommandType::GetFile,
    );
    let cases = [
        ("garbage", "{not json".to_string()),
        ("part size 0", checkpoint(&own, 0, "[]", 0, good_hash)),
        (
            "65 pending hash bytes",
            checkpoint(&own, 5 << 20, "[]", 0, &bad_hash),
        ),
        (
            "parts out of order",
            checkpoint(&own, 5 << 20, r#"[[2,"e"]]"#, 5 << 20, good_hash),
        ),
        (
            "another run's evidence key",
            checkpoint(&other, 5 << 20, "[]", 0, good_hash),
        ),
        (
            "format 1, a staging key",
            format!(
                r#"{{"v":1,"staging":"state/staging/{run_id}/0-abc","upload_id":"u","part_size":{},"parts":[],"offset":0,"package_len":null,"sha256":{good_hash},"invocations":1}}"#,
                5 << 20
            ),
        ),
    ];
    for (case, body) in cases {
        let store = MemStore::default();
        let queue = MemQueue::default();
        let defender = Model::new(&clock, HashMap::new());
        let action = ActionId::parse("00000000-0000-0000-0000-000000000007").unwrap();
        seed_collecting_run(&store, &run_id, "corrupt", &machine, &commands, &action).await;
        store
            .put(&checkpoint_key(&run_id, 0), body.into_bytes(), Put::Always)
            .await
            .unwrap();
        let job = collect_job(&run_id, &action, 0);
        let msg = Delivery::new("c-1", serde_json::to_string(&job).unwrap());
        let done = shared::stages::collect::handle(
            &collect_cfg,
            Ports::new(&store, &queue, &defender, testkit::notary::notary(), &clock),
            &fetch,
            &msg,
        )
        .await
        .unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(done.outcome, "collected", "{case}: {}", done.detail);
        let manifest: Manifest = read(&store, &manifest_key(&run_id)).await.unwrap();
        let key = manifest.commands[0].s3_key.clone().unwrap();
        let stored = store.get(&key).await.unwrap().unwrap().body;
        let path = format!("https://acct.blob.core.windows.net/c/{action}/0");
        assert_eq!(
            &stored[..],
            &package(&path)[..],
            "{case}: the evidence is whole"
        );
        assert!(
            store
                .get(&checkpoint_key(&run_id, 0))
                .await
                .unwrap()
                .is_none(),
            "{case}: no checkpoint left"
        );
    }
}

/// A run record that cannot be read sends the message to the dead-letter queue at once with the
/// reason (retrying cannot make it readable), and nothing panics.
#[tokio::test]
async fn an_unreadable_run_record_is_refused_with_its_reason() {
    use shared::messages::{MESSAGE_VERSION, SubmitJob};
    let store = MemStore::default();
    let queue = MemQueue::default();
    let clock = ManualClock::at(OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap());
    let defender = Model::new(&clock, HashMap::new());
    let run_id = RunId::derive("t", "garbled", "m", "p");
    for garbage in [
        &b"{\"v\":1,"[..],
        b"\xff\xfe",
        b"[]",
        b"{\"state\":\"exploded\"}",
    ] {
        store
            .put(&run_key(&run_id), garbage.to_vec(), Put::Always)
            .await
            .unwrap();
        let job = SubmitJob {
            v: MESSAGE_VERSION,
            run_id: run_id.clone(),
            attempt: 0,
            prev: None,
        };
        let msg = Delivery::new("s-1", serde_json::to_string(&job).unwrap());
        let cfg = SubmitConfig::from_env(&env(&[])).unwrap();
        let out = shared::stages::submit::handle(
            &cfg,
            Ports::new(&store, &queue, &defender, testkit::notary::notary(), &clock),
            testkit::library::sync_off(),
            &msg,
        )
        .await;
        match out {
            Err(StageError::Reject { code, reason }) => {
                assert_eq!(code, "unreadable_run");
                assert!(reason.contains(&run_key(&run_id)), "{reason}");
            }
            other => panic!("{garbage:?}: {other:?}"),
        }
    }
}
