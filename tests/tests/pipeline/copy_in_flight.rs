//! Collect's parts in flight (a store whose uploads take time, as S3's do: the in-memory store
//! finishes every upload on its first poll, so no other test has two parts in flight): a deadline with two parts in flight
//! drains them and the checkpoint's hash covers exactly its offset; a download that breaks with a
//! part in flight keeps the stored prefix and uploads the dropped part again under its number; with
//! the first part in flight the upload is aborted and the copy starts over; one chunk larger than a
//! part never puts more than `PARTS_IN_FLIGHT` in flight. In-memory ports; the store's uploads are
//! slowed or gated so that parts really are in flight.
//!
//! And the package's one write (it goes straight to its evidence key, completed only if nothing
//! is there): a completion that went unrecorded (the invocation died right after it) is found and
//! kept, pinned to its version, not uploaded twice under the key; an object someone else put under
//! the key is not replaced, and the command fails naming it.

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use shared::adapters::memory::{MemQueue, MemStore, Sent};
use shared::clock::{Clock, ManualClock};
use shared::defender::{ActionId, Command, CommandType, DownloadLink};
use shared::hash::ResumableSha256;
use shared::messages::{Delivery, encode};
use shared::ports::{
    ByteStream, Completion, Download, Fetch, Head, ObjectStore, Put, PutResult, StoreError, Stored,
    Upload, Uploads,
};
use shared::secret::Secret;
use shared::stages::Ports;
use shared::stages::settings::CollectConfig;
use shared::stages::{Done, StageError};
use shared::store::evidence_key;
use shared::store::keys::checkpoint_key;
use testkit::alerts::run_id;
use testkit::configs::collect_config;
use testkit::defender::Scripted;
use testkit::records::{collect_job, seed_collecting_run};
use testkit::sim::{FILE, M1, machine_id};

const P: usize = 5 << 20;

fn package(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8) ^ ((i >> 13) as u8)).collect()
}

/// MemStore with uploads that take `delay`, optionally gated, counted.
struct Slow<'a> {
    inner: MemStore,
    clock: &'a ManualClock,
    delay: Duration,
    /// When part `.0` starts uploading, the clock jumps by `.1`.
    jump: Option<(i32, Duration)>,
    /// Part `.0` waits for a permit; part `.1` (if any) gives one when it starts.
    gate: Option<(i32, Option<i32>)>,
    permit: tokio::sync::Semaphore,
    now: AtomicUsize,
    max: AtomicUsize,
    started: Mutex<Vec<(i32, Instant)>>,
    finished: Mutex<Vec<(i32, Instant)>>,
    /// The first checkpoint write after an upload completed fails (the invocation dies there).
    die_after_completion: AtomicBool,
    completed: AtomicBool,
}

impl<'a> Slow<'a> {
    fn new(clock: &'a ManualClock, delay: Duration) -> Self {
        Self {
            inner: MemStore::default(),
            clock,
            delay,
            jump: None,
            gate: None,
            permit: tokio::sync::Semaphore::new(0),
            now: AtomicUsize::new(0),
            max: AtomicUsize::new(0),
            started: Mutex::new(Vec::new()),
            finished: Mutex::new(Vec::new()),
            die_after_completion: AtomicBool::new(false),
            completed: AtomicBool::new(false),
        }
    }
    fn started(&self) -> Vec<i32> {
        self.started.lock().unwrap().iter().map(|p| p.0).collect()
    }
    fn finished(&self) -> Vec<i32> {
        self.finished.lock().unwrap().iter().map(|p| p.0).collect()
    }
}

struct Dec<'a>(&'a AtomicUsize);
impl Drop for Dec<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ObjectStore for Slow<'_> {
    async fn get(&self, key: &str) -> Result<Option<Stored>, StoreError> {
        self.inner.get(key).await
    }
    async fn put(&self, key: &str, body: Vec<u8>, c: Put) -> Result<PutResult, StoreError> {
        if key.contains("/checkpoints/")
            && self.completed.load(Ordering::SeqCst)
            && self.die_after_completion.swap(false, Ordering::SeqCst)
        {
            return Err(StoreError("the invocation died here".into()));
        }
        self.inner.put(key, body, c).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }
}

