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
    };
    let cfg = BudgetConfig {
        submissions_per_minute: 10,
        running_sessions: 25,
        gets_per_minute: 100,
        gets_per_hour: 1500,
        minute: w,
        call_limit: LIMIT,
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
