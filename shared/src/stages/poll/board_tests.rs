//! The status board over in-memory ports: how many Defender calls a look costs, and what it sees.

use crate::store::keys::STATUS_BOARD_KEY;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use super::*;
use crate::adapters::memory::MemStore;
use crate::clock::ManualClock;
use crate::config::Env;
use crate::defender::{DownloadLink, LiveResponseRequest};

fn t0() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap()
}

fn ts(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn action_id(n: u32) -> ActionId {
    ActionId::parse(&format!("00000000-0000-0000-0000-{n:012}")).unwrap()
}

/// Defender with actions of its own, counting lists and reads by id.
struct Tenant {
    actions: Mutex<Vec<MachineAction>>,
    lists: AtomicU32,
    reads: AtomicU32,
    listed_since: Mutex<Vec<Option<OffsetDateTime>>>,
}

impl Tenant {
    fn new() -> Self {
        Self {
            actions: Mutex::new(Vec::new()),
            lists: AtomicU32::new(0),
            reads: AtomicU32::new(0),
            listed_since: Mutex::new(Vec::new()),
        }
    }
    fn add(&self, n: u32, created: OffsetDateTime, comment: &str) {
        self.actions.lock().unwrap().push(MachineAction {
            id: action_id(n),
            kind: Some("LiveResponse".into()),
            requestor: Some("app".into()),
            requestor_comment: Some(comment.into()),
            status: ActionStatus::InProgress,
            machine_id: MachineId::parse(&"a".repeat(40)).unwrap(),
            computer_dns_name: None,
            creation_date_time_utc: Some(ts(created)),
            last_update_date_time_utc: None,
            cancellation_requestor: None,
            cancellation_comment: None,
            cancellation_date_time_utc: None,
            commands: vec![],
        });
    }
    fn set(&self, n: u32, status: ActionStatus) {
        for a in self.actions.lock().unwrap().iter_mut() {
            if a.id == action_id(n) {
                a.status = status.clone();
            }
        }
    }
    fn calls(&self) -> (u32, u32) {
        (
            self.lists.load(Ordering::SeqCst),
            self.reads.load(Ordering::SeqCst),
        )
    }
}

impl Defender for Tenant {
    async fn run_live_response(
        &self,
        _: &MachineId,
        _: &LiveResponseRequest,
    ) -> Result<MachineAction, DefenderError> {
        unreachable!("a look never submits")
    }
    async fn get_machine_action(&self, id: &ActionId) -> Result<MachineAction, DefenderError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.actions
            .lock()
            .unwrap()
            .iter()
            .find(|a| &a.id == id)
            .cloned()
            .ok_or(DefenderError::NotFound {
                code: String::new(),
                message: "no such action".into(),
            })
    }
    async fn list_machine_actions(
        &self,
        filter: &ActionFilter,
    ) -> Result<Vec<MachineAction>, DefenderError> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        self.listed_since.lock().unwrap().push(filter.created_since);
        Ok(self
            .actions
            .lock()
            .unwrap()
            .iter()
            .filter(|a| {
                let created = a.creation_date_time_utc.as_deref().and_then(parse_time);
                filter
                    .created_since
                    .is_none_or(|s| created.is_some_and(|c| c >= s))
            })
            .cloned()
            .collect())
    }
    async fn result_download_link(
        &self,
        _: &ActionId,
        _: u32,
    ) -> Result<DownloadLink, DefenderError> {
        unreachable!("a look never downloads")
    }
    async fn cancel_machine_action(
        &self,
        _: &ActionId,
        _: &str,
    ) -> Result<MachineAction, DefenderError> {
        unreachable!("a look never cancels")
    }
}

struct NoEnv;
impl Env for NoEnv {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
}

fn budget() -> BudgetConfig {
    BudgetConfig::from_env(&NoEnv).unwrap()
}

