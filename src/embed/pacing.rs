//! Client-side pacing of one provider model: budgets of requests and tokens per minute, shared
//! by two lanes with the interactive one first, and a model-wide pause when the provider says
//! it is overloaded.
//!
//! Every caller of a model — write paths, queries, every backfill batch — shares one `Pacer`,
//! so the budgets hold for the process as a whole, and a 429 seen by one batch holds back the
//! others instead of letting them collect 429s of their own.
//!
//! Each budget is a token bucket: it holds at most a burst, a tenth of the minute's budget,
//! and refills evenly; the *window* is the time it takes to refill a burst (six seconds). A
//! request is spent in parts of at most a burst, each taken when its lane allows:
//!
//! | lane          | takes a part when                                                        |
//! |---------------|--------------------------------------------------------------------------|
//! | `Interactive` | the bucket holds the part                                                |
//! | `Backfill`    | no interactive caller is inside `ready`, and after taking the part the   |
//! |               | bucket still holds the *reserve*: what the interactive lane spent over   |
//! |               | the last window                                                          |
//!
//! So the interactive lane may use the whole budget and never waits behind the backfill, and
//! the backfill takes only what interactive traffic leaves: if that used 30% of the budget
//! over the last window, the backfill gets at most the other ~70%, and the next interactive
//! request finds its share ready. With no interactive traffic the backfill gets it all. A
//! backfill part also shrinks to fit beside the reserve, so a large request still goes out,
//! after waiting as long as its size warrants. A pause (`pause_for`) holds both lanes.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::Lane;

/// The share of a per-minute budget that may be spent at once: a tenth, i.e. six seconds'
/// worth. Enough to start several batches together without waiting, small enough that a
/// provider enforcing its per-minute limit over shorter windows (OpenAI documents that it
/// may) does not see a whole minute's quota arrive in one second.
const BURST_DIVISOR: u32 = 10;

/// How finely a bucket remembers the interactive lane's spending: spends less than a
/// sixteenth of a window apart share one entry, so the memory stays a few entries long
/// however many requests there are. Each spend counts in the reserve for at least a window and
/// at most a sixteenth more, erring on the interactive lane's side.
const SLOTS_PER_WINDOW: u32 = 16;

/// Slack for float rounding when comparing a bucket's level with what a part needs.
const EPSILON: f64 = 1e-9;

/// Paces the requests of one model; see the module doc.
pub struct Pacer {
    /// Requests per minute; `None` when unlimited.
    requests: Option<Budget>,
    /// Estimated tokens per minute; `None` when unlimited.
    tokens: Option<Budget>,
    /// Interactive callers inside `ready`: backfill callers stand aside while there are any.
    interactive: InteractiveCallers,
    /// No request of this model may start before this instant. Raised by whichever caller
    /// received a 429 or 503, read by every caller before each request. A std `Mutex`: it is
    /// held only to read or raise one value, never across an `.await`.
    paused_until: Mutex<Option<Instant>>,
    /// Time callers spent waiting on budgets, pauses and back-offs, in microseconds, summed
    /// over callers. A statistic only, so `Relaxed` suffices.
    throttled_micros: AtomicU64,
}

/// One per-minute budget, shared by both lanes.
struct Budget {
    burst: NonZeroU32,
    /// The bucket's level and the interactive lane's recent spending. A std `Mutex`: every
    /// caller of `ready` takes it to refill the bucket and decide on one part — arithmetic on
    /// a few numbers — and drops it before sleeping on the answer. It is never held across an
    /// `.await`, and nothing is notified under it.
    bucket: Mutex<Bucket>,
}

/// The interactive callers inside `ready`, counted so that backfill callers can stand aside.
struct InteractiveCallers {
    /// How many there are. Read by backfill callers before each part, under a bucket's lock.
    inside: AtomicUsize,
    /// Signalled when the last one leaves, waking the backfill callers standing aside.
    all_left: Notify,
}

/// A token bucket with a memory of the interactive lane's spending. Pure: the clock is passed
/// in.
struct Bucket {
    /// The most it holds: the burst.
    capacity: f64,
    per_second: f64,
    /// The time it takes to refill `capacity`: how long interactive spending is remembered.
    window: Duration,
    /// The level at `updated`.
    level: f64,
    updated: Instant,
    /// Interactive spending of the last window (and up to a slot more), oldest first.
    interactive_spent: VecDeque<Spend>,
}

