//! The fleet index's rows as D1 answers them, read back failing closed: one struct per query's columns (serde's derive), and a row that does not read is an error naming its query, never a row left out.
//!
//! D1 answers a query's rows as JSON objects, a column each (`SELECT ... AS name`); an integer
//! is a JSON number, exact below 2^53 (times in ms, revisions, counts). Each struct here names
//! the columns of one query of `lab::index`; the integration tests run every query on local D1
//! and read its rows back through them.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use crate::lab::error::ServiceError;
use crate::lab::status::Status;

/// Reads `rows` (one result of `query`) as `T` each; the first row that does not read fails
/// the whole answer (a lookup that dropped a row would call a live lab's VM unknown; a list
/// page that dropped one would end early).
pub fn read<T: DeserializeOwned>(
    query: &'static str,
    rows: Vec<serde_json::Value>,
) -> Result<Vec<T>, ServiceError> {
    rows.into_iter()
        .enumerate()
        .map(|(n, row)| {
            T::deserialize(row).map_err(|e| ServiceError::Unreadable {
                query,
                detail: format!(
                    "row {}: {}",
                    n + 1,
                    crate::lab::text::safe(&e.to_string(), 200)
                ),
            })
        })
        .collect()
}

/// The one row of an aggregate query (`COUNT`, `SUM`), or its default when D1 answered none.
pub fn one<T: DeserializeOwned + Default>(
    query: &'static str,
    rows: Vec<serde_json::Value>,
) -> Result<T, ServiceError> {
    Ok(read(query, rows)?.into_iter().next().unwrap_or_default())
}

/// A row of `index::lookup`: a VM, the lab that lists it and how far its deletion got.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Lookup {
    pub vm_id: String,
    pub lab_request_id: String,
    pub state: String,
    pub status: Status,
    pub expires_at: i64,
    pub updated_at: i64,
}

impl Lookup {
    /// What the reconciliation knows of the VM; `None` for a state this worker does not write
    /// (refused by the caller, as any unreadable row).
    pub fn known(self) -> Option<crate::lab::fleet::report::KnownVm> {
        Some(crate::lab::fleet::report::KnownVm {
            vm_id: self.vm_id,
            lab_request_id: self.lab_request_id,
            state: crate::lab::fleet::report::VmState::from_name(&self.state)?,
            lab_status: self.status,
            expires_at_ms: self.expires_at,
            changed_at_ms: self.updated_at,
        })
    }
}

/// A row of `index::first_seen`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Seen {
    pub vm_id: String,
    pub first_seen_at: i64,
}

/// A row that names a lab (`index::overdue`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LabId {
    pub lab_request_id: String,
}

/// A row of `index::get_state`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StateValue {
    pub value: String,
}

/// A count (`SELECT COUNT(*) AS n`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Count {
    pub n: u64,
}

/// A kept count of `fleet_counts` (`SELECT name, n`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Kept {
    pub name: String,
    pub n: i64,
}

/// The VMs being cleaned up and stopped, and the oldest expiries (a `SUM`/`MIN` over no row is
/// `NULL`: none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Pending {
    #[serde(deserialize_with = "zero_if_null")]
    pub vms_pending: u64,
    pub oldest: Option<i64>,
    #[serde(deserialize_with = "zero_if_null")]
    pub vms_stopped: u64,
    pub oldest_stopped: Option<i64>,
}

/// A `SUM` that is `NULL` over no row.
fn zero_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(Option::<u64>::deserialize(d)?.unwrap_or(0))
}

/// A JSON object held as text in a column (`json_group_object`; `NULL` or absent: empty).
pub fn json_text<'de, D: Deserializer<'de>, T: DeserializeOwned + Default>(
    d: D,
) -> Result<T, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(T::default()),
        Some(text) => serde_json::from_str(&text).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_row_that_does_not_read_fails_the_whole_answer() {
        let good = json!({"vm_id": "w1", "lab_request_id": "m", "state": "pending",
            "status": "scheduled", "expires_at": 5, "updated_at": 4});
        let rows: Vec<Lookup> = read("lookup", vec![good.clone()]).unwrap();
        assert_eq!(rows[0].status, Status::Scheduled);
        for bad in [
            json!({"vm_id": "w1", "lab_request_id": "m", "state": "pending", "status": "gone", "expires_at": 5, "updated_at": 4}),
            json!({"vm_id": null, "lab_request_id": "m", "state": "pending", "status": "scheduled", "expires_at": 5, "updated_at": 4}),
            json!({"vm_id": "w1", "lab_request_id": "m", "state": "pending", "status": "scheduled", "expires_at": "soon", "updated_at": 4}),
            json!({"lab_request_id": "m"}),
            json!([1, 2]),
        ] {
            let e = read::<Lookup>("lookup", vec![good.clone(), bad.clone()]).unwrap_err();
            match &e {
                ServiceError::Unreadable { query, detail } => {
                    assert_eq!(*query, "lookup");
                    assert!(detail.starts_with("row 2: "), "{detail}");
                }
                other => panic!("{bad}: {other:?}"),
            }
            assert!(e.to_string().contains("nothing of the answer is used"));
        }
    }

    #[test]
    fn aggregates_read_null_as_none_and_counts_must_be_whole() {
        let p: Pending = one(
            "pending",
            vec![json!({"vms_pending": null, "oldest": null, "vms_stopped": null, "oldest_stopped": null})],
        )
        .unwrap();
        assert_eq!(p, Pending::default());
        let p: Pending = one("pending", vec![]).unwrap();
        assert_eq!(p, Pending::default());
        let c: Count = one("count", vec![json!({"n": 7})]).unwrap();
        assert_eq!(c.n, 7);
        assert!(one::<Count>("count", vec![json!({"n": -1})]).is_err());
        assert!(one::<Count>("count", vec![json!({"n": 1.5})]).is_err());
        assert!(one::<Count>("count", vec![json!({})]).is_err());
    }

    #[test]
    fn a_long_or_hostile_value_is_shortened_and_escaped_in_the_error() {
        let hostile = format!("{}\n[SessionManager] ✅ forged", "x".repeat(5_000));
        let e = read::<Lookup>(
            "lookup",
            vec![json!({"vm_id": "w", "lab_request_id": "m",
            "state": "pending", "status": hostile, "expires_at": 1, "updated_at": 1})],
        )
        .unwrap_err()
        .to_string();
        assert!(e.len() < 600, "{}", e.len());
        assert!(!e.contains('\n'));
    }
}
