//! The tenant budget over an in-memory store: submissions per sliding minute, the session cap,
//! sessions given back, sessions left behind, and the GET windows.

use std::time::Duration;

use shared::budget::{BudgetConfig, Grant, acquire_get, acquire_submission, release_session};
use shared::ids::RunId;
use tests::fakes::MemStore;

fn cfg() -> BudgetConfig {
    BudgetConfig {
        submissions_per_minute: 2,
        running_sessions: 2,
        gets_per_minute: 3,
        gets_per_hour: 5,
        minute: Duration::from_secs(60),
    }
}

fn run(n: u32) -> RunId {
    RunId::derive("t", &n.to_string(), "m", "p")
}

#[tokio::test]
async fn submissions_sessions_and_gets_are_paced() {
    let store = MemStore::default();
    let t0 = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    let at = |secs: i64| t0 + time::Duration::seconds(secs);
    assert_eq!(
        acquire_submission(&store, &cfg(), &run(1), at(0))
            .await
            .unwrap(),
        Grant::Granted
    );
    assert_eq!(
        acquire_submission(&store, &cfg(), &run(2), at(10))
            .await
            .unwrap(),
        Grant::Granted
    );
    // Third submission inside the minute: wait until the first leaves the window.
    assert_eq!(
        acquire_submission(&store, &cfg(), &run(3), at(20))
            .await
            .unwrap(),
        Grant::Wait(Duration::from_secs(40))
    );
    // After the minute, the rate allows it but both sessions are taken.
    assert!(matches!(
        acquire_submission(&store, &cfg(), &run(3), at(70))
            .await
            .unwrap(),
        Grant::Wait(_)
    ));
    // A retry of a run that holds a session is not counted twice against the cap.
    assert_eq!(
        acquire_submission(&store, &cfg(), &run(1), at(75))
            .await
            .unwrap(),
        Grant::Granted
    );
    release_session(&store, &run(1)).await.unwrap();
    assert_eq!(
        acquire_submission(&store, &cfg(), &run(3), at(140))
            .await
            .unwrap(),
        Grant::Granted
    );
    // A session left behind for more than three days is dropped.
    assert!(matches!(
        acquire_submission(&store, &cfg(), &run(4), at(200))
            .await
            .unwrap(),
        Grant::Wait(_)
    ));
    let later = 3 * 24 * 3600 + 2 * 3600;
    assert_eq!(
        acquire_submission(&store, &cfg(), &run(4), at(later))
            .await
            .unwrap(),
        Grant::Granted
    );

    for s in 0..3 {
        assert_eq!(
            acquire_get(&store, &cfg(), at(s)).await.unwrap(),
            Grant::Granted
        );
    }
    assert_eq!(
        acquire_get(&store, &cfg(), at(3)).await.unwrap(),
        Grant::Wait(Duration::from_secs(57))
    );
    assert_eq!(
        acquire_get(&store, &cfg(), at(61)).await.unwrap(),
        Grant::Granted
    );
    assert_eq!(
        acquire_get(&store, &cfg(), at(62)).await.unwrap(),
        Grant::Granted
    );
    // Five in the hour: the hourly window now decides.
    let wait = acquire_get(&store, &cfg(), at(130)).await.unwrap();
    assert_eq!(wait, Grant::Wait(Duration::from_secs(3600 - 130)));
}