impl Uploads for Slow<'_> {
    async fn open_read(&self, key: &str) -> Result<ByteStream, StoreError> {
        self.inner.open_read(key).await
    }
    async fn head(&self, key: &str, version: Option<&str>) -> Result<Option<Head>, StoreError> {
        self.inner.head(key, version).await
    }
    async fn retain(&self, key: &str, version: Option<&str>) -> Result<(), StoreError> {
        self.inner.retain(key, version).await
    }
    async fn begin_upload(
        &self,
        key: &str,
        meta: BTreeMap<String, String>,
    ) -> Result<String, StoreError> {
        self.inner.begin_upload(key, meta).await
    }
    async fn upload_part(
        &self,
        key: &str,
        id: &str,
        n: i32,
        body: Bytes,
    ) -> Result<Upload<String>, StoreError> {
        self.started.lock().unwrap().push((n, Instant::now()));
        if let Some((at, by)) = self.jump
            && at == n
        {
            self.clock.advance(by);
        }
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        let _dec = Dec(&self.now);
        if let Some((gated, opener)) = self.gate {
            if opener == Some(n) {
                self.permit.add_permits(1);
            }
            if gated == n {
                self.permit.acquire().await.unwrap().forget();
            }
        }
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let r = self.inner.upload_part(key, id, n, body).await;
        self.finished.lock().unwrap().push((n, Instant::now()));
        r
    }
    async fn complete_upload(
        &self,
        key: &str,
        id: &str,
        parts: Vec<(i32, String)>,
    ) -> Result<Completion, StoreError> {
        let done = self.inner.complete_upload(key, id, parts).await;
        if matches!(done, Ok(Completion::Stored { .. })) {
            self.completed.store(true, Ordering::SeqCst);
        }
        done
    }
    async fn abort_upload(&self, key: &str, id: &str) -> Result<(), StoreError> {
        self.inner.abort_upload(key, id).await
    }
}

#[derive(Clone, Copy)]
enum Open {
    Whole,
    /// The stream breaks off after this many bytes (whole chunks).
    BreakAfter(usize),
    /// The stream delivers this many bytes (whole chunks), then nothing, never ending.
    StallAfter(usize),
    Fail,
}

struct Pkg<'a> {
    body: Vec<u8>,
    chunk: usize,
    plan: Mutex<VecDeque<Open>>,
    opens: Mutex<Vec<u64>>,
    /// Opening the download again lets a gated part go (after it has been given up, if it was).
    store: Option<&'a Slow<'a>>,
}

impl Fetch for Pkg<'_> {
    async fn open(&self, _url: &Secret<String>, from: u64) -> Result<Download, String> {
        let n = {
            let mut o = self.opens.lock().unwrap();
            o.push(from);
            o.len()
        };
        if n > 1
            && let Some(s) = self.store
        {
            s.permit.add_permits(1);
        }
        let plan = self.plan.lock().unwrap().pop_front().unwrap_or(Open::Whole);
        let rest = &self.body[from as usize..];
        let mut chunks: Vec<Result<Bytes, String>> = rest
            .chunks(self.chunk)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        match plan {
            Open::Whole => {}
            Open::BreakAfter(b) => {
                chunks.truncate(b / self.chunk);
                chunks.push(Err("download broke off".into()));
            }
            Open::StallAfter(b) => {
                chunks.truncate(b / self.chunk);
                return Ok(Download {
                    content_length: Some(rest.len() as u64),
                    stream: Box::pin(futures_util::StreamExt::chain(
                        futures_util::stream::iter(chunks),
                        futures_util::stream::pending(),
                    )),
                });
            }
            Open::Fail => return Err("download answered HTTP 503".into()),
        }
        Ok(Download {
            content_length: Some(rest.len() as u64),
            stream: Box::pin(futures_util::stream::iter(chunks)),
        })
    }
}

struct Rig<'a> {
    cfg: CollectConfig,
    store: &'a Slow<'a>,
    queue: MemQueue,
    defender: Scripted,
    clock: &'a ManualClock,
    run: shared::ids::RunId,
    msg: Mutex<Delivery>,
}

