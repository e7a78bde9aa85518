//! One throttling category's budget: at most `limit` requests in any window
//! (a second) as Graph counts them.
//!
//! Graph counts a request when it arrives, some time after we send it and
//! before we have its answer. A token bucket paces admissions, so it needs a
//! margin taken from the rate: requests admitted 1/limit s apart can still
//! reach Graph bunched. Here a request counts from its admission until one
//! window after its answer; then any window at Graph holds only requests
//! that were counted together when the last of them was admitted, so no
//! more than `limit` — whatever the network or a sign-in does in between —
//! and the gateway can run at the limit itself (issue 16: the tenant's
//! 20 sends/s); its margin is each request's round trip, counted on top of
//! its second. Admissions are also paced (a bucket of a quarter of the
//! limit, refilled at the limit), so that one sender cannot take a whole
//! second's places at once; and places are handed out first come, first
//! served, so a quiet sender waits only behind what was queued before it. A 429 pauses every
//! caller of the category until its `Retry-After` has passed.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The window Graph's per-second limits are counted over.
const WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Budget {
    limit: usize,
    state: Mutex<Window>,
    /// The queue for places: tokio's mutex is fair (FIFO), and only its
    /// holder waits for the window.
    turn: tokio::sync::Mutex<()>,
    /// Woken when a request in flight is answered (a place may be free).
    answered: Notify,
}

#[derive(Debug)]
struct Window {
    in_flight: usize,
    /// Answer times within the last window, oldest first.
    answers: VecDeque<Instant>,
    paused_until: Option<Instant>,
    /// The pacing bucket: admissions available, as of `refilled`.
    tokens: f64,
    refilled: Instant,
}

/// A request's place in the window, from admission to answer. Dropped
/// unanswered (the call was cancelled), it counts as answered then.
#[derive(Debug)]
#[must_use = "a place counts until it is dropped: drop it when the answer came"]
pub struct Slot<'a> {
    budget: &'a Budget,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.budget.release();
    }
}

impl Budget {
    /// At most `per_second` requests (at least 1) in any second.
    pub fn new(per_second: u32) -> Self {
        let limit = usize::try_from(per_second.max(1)).unwrap_or(usize::MAX);
        Self {
            limit,
            state: Mutex::new(Window {
                in_flight: 0,
                answers: VecDeque::new(),
                paused_until: None,
                tokens: Self::burst(limit),
                refilled: Instant::now(),
            }),
            turn: tokio::sync::Mutex::new(()),
            answered: Notify::new(),
        }
    }

    /// Admissions at once: a quarter of the limit (at least one).
    fn burst(limit: usize) -> f64 {
        (limit as f64 / 4.0).ceil().max(1.0)
    }

    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for a place in the window: hold the slot until the answer.
    pub async fn acquire(&self) -> Slot<'_> {
        let _turn = self.turn.lock().await;
        loop {
            // Registered before the state is read, so an answer in between wakes us.
            let answered = self.answered.notified();
            let wait = {
                let mut w = self.window();
                let now = Instant::now();
                while w.answers.front().is_some_and(|t| *t + WINDOW <= now) {
                    w.answers.pop_front();
                }
                let rate = self.limit as f64 / WINDOW.as_secs_f64();
                let refill = now.duration_since(w.refilled).as_secs_f64() * rate;
                w.tokens = (w.tokens + refill).min(Self::burst(self.limit));
                w.refilled = now;
                match w.paused_until {
                    Some(until) if until > now => Some(until - now),
                    _ if w.tokens < 1.0 => Some(Duration::from_secs_f64((1.0 - w.tokens) / rate)),
                    _ if w.in_flight + w.answers.len() < self.limit => {
                        w.paused_until = None;
                        w.in_flight += 1;
                        w.tokens -= 1.0;
                        return Slot { budget: self };
                    }
                    // Full: the oldest answer leaves the window first, unless
                    // everything is still in flight (then an answer frees nothing
                    // before a window has passed, but says when).
                    _ => w.answers.front().map(|t| *t + WINDOW - now),
                }
            };
            match wait {
                Some(wait) => {
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = answered => {}
                    }
                }
                None => answered.await,
            }
        }
    }

    fn release(&self) {
        {
            let mut w = self.window();
            w.in_flight = w.in_flight.saturating_sub(1);
            w.answers.push_back(Instant::now());
        }
        // Only the holder of the turn waits on it.
        self.answered.notify_waiters();
    }

    /// Graph said 429: nobody sends until `until`.
    pub fn pause_until(&self, until: Instant) {
        let mut w = self.window();
        w.paused_until = Some(w.paused_until.map_or(until, |p| p.max(until)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_request_counts_until_a_second_after_its_answer() {
        let budget = Budget::new(8);
        let start = Instant::now();
        let mut first = Vec::new();
        for _ in 0..8 {
            first.push(budget.acquire().await);
        }
        // Two at once (a quarter of the limit), then one per 125 ms.
        assert_eq!(start.elapsed(), Duration::from_millis(750));
        // The answers come at 1 s: the ninth waits for the first answer plus
        // a second, not for a second from the admissions.
        tokio::time::sleep_until(start + Duration::from_secs(1)).await;
        drop(first);
        let _ninth = budget.acquire().await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn admissions_are_paced_not_bunched() {
        let budget = Budget::new(20);
        let start = Instant::now();
        for _ in 0..5 {
            drop(budget.acquire().await);
        }
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "a quarter of the limit at once"
        );
        drop(budget.acquire().await);
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(50),
            "then one per 1/20 s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn requests_in_flight_hold_their_places_and_a_cancelled_one_frees_its_own() {
        let budget = Budget::new(2);
        tokio::time::sleep(WINDOW).await;
        let a = budget.acquire().await;
        let b = budget.acquire().await;
        let waiting = tokio::time::timeout(Duration::from_secs(5), budget.acquire()).await;
        assert!(
            waiting.is_err(),
            "two in flight: the third waits however long"
        );
        drop(a); // answered (or its call dropped) now
        let answered = Instant::now();
        let _c = budget.acquire().await;
        assert_eq!(answered.elapsed(), WINDOW);
        drop(b);
    }

    #[tokio::test(start_paused = true)]
    async fn places_go_first_come_first_served() {
        let budget = std::sync::Arc::new(Budget::new(1));
        let first = budget.acquire().await;
        let order = std::sync::Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for n in 0..5 {
            let (budget, order) = (budget.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let slot = budget.acquire().await;
                order.lock().unwrap().push(n);
                drop(slot);
            }));
            // Each queues before the next one comes.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(first);
        for w in waiters {
            w.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_pauses_everyone_until_its_retry_after() {
        let budget = Budget::new(10);
        budget.pause_until(Instant::now() + Duration::from_secs(5));
        let paused = Instant::now();
        drop(budget.acquire().await);
        assert_eq!(paused.elapsed(), Duration::from_secs(5));
    }
}
