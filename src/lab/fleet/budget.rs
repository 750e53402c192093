//! The fleet-wide budget of backend calls: permits leased one per call, fairly between labs (the lab holding the fewest goes first, then the oldest expiry), within a limit that halves on overload, grows back on success and probes upward on a timer.
//!
//! Pure: the coordinator's Durable Object (`platform::budget`) holds one `Allocator` and the
//! clock comes in as an argument. A permit is a lease that expires a little after the backend
//! timeout, so a permit held by an object that died comes back by itself.

/// How a call that held a permit went, for the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// Answered (2xx, 404, or any other answer that is not an overload).
    Answered,
    /// The backend is overloaded: a timeout, or a refusal (429, 503).
    Overloaded,
}

/// A permit, as the allocator hands it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub id: u64,
    pub expires_at_ms: i64,
}

/// Who asks for permits: a lab, and whether its last attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asker<'a> {
    /// The lab (its id): labs are served fairly, whatever their calls do.
    pub lab: &'a str,
    /// Its last attempt had a deletion fail: its calls are likely to hang or fail again.
    pub failing: bool,
}

/// Requests the coordinator keeps waiting at once, per permit of the largest limit, and at
/// least `MIN_WAITING`: each is a connection held open to the one coordinator. After a pause of
/// the runtime every lab that fell due asks at once (3,000 in the soak); past this the
/// coordinator answers at once "ask again in a moment" (`shed`) rather than holding them all.
pub const WAITING_PER_PERMIT: usize = 4;
pub const MIN_WAITING: usize = 64;
/// How long a request turned away waits before it asks again: uniform in this range, so those
/// turned away together do not all come back together.
pub const SHED_PAUSE_MS: (i64, i64) = (2_000, 10_000);

#[derive(Debug, Clone)]
struct Waiter {
    ticket: u64,
    holder: String,
    failing: bool,
    priority: i64,
    deadline_ms: i64,
    /// Permits wanted (at least one): a lab with several calls to make asks for them at once.
    wanted: u32,
}

/// A lease out, and the lab holding it.
#[derive(Debug, Clone)]
struct Held {
    lease: Lease,
    holder: String,
    failing: bool,
}

/// Hands out permits within a limit that adapts: additive increase (one more per limit's worth
/// of answered calls) and multiplicative decrease (halved on overload, at most once per
/// `window_ms`), between 1 and `max`, as TCP's congestion window. Within a window, an overload
/// takes back what the limit grew since the last decrease: a limit set above the backend's
/// capacity settles at it instead of overshooting again for a whole window. A window without a
/// decrease or a probe grows the limit by one even when no call was answered (calls that hang
/// answer nothing): the limit never stays down for good.
///
/// Fairness: labs whose calls did not fail are served before labs whose calls did (`failing`:
/// their last attempt, or this one, had a deletion fail); among each, the lab holding the fewest
/// permits, then the oldest priority. Failing labs hold together at most half the limit (none
/// while it is 1; the probe raises it within a window), so that labs whose calls hang for a
/// whole timeout can never take every permit from labs the backend serves well; and their
/// timeouts do not lower the limit (they say something about those VMs, not about the backend's
/// load), while their answers raise it.
#[derive(Debug, Clone)]
pub struct Allocator {
    max: u32,
    limit: f64,
    lease_ms: i64,
    window_ms: i64,
    last_decrease_ms: i64,
    /// The limit right after the last decrease.
    after_decrease: f64,
    /// When the limit last grew without an answer (a probe).
    last_probe_ms: i64,
    next_id: u64,
    leases: Vec<Held>,
    waiting: Vec<Waiter>,
}

impl Allocator {
    /// `max`: `BACKEND_MAX_CONCURRENCY`; `lease_ms`: how long a permit lasts unreturned;
    /// `window_ms`: at most one decrease per this long (a burst of timeouts is one signal).
    pub fn new(max: u32, lease_ms: i64, window_ms: i64) -> Allocator {
        Allocator {
            max: max.max(1),
            limit: f64::from(max.max(1)),
            lease_ms,
            window_ms,
            last_decrease_ms: i64::MIN,
            after_decrease: f64::from(max.max(1)),
            last_probe_ms: i64::MIN,
            next_id: 1,
            leases: Vec::new(),
            waiting: Vec::new(),
        }
    }