/// Interactive spending from `at` to less than a slot later.
struct Spend {
    at: Instant,
    cells: f64,
}

/// What a caller does next with what is left of its request.
#[derive(Debug, PartialEq)]
enum Turn {
    /// It took this many cells.
    Took(u32),
    /// It sleeps this long, then asks again.
    Wait(Duration),
    /// It waits for the interactive callers inside `ready` to leave, then asks again.
    StandAside,
}

impl Pacer {
    /// A pacer holding to `requests_per_minute` and `tokens_per_minute`, each when given.
    pub fn new(
        requests_per_minute: Option<NonZeroU32>,
        tokens_per_minute: Option<NonZeroU32>,
    ) -> Self {
        Self {
            requests: requests_per_minute.map(Budget::per_minute),
            tokens: tokens_per_minute.map(Budget::per_minute),
            interactive: InteractiveCallers {
                inside: AtomicUsize::new(0),
                all_left: Notify::new(),
            },
            paused_until: Mutex::new(None),
            throttled_micros: AtomicU64::new(0),
        }
    }

    /// The most requests that may start at once, if requests are limited.
    pub fn request_burst(&self) -> Option<NonZeroU32> {
        self.requests.as_ref().map(|budget| budget.burst)
    }

    /// Waits until a request of `tokens` estimated tokens may start in `lane`: past any
    /// pause, then within both budgets as the lane allows (see the module doc).
    pub async fn ready(&self, tokens: u32, lane: Lane) {
        let started = Instant::now();
        let _inside = (lane == Lane::Interactive).then(|| self.interactive.enter());
        self.wait_out_pause().await;
        if let Some(requests) = &self.requests {
            requests.spend(1, lane, &self.interactive).await;
        }
        if let Some(budget) = &self.tokens {
            budget.spend(tokens, lane, &self.interactive).await;
        }
        // Another caller may have been told to pause while this one waited on a budget.
        self.wait_out_pause().await;
        self.record(started.elapsed());
    }

    /// Holds back every request of this model, in both lanes, for `duration` from now; a
    /// pause already reaching further stays as it is.
    pub fn pause_for(&self, duration: Duration) {
        let until = Instant::now() + duration;
        let mut paused_until = lock(&self.paused_until);
        *paused_until = Some(paused_until.map_or(until, |current| current.max(until)));
    }

    /// Sleeps the calling request's own back-off (a failure that says nothing about the
    /// model's load, such as a 500 or a timeout), counting it as throttled time.
    pub async fn back_off(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
        self.record(duration);
    }

    /// Total time spent waiting so far, summed over callers of both lanes: two batches held
    /// by the same one-second pause count two seconds.
    pub fn throttled(&self) -> Duration {
        Duration::from_micros(self.throttled_micros.load(Ordering::Relaxed))
    }

    async fn wait_out_pause(&self) {
        // Loops because the pause may be extended while we sleep. The guard is dropped at
        // the end of the `let`, before any `.await`.
        loop {
            let paused_until = *lock(&self.paused_until);
            match paused_until {
                Some(until) if until > Instant::now() => tokio::time::sleep_until(until).await,
                _ => break,
            }
        }
    }

    fn record(&self, waited: Duration) {
        let micros = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
        self.throttled_micros.fetch_add(micros, Ordering::Relaxed);
    }
}

/// Locks a mutex whose value stays valid even if a holder panicked: the holders only do
/// arithmetic that leaves it consistent at every step.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A tenth of the per-minute budget, at least one.
fn burst_of(per_minute: NonZeroU32) -> NonZeroU32 {
    NonZeroU32::new(per_minute.get() / BURST_DIVISOR).unwrap_or(NonZeroU32::MIN)
}

impl Budget {
    fn per_minute(per_minute: NonZeroU32) -> Self {
        Self {
            burst: burst_of(per_minute),
            bucket: Mutex::new(Bucket::per_minute(per_minute, Instant::now())),
        }
    }

