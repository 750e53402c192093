//! The fleet-wide budget of backend calls: permits leased one per call, oldest expiry first, within a limit that halves on overload and grows back on success.
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

#[derive(Debug, Clone, Copy)]
struct Waiter {
    ticket: u64,
    priority: i64,
    deadline_ms: i64,
    /// Permits wanted (at least one): a lab with several calls to make asks for them at once.
    wanted: u32,
}

/// Hands out permits within a limit that adapts: additive increase (one more per limit's worth
/// of answered calls) and multiplicative decrease (halved on overload, at most once per
/// `window_ms`), between 1 and `max`, as TCP's congestion window. Within a window, an overload
/// takes back what the limit grew since the last decrease: a limit set above the backend's
/// capacity settles at it instead of overshooting again for a whole window.
#[derive(Debug, Clone)]
pub struct Allocator {
    max: u32,
    limit: f64,
    lease_ms: i64,
    window_ms: i64,
    last_decrease_ms: i64,
    /// The limit right after the last decrease.
    after_decrease: f64,
    next_id: u64,
    leases: Vec<Lease>,
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

    /// Queues a request for up to `wanted` permits by a lab expiring at `priority` (older
    /// first), that waits until `deadline_ms` at the latest. Returns its ticket.
    pub fn request(&mut self, priority: i64, deadline_ms: i64, wanted: u32) -> u64 {
        let ticket = self.next_id;
        self.next_id += 1;
        // The queue stays in grant order (oldest expiry, then first come): a new ticket is the
        // latest, so it goes after every waiter of its priority or an older one.
        let at = self.waiting.partition_point(|w| w.priority <= priority);
        self.waiting.insert(
            at,
            Waiter {
                ticket,
                priority,
                deadline_ms,
                wanted: wanted.max(1),
            },
        );
        ticket
    }

    /// Withdraws a request that no longer waits.
    pub fn cancel(&mut self, ticket: u64) {
        self.waiting.retain(|w| w.ticket != ticket);
    }

    /// Leases whose holder never returned them (past their expiry) come back; requests past
    /// their deadline leave the queue.
    pub fn expire(&mut self, now_ms: i64) {
        self.leases.retain(|l| l.expires_at_ms > now_ms);
        self.waiting.retain(|w| w.deadline_ms > now_ms);
    }

    /// Grants what the limit allows, oldest expiry first (then first come): the tickets served,
    /// each with its leases (as many as it wanted, or what is left; a request never waits for
    /// more than one).
    pub fn grant(&mut self, now_ms: i64) -> Vec<(u64, Vec<Lease>)> {
        self.expire(now_ms);
        let mut free = (self.limit() as usize).saturating_sub(self.leases.len());
        let mut served = Vec::new();
        while free > 0 && !self.waiting.is_empty() {
            let w = self.waiting.remove(0);
            let n = (w.wanted as usize).min(free);
            free -= n;
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
            self.leases.extend(leases.iter().copied());
            served.push((w.ticket, leases));
        }
        served
    }

    /// A permit comes back unused (its holder had no call left for it): the limit stays.
    pub fn give_back(&mut self, lease_id: u64) {
        self.leases.retain(|l| l.id != lease_id);
    }

    /// A permit comes back, with how its call went.
    pub fn release(&mut self, lease_id: u64, outcome: CallOutcome, now_ms: i64) {
        let held = self.leases.len();
        self.leases.retain(|l| l.id != lease_id);
        if self.leases.len() == held {
            // Expired already (or never leased): its call's word still counts.
        }
        match outcome {
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
        self.leases.iter().map(|l| l.expires_at_ms).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_000_000;

    #[test]
    fn never_more_in_flight_than_the_limit_oldest_expiry_first() {
        let mut a = Allocator::new(2, 17_000, 15_000);
        let late = a.request(T + 500, T + 30_000, 1);
        let early = a.request(T + 100, T + 30_000, 1);
        let middle = a.request(T + 300, T + 30_000, 1);
        let granted: Vec<u64> = a.grant(T).iter().map(|(t, _)| *t).collect();
        assert_eq!(granted, vec![early, middle]);
        assert_eq!(a.in_flight(), 2);
        assert!(a.grant(T).is_empty(), "full");
        let lease = a.leases[0].id;
        a.release(lease, CallOutcome::Answered, T + 10);
        let next: Vec<u64> = a.grant(T + 10).iter().map(|(t, _)| *t).collect();
        assert_eq!(next, vec![late]);
    }

    #[test]
    fn a_request_for_several_gets_what_is_free_and_the_oldest_lab_is_served_first() {
        let mut a = Allocator::new(5, 17_000, 15_000);
        let big = a.request(T + 100, T + 30_000, 6);
        let single = a.request(T + 50, T + 30_000, 1);
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
        let more = a.request(T + 10, T + 30_000, 3);
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
        a.request(T, T + 60_000, 1);
        assert_eq!(a.grant(T).len(), 1);
        a.request(T, T + 60_000, 1);
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
        a.request(T, T + 60_000, 1);
        a.grant(T);
        let t = a.request(T, T + 5_000, 1);
        assert_eq!(a.waiting(), 1);
        a.expire(T + 5_000);
        assert_eq!(a.waiting(), 0);
        let u = a.request(T, T + 60_000, 1);
        a.cancel(u);
        assert_eq!(a.waiting(), 0);
        assert_ne!(t, u);
    }
}