    /// Calls allowed in flight now.
    pub fn limit(&self) -> u32 {
        (self.limit.floor() as u32).clamp(1, self.max)
    }

    pub fn in_flight(&self) -> usize {
        self.leases.len()
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Queues a request for up to `wanted` permits by `asker` at `priority` (older first, among
    /// labs holding as many permits), that waits until `deadline_ms` at the latest. Returns its
    /// ticket.
    pub fn request(
        &mut self,
        asker: Asker<'_>,
        priority: i64,
        deadline_ms: i64,
        wanted: u32,
    ) -> u64 {
        let ticket = self.next_id;
        self.next_id += 1;
        // The queue stays in grant order (oldest expiry, then first come): a new ticket is the
        // latest, so it goes after every waiter of its priority or an older one.
        let at = self.waiting.partition_point(|w| w.priority <= priority);
        self.waiting.insert(
            at,
            Waiter {
                ticket,
                holder: asker.lab.to_string(),
                failing: asker.failing,
                priority,
                deadline_ms,
                wanted: wanted.max(1),
            },
        );
        ticket
    }

    /// Most requests kept waiting at once.
    pub fn max_waiting(&self) -> usize {
        (self.max as usize)
            .saturating_mul(WAITING_PER_PERMIT)
            .max(MIN_WAITING)
    }

    /// Whether a new request is turned away at `now_ms` because the queue is full, and then how
    /// long its lab waits before it asks again (`rand` in `[0, 1)`).
    pub fn shed(&mut self, now_ms: i64, rand: f64) -> Option<i64> {
        self.expire(now_ms);
        if self.waiting.len() < self.max_waiting() {
            return None;
        }
        let (low, high) = SHED_PAUSE_MS;
        Some(low + ((high - low) as f64 * rand.clamp(0.0, 1.0)) as i64)
    }

    /// Withdraws a request that no longer waits.
    pub fn cancel(&mut self, ticket: u64) {
        self.waiting.retain(|w| w.ticket != ticket);
    }

    /// Leases whose holder never returned them (past their expiry) come back; requests past
    /// their deadline leave the queue.
    pub fn expire(&mut self, now_ms: i64) {
        self.leases.retain(|l| l.lease.expires_at_ms > now_ms);
        self.waiting.retain(|w| w.deadline_ms > now_ms);
    }

    /// Grants what the limit allows: the lab holding the fewest permits first, then the oldest
    /// priority, then first come. The tickets served, each with its leases (as many as it
    /// wanted, or what is left; a request never waits for more than one).
    pub fn grant(&mut self, now_ms: i64) -> Vec<(u64, Vec<Lease>)> {
        self.expire(now_ms);
        self.probe(now_ms);
        let mut free = (self.limit() as usize).saturating_sub(self.leases.len());
        let mut served = Vec::new();
        let mut held: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for h in &self.leases {
            *held.entry(h.holder.clone()).or_default() += 1;
        }
        let failing_cap = self.limit() as usize / 2;
        let mut failing_held = self.leases.iter().filter(|h| h.failing).count();
        while free > 0 {
            // Labs that did not fail first; then those holding the fewest; then the queue's
            // (priority) order. Failing labs only while they hold less than their share.
            let Some(next) = (0..self.waiting.len())
                .filter(|&i| !self.waiting[i].failing || failing_held < failing_cap)
                .min_by_key(|&i| {
                    let w = &self.waiting[i];
                    (w.failing, held.get(&w.holder).copied().unwrap_or(0), i)
                })
            else {
                break;
            };
            let w = self.waiting.remove(next);
            let room = if w.failing {
                failing_cap - failing_held
            } else {
                free
            };
            let n = (w.wanted as usize).min(free).min(room);
            free -= n;
            if w.failing {
                failing_held += n;
            }
            let leases: Vec<Lease> = (0..n)
                .map(|_| {
                    let lease = Lease {
                        id: self.next_id,
                        expires_at_ms: now_ms.saturating_add(self.lease_ms),
                    };
                    self.next_id += 1;
                    lease
                })
                .collect();
            *held.entry(w.holder.clone()).or_default() += leases.len();
            self.leases.extend(leases.iter().map(|&lease| Held {
                lease,
                holder: w.holder.clone(),
                failing: w.failing,
            }));
            served.push((w.ticket, leases));
        }
        served
    }

    /// A permit comes back unused (its holder had no call left for it): the limit stays.
    pub fn give_back(&mut self, lease_id: u64) {
        self.leases.retain(|l| l.lease.id != lease_id);
    }

    /// A window without a decrease or a probe, and requests waiting: one more permit, answered
    /// or not (the limit probes upward, as AIMD does on a timer).
    fn probe(&mut self, now_ms: i64) {
        let quiet_since = self.last_decrease_ms.max(self.last_probe_ms);
        if !self.waiting.is_empty()
            && self.limit < f64::from(self.max)
            && now_ms.saturating_sub(quiet_since) >= self.window_ms
        {
            self.limit = (self.limit.floor() + 1.0).min(f64::from(self.max));
            self.last_probe_ms = now_ms;
        }
    }

    /// A permit comes back, with how its call went.
    pub fn release(&mut self, lease_id: u64, outcome: CallOutcome, now_ms: i64) {
        // Expired already (or never leased): its call's word still counts.
        let failing = self
            .leases
            .iter()
            .any(|l| l.lease.id == lease_id && l.failing);
        self.leases.retain(|l| l.lease.id != lease_id);
        match outcome {
            // A failing lab's timeout says nothing new about the backend.
            CallOutcome::Overloaded if failing => {}
            CallOutcome::Answered => {
                self.limit = (self.limit + 1.0 / self.limit).min(f64::from(self.max));
            }
            CallOutcome::Overloaded => {
                if now_ms.saturating_sub(self.last_decrease_ms) >= self.window_ms {
                    self.limit = (self.limit / 2.0).max(1.0);
                    self.last_decrease_ms = now_ms;
                    self.after_decrease = self.limit;
                } else {
                    self.limit = self.limit.min(self.after_decrease);
                }
            }
        }
    }

    /// When the next lease expires: what a waiting request waits for besides a release, a new
    /// request and its own deadline. Not the other requests' deadlines: with a thousand labs
    /// waiting, every waiter would wake at each of them (a million wake-ups for one class).
    pub fn next_lease_expiry_ms(&self) -> Option<i64> {
        self.leases.iter().map(|l| l.lease.expires_at_ms).min()
    }
}

/// How long a lab's attempt keeps asking the coordinator again after "come back later" before
/// it ends and comes back as after a `Retry-After`. Asking again keeps its place (oldest expiry
/// first) at the cost of one round trip per wait; ending the attempt costs a save, an index
/// write and a new alarm each time: 1,000 labs expiring together against a budget of 20 made
/// 2,773 attempts that way, and the work starved the coordinator's answers on the local runtime.
pub const WAIT_IN_ATTEMPT_MS: i64 = 60_000;

/// What a lab's attempt does after the coordinator's answer (`Waiting::after`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Use the permits granted.
    Go,
    /// Ask again after this pause (0: at once; the coordinator held the request already).
    AskAgain { after_ms: i64 },
    /// Make no call in this attempt; the next one comes back after this long.
    GiveUp { come_back_ms: i64 },
    /// The coordinator did not answer: call without a permit (the budget may never stop a
    /// cleanup).
    CallAnyway,
}

/// The coordinator's answer to a request for permits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    Granted,
    /// Come back later: `wait_ms` if the attempt gives up, after `retry_in_ms` if it asks again.
    ComeBack {
        wait_ms: i64,
        retry_in_ms: i64,
    },
    Unreachable,
}