    /// Waits until `cells` have been taken in parts, as `lane` allows.
    async fn spend(&self, cells: u32, lane: Lane, interactive: &InteractiveCallers) {
        let mut left = cells;
        while left > 0 {
            if lane == Lane::Backfill {
                interactive.wait_until_all_left().await;
            }
            // The guard is a temporary of this statement: dropped before any `.await`.
            let turn = lock(&self.bucket).take(Instant::now(), left, lane, interactive.any());
            match turn {
                Turn::Took(part) => left -= part,
                Turn::Wait(wait) => tokio::time::sleep(wait).await,
                Turn::StandAside => {}
            }
        }
    }
}

impl InteractiveCallers {
    /// Counts an interactive caller as inside until the guard drops (also when its request is
    /// cancelled).
    fn enter(&self) -> Inside<'_> {
        self.inside.fetch_add(1, Ordering::SeqCst);
        Inside(self)
    }

    fn any(&self) -> bool {
        self.inside.load(Ordering::SeqCst) > 0
    }

    async fn wait_until_all_left(&self) {
        loop {
            // Created before the check, so a caller leaving in between still wakes us.
            let all_left = self.all_left.notified();
            if !self.any() {
                return;
            }
            all_left.await;
        }
    }
}

/// An interactive caller inside `ready`.
struct Inside<'a>(&'a InteractiveCallers);

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        if self.0.inside.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.all_left.notify_waiters();
        }
    }
}

impl Bucket {
    /// A full bucket for `per_minute`, at `now`.
    fn per_minute(per_minute: NonZeroU32, now: Instant) -> Self {
        let capacity = f64::from(burst_of(per_minute).get());
        let per_second = f64::from(per_minute.get()) / 60.0;
        Self {
            capacity,
            per_second,
            window: Duration::from_secs_f64(capacity / per_second),
            level: capacity,
            updated: now,
            interactive_spent: VecDeque::new(),
        }
    }

    /// Takes a part of the `wanted` cells for `lane` at `now`, or says what to wait for.
    fn take(&mut self, now: Instant, wanted: u32, lane: Lane, interactive_inside: bool) -> Turn {
        self.refill(now);
        match lane {
            Lane::Interactive => self.take_interactive(now, wanted),
            Lane::Backfill if interactive_inside => Turn::StandAside,
            Lane::Backfill => self.take_backfill(now, wanted),
        }
    }

    fn take_interactive(&mut self, now: Instant, wanted: u32) -> Turn {
        let part = wanted.min(self.capacity as u32);
        let cells = f64::from(part);
        if self.level + EPSILON < cells {
            return Turn::Wait(self.time_to_reach(cells));
        }
        self.level -= cells;
        self.remember(now, cells);
        Turn::Took(part)
    }

    fn take_backfill(&mut self, now: Instant, wanted: u32) -> Turn {
        let reserve = self.reserve(now);
        // The reserve shrinks when its oldest entry expires: worth asking again then.
        let shrinks_in = self
            .interactive_spent
            .front()
            .map_or(self.window, |oldest| self.expiry(oldest) - now);
        // The largest part that fits beside the reserve in a full bucket.
        let room = (self.capacity - reserve + EPSILON).floor();
        if room < 1.0 {
            return Turn::Wait(shrinks_in);
        }
        let part = wanted.min(room as u32);
        let needed = reserve + f64::from(part);
        if self.level + EPSILON < needed {
            return Turn::Wait(self.time_to_reach(needed).min(shrinks_in));
        }
        self.level -= f64::from(part);
        Turn::Took(part)
    }

    fn refill(&mut self, now: Instant) {
        // A caller that read the clock before another took the lock may bring an older `now`.
        if now > self.updated {
            let refilled = (now - self.updated).as_secs_f64() * self.per_second;
            self.level = (self.level + refilled).min(self.capacity);
            self.updated = now;
        }
    }

    /// How long until the level reaches `level`, rounded up to the microsecond.
    fn time_to_reach(&self, level: f64) -> Duration {
        let seconds = (level - self.level).max(0.0) / self.per_second;
        Duration::from_micros((seconds * 1e6).ceil() as u64)
    }

    /// What the interactive lane spent over the last window, at `now`.
    fn reserve(&mut self, now: Instant) -> f64 {
        while let Some(oldest) = self.interactive_spent.front() {
            if self.expiry(oldest) > now {
                break;
            }
            self.interactive_spent.pop_front();
        }
        self.interactive_spent.iter().map(|spend| spend.cells).sum()
    }

