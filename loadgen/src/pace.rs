//! Offered load at a fixed pace: job `0..total` started `rate` per second, at most `concurrency`
//! running at once. Shared by the `call` and `whip` runs (the soak draws Poisson arrivals).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::time::MissedTickBehavior;

/// Starts `job(index)` for each index in `0..total` on its own task, `rate` per second, holding
/// one of `concurrency` permits while it runs; returns once the last is started or `stop` is
/// notified (jobs already started run on).
pub async fn launch<F, Fut>(rate: f64, concurrency: usize, total: u64, stop: Arc<Notify>, job: F)
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    // Burst: an offered load catches up after the scheduler was late, up to the concurrency cap.
    pace.set_missed_tick_behavior(MissedTickBehavior::Burst);
    for index in 0..total {
        tokio::select! {
            _ = pace.tick() => {}
            () = stop.notified() => break,
        }
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = stop.notified() => break,
        };
        let running = job(index);
        tokio::spawn(async move {
            running.await;
            drop(permit);
        });
    }
}