/// A lab's attempt waiting for permits: since when it has been told to come back, without a
/// grant since.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Waiting {
    since_ms: Option<i64>,
}

impl Waiting {
    /// What to do after `answer` at `now_ms`.
    pub fn after(&mut self, answer: Answered, now_ms: i64) -> Then {
        match answer {
            Answered::Granted => {
                self.since_ms = None;
                Then::Go
            }
            Answered::Unreachable => Then::CallAnyway,
            Answered::ComeBack {
                wait_ms,
                retry_in_ms,
            } => {
                let since = *self.since_ms.get_or_insert(now_ms);
                if now_ms.saturating_sub(since) < WAIT_IN_ATTEMPT_MS {
                    Then::AskAgain {
                        after_ms: retry_in_ms.clamp(0, WAIT_IN_ATTEMPT_MS),
                    }
                } else {
                    self.since_ms = None;
                    Then::GiveUp {
                        come_back_ms: wait_ms,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempt_asks_again_for_a_minute_then_comes_back_later() {
        let mut w = Waiting::default();
        let back = |retry_in_ms| Answered::ComeBack {
            wait_ms: 2_000,
            retry_in_ms,
        };
        assert_eq!(w.after(Answered::Granted, 0), Then::Go);
        assert_eq!(w.after(back(0), 1_000), Then::AskAgain { after_ms: 0 });
        // A full queue's pause is kept, within the minute.
        assert_eq!(
            w.after(back(6_000), 5_000),
            Then::AskAgain { after_ms: 6_000 }
        );
        assert_eq!(
            w.after(back(600_000), 9_000),
            Then::AskAgain {
                after_ms: WAIT_IN_ATTEMPT_MS
            }
        );
        assert_eq!(w.after(back(-5), 9_000), Then::AskAgain { after_ms: 0 });
        // A minute after the first "come back": the attempt ends, back in `wait_ms`.
        assert_eq!(
            w.after(back(0), 1_000 + WAIT_IN_ATTEMPT_MS),
            Then::GiveUp {
                come_back_ms: 2_000
            }
        );
        // The next attempt waits its own minute; a grant in between starts it again.
        assert_eq!(w.after(back(0), 100_000), Then::AskAgain { after_ms: 0 });
        assert_eq!(w.after(Answered::Granted, 150_000), Then::Go);
        assert_eq!(w.after(back(0), 170_000), Then::AskAgain { after_ms: 0 });
        assert_eq!(w.after(back(0), 229_999), Then::AskAgain { after_ms: 0 });
        // A coordinator that does not answer never holds a cleanup.
        assert_eq!(w.after(Answered::Unreachable, 230_000), Then::CallAnyway);
    }

    const T: i64 = 1_000_000;
    const LAB: Asker = Asker {
        lab: "lab",
        failing: false,
    };

    #[test]
    fn a_full_queue_turns_new_requests_away_for_a_spread_pause() {
        let mut a = Allocator::new(10, 5_000, 1_000);
        assert_eq!(a.max_waiting(), 64);
        assert_eq!(Allocator::new(50, 5_000, 1_000).max_waiting(), 200);
        let lab = |i: usize| format!("lab-{i}");
        for i in 0..64 {
            assert_eq!(a.shed(0, 0.5), None, "request {i} waits");
            let name = lab(i);
            let asker = Asker {
                lab: &name,
                failing: false,
            };
            a.request(asker, i as i64, 4_000, 1);
        }
        assert_eq!(a.shed(0, 0.0), Some(2_000));
        assert_eq!(a.shed(0, 0.5), Some(6_000));
        assert!(a.shed(0, 0.999).is_some_and(|ms| ms < 10_000));
        // Served or past their deadline, the waiters make room again.
        let served: usize = a.grant(1).iter().map(|(_, l)| l.len()).sum();
        assert_eq!(served, 10);
        assert_eq!(a.shed(1, 0.5), None);
        a.request(
            Asker {
                lab: "late",
                failing: false,
            },
            99,
            4_000,
            1,
        );
        for _ in 0..10 {
            a.request(
                Asker {
                    lab: "late",
                    failing: false,
                },
                99,
                4_000,
                1,
            );
        }
        assert!(a.shed(1, 0.5).is_some());
        assert_eq!(a.shed(4_000, 0.5), None, "every waiter past its deadline");
    }

    #[test]
    fn never_more_in_flight_than_the_limit_oldest_expiry_first() {
        let mut a = Allocator::new(2, 17_000, 15_000);
        let late = a.request(LAB, T + 500, T + 30_000, 1);
        let early = a.request(LAB, T + 100, T + 30_000, 1);
        let middle = a.request(LAB, T + 300, T + 30_000, 1);
        let granted: Vec<u64> = a.grant(T).iter().map(|(t, _)| *t).collect();
        assert_eq!(granted, vec![early, middle]);
        assert_eq!(a.in_flight(), 2);
        assert!(a.grant(T).is_empty(), "full");
        let lease = a.leases[0].lease.id;
        a.release(lease, CallOutcome::Answered, T + 10);
        let next: Vec<u64> = a.grant(T + 10).iter().map(|(t, _)| *t).collect();
        assert_eq!(next, vec![late]);
    }

    #[test]
    fn a_request_for_several_gets_what_is_free_and_the_oldest_lab_is_served_first() {
        let mut a = Allocator::new(5, 17_000, 15_000);
        let big = a.request(LAB, T + 100, T + 30_000, 6);
        let single = a.request(LAB, T + 50, T + 30_000, 1);
        let served = a.grant(T);
        assert_eq!(served[0].0, single, "older expiry first");
        assert_eq!(served[0].1.len(), 1);
        assert_eq!(served[1].0, big);
        assert_eq!(
            served[1].1.len(),
            4,
            "what is left, without waiting for more"
        );
        assert_eq!(a.in_flight(), 5);
        let more = a.request(LAB, T + 10, T + 30_000, 3);
        assert!(a.grant(T).is_empty(), "full");
        a.give_back(served[1].1[0].id);
        a.give_back(served[1].1[1].id);
        let next = a.grant(T);
        assert_eq!(next, vec![(more, next[0].1.clone())]);
        assert_eq!(next[0].1.len(), 2);
        assert_eq!(
            a.limit(),
            5,
            "an unused permit says nothing about the backend"
        );
    }

    #[test]
    fn a_lease_never_returned_comes_back_by_itself() {
        let mut a = Allocator::new(1, 17_000, 15_000);
        a.request(LAB, T, T + 60_000, 1);
        assert_eq!(a.grant(T).len(), 1);
        a.request(LAB, T, T + 60_000, 1);
        assert!(a.grant(T + 16_999).is_empty());
        assert_eq!(a.next_lease_expiry_ms(), Some(T + 17_000));
        assert_eq!(
            a.grant(T + 17_000).len(),
            1,
            "the dead holder's lease expired"
        );
    }

    #[test]
    fn overload_halves_the_limit_once_per_window_and_success_grows_it_back() {
        let mut a = Allocator::new(20, 17_000, 15_000);
        assert_eq!(a.limit(), 20);
        for _ in 0..5 {
            a.release(0, CallOutcome::Overloaded, T);
        }
        assert_eq!(a.limit(), 10, "one burst of timeouts is one signal");
        a.release(0, CallOutcome::Overloaded, T + 15_000);
        assert_eq!(a.limit(), 5);
        for _ in 0..6 {
            a.release(0, CallOutcome::Overloaded, T + 15_000 * 10);
        }
        let mut now = T + 15_000 * 10;
        for _ in 0..5 {
            now += 15_000;
            a.release(0, CallOutcome::Overloaded, now);
        }
        assert_eq!(a.limit(), 1, "never below one");
        // About one more per limit's worth of answered calls.
        for _ in 0..60 {
            a.release(0, CallOutcome::Answered, now);
        }
        assert!((9..=11).contains(&a.limit()), "{}", a.limit());
        for _ in 0..10_000 {
            a.release(0, CallOutcome::Answered, now);
        }
        assert_eq!(a.limit(), 20, "never above the maximum");
    }

    #[test]
    fn an_overload_within_the_window_takes_back_the_growth() {
        // A limit of 40 against a backend that serves 20: halved once, then it settles.
        let mut a = Allocator::new(40, 17_000, 15_000);
        a.release(0, CallOutcome::Overloaded, T);
        assert_eq!(a.limit(), 20);
        for _ in 0..25 {
            a.release(0, CallOutcome::Answered, T + 1_000);
        }
        assert_eq!(a.limit(), 21, "grew by one");
        a.release(0, CallOutcome::Overloaded, T + 2_000);
        assert_eq!(
            a.limit(),
            20,
            "back to where the last decrease left it, not halved"
        );
        a.release(0, CallOutcome::Overloaded, T + 15_000);
        assert_eq!(a.limit(), 10, "a new window halves again");
    }

    #[test]
    fn a_request_past_its_deadline_leaves_the_queue() {
        let mut a = Allocator::new(1, 17_000, 15_000);
        a.request(LAB, T, T + 60_000, 1);
        a.grant(T);
        let t = a.request(LAB, T, T + 5_000, 1);
        assert_eq!(a.waiting(), 1);
        a.expire(T + 5_000);
        assert_eq!(a.waiting(), 0);
        let u = a.request(LAB, T, T + 60_000, 1);
        a.cancel(u);
        assert_eq!(a.waiting(), 0);
        assert_ne!(t, u);
    }

    fn asker(lab: &str, failing: bool) -> Asker<'_> {
        Asker { lab, failing }
    }

    #[test]
    fn the_lab_holding_fewest_goes_first_and_failing_labs_hold_half_at_most() {
        let mut a = Allocator::new(4, 17_000, 15_000);
        // A lab holding two permits asks again, then another lab: the other goes first.
        let first = a.request(asker("busy", false), T, T + 60_000, 2);
        assert_eq!(a.grant(T)[0].0, first);
        let again = a.request(asker("busy", false), T, T + 60_000, 1);
        let other = a.request(asker("other", false), T + 500, T + 60_000, 1);
        let served: Vec<u64> = a.grant(T).iter().map(|(t, _)| *t).collect();
        assert_eq!(
            served,
            vec![other, again],
            "fewest held first, then the older"
        );
        // Failing labs: at most half of the limit between them, whatever they ask.
        let mut a = Allocator::new(4, 17_000, 15_000);
        for lab in ["h1", "h2", "h3"] {
            a.request(asker(lab, true), T - 60_000, T + 60_000, 6);
        }
        let granted: usize = a.grant(T).iter().map(|(_, l)| l.len()).sum();
        assert_eq!(granted, 2);
        assert_eq!(a.waiting(), 2);
        let fresh = a.request(asker("fresh", false), T + 9_000, T + 60_000, 2);
        assert_eq!(
            a.grant(T)
                .iter()
                .map(|(t, l)| (*t, l.len()))
                .collect::<Vec<_>>(),
            vec![(fresh, 2)]
        );
    }

    #[test]
    fn a_failing_labs_timeouts_leave_the_limit_and_a_quiet_window_probes_upward() {
        let mut a = Allocator::new(8, 17_000, 15_000);
        a.request(asker("hangs", true), T, T + 60_000, 1);
        let lease = a.grant(T)[0].1[0].id;
        a.release(lease, CallOutcome::Overloaded, T + 15_000);
        assert_eq!(a.limit(), 8, "a known failing lab's timeout");
        // Real overload: down to one; then, with requests waiting and nothing answered, one
        // more per window.
        let mut now = T;
        for _ in 0..4 {
            now += 15_000;
            a.release(0, CallOutcome::Overloaded, now);
        }
        assert_eq!(a.limit(), 1);
        a.request(asker("holds", false), now, now + 600_000, 1);
        assert_eq!(a.grant(now).len(), 1, "the one permit, held for long");
        let mut probe = |at: i64| {
            a.request(asker("waits", false), at, at + 600_000, 1);
            a.grant(at);
            a.limit()
        };
        assert_eq!(probe(now + 14_999), 1, "not within the window");
        assert_eq!(probe(now + 15_000), 2);
        assert_eq!(probe(now + 20_000), 2, "once a window");
        assert_eq!(probe(now + 30_000), 3);
    }

    /// A lab in the simulation: VMs left, calls in flight (lease, when it ends, how), whether it
    /// failed, when it may ask again.
    struct SimLab {
        name: String,
        left: usize,
        flying: Vec<(u64, i64, CallOutcome)>,
        failing: bool,
        priority: i64,
        next_try: i64,
        asked: Option<u64>,
        done_at: Option<i64>,
    }

    /// 8 labs of 13 VMs whose deletions hang until the 15 s timeout (retried 5 s after each
    /// attempt, for ever), and from `healthy_at` 3 labs of 4 VMs that the backend deletes in
    /// 200 ms: when each healthy lab is done, in ms after its expiry.
    fn simulate(healthy_at: i64, with_hanging: bool) -> Vec<i64> {
        let mut a = Allocator::new(10, 17_000, 15_000);
        let mut labs: Vec<SimLab> = Vec::new();
        if with_hanging {
            for n in 0..8 {
                labs.push(SimLab {
                    name: format!("hangs-{n}"),
                    left: 13,
                    flying: Vec::new(),
                    failing: false,
                    priority: T,
                    next_try: T,
                    asked: None,
                    done_at: None,
                });
            }
        }
        for n in 0..3 {
            labs.push(SimLab {
                name: format!("healthy-{n}"),
                left: 4,
                flying: Vec::new(),
                failing: false,
                priority: healthy_at,
                next_try: healthy_at,
                asked: None,
                done_at: None,
            });
        }
        let mut now = T;
        while now < healthy_at + 600_000
            && labs
                .iter()
                .any(|l| l.name.starts_with("healthy") && l.done_at.is_none())
        {
            for lab in labs.iter_mut() {
                let hangs = lab.name.starts_with("hangs");
                // Calls that end now.
                let (ended, still): (Vec<_>, Vec<_>) =
                    lab.flying.drain(..).partition(|(_, end, _)| *end <= now);
                lab.flying = still;
                for (lease, _, outcome) in ended {
                    a.release(lease, outcome, now);
                    if outcome == CallOutcome::Overloaded && !lab.failing {
                        lab.failing = true;
                        lab.priority = now;
                    }
                }
                if !hangs && lab.left == 0 && lab.flying.is_empty() && lab.done_at.is_none() {
                    lab.done_at = Some(now - healthy_at);
                }
                // A hanging lab's attempt ends once every VM was tried; it retries 5 s later.
                if hangs && lab.left == 0 && lab.flying.is_empty() {
                    lab.left = 13;
                    lab.next_try = now + 5_000;
                }
                let want = lab.left.min(6usize.saturating_sub(lab.flying.len()));
                if lab.asked.is_none() && want > 0 && now >= lab.next_try && lab.done_at.is_none() {
                    lab.asked = Some(a.request(
                        asker(&lab.name, lab.failing),
                        lab.priority,
                        now + 4_000,
                        want as u32,
                    ));
                }
            }
            for (ticket, leases) in a.grant(now) {
                let lab = labs.iter_mut().find(|l| l.asked == Some(ticket)).unwrap();
                lab.asked = None;
                let hangs = lab.name.starts_with("hangs");
                for lease in leases {
                    lab.left -= 1;
                    let (took, outcome) = if hangs {
                        (15_000, CallOutcome::Overloaded)
                    } else {
                        (200, CallOutcome::Answered)
                    };
                    lab.flying.push((lease.id, now + took, outcome));
                }
            }
            // A request past its deadline is asked again (the coordinator said come back).
            for lab in labs.iter_mut() {
                if now % 4_000 == 0 {
                    if let Some(ticket) = lab.asked.take() {
                        a.cancel(ticket);
                    }
                }
            }
            now += 50;
        }
        labs.iter()
            .filter(|l| l.name.starts_with("healthy"))
            .map(|l| l.done_at.unwrap_or(i64::MAX))
            .collect()
    }

    #[test]
    fn labs_whose_calls_hang_never_hold_up_healthy_labs_beyond_twice_their_time() {
        let clean = *simulate(T + 60_000, false).iter().max().unwrap();
        // Once the hanging labs failed a call each (here about 3 minutes: their first calls
        // hang a whole timeout while the limit halves), healthy labs are served as if they
        // were alone.
        for healthy_at in [T + 300_000, T + 450_000, T + 900_000] {
            let busy = simulate(healthy_at, true);
            assert!(
                busy.iter().all(|&t| t <= 2 * clean),
                "healthy labs at {healthy_at}: {busy:?} against {clean} ms on a clean machine"
            );
        }
        // Before that, they wait behind the hanging labs' first calls, never for ever.
        let early = simulate(T + 60_000, true);
        assert!(early.iter().all(|&t| t < 180_000), "{early:?}");
    }
}
