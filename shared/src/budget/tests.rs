use super::*;

const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn sliding_windows_say_how_long_to_wait() {
    let w = Duration::from_secs(60);
    let s = |ts: &[i64]| ts.iter().map(|t| Stamp::Settled(*t)).collect::<Vec<_>>();
    assert_eq!(window_wait(&s(&[]), 2, w, LIMIT, 100_000), None);
    assert_eq!(window_wait(&s(&[50_000]), 2, w, LIMIT, 100_000), None);
    assert_eq!(
        window_wait(&s(&[50_000, 60_000]), 2, w, LIMIT, 100_000),
        Some(Duration::from_secs(10))
    );
    assert_eq!(
        window_wait(&s(&[10_000, 50_000, 60_000]), 2, w, LIMIT, 100_000),
        Some(Duration::from_secs(10))
    );
    assert_eq!(
        window_wait(&s(&[30_000, 40_000]), 2, w, LIMIT, 100_000),
        None,
        "both left the window"
    );
}

#[test]
fn an_open_stamp_counts_until_its_call_limit() {
    let w = Duration::from_secs(60);
    // Granted 100 s ago and never settled: it may still arrive for another 20 s.
    let open = [
        Stamp::Open {
            granted: 0,
            slot: 1,
        },
        Stamp::Settled(90_000),
    ];
    assert_eq!(
        window_wait(&open, 2, w, LIMIT, 100_000),
        Some(Duration::from_secs(6)),
        "full until 150 s, but the open call may settle: look again in a tenth of the window"
    );
    assert_eq!(
        window_wait(&open, 2, w, LIMIT, 151_000),
        None,
        "the settled one left the window; the open one alone is under the limit"
    );
    let two_open = [
        Stamp::Open {
            granted: 0,
            slot: 1,
        },
        Stamp::Open {
            granted: 1_000,
            slot: 2,
        },
    ];
    assert_eq!(
        window_wait(&two_open, 2, w, LIMIT, 170_000),
        Some(Duration::from_secs(6))
    );
    assert_eq!(
        window_wait(&two_open, 2, w, LIMIT, 179_500),
        Some(Duration::from_millis(500)),
        "the first may arrive until 120 s and counts until 180 s"
    );
    assert_eq!(window_wait(&two_open, 2, w, LIMIT, 181_000), None);
}

#[test]
fn stamps_from_any_number_do_not_overflow() {
    let w = Duration::from_secs(60);
    let wild = [
        Stamp::Settled(i64::MAX),
        Stamp::Open {
            granted: i64::MAX,
            slot: 0,
        },
        Stamp::Settled(i64::MIN),
    ];
    assert!(window_wait(&wild, 2, w, LIMIT, 0).is_some());
    let mut b = TenantBudget {
        v: 2,
        submissions: wild.to_vec(),
        running: [("r".to_string(), i64::MAX)].into(),
        gets: wild.to_vec(),
        sessions_unknown: false,
        waiting: vec![ledger::Waiting {
            run: "w".into(),
            due: i64::MAX,
        }],
    };
    let cfg = BudgetConfig {
        submissions_per_minute: 10,
        running_sessions: 25,
        gets_per_minute: 100,
        gets_per_hour: 1500,
        minute: w,
        call_limit: LIMIT,
        lane: Lane::default(),
        tenant: None,
        legacy: false,
    };
    b.tidy(&cfg, 1_000_000);
    assert_eq!(
        b.submissions,
        vec![
            Stamp::Settled(1_000_000),
            Stamp::Open {
                granted: 1_000_000,
                slot: 0
            }
        ],
        "pulled back to now; the one from before the epoch left every window"
    );
    assert_eq!(b.running["r"], 1_000_000);
}

#[test]
fn the_first_budget_format_still_reads() {
    let old = r#"{"v":1,"submissions":[1,2],"running":{"r":3},"gets":[4]}"#;
    let b: TenantBudget = serde_json::from_str(old).unwrap();
    assert_eq!(b.submissions, vec![Stamp::Settled(1), Stamp::Settled(2)]);
    assert_eq!(b.gets, vec![Stamp::Settled(4)]);
}