async fn seen(
    store: &MemStore,
    tenant: &Tenant,
    clock: &ManualClock,
    n: u32,
    submitted: OffsetDateTime,
) -> MachineAction {
    match look(store, tenant, &budget(), clock, submitted, &action_id(n))
        .await
        .unwrap()
    {
        Paced::Ran(Ok(a)) => a,
        Paced::Ran(Err(e)) => panic!("action {n}: {e}"),
        Paced::Wait(w) => panic!("action {n}: paced {w:?}"),
    }
}

/// The board as stored.
async fn stored_board(store: &MemStore) -> Board {
    let stored = store.get(STATUS_BOARD_KEY).await.unwrap().expect("a board");
    serde_json::from_slice(&stored.body).unwrap()
}

/// The ids of the actions on the stored board.
async fn listed_ids(store: &MemStore) -> Vec<ActionId> {
    stored_board(store)
        .await
        .actions
        .into_iter()
        .map(|a| a.id)
        .collect()
}

/// Twenty-five running actions looked at within a board's freshness cost one listing, and no GET
/// each: the reason the board exists.
#[tokio::test]
async fn many_looks_within_freshness_cost_one_listing() {
    let (store, tenant, clock) = (MemStore::default(), Tenant::new(), ManualClock::at(t0()));
    for n in 0..25 {
        tenant.add(n, t0(), &format!("lr-run:{n:032}"));
    }
    for n in 0..25 {
        let a = seen(&store, &tenant, &clock, n, t0()).await;
        assert_eq!(a.status, ActionStatus::InProgress);
        clock.advance(Duration::from_millis(100));
    }
    assert_eq!(tenant.calls(), (1, 0), "(lists, reads by id)");
    // Stale: the next look lists again, once.
    clock.advance(FRESH);
    for n in 0..25 {
        seen(&store, &tenant, &clock, n, t0()).await;
    }
    assert_eq!(tenant.calls(), (2, 0));
}

/// An action the board says ended is read by id (its commands as Defender records them); one
/// the board does not list (just created) is read by id too.
#[tokio::test]
async fn an_ended_or_unlisted_action_is_read_by_id() {
    let (store, tenant, clock) = (MemStore::default(), Tenant::new(), ManualClock::at(t0()));
    tenant.add(1, t0(), "lr-run:1");
    tenant.add(2, t0(), "lr-run:2");
    tenant.set(2, ActionStatus::Succeeded);
    assert_eq!(
        seen(&store, &tenant, &clock, 1, t0()).await.status,
        ActionStatus::InProgress
    );
    assert_eq!(tenant.calls(), (1, 0));
    assert_eq!(
        seen(&store, &tenant, &clock, 2, t0()).await.status,
        ActionStatus::Succeeded
    );
    assert_eq!(tenant.calls(), (1, 1), "ended: one read by id");
    // Created after the listing: not on the fresh board, read by id without listing again.
    tenant.add(3, t0(), "lr-run:3");
    assert_eq!(
        seen(&store, &tenant, &clock, 3, t0()).await.status,
        ActionStatus::InProgress
    );
    assert_eq!(tenant.calls(), (1, 2));
}

/// A run older than what the board covers refreshes it from its own submission, and the board
/// then keeps covering it (and every newer run) while it runs.
#[tokio::test]
async fn the_board_covers_the_oldest_running_action() {
    let (store, tenant, clock) = (MemStore::default(), Tenant::new(), ManualClock::at(t0()));
    let old = t0() - time::Duration::hours(1);
    tenant.add(1, old, "lr-run:old");
    tenant.add(2, t0(), "lr-run:new");
    seen(&store, &tenant, &clock, 2, t0()).await;
    seen(&store, &tenant, &clock, 1, old).await;
    assert_eq!(
        tenant.calls(),
        (2, 0),
        "the old run listed from its own time"
    );
    clock.advance(FRESH * 2);
    // A refresh by the new run still covers the old one, which is still running.
    seen(&store, &tenant, &clock, 2, t0()).await;
    seen(&store, &tenant, &clock, 1, old).await;
    assert_eq!(tenant.calls(), (3, 0));
    let since = tenant
        .listed_since
        .lock()
        .unwrap()
        .last()
        .cloned()
        .flatten();
    assert!(since.is_some_and(|s| s <= old), "{since:?}");
}

