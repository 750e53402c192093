//! The record as stored: one flat JSON object, the sub-records' fields side by side in the order every version wrote them.
//!
//! Written and read by serde's derive: `Session` flattens its sub-records (`#[serde(flatten)]`),
//! each field says its stored name and whether an earlier version may lack it (`default`), so the
//! field list lives in one place, the types. The fixtures in `fixtures/` were written by the
//! version before the sub-records; they load and serialize back byte for byte
//! (`tests::records_of_the_previous_version_round_trip`).

use crate::lab::session::Session;

impl Session {
    /// Reads a record as it is written, and as every earlier version wrote it (fields added
    /// since take their defaults). A record that does not read is an error naming what is
    /// wrong (a missing field, a value of the wrong type, an unknown name), never a guess.
    pub fn decode(text: &str) -> Result<Session, RecordError> {
        serde_json::from_str(text).map_err(|e| RecordError(e.to_string()))
    }
}

/// Why a stored record could not be read: where, and what was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RecordError(pub String);