fn cfg_of(minute: Duration) -> BudgetConfig {
    BudgetConfig {
        submissions_per_minute: 2,
        running_sessions: 25,
        gets_per_minute: 2,
        gets_per_hour: 1500,
        minute,
        call_limit: LIMIT,
        lane: Lane::default(),
        tenant: None,
        legacy: false,
    }
}

#[tokio::test]
async fn a_window_opening_within_a_second_is_waited_for_inline_not_through_the_queue() {
    let store = crate::adapters::memory::MemStore::default();
    let cfg = cfg_of(Duration::from_secs(60));
    let start = time::macros::datetime!(2026-11-30 10:00 UTC);
    let clock = crate::clock::ManualClock::at(start);
    let run = |n: &str| RunId::derive("test", n, "machine", "triage");
    for n in ["a", "b"] {
        let out = submission_call(&store, &cfg, &clock, &run(n), || async { 1 }).await;
        assert_eq!(out.unwrap(), Paced::Ran(1));
    }
    // 59.7 s later the window opens in 300 ms: paused inside the call, then submitted.
    clock.advance(Duration::from_millis(59_700));
    let out = submission_call(&store, &cfg, &clock, &run("c"), || async { 3 }).await;
    assert_eq!(out.unwrap(), Paced::Ran(3));
    assert_eq!(
        clock.now() - start,
        time::Duration::milliseconds(60_000),
        "paused exactly until the window opened"
    );
    // a and b have left the window: d fits beside c; the next opening is then a minute away,
    // and that wait goes back to the queue, with no pause.
    let out = submission_call(&store, &cfg, &clock, &run("d"), || async { 4 }).await;
    assert_eq!(out.unwrap(), Paced::Ran(4));
    let before = clock.now();
    let out = submission_call(&store, &cfg, &clock, &run("e"), || async { 5 }).await;
    assert!(
        matches!(out.unwrap(), Paced::Wait(w) if w > INLINE_WAIT),
        "a long wait is not spent inline"
    );
    assert_eq!(clock.now(), before);
}

#[tokio::test]
async fn gets_pause_inline_too() {
    let store = crate::adapters::memory::MemStore::default();
    let cfg = cfg_of(Duration::from_secs(60));
    let start = time::macros::datetime!(2026-11-30 10:00 UTC);
    let clock = crate::clock::ManualClock::at(start);
    for n in 0..2 {
        assert_eq!(
            get_call(&store, &cfg, &clock, || async move { n })
                .await
                .unwrap(),
            Paced::Ran(n)
        );
    }
    clock.advance(Duration::from_millis(59_999));
    assert_eq!(
        get_call(&store, &cfg, &clock, || async { 7 })
            .await
            .unwrap(),
        Paced::Ran(7)
    );
}

#[test]
fn a_queue_delay_rounds_down_to_whole_seconds_and_is_never_zero() {
    let d = |ms| queue_delay(Duration::from_millis(ms));
    assert_eq!(
        d(59_400),
        Duration::from_secs(59),
        "the rest is paused inline"
    );
    assert_eq!(d(1_999), Duration::from_secs(1));
    assert_eq!(d(300), Duration::from_secs(1));
    assert_eq!(d(0), Duration::from_secs(1));
}

/// A call counts from when it returned, not from when its settling write got through (behind
/// other invocations' writes): the window reopens a minute after the return.
#[tokio::test]
async fn a_call_is_settled_at_its_return_not_at_the_write() {
    let store = crate::adapters::memory::MemStore::default();
    let cfg = BudgetConfig {
        gets_per_minute: 1,
        ..cfg_of(Duration::from_secs(60))
    };
    let start = time::macros::datetime!(2026-11-30 10:00 UTC);
    let clock = crate::clock::ManualClock::at(start);
    let Grant::Granted(slot) = acquire_get(&store, &cfg, &clock).await.unwrap() else {
        panic!("room for one");
    };
    clock.advance(Duration::from_millis(100));
    let returned = unix_ms(clock.now());
    clock.advance(Duration::from_secs(2)); // the settling write waited behind others
    settle(&store, &cfg, &clock, slot, returned).await;
    clock.set(start + time::Duration::milliseconds(60_100));
    assert!(
        matches!(
            acquire_get(&store, &cfg, &clock).await.unwrap(),
            Grant::Granted(_)
        ),
        "the window reopened a minute after the return, not after the write"
    );
}

