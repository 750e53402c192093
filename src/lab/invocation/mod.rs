//! One invocation within its plan: the plans' limits (`plan`), what an invocation used and may still use (`ledger`), and each invocation kind's worst case from the settings (`worst`).

pub mod ledger;
pub mod plan;
pub mod worst;

pub use ledger::{Exceeded, InvocationRecord, Ledger, Meter};
pub use plan::{Limits, Plan};