impl<'a> Rig<'a> {
    async fn new(store: &'a Slow<'a>, clock: &'a ManualClock) -> Self {
        let run = run_id("native", "review-copy", M1, "malware-file");
        let action = ActionId::parse("00000000-0000-0000-0000-000000000042").unwrap();
        let commands = vec![Command::get_file(FILE)];
        seed_collecting_run(
            store,
            &run,
            "review-copy",
            &machine_id(M1),
            &commands,
            &action,
        )
        .await;
        let msg = Delivery::new("collect-1", encode(&collect_job(&run, &action, 0)));
        Self {
            cfg: collect_config(),
            store,
            queue: MemQueue::default(),
            // Answers only the link call.
            defender: Scripted::answering_links(DownloadLink {
                url: Secret::new("http://127.0.0.1/pkg?se=2099-01-01T00%3A00%3A00Z&sig=x".into()),
                expires_at: None,
            }),
            clock,
            run,
            msg: Mutex::new(msg),
        }
    }
    /// One invocation; the message it hands on (if any) is the next one's.
    async fn invoke(&self, fetch: &Pkg<'_>) -> Result<Done, StageError> {
        let msg = self.msg.lock().unwrap().clone();
        let done = shared::stages::collect::handle(
            &self.cfg,
            Ports::new(
                self.store,
                &self.queue,
                &self.defender,
                testkit::notary::notary(),
                self.clock as &dyn Clock,
            ),
            fetch,
            &msg,
        )
        .await;
        if let Some(Sent::Message { id, body, .. }) = self.queue.sent.lock().unwrap().last() {
            *self.msg.lock().unwrap() = Delivery::new(id, body);
        }
        self.clock.advance(Duration::from_secs(1));
        done
    }
    async fn checkpoint(&self) -> Option<serde_json::Value> {
        self.store
            .get(&checkpoint_key(&self.run, 0))
            .await
            .unwrap()
            .map(|s| serde_json::from_slice(&s.body).unwrap())
    }
    async fn evidence(&self) -> Option<Bytes> {
        self.store
            .get(&evidence_key(&self.run, 0, CommandType::GetFile))
            .await
            .unwrap()
            .map(|s| s.body)
    }
}

fn hash_of(bytes: &[u8]) -> ResumableSha256 {
    let mut h = ResumableSha256::new();
    h.update(bytes);
    h
}

/// Two parts in flight when the time budget runs out: both are drained, the checkpoint stands at
/// the end of the later one with the hash of exactly those bytes, and the next invocation goes on
/// from there with the next part number.
#[tokio::test]
async fn a_checkpoint_at_the_time_budget_covers_exactly_the_parts_drained() {
    let clock = ManualClock::at(time::OffsetDateTime::now_utc());
    let mut store = Slow::new(&clock, Duration::from_millis(5));
    // Part 2 starts after the deadline and is held until part 3 starts: at part 3's boundary,
    // parts 2 and 3 are both in flight.
    store.jump = Some((2, Duration::from_secs(120)));
    store.gate = Some((2, Some(3)));
    let rig = Rig::new(&store, &clock).await;
    let body = package(4 * P + 1234);
    let fetch = Pkg {
        body: body.clone(),
        chunk: 64 << 10,
        plan: Mutex::new(VecDeque::new()),
        opens: Mutex::new(Vec::new()),
        store: None,
    };
    let done = rig.invoke(&fetch).await.unwrap();
    assert_eq!(done.outcome.as_str(), "continued", "{}", done.detail);
    assert_eq!(
        store.max.load(Ordering::SeqCst),
        2,
        "two parts were in flight"
    );
    let ck = rig.checkpoint().await.expect("a checkpoint");
    assert_eq!(ck["offset"], 3 * P as u64, "{ck}");
    assert_eq!(ck["parts"].as_array().unwrap().len(), 3, "{ck}");
    let h: ResumableSha256 = serde_json::from_value(ck["sha256"].clone()).unwrap();
    assert_eq!(h, hash_of(&body[..3 * P]), "the hash is the offset's");

    let done = rig.invoke(&fetch).await.unwrap();
    assert_eq!(done.outcome.as_str(), "collected", "{}", done.detail);
    assert_eq!(*fetch.opens.lock().unwrap(), vec![0, 3 * P as u64]);
    assert_eq!(
        store.started(),
        vec![1, 2, 3, 4, 5],
        "each part once, numbered in order"
    );
    let got = rig.evidence().await.unwrap();
    assert_eq!(Sha256::digest(&got), Sha256::digest(&body));
}