/// A call that outlived its call limit and a window after it (its open stamp tidied away) still
/// counts at its return when that is inside the window, instead of not at all.
#[tokio::test]
async fn a_call_whose_open_stamp_was_dropped_counts_at_its_return() {
    let store = crate::adapters::memory::MemStore::default();
    let cfg = BudgetConfig {
        submissions_per_minute: 1,
        ..cfg_of(Duration::from_secs(60))
    };
    let start = time::macros::datetime!(2026-11-30 10:00 UTC);
    let clock = crate::clock::ManualClock::at(start);
    let run = RunId::derive("test", "a", "machine", "triage");
    let Grant::Granted(slot) = acquire_submission(&store, &cfg, &clock, &run)
        .await
        .unwrap()
    else {
        panic!("room for one");
    };
    // The call returns after its 120 s limit and a minute more: the open stamp has been dropped.
    clock.advance(Duration::from_secs(200));
    let returned = unix_ms(clock.now());
    settle(&store, &cfg, &clock, slot, returned).await;
    let other = RunId::derive("test", "b", "machine", "triage");
    assert!(
        matches!(
            acquire_submission(&store, &cfg, &clock, &other)
                .await
                .unwrap(),
            Grant::Wait(_)
        ),
        "the late call fills the minute it returned in"
    );
}

/// A store whose budget writes wait at a gate until the test opens it, counting them.
#[derive(Default)]
struct Gated {
    inner: crate::adapters::memory::MemStore,
    open: std::sync::atomic::AtomicBool,
    writes: std::sync::atomic::AtomicU32,
}

impl ObjectStore for Gated {
    async fn get(&self, key: &str) -> Result<Option<crate::ports::Stored>, StoreError> {
        self.inner.get(key).await
    }
    async fn put(&self, key: &str, body: Vec<u8>, c: Put) -> Result<PutResult, StoreError> {
        while !self.open.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.put(key, body, c).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }
}

/// The updates one process queues while a write is in flight go out in the next write, and each
/// is answered as if written alone: three GETs asked at once where the minute has room for two
/// make two grants and one wait, in one write.
#[tokio::test]
async fn contention_within_a_process_queued_updates_share_one_write_and_are_each_answered() {
    let store = Gated::default();
    let cfg = cfg_of(Duration::from_secs(60)); // 2 GETs a minute
    let clock = crate::clock::ManualClock::at(time::macros::datetime!(2026-11-30 10:00 UTC));
    let ask = || acquire_get(&store, &cfg, &clock);
    let opener = async {
        // Every caller has queued by the time the first write may go.
        tokio::time::sleep(Duration::from_millis(50)).await;
        store.open.store(true, std::sync::atomic::Ordering::SeqCst);
    };
    let (a, b, c, ()) = tokio::join!(ask(), ask(), ask(), opener);
    let grants = [a.unwrap(), b.unwrap(), c.unwrap()];
    let granted = grants
        .iter()
        .filter(|g| matches!(g, Grant::Granted(_)))
        .count();
    assert_eq!(granted, 2, "{grants:?}");
    assert!(grants.iter().any(|g| matches!(g, Grant::Wait(_))));
    let writes = store.writes.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        writes <= 2,
        "the first caller's write and one carrying the other two, at most: {writes}"
    );
}

