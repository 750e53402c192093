//! Delivering the outbox's due webhook events, and recording how each went.

use futures::stream::{self, StreamExt};

use crate::lab::config::{WebhookConfig, Webhooks};
use crate::lab::error::ServiceError;
use crate::lab::ports::{Delivery, StoreError};
use crate::lab::procedures::{Lab, Platform};
use crate::lab::session::{OutboxEvent, Session};
use crate::lab::text::rfc3339;
use crate::lab::webhook::{self, AfterDelivery};

/// Most deliveries one wake-up starts (the rest wait for the next one, a moment later).
pub const MAX_DELIVERIES_PER_WAKE: usize = 10;
/// How long an event queued for delivery within the same invocation is held, beyond the
/// delivery's timeout, by the save that queues it: the work between the queuing and the
/// sending (the rest of the attempt's steps, the index row).
pub(crate) const QUEUED_HOLD_SLACK_MS: i64 = 30_000;
/// Deliveries in flight at once: the platform's limit on simultaneous outbound connections.
const DELIVERY_CONCURRENCY: usize = crate::lab::config::MAX_CONCURRENT_CONNECTIONS;

impl<P: Platform> Lab<'_, P> {
    /// Delivers the outbox events that are due, and records how each went: delivered (off the
    /// outbox), to be tried again later, or dropped after the maximum age (an error line naming
    /// it). Events being delivered are held back first, so a wake-up meanwhile does not send
    /// them again; the results are written into the record as it is then (an attempt that saved
    /// meanwhile keeps its results too).
    pub async fn deliver_due(&self) -> Result<(), StoreError> {
        let Webhooks::On(hooks) = &self.config.webhooks else {
            return Ok(());
        };
        let Some(mut session) = self.load().await? else {
            return Ok(());
        };
        let p = self.platform;
        let now = p.now_ms();
        let queued = p.queued_events();
        p.set_queued_events(false);
        let due = self.due_within_limits(&session, now, queued);
        // Events queued to be sent now that this invocation has no room left for (its
        // subrequests, its wall time): due at once, so that the alarm sends them from an
        // invocation of its own rather than at their hold's end.
        let mut left = false;
        for e in session.notices.outbox.iter_mut() {
            if queued && e.attempts == 0 && e.next_at_ms > now && !due.iter().any(|d| d.id == e.id)
            {
                e.next_at_ms = now;
                left = true;
            }
        }
        if due.is_empty() {
            return if left {
                self.save(&mut session).await
            } else {
                Ok(())
            };
        }
        // Sending starts now; the events stay held until it ends (at most the timeout). Those
        // the save that queued them held long enough need no save for it.
        let sent_by = now.saturating_add(self.config.webhook_timeout_ms());
        if left || due.iter().any(|e| e.next_at_ms < sent_by) {
            let held_until = sent_by.saturating_add(1_000);
            for event in session.notices.outbox.iter_mut() {
                if due.iter().any(|d| d.id == event.id) {
                    event.next_at_ms = held_until;
                }
            }
            self.save(&mut session).await?;
        }

        let results = self.send_all(&session, &due, hooks, now).await;

        let Some(mut session) = self.load().await? else {
            return Ok(());
        };
        let at = p.now_ms();
        for (id, result) in results {
            self.after_delivery(&mut session, &id, result, at, &hooks.schedule);
        }
        self.save(&mut session).await
    }

    /// Sends `events` of `session`, signed at `now`, `DELIVERY_CONCURRENCY` at once: each
    /// event's id with how its delivery went.
    pub(crate) async fn send_all(
        &self,
        session: &Session,
        events: &[OutboxEvent],
        hooks: &WebhookConfig,
        now: i64,
    ) -> Vec<(String, Result<u16, ServiceError>)> {
        let p = self.platform;
        let now_secs = now.div_euclid(1000);
        let deliveries: Vec<Delivery> = events
            .iter()
            .map(|event| {
                let body = event.body(session, hooks.links.as_ref());
                Delivery {
                    id: event.id.clone(),
                    timestamp: now_secs,
                    signature: webhook::signatures(hooks, &event.id, now_secs, &body),
                    body,
                }
            })
            .collect();
        stream::iter(deliveries.iter())
            .map(|d| async move { (d.id.clone(), p.send(d).await) })
            .buffer_unordered(DELIVERY_CONCURRENCY)
            .collect()
            .await
    }

    /// How many deliveries the invocation has room for at `now`: its subrequests left, and none
    /// once a delivery starting now could not end within the alarm's wall time.
    pub(crate) fn delivery_room(&self, now: i64) -> usize {
        let p = self.platform;
        let last_start = self
            .config
            .limits()
            .last_start_ms(p.invocation_started_ms(), self.config.webhook_timeout_ms());
        if now > last_start {
            0
        } else {
            usize::try_from(p.left(crate::lab::invocation::Meter::External)).unwrap_or(usize::MAX)
        }
    }

    /// The events due at `now` (with `queued`, also those never tried: queued by this object
    /// for delivery now, held by the save that queued them), within what the invocation has
    /// left: its subrequests, and time for a delivery to end within the alarm's wall time. The
    /// rest is due still: the next alarm delivers it.
    fn due_within_limits(&self, session: &Session, now: i64, queued: bool) -> Vec<OutboxEvent> {
        let room = self.delivery_room(now);
        session
            .notices
            .outbox
            .iter()
            .filter(|e| e.next_at_ms <= now || (queued && e.attempts == 0))
            .take(MAX_DELIVERIES_PER_WAKE.min(room))
            .cloned()
            .collect()
    }

    /// The event `id` after its delivery at `at` got `result`: gone when delivered or too old,
    /// else due again later; each with its line.
    pub(crate) fn after_delivery(
        &self,
        session: &mut Session,
        id: &str,
        result: Result<u16, ServiceError>,
        at: i64,
        schedule: &webhook::Schedule,
    ) {
        let Some(position) = session.notices.outbox.iter().position(|e| e.id == id) else {
            return;
        };
        let lab = session.lab_request_id.clone();
        let event = &mut session.notices.outbox[position];
        match webhook::after_delivery(event, result, at, schedule) {
            AfterDelivery::Delivered => {
                self.info(format!(
                    "Event {} ({id}) for lab {lab} delivered (delivery {})",
                    event.event_type, event.attempts
                ));
                session.notices.outbox.remove(position);
            }
            AfterDelivery::RetryAt(next) => self.warn(format!(
                "Event {} ({id}) for lab {lab} not delivered ({}); delivery {} at {}",
                event.event_type,
                event.last_error.as_deref().unwrap_or("?"),
                event.attempts.saturating_add(1),
                rfc3339(next)
            )),
            AfterDelivery::Dropped => {
                self.error(format!(
                    "❌ Event {} ({id}) for lab {lab} dropped: not delivered in {} attempts over {} s (last: {})",
                    event.event_type,
                    event.attempts,
                    schedule.max_age_ms / 1000,
                    event.last_error.as_deref().unwrap_or("?")
                ));
                session.notices.outbox.remove(position);
            }
        }
    }
}
