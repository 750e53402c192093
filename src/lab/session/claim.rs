//! A claim: what a multi-node lab's create leaves in the object of each of its worker VMs before it answers, so that nothing but that lab deletes the VM while the lab lives.
//!
//! A worker VM's object is the one an inventory's orphan goes to (it is named after the VM), and
//! it knows nothing else of the lab: the claim tells it whose VM it is. One whose lab no longer
//! lists the VM (the create failed, the lab was purged) is stale: the object finds that out by
//! asking the lab (`Request::Owns`) before it acts on the VM, and its alarm asks once the lab
//! could have lived its longest and been kept its retention, then deletes it (a claim never
//! outlives its lab by more than that).

use serde::Serialize;

/// The claim a worker VM's object holds (one small JSON value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Claim {
    /// The lab whose worker VM this is (its master's id).
    pub lab: String,
    /// This VM (the object's own name, which the object is not told otherwise).
    pub vm: String,
    pub at_ms: i64,
    /// The index row of an orphan cleanup this claim cancelled, still to be deleted (its
    /// revision): the object's alarm deletes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_row: Option<u64>,
}

/// The largest claim stored: two 128-character ids, a time, a revision and the JSON around them.
pub const MAX_CLAIM_BYTES: usize = 400;

impl Claim {
    pub fn new(lab: &str, vm: &str, at_ms: i64) -> Claim {
        Claim {
            lab: lab.to_string(),
            vm: vm.to_string(),
            at_ms,
            stale_row: None,
        }
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A stored claim; `None` when it is not one (a claim is rewritten by the next create).
    /// Read from a JSON value: a derived deserializer costs the wasm more than four fields.
    pub fn decode(text: &str) -> Option<Claim> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        Some(Claim {
            lab: v["lab"].as_str()?.to_string(),
            vm: v["vm"].as_str()?.to_string(),
            at_ms: v["at_ms"].as_i64()?,
            stale_row: match &v["stale_row"] {
                serde_json::Value::Null => None,
                n => Some(n.as_u64()?),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_claim_stays_within_its_bound() {
        let claim = Claim {
            lab: "x".repeat(crate::lab::limits::MAX_ID_LEN),
            vm: "y".repeat(crate::lab::limits::MAX_ID_LEN),
            at_ms: i64::MAX,
            stale_row: Some(u64::MAX),
        };
        let text = claim.encode();
        assert!(text.len() <= MAX_CLAIM_BYTES, "{} bytes", text.len());
        assert_eq!(Claim::decode(&text), Some(claim));
        assert_eq!(Claim::decode("not json"), None);
    }
}
