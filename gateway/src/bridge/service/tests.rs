use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

#[tokio::test]
async fn a_panicking_task_is_started_again_and_stops_with_its_supervisor() {
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let supervisor = supervise_with_pause("test", Duration::from_millis(5), move || {
        let counted = counted.clone();
        async move {
            if counted.fetch_add(1, Ordering::SeqCst) < 2 {
                panic!("a bug");
            }
            std::future::pending::<()>().await;
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while runs.load(Ordering::SeqCst) < 3 {
        assert!(std::time::Instant::now() < deadline, "not restarted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    supervisor.abort();
    let _ = supervisor.await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        3,
        "no run after the supervisor stopped"
    );
}