/// Defect 7: one old unfinished action (a Pending one for an offline device, up to three days)
/// widened every listing back to its creation, until the listings filled a page and each look fell
/// back to a read by id. The listing now reaches back at most WINDOW; the old action is read by id.
#[tokio::test]
async fn an_old_unfinished_action_does_not_widen_the_status_board_listing() {
    let (store, tenant, clock) = (MemStore::default(), Tenant::new(), ManualClock::at(t0()));
    let old = t0() - time::Duration::days(3);
    tenant.add(1, old, "lr-run:old");
    tenant.add(2, t0(), "lr-run:new");
    seen(&store, &tenant, &clock, 1, old).await;
    assert_eq!(tenant.calls(), (0, 1), "the old action alone: read by id");
    for _ in 0..3 {
        seen(&store, &tenant, &clock, 2, t0()).await;
        seen(&store, &tenant, &clock, 1, old).await;
        clock.advance(FRESH * 2);
    }
    for since in tenant.listed_since.lock().unwrap().iter() {
        assert!(
            since.is_some_and(|s| s >= t0() - WINDOW),
            "a listing reached back to {since:?}"
        );
    }
    assert_eq!(tenant.calls(), (3, 4), "(lists, reads by id)");
}

/// Only the pipeline's actions are kept (a tenant's other live responses are not stored), and a
/// board that cannot be read is rebuilt, not trusted.
#[tokio::test]
async fn the_board_keeps_the_pipelines_actions_and_survives_garbage() {
    let (store, tenant, clock) = (MemStore::default(), Tenant::new(), ManualClock::at(t0()));
    tenant.add(1, t0(), "lr-run:1");
    tenant.add(2, t0(), "an analyst's session");
    seen(&store, &tenant, &clock, 1, t0()).await;
    assert_eq!(listed_ids(&store).await, vec![action_id(1)]);
    store
        .put(STATUS_BOARD_KEY, b"{not json".to_vec(), Put::Always)
        .await
        .unwrap();
    assert_eq!(
        seen(&store, &tenant, &clock, 1, t0()).await.status,
        ActionStatus::InProgress
    );
    assert_eq!(tenant.calls(), (2, 0), "listed again");
    let again = stored_board(&store).await;
    assert_eq!(again.actions.len(), 1);
}

/// While another poll holds a fresh claim to refresh, a stale board still answers (no second
/// listing); a claim whose holder died lapses and the next look refreshes.
#[tokio::test]
async fn one_poll_refreshes_at_a_time() {
    let (store, tenant, clock) = (MemStore::default(), Tenant::new(), ManualClock::at(t0()));
    tenant.add(1, t0(), "lr-run:1");
    seen(&store, &tenant, &clock, 1, t0()).await;
    clock.advance(FRESH + Duration::from_secs(1));
    let stored = store.get(STATUS_BOARD_KEY).await.unwrap().unwrap();
    let mut b: Board = serde_json::from_slice(&stored.body).unwrap();
    b.refreshing_since = Some(clock.now());
    store
        .put(
            STATUS_BOARD_KEY,
            serde_json::to_vec(&b).unwrap(),
            Put::Always,
        )
        .await
        .unwrap();
    seen(&store, &tenant, &clock, 1, t0()).await;
    assert_eq!(tenant.calls(), (1, 0), "another poll is refreshing");
    clock.advance(CLAIM);
    seen(&store, &tenant, &clock, 1, t0()).await;
    assert_eq!(tenant.calls(), (2, 0), "the claim lapsed");
}

