//! Why a request was refused: the one list every procedure answers from, turned into an API error in one place (`api::error`).

/// Why a request was refused: the one list every procedure answers from, turned into an API
/// error in one place (`api::error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No lab with this id.
    NotFound,
    /// The lab is past the state where the change makes sense (409).
    Conflict(String),
    /// The change itself is out of bounds (400).
    Invalid(String),
    /// The previous worker left this lab's record unreadable; it is kept as it is (500).
    Unreadable(Vec<LegacyProblem>),
    /// Another object the answer depends on did not answer: nothing changed, try again (503).
    Unavailable(String),
}

/// One unreadable legacy key: its name, the type found, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyProblem {
    pub key: &'static str,
    pub found: String,
    pub expected: &'static str,
}

impl std::fmt::Display for LegacyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "key `{}` is {} (expected {})",
            self.key, self.found, self.expected
        )
    }
}