/// A download that breaks off while part 2 uploads, and no fresh download to be had: part 2 is
/// dropped mid-upload (never finished), the checkpoint keeps part 1, and the next attempt uploads
/// part 2 again under the same number. The sequential engine would have kept part 2 too.
#[tokio::test]
async fn a_broken_download_drops_the_part_in_flight() {
    let clock = ManualClock::at(time::OffsetDateTime::now_utc());
    let mut store = Slow::new(&clock, Duration::ZERO);
    // Part 2 waits until the download is opened again (when it is given up already).
    store.gate = Some((2, None));
    let rig = Rig::new(&store, &clock).await;
    let body = package(3 * P + 10);
    let fetch = Pkg {
        body: body.clone(),
        chunk: 64 << 10,
        plan: Mutex::new([Open::BreakAfter(2 * P + P / 2), Open::Fail].into()),
        opens: Mutex::new(Vec::new()),
        store: Some(&store),
    };
    let done = rig.invoke(&fetch).await.unwrap();
    assert_eq!(done.outcome.as_str(), "copy_retry", "{}", done.detail);
    let ck = rig.checkpoint().await.expect("a checkpoint");
    println!(
        "after the break: started {:?}, finished {:?}, checkpoint parts {}",
        store.started(),
        store.finished(),
        ck["parts"]
    );
    // Facts of the new engine:
    assert_eq!(store.finished(), vec![1], "part 2 was dropped mid-upload");
    assert_eq!(ck["offset"], P as u64);

    let done = rig.invoke(&fetch).await.unwrap();
    assert_eq!(done.outcome.as_str(), "collected", "{}", done.detail);
    assert_eq!(
        store.started(),
        vec![1, 2, 2, 3, 4],
        "part 2 again, same number"
    );
    let got = rig.evidence().await.unwrap();
    assert_eq!(Sha256::digest(&got), Sha256::digest(&body));
}

/// The same with part 1 in flight: nothing is stored yet, so the upload is aborted and 1.5 parts'
/// download is thrown away (the sequential engine stored part 1 before downloading on).
#[tokio::test]
async fn a_broken_download_with_the_first_part_in_flight_aborts_the_upload() {
    let clock = ManualClock::at(time::OffsetDateTime::now_utc());
    let mut store = Slow::new(&clock, Duration::ZERO);
    store.gate = Some((1, None));
    let rig = Rig::new(&store, &clock).await;
    let body = package(2 * P + 10);
    let fetch = Pkg {
        body: body.clone(),
        chunk: 64 << 10,
        plan: Mutex::new([Open::BreakAfter(P + P / 2), Open::Fail].into()),
        opens: Mutex::new(Vec::new()),
        store: Some(&store),
    };
    let done = rig.invoke(&fetch).await.unwrap();
    assert_eq!(done.outcome.as_str(), "copy_retry", "{}", done.detail);
    println!(
        "started {:?}, finished {:?}, checkpoint {:?}",
        store.started(),
        store.finished(),
        rig.checkpoint().await
    );
    assert!(
        rig.checkpoint().await.is_none(),
        "no checkpoint: the upload was aborted"
    );
    let done = rig.invoke(&fetch).await.unwrap();
    assert_eq!(done.outcome.as_str(), "collected", "{}", done.detail);
    assert_eq!(
        *fetch.opens.lock().unwrap(),
        vec![0, P as u64 + P as u64 / 2, 0]
    );
}

/// A chunk larger than a part: every part in it goes in flight at once.
#[tokio::test]
async fn one_large_chunk_keeps_parts_in_flight_within_the_limit() {
    let clock = ManualClock::at(time::OffsetDateTime::now_utc());
    let store = Slow::new(&clock, Duration::from_millis(20));
    let rig = Rig::new(&store, &clock).await;
    let body = package(4 * P + 7);
    let fetch = Pkg {
        body: body.clone(),
        chunk: body.len(),
        plan: Mutex::new(VecDeque::new()),
        opens: Mutex::new(Vec::new()),
        store: None,
    };
    let done = rig.invoke(&fetch).await.unwrap();
    assert_eq!(done.outcome.as_str(), "collected", "{}", done.detail);
    let max = store.max.load(Ordering::SeqCst);
    println!("max uploads at once: {max}");
    assert!(
        max <= shared::stages::collect::PARTS_IN_FLIGHT,
        "{max} uploads at once, more than PARTS_IN_FLIGHT"
    );
}