/// A writer whose invocation is cancelled mid-write leaves what it carried queued: the next
/// caller of the process writes it with its own, and nobody waits forever.
#[tokio::test]
async fn contention_a_writer_cancelled_mid_write_leaves_its_batch_to_the_next() {
    let store = std::sync::Arc::new(Gated::default());
    let cfg = cfg_of(Duration::from_secs(60));
    let clock = std::sync::Arc::new(crate::clock::ManualClock::at(
        time::macros::datetime!(2026-11-30 10:00 UTC),
    ));
    let first = {
        let (store, cfg, clock) = (store.clone(), cfg.clone(), clock.clone());
        tokio::spawn(async move { acquire_get(&*store, &cfg, &*clock).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await; // the first holds the turn, at the gate
    let second = {
        let (store, cfg, clock) = (store.clone(), cfg.clone(), clock.clone());
        tokio::spawn(async move { acquire_get(&*store, &cfg, &*clock).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    first.abort();
    store.open.store(true, std::sync::atomic::Ordering::SeqCst);
    let second = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("the queued caller is answered")
        .unwrap()
        .unwrap();
    assert!(matches!(second, Grant::Granted(_)), "{second:?}");
    // The cancelled caller's grant was written too (it counts, conservatively): the minute is full.
    assert!(matches!(
        acquire_get(&*store, &cfg, &*clock).await.unwrap(),
        Grant::Wait(_)
    ));
}

/// A grant carried twice (its write stored, then queued again by the next writer after the first
/// was cancelled) holds one stamp, not two: the window is not filled by a call made once.
#[test]
fn contention_a_grant_carried_twice_holds_one_stamp() {
    let cfg = cfg_of(Duration::from_secs(60));
    let mut b = TenantBudget::new();
    let ops = [
        Op::Get { slot: 7 },
        Op::Submission {
            run: "r".into(),
            slot: 9,
        },
    ];
    for op in ops.iter().chain(ops.iter()) {
        let (answer, _) = op.apply(&mut b, &cfg, 1_000_000);
        assert!(matches!(answer, Answer::Slot(None)), "{answer:?}");
    }
    assert_eq!(b.gets.len(), 1);
    assert_eq!(b.submissions.len(), 1);
    assert_eq!(b.running.len(), 1);
}

/// A tenant's budget counts its own runs' sessions (and the legacy tenant's, its runs from before
/// the registry too), never another tenant's, whose run id its Defender may list in a comment.
#[test]
fn a_tenant_budget_owns_its_own_runs_and_no_other_tenants() {
    let key = |k: &str| crate::ids::TenantKey::parse(k).unwrap();
    let run = |t: Option<&str>| RunId::derive_for(t.map(key).as_ref(), "a", "b", "c", "d");
    let base = cfg_of(Duration::from_secs(60));
    let acme = base.for_tenant(&key("acme"), &crate::tenants::Limits::default());
    assert!(acme.owns(&run(Some("acme"))));
    assert!(!acme.owns(&run(Some("globex"))));
    assert!(!acme.owns(&run(None)));
    let legacy = BudgetConfig {
        legacy: true,
        ..acme.clone()
    };
    assert!(legacy.owns(&run(None)) && legacy.owns(&run(Some("acme"))));
    assert!(!legacy.owns(&run(Some("globex"))));
    assert_eq!(legacy.key(), crate::store::keys::BUDGET_KEY);
    assert_ne!(acme.key(), crate::store::keys::BUDGET_KEY);
    assert!(base.owns(&run(None)) && !base.owns(&run(Some("acme"))));
}

/// A burst waits in one line: each waiting run is told when its own slot opens, comes back then and
/// gets it, in the order the runs first asked; the runs ask about once per slot (not every waiting
/// run at every opening), and the window is never exceeded.
#[test]
fn a_tenant_burst_waits_in_line_and_asks_about_once_per_slot() {
    let cfg = BudgetConfig {
        submissions_per_minute: 10,
        ..cfg_of(Duration::from_secs(60))
    };
    let mut b = TenantBudget::new();
    let runs: Vec<String> = (0..60).map(|i| format!("run-{i:02}")).collect();
    // Every run asks at t=0, then comes back exactly when told; each grant settles at once.
    let mut next: Vec<(i64, usize)> = (0..runs.len()).map(|i| (0, i)).collect();
    let (mut asks, mut granted) = (0, Vec::new());
    let mut slot = 0;
    while let Some(pos) = (0..next.len()).min_by_key(|&i| next[i]) {
        let (now, i) = next.remove(pos);
        b.tidy(&cfg, now);
        asks += 1;
        slot += 1;
        let op = Op::Submission {
            run: runs[i].clone(),
            slot,
        };
        match op.apply(&mut b, &cfg, now).0 {
            Answer::Slot(None) => {
                settle_stamp(&mut b.submissions, slot, now, now, 60_000);
                b.running.remove(&runs[i]);
                granted.push((now, i));
            }
            Answer::Slot(Some(w)) => next.push((now + w.as_millis() as i64, i)),
            other => panic!("{other:?}"),
        }
        assert!(asks < 1_000, "the burst does not drain");
    }
    let order: Vec<usize> = granted.iter().map(|(_, i)| *i).collect();
    assert_eq!(
        order,
        (0..60).collect::<Vec<_>>(),
        "granted in arrival order"
    );
    for (k, (t, _)) in granted.iter().enumerate() {
        let in_minute = granted
            .iter()
            .filter(|(u, _)| *u > t - 60_000 && *u <= *t)
            .count();
        assert!(
            in_minute <= 10,
            "grant {k} at {t} ms: {in_minute} in its minute"
        );
    }
    let last = granted.last().unwrap().0;
    assert!(
        last <= 5 * 60_000 + 1_000,
        "60 runs at 10 a minute: the last at {last} ms"
    );
    assert!(
        asks <= 2 * runs.len(),
        "{asks} asks for {} runs",
        runs.len()
    );
}

/// The line only advises: a run told to wait that never comes back (its message lost, its run
/// ended) holds nobody up, a run that comes back late still gets a free slot, a run that holds a
/// session (its POST failed) is not put behind the line, and a stored line with absurd times is
/// brought back to SQS's 15-minute delay.
#[test]
fn a_tenant_line_holds_nobody_up() {
    let cfg = BudgetConfig {
        submissions_per_minute: 1,
        running_sessions: 2,
        ..cfg_of(Duration::from_secs(60))
    };
    let mut b = TenantBudget::new();
    let ask = |b: &mut TenantBudget, run: &str, slot, now| {
        b.tidy(&cfg, now);
        Op::Submission {
            run: run.into(),
            slot,
        }
        .apply(b, &cfg, now)
        .0
    };
    assert!(matches!(ask(&mut b, "first", 1, 0), Answer::Slot(None)));
    settle_stamp(&mut b.submissions, 1, 0, 0, 60_000);
    let told = |a: Answer| match a {
        Answer::Slot(Some(w)) => w.as_millis() as i64,
        other => panic!("{other:?}"),
    };
    let lost = told(ask(&mut b, "lost", 2, 1_000));
    let late = told(ask(&mut b, "late", 3, 2_000));
    assert_eq!((lost, late), (59_000, 118_000), "told their own slots");
    // "lost" never comes back; "late" comes at 61 s and takes the free slot.
    assert!(matches!(ask(&mut b, "late", 4, 61_000), Answer::Slot(None)));
    assert_eq!(b.waiting.len(), 1, "only lost is still in line");
    settle_stamp(&mut b.submissions, 4, 61_000, 61_000, 60_000);
    // "first" still holds a session (its POST failed): it is not put behind "lost".
    let again = told(ask(&mut b, "first", 5, 62_000));
    assert!(
        again <= 60_000,
        "a session holder waits only for the window: {again}"
    );
    assert!(b.waiting.iter().all(|w| w.run != "first"));
    b.waiting.push(ledger::Waiting {
        run: "forged".into(),
        due: i64::MAX,
    });
    b.tidy(&cfg, 200_000);
    assert!(b.waiting.iter().all(|w| w.due <= 200_000 + 15 * 60_000));
}