    fn remember(&mut self, now: Instant, cells: f64) {
        let slot = self.window / SLOTS_PER_WINDOW;
        match self.interactive_spent.back_mut() {
            Some(last) if now < last.at + slot => last.cells += cells,
            _ => self.interactive_spent.push_back(Spend { at: now, cells }),
        }
    }

    /// When `spend` stops counting in the reserve: a window after the end of its slot.
    fn expiry(&self, spend: &Spend) -> Instant {
        spend.at + self.window + self.window / SLOTS_PER_WINDOW
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU32;

    use super::*;

    fn per_minute(n: u32) -> Option<NonZeroU32> {
        NonZeroU32::new(n)
    }

    /// 600 per minute: a burst of 60, 10 per second, a window of 6 s and slots of 375 ms.
    fn bucket_600(now: Instant) -> Bucket {
        Bucket::per_minute(NonZeroU32::new(600).unwrap(), now)
    }

    const INTERACTIVE: Lane = Lane::Interactive;
    const BACKFILL: Lane = Lane::Backfill;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn burst_is_a_tenth_of_the_minute_and_at_least_one() {
        let burst = |rpm| Pacer::new(per_minute(rpm), None).request_burst();
        assert_eq!(burst(600), per_minute(60));
        assert_eq!(burst(60), per_minute(6));
        assert_eq!(burst(5), per_minute(1));
        assert_eq!(Pacer::new(None, None).request_burst(), None);
        assert_eq!(bucket_600(Instant::now()).window, Duration::from_secs(6));
    }

    #[test]
    fn the_bucket_refills_evenly_up_to_the_burst() {
        let t0 = Instant::now();
        let mut bucket = bucket_600(t0);
        assert_eq!(bucket.take(t0, 60, INTERACTIVE, false), Turn::Took(60));
        bucket.refill(t0 + ms(2_500));
        assert!((bucket.level - 25.0).abs() < 1e-6, "{}", bucket.level);
        bucket.refill(t0 + ms(60_000));
        assert_eq!(bucket.level, 60.0);
    }

    #[test]
    fn an_interactive_part_is_at_most_a_burst_and_waits_for_its_deficit() {
        let t0 = Instant::now();
        let mut bucket = bucket_600(t0);
        assert_eq!(bucket.take(t0, 100, INTERACTIVE, false), Turn::Took(60));
        assert_eq!(
            bucket.take(t0, 40, INTERACTIVE, false),
            Turn::Wait(ms(4_000))
        );
        let t1 = t0 + ms(4_000);
        assert_eq!(bucket.take(t1, 40, INTERACTIVE, false), Turn::Took(40));
    }

    #[test]
    fn the_backfill_leaves_what_the_interactive_lane_spent_in_the_window() {
        let t0 = Instant::now();
        let mut bucket = bucket_600(t0);
        assert_eq!(bucket.take(t0, 18, INTERACTIVE, false), Turn::Took(18));
        // One second later the bucket holds 52; the backfill may take it down to 18.
        let t1 = t0 + ms(1_000);
        assert_eq!(bucket.take(t1, 34, BACKFILL, false), Turn::Took(34));
        assert_eq!(bucket.take(t1, 1, BACKFILL, false), Turn::Wait(ms(100)));
        assert_eq!(bucket.take(t1, 18, INTERACTIVE, false), Turn::Took(18));
    }

    #[test]
    fn the_reserve_forgets_spending_older_than_a_window() {
        let t0 = Instant::now();
        let mut bucket = bucket_600(t0);
        assert_eq!(bucket.take(t0, 30, INTERACTIVE, false), Turn::Took(30));
        assert_eq!(bucket.reserve(t0 + ms(6_374)), 30.0);
        assert_eq!(bucket.reserve(t0 + ms(6_375)), 0.0);
        assert_eq!(
            bucket.take(t0 + ms(6_375), 60, BACKFILL, false),
            Turn::Took(60)
        );
    }

    #[test]
    fn a_backfill_waits_until_the_reserve_shrinks_when_it_fills_the_bucket() {
        let t0 = Instant::now();
        let mut bucket = bucket_600(t0);
        assert_eq!(bucket.take(t0, 60, INTERACTIVE, false), Turn::Took(60));
        let t1 = t0 + ms(1_000);
        assert_eq!(bucket.take(t1, 1, BACKFILL, false), Turn::Wait(ms(5_375)));
    }

    #[test]
    fn a_backfill_part_shrinks_to_fit_beside_the_reserve() {
        let t0 = Instant::now();
        let mut bucket = bucket_600(t0);
        assert_eq!(bucket.take(t0, 50, INTERACTIVE, false), Turn::Took(50));
        // Room for 10 beside the reserve of 50, once the bucket is full again.
        assert_eq!(bucket.take(t0, 60, BACKFILL, false), Turn::Wait(ms(5_000)));
        assert_eq!(
            bucket.take(t0 + ms(5_000), 60, BACKFILL, false),
            Turn::Took(10)
        );
    }

    #[test]
    fn the_backfill_stands_aside_while_an_interactive_caller_is_inside() {
        let t0 = Instant::now();
        let mut bucket = bucket_600(t0);
        assert_eq!(bucket.take(t0, 1, BACKFILL, true), Turn::StandAside);
        assert_eq!(bucket.take(t0, 1, BACKFILL, false), Turn::Took(1));
    }

    #[test]
    fn interactive_spends_close_together_share_one_entry() {
        let t0 = Instant::now();
        // A burst of 60 000: room for a thousand small spends, one a millisecond.
        let mut bucket = Bucket::per_minute(NonZeroU32::new(600_000).unwrap(), t0);
        for i in 0..1_000 {
            assert_eq!(
                bucket.take(t0 + ms(i), 1, INTERACTIVE, false),
                Turn::Took(1)
            );
        }
        assert_eq!(bucket.interactive_spent.len(), 3);
        assert_eq!(bucket.reserve(t0 + ms(1_000)), 1_000.0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unlimited_pacer_does_not_wait() {
        let pacer = Pacer::new(None, None);
        pacer.ready(u32::MAX, INTERACTIVE).await;
        pacer.ready(u32::MAX, BACKFILL).await;
        assert_eq!(pacer.throttled(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn the_request_budget_lets_the_burst_through_then_paces() {
        // 600 per minute: a burst of 60, then one every 100 ms.
        for lane in [INTERACTIVE, BACKFILL] {
            let pacer = Pacer::new(per_minute(600), None);
            let started = Instant::now();
            for _ in 0..62 {
                pacer.ready(1, lane).await;
            }
            let elapsed = started.elapsed();
            assert!(
                elapsed >= ms(200) && elapsed < ms(205),
                "{lane:?}: {elapsed:?}"
            );
            assert!(pacer.throttled() >= ms(200));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_larger_than_the_token_burst_waits_for_its_size() {
        // 6000 tokens per minute: a burst of 600, then 100 per second. 700 tokens are the
        // burst plus one second's worth.
        for lane in [INTERACTIVE, BACKFILL] {
            let pacer = Pacer::new(None, per_minute(6_000));
            let started = Instant::now();
            pacer.ready(700, lane).await;
            let elapsed = started.elapsed();
            assert!(
                elapsed >= ms(1_000) && elapsed < ms(1_005),
                "{lane:?}: {elapsed:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_large_backfill_request_still_goes_out_beside_the_reserve() {
        // 6000 tokens per minute; interactive traffic spent half the burst. The backfill's 700
        // go in parts that fit beside the reserve, then the rest once the reserve expires.
        let pacer = Pacer::new(None, per_minute(6_000));
        pacer.ready(300, INTERACTIVE).await;
        let started = Instant::now();
        pacer.ready(700, BACKFILL).await;
        let elapsed = started.elapsed();
        assert!(elapsed >= ms(6_375) && elapsed < ms(6_400), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_both_lanes_and_only_grows() {
        let pacer = Pacer::new(None, None);
        pacer.pause_for(ms(200));
        pacer.pause_for(ms(10));
        let started = Instant::now();
        tokio::join!(pacer.ready(1, INTERACTIVE), pacer.ready(1, BACKFILL));
        assert_eq!(started.elapsed(), ms(200));
        assert_eq!(pacer.throttled(), ms(400));
    }

    #[tokio::test(start_paused = true)]
    async fn back_off_counts_as_throttled() {
        let pacer = Pacer::new(None, None);
        pacer.back_off(ms(30)).await;
        assert_eq!(pacer.throttled(), ms(30));
    }

    #[tokio::test(start_paused = true)]
    async fn an_interactive_request_goes_before_queued_backfill_requests() {
        let pacer = Arc::new(Pacer::new(per_minute(600), None));
        for _ in 0..60 {
            pacer.ready(1, BACKFILL).await;
        }
        let (queued, log) = (Instant::now(), Arc::new(Mutex::new(Vec::new())));
        let mut tasks = Vec::new();
        for lane in [BACKFILL; 5].into_iter().chain([INTERACTIVE]) {
            if lane == INTERACTIVE {
                tokio::time::sleep(ms(10)).await;
            }
            let (pacer, log) = (pacer.clone(), log.clone());
            tasks.push(tokio::spawn(async move {
                pacer.ready(1, lane).await;
                lock(&log).push((lane, Instant::now() - queued));
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let log = lock(&log);
        // It waited for one cell's refill, not behind five.
        assert_eq!(log[0], (INTERACTIVE, ms(100)), "{log:?}");
        assert!(
            log[1..].iter().all(|(lane, _)| *lane == BACKFILL),
            "{log:?}"
        );
    }

    /// Runs four backfill loops, and an interactive caller sending one request per
    /// `interactive_every` if given, against 600 requests per minute for a minute.
    /// Returns the requests of each lane that started within the minute, and the longest
    /// an interactive request waited after its first.
    async fn a_minute_of(interactive_every: Option<Duration>) -> (u32, u32, Duration) {
        let pacer = Arc::new(Pacer::new(per_minute(600), None));
        let end = Instant::now() + Duration::from_secs(60);
        let interactive = tokio::spawn({
            let pacer = pacer.clone();
            async move {
                let (mut sent, mut longest) = (0, Duration::ZERO);
                while let Some(every) = interactive_every.filter(|_| Instant::now() < end) {
                    let asked = Instant::now();
                    pacer.ready(1, INTERACTIVE).await;
                    longest = if sent == 0 {
                        longest
                    } else {
                        longest.max(asked.elapsed())
                    };
                    sent += 1;
                    tokio::time::sleep(every).await;
                }
                (sent, longest)
            }
        });
        let backfilled = Arc::new(AtomicU32::new(0));
        let mut backfill = Vec::new();
        for _ in 0..4 {
            let (pacer, backfilled) = (pacer.clone(), backfilled.clone());
            backfill.push(tokio::spawn(async move {
                loop {
                    pacer.ready(1, BACKFILL).await;
                    if Instant::now() >= end {
                        break;
                    }
                    backfilled.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        let (sent, longest) = interactive.await.unwrap();
        for task in backfill {
            task.await.unwrap();
        }
        (sent, backfilled.load(Ordering::Relaxed), longest)
    }

    #[tokio::test(start_paused = true)]
    async fn the_backfill_gets_what_interactive_traffic_leaves() {
        // Interactive traffic at 3 a second, 30% of the budget.
        let (interactive, backfill, longest) = a_minute_of(Some(ms(333))).await;
        assert!((175..=181).contains(&interactive), "{interactive}");
        assert_eq!(
            longest,
            Duration::ZERO,
            "interactive requests find budget ready"
        );
        assert!(
            backfill >= 440,
            "the backfill gets about the rest: {backfill}"
        );
        assert!(
            interactive + backfill <= 600 + 60,
            "{interactive} + {backfill}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_interactive_traffic_the_backfill_gets_the_whole_budget() {
        let (interactive, backfill, _) = a_minute_of(None).await;
        assert_eq!(interactive, 0);
        assert!((655..=660).contains(&backfill), "{backfill}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_interactive_request_stops_holding_the_backfill() {
        let pacer = Pacer::new(per_minute(600), None);
        for _ in 0..60 {
            pacer.ready(1, BACKFILL).await;
        }
        let cancelled = tokio::time::timeout(ms(50), pacer.ready(1, INTERACTIVE)).await;
        assert!(cancelled.is_err());
        let backfill = tokio::time::timeout(ms(100), pacer.ready(1, BACKFILL)).await;
        assert!(backfill.is_ok(), "the backfill went on at the next refill");
    }
}