/// The invocation dies right after the upload completed, before the checkpoint says so. The
/// message comes again: the checkpoint says every part was uploaded ("completing"), so no link and
/// no download are needed (the second download here would fail); completing again finds the
/// upload gone and the object there, hashes it, and keeps it, pinned to its version and retained.
/// Nothing is left open, and the key was written once.
#[tokio::test]
async fn an_unrecorded_completion_is_found_and_kept() {
    let clock = ManualClock::at(time::OffsetDateTime::now_utc());
    let store = Slow::new(&clock, Duration::ZERO);
    store.die_after_completion.store(true, Ordering::SeqCst);
    let rig = Rig::new(&store, &clock).await;
    let body = package(2 * P + 77);
    let fetch = Pkg {
        body: body.clone(),
        chunk: 64 << 10,
        plan: Mutex::new([Open::Whole, Open::Fail].into()),
        opens: Mutex::new(Vec::new()),
        store: None,
    };
    let died = rig.invoke(&fetch).await;
    assert!(died.is_err(), "the invocation died after completing");
    let key = evidence_key(&rig.run, 0, CommandType::GetFile);
    let first = store
        .inner
        .head(&key, None)
        .await
        .unwrap()
        .and_then(|h| h.version_id);
    assert!(first.is_some());

    let done = rig.invoke(&fetch).await.unwrap();
    assert_eq!(done.outcome.as_str(), "collected", "{}", done.detail);
    assert_eq!(*fetch.opens.lock().unwrap(), vec![0], "downloaded once");
    assert_eq!(store.started(), vec![1, 2, 3], "each part uploaded once");
    assert_eq!(
        store
            .inner
            .head(&key, None)
            .await
            .unwrap()
            .and_then(|h| h.version_id),
        first,
        "the object is the first completion's"
    );
    let got = rig.evidence().await.unwrap();
    assert_eq!(Sha256::digest(&got), Sha256::digest(&body));
    let cmd = manifest_command(&rig).await;
    assert_eq!(cmd.s3_version_id, first, "pinned to the version there");
    assert_eq!(
        cmd.sha256.as_deref(),
        Some(hex::encode(Sha256::digest(&body)).as_str())
    );
    assert!(
        store
            .inner
            .retained
            .lock()
            .unwrap()
            .contains(&(key.clone(), first.clone())),
        "the kept version is retained"
    );
    assert_eq!(store.inner.open_uploads(), 0);
    assert!(rig.checkpoint().await.is_none());
}

/// Something else already lies under the command's evidence key: it is not replaced (the
/// completion asks If-None-Match), the upload is aborted, and the command fails naming the key and
/// both hashes (an object of another length is not even read); the run still ends with its
/// manifest.
#[tokio::test]
async fn an_object_already_under_the_evidence_key_is_not_replaced() {
    for same_length in [true, false] {
        let clock = ManualClock::at(time::OffsetDateTime::now_utc());
        let store = Slow::new(&clock, Duration::ZERO);
        let rig = Rig::new(&store, &clock).await;
        let key = evidence_key(&rig.run, 0, CommandType::GetFile);
        let body = package(P + 5);
        let planted = if same_length {
            vec![7u8; body.len()]
        } else {
            b"planted by someone else".to_vec()
        };
        store
            .inner
            .put(&key, planted.clone(), Put::IfAbsent)
            .await
            .unwrap();
        let fetch = Pkg {
            body: body.clone(),
            chunk: 64 << 10,
            plan: Mutex::new(VecDeque::new()),
            opens: Mutex::new(Vec::new()),
            store: None,
        };
        let done = rig.invoke(&fetch).await.unwrap();
        assert_eq!(done.outcome.as_str(), "collect_failed", "{}", done.detail);
        assert_eq!(
            &rig.evidence().await.unwrap()[..],
            &planted[..],
            "not replaced"
        );
        assert_eq!(store.inner.open_uploads(), 0, "the upload was aborted");
        let cmd = manifest_command(&rig).await;
        let reason = cmd.reason.clone().unwrap_or_default();
        let theirs = if same_length {
            hex::encode(Sha256::digest(&planted))
        } else {
            "not read".to_string()
        };
        assert!(
            reason.contains(&key)
                && reason.contains(&theirs)
                && reason.contains(&hex::encode(Sha256::digest(&body)))
                && reason.contains("not replaced"),
            "{reason}"
        );
        assert_eq!(
            cmd.sha256, None,
            "no hash is claimed for what was not stored"
        );
        assert!(store.inner.retained.lock().unwrap().is_empty());
    }
}

