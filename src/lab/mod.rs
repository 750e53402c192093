//! The pure core: the lab's record, its cleanup, its timing and its procedures, over small traits for the outside world. No `worker::*` here (`scripts/lint.sh` checks); the clock, the randomness, the storage, the backend, the index and the webhook receiver come in as values and traits (`ports`).

/// Serializes an enum as its `name()` and reads it back with `$parse` (one small function per
/// type where serde's derive would add a field visitor each).
macro_rules! named_enum {
    ($t:ty, $parse:path) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let name = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
                $parse(&name).ok_or_else(|| {
                    <D::Error as serde::de::Error>::custom(format!(
                        "unknown {}: {name:?}",
                        stringify!($t)
                    ))
                })
            }
        }
    };
}
pub(crate) use named_enum;

pub mod base64;
pub mod cleanup;
pub mod config;
pub mod error;
pub mod fleet;
pub mod index;
pub mod invocation;
pub mod legacy;
pub mod limits;
pub mod link;
pub mod ports;
pub mod procedures;
pub mod protocol;
pub mod refusal;
pub mod retry;
pub mod rows;
pub mod session;
pub mod status;
pub mod text;
pub mod time;
pub mod wake;
pub mod webhook;
