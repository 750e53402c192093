//! The lab object's procedures: create, status, end, extend, retry now, and the alarm (attempt, warning, deliveries, index repair, purge, legacy adoption), as plain async functions over the ports.
//!
//! The Durable Object (`platform::session_manager`) only decodes a request, builds the ports,
//! calls one of these and encodes what it returns; the native tests call them with in-memory
//! fakes that fail on purpose (`tests`).

mod alarm;
mod claims;
pub mod deliver;
mod link;
mod record;
mod requests;

use crate::lab::config::Config;
use crate::lab::ports::{
    Allowance, Budget, FleetIndex, LabBackend, Labs, Level, Logger, RecordStore, Runtime,
    WebhookSender,
};
use crate::lab::protocol::{ClaimAnswer, OwnsAnswer};
use crate::lab::refusal::Refusal;
use crate::lab::session::Session;

pub use crate::lab::protocol::Request;
pub use alarm::{AlarmDone, Woke};

/// Everything the procedures need from the outside world, in one value (the object's
/// adapter, or a test's fake world).
pub trait Platform:
    RecordStore + FleetIndex + WebhookSender + LabBackend + Budget + Labs + Allowance + Runtime + Logger
{
}

impl<
        T: RecordStore
            + FleetIndex
            + WebhookSender
            + LabBackend
            + Budget
            + Labs
            + Allowance
            + Runtime
            + Logger,
    > Platform for T
{
}

/// One lab's object at work: its platform and the settings.
pub struct Lab<'a, P: Platform> {
    pub platform: &'a P,
    pub config: &'a Config,
}

/// What a request's procedure answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The lab's status view, with this HTTP status. `line`: the record changed and was saved;
    /// log this line after the answer and bring the index row up to date (`Lab::sync_index`).
    Lab {
        status: u16,
        session: Box<Session>,
        line: Option<(Level, String)>,
    },
    Refused(Refusal),
    /// The lab's timeline (`GET .../events`).
    Events(serde_json::Value),
    /// Activity noted (204, no body).
    Noted,
    /// The sweep's poke: whether the alarm had to be set again.
    Poked {
        revived: bool,
    },
    /// A worker VM's object, asked to claim it for a lab.
    Claim(ClaimAnswer),
    /// A lab's object, asked whether it lists a VM.
    Owns(OwnsAnswer),
    /// What a signed link did or would do; `line` as in `Lab` (the record changed).
    Link {
        answer: crate::lab::link::Answer,
        line: Option<(Level, String)>,
    },
}

impl<'a, P: Platform> Lab<'a, P> {
    pub fn new(platform: &'a P, config: &'a Config) -> Self {
        Lab { platform, config }
    }
}

#[cfg(test)]
pub(crate) mod tests;