/// A stored checkpoint is believed only as far as the bucket agrees: one that says the object
/// stands (with a hash and a version the bucket does not hold) starts the copy over instead of
/// recording a hash nobody checked; one that says the upload is whole while its upload is gone and
/// nothing is under the key starts over too. Both then land the real package.
#[tokio::test]
async fn a_completed_checkpoint_the_bucket_does_not_back_starts_over() {
    for stored in [true, false] {
        let clock = ManualClock::at(time::OffsetDateTime::now_utc());
        let store = Slow::new(&clock, Duration::ZERO);
        let rig = Rig::new(&store, &clock).await;
        let key = evidence_key(&rig.run, 0, CommandType::GetFile);
        let forged = serde_json::json!({
            "v": 2, "key": key, "upload_id": "no-such-upload", "part_size": P,
            "parts": [[1, "etag-1"]], "offset": P, "package_len": P,
            "sha256": serde_json::to_value(hash_of(&[0u8; 16])).unwrap(),
            "invocations": 1,
            "completed": {"size": P, "sha256": "00".repeat(32), "sha256_decompressed": null,
                "size_decompressed": null, "exit_code": null, "output_excerpt": null,
                "errors_excerpt": null, "version_id": "no-such-version", "stored": stored,
                "decompressed_pending": false},
        });
        store
            .put(
                &checkpoint_key(&rig.run, 0),
                serde_json::to_vec(&forged).unwrap(),
                Put::Always,
            )
            .await
            .unwrap();
        let body = package(P + 9);
        let fetch = Pkg {
            body: body.clone(),
            chunk: 64 << 10,
            plan: Mutex::new(VecDeque::new()),
            opens: Mutex::new(Vec::new()),
            store: None,
        };
        let done = rig.invoke(&fetch).await.unwrap();
        assert_eq!(
            done.outcome.as_str(),
            "copy_retry",
            "stored {stored}: {}",
            done.detail
        );
        assert!(rig.checkpoint().await.is_none(), "stored {stored}");
        let done = rig.invoke(&fetch).await.unwrap();
        assert_eq!(
            done.outcome.as_str(),
            "collected",
            "stored {stored}: {}",
            done.detail
        );
        let cmd = manifest_command(&rig).await;
        assert_eq!(
            cmd.sha256.as_deref(),
            Some(hex::encode(Sha256::digest(&body)).as_str()),
            "stored {stored}"
        );
    }
}

async fn manifest_command(rig: &Rig<'_>) -> shared::store::ManifestCommand {
    let manifest: shared::store::Manifest = serde_json::from_slice(
        &rig.store
            .get(&shared::store::manifest_key(&rig.run))
            .await
            .unwrap()
            .expect("the run ends with its manifest")
            .body,
    )
    .unwrap();
    manifest.commands[0].clone()
}

/// Defect 7: collect checked its time budget only at part boundaries, so a download that stalled
/// mid-part kept the invocation waiting past its budget (and its function's timeout). A chunk is
/// now waited for until the budget is over and a short grace after it; the checkpoint then stands
/// at the last stored part and the next invocation goes on from there.
#[tokio::test(start_paused = true)]
async fn a_download_that_stalls_mid_part_does_not_outlive_the_time_budget() {
    let clock = ManualClock::at(time::OffsetDateTime::now_utc());
    let store = Slow::new(&clock, Duration::ZERO);
    let mut rig = Rig::new(&store, &clock).await;
    rig.cfg.time_budget = Duration::from_secs(300);
    let body = package(3 * P + 77);
    let fetch = Pkg {
        body: body.clone(),
        chunk: 64 << 10,
        // One part and a half, then silence.
        plan: Mutex::new([Open::StallAfter(P + P / 2)].into()),
        opens: Mutex::new(Vec::new()),
        store: None,
    };
    let started = tokio::time::Instant::now();
    let done = rig.invoke(&fetch).await.unwrap();
    let waited = started.elapsed();
    assert_eq!(done.outcome.as_str(), "continued", "{}", done.detail);
    assert!(
        waited <= Duration::from_secs(300) + shared::stages::collect::STALL_GRACE,
        "the stalled download held the invocation {waited:?}"
    );
    let ck = rig.checkpoint().await.expect("a checkpoint");
    assert_eq!(ck["offset"], P as u64, "{ck}");
    // The next invocation goes on from the stored part and finishes.
    let done = rig.invoke(&fetch).await.unwrap();
    assert_eq!(done.outcome.as_str(), "collected", "{}", done.detail);
    assert_eq!(*fetch.opens.lock().unwrap(), vec![0, P as u64]);
    let got = rig.evidence().await.unwrap();
    assert_eq!(Sha256::digest(&got), Sha256::digest(&body));
}