/// A board dated in the future (a skewed clock, a forged object) is not trusted as fresh: the next
/// look lists again and sees the action's real state.
#[tokio::test]
async fn a_board_from_the_future_is_stale() {
    let (store, tenant, clock) = (MemStore::default(), Tenant::new(), ManualClock::at(t0()));
    tenant.add(1, t0(), "lr-run:1 alert:x");
    seen(&store, &tenant, &clock, 1, t0()).await;
    let stored = store.get(STATUS_BOARD_KEY).await.unwrap().unwrap();
    let mut b: Board = serde_json::from_slice(&stored.body).unwrap();
    b.fetched_at = t0() + time::Duration::days(365);
    b.refreshing_since = Some(t0() + time::Duration::days(365));
    store
        .put(
            STATUS_BOARD_KEY,
            serde_json::to_vec(&b).unwrap(),
            Put::Always,
        )
        .await
        .unwrap();
    tenant.set(1, ActionStatus::Succeeded);
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        seen(&store, &tenant, &clock, 1, t0()).await.status,
        ActionStatus::Succeeded
    );
    assert_eq!(tenant.calls(), (2, 1), "listed again, then read by id");
}

/// Only a comment whose first word is a run's tag makes an action the pipeline's: an analyst's
/// session that mentions a tag further on is not kept.
#[tokio::test]
async fn a_tag_further_in_a_comment_does_not_count() {
    let (store, tenant, clock) = (MemStore::default(), Tenant::new(), ManualClock::at(t0()));
    tenant.add(1, t0(), "lr-run:1 alert:a playbook:p");
    tenant.add(2, t0(), "looking at lr-run:1 by hand");
    seen(&store, &tenant, &clock, 1, t0()).await;
    assert_eq!(listed_ids(&store).await, vec![action_id(1)]);
}

/// A store that refuses the status board (a policy without it, an outage of that key), and keeps
/// everything else (the budget) in memory; `refuse_reads` false refuses only writes.
struct NoBoard {
    inner: MemStore,
    refuse_reads: bool,
}

impl ObjectStore for NoBoard {
    async fn get(&self, key: &str) -> Result<Option<crate::ports::Stored>, StoreError> {
        if key == STATUS_BOARD_KEY && self.refuse_reads {
            return Err(StoreError("AccessDenied (403)".into()));
        }
        self.inner.get(key).await
    }
    async fn put(&self, key: &str, body: Vec<u8>, cond: Put) -> Result<PutResult, StoreError> {
        if key == STATUS_BOARD_KEY {
            return Err(StoreError("AccessDenied (403)".into()));
        }
        self.inner.put(key, body, cond).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }
}

/// A board the store will not give or take does not stop polling: a look reads its action by id
/// (within the budget) when the board cannot be read or claimed, and lists without keeping the
/// listing when it cannot be written.
#[tokio::test]
async fn a_board_the_store_refuses_costs_a_call_not_the_poll() {
    // (refuse reads, a stale board already stored, expected (lists, reads by id))
    for (refuse_reads, stale_board, expected) in [
        (true, false, (0, 2)),
        (false, true, (0, 2)),
        (false, false, (2, 1)),
    ] {
        let store = NoBoard {
            inner: MemStore::default(),
            refuse_reads,
        };
        let (tenant, clock) = (Tenant::new(), ManualClock::at(t0()));
        tenant.add(1, t0(), "lr-run:1");
        tenant.add(2, t0(), "lr-run:2");
        tenant.set(2, ActionStatus::Succeeded);
        if stale_board {
            let old = Board {
                v: 1,
                fetched_at: t0() - time::Duration::minutes(1),
                since: t0() - time::Duration::minutes(10),
                partial: false,
                refreshing_since: None,
                actions: vec![],
            };
            store
                .inner
                .put(STATUS_BOARD_KEY, encode(&old).unwrap(), Put::Always)
                .await
                .unwrap();
        }
        for (n, status) in [(1, ActionStatus::InProgress), (2, ActionStatus::Succeeded)] {
            let look = look(&store, &tenant, &budget(), &clock, t0(), &action_id(n))
                .await
                .expect("a refused board is not a failed poll");
            match look {
                Paced::Ran(Ok(a)) => assert_eq!(a.status, status),
                other => panic!("action {n}: {other:?}"),
            }
        }
        assert_eq!(
            tenant.calls(),
            expected,
            "(lists, reads by id) with reads refused {refuse_reads}, a stale board {stale_board}"
        );
        let budget = store.inner.get(crate::budget::BUDGET_KEY).await.unwrap();
        assert!(budget.is_some(), "the calls went through the GET budget");
    }
}
