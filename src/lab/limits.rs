//! What a lab may hold: the id rule and every size bound of the stored record, each with the platform limit it comes from.

/// Most workers a lab may have: what fits the record's bound with every other part at its
/// largest (`session::bound`'s `the_worst_case_fits`). `MAX_WORKER_NODES` cannot be set higher.
pub const MAX_WORKERS: usize = 48;

/// Longest id (`lab_request_id`, `user_id`, `worker_lab_request_id`), in characters.
pub const MAX_ID_LEN: usize = 128;
/// Longest `vm.name` (kept for logs and the status view), in characters.
pub const MAX_VM_NAME_LEN: usize = 256;

/// Most labels a lab may carry.
pub const MAX_LABELS: usize = 10;
/// Longest label key (`[a-z0-9_.-]`), and longest label value (printable characters).
pub const MAX_LABEL_KEY_LEN: usize = 63;
pub const MAX_LABEL_VALUE_LEN: usize = 128;

/// Why a label is refused, in words (the key is named by the caller).
pub fn label_problem(key: &str, value: &str) -> Option<String> {
    if key.is_empty() || key.len() > MAX_LABEL_KEY_LEN {
        return Some(format!(
            "a label key must be 1 to {MAX_LABEL_KEY_LEN} characters"
        ));
    }
    if let Some(c) = key
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(*c)))
    {
        return Some(format!(
            "label key {key:?} has {}; keys are a-z 0-9 _ . -",
            describe_char(c)
        ));
    }
    let n = value.chars().count();
    if n == 0 || n > MAX_LABEL_VALUE_LEN {
        return Some(format!(
            "label {key} must be 1 to {MAX_LABEL_VALUE_LEN} characters, got {n}"
        ));
    }
    if value.trim().is_empty() {
        return Some(format!("label {key} must not be only white space"));
    }
    if let Some(c) = value.chars().find(|c| crate::lab::text::is_unsafe(*c)) {
        return Some(format!(
            "label {key} has {}; values are printable characters",
            describe_char(c)
        ));
    }
    None
}

/// Why a text is not an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdProblem {
    Empty,
    /// Longer than `MAX_ID_LEN` characters (this many).
    TooLong(usize),
    /// A character outside `A-Z a-z 0-9 . _ : @ + -`.
    Character(char),
}

/// The characters an id may hold besides ASCII letters and digits.
pub const ID_PUNCTUATION: [char; 6] = ['.', '_', ':', '@', '+', '-'];

/// Checks an id: 1 to `MAX_ID_LEN` characters from `A-Z a-z 0-9 . _ : @ + -`. Ids go into URLs,
/// log lines, SQL binds and the dashboard: nothing else can be trusted in all four.
pub fn id_problem(id: &str) -> Option<IdProblem> {
    if id.is_empty() {
        return Some(IdProblem::Empty);
    }
    let count = id.chars().count();
    if count > MAX_ID_LEN {
        return Some(IdProblem::TooLong(count));
    }
    id.chars()
        .find(|c| !(c.is_ascii_alphanumeric() || ID_PUNCTUATION.contains(c)))
        .map(IdProblem::Character)
}

/// A character as an error message names it: `'x'`, or `U+000A` for anything invisible,
/// white space or not ASCII.
pub fn describe_char(c: char) -> String {
    if c.is_control() || c.is_whitespace() || !c.is_ascii() {
        format!("the character U+{:04X}", c as u32)
    } else {
        format!("the character '{c}'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_short_and_plain() {
        assert_eq!(id_problem("k8s-master-abc-123"), None);
        assert_eq!(id_problem("user@x.io:1+2_3"), None);
        assert_eq!(id_problem(&"a".repeat(MAX_ID_LEN)), None);
        assert_eq!(id_problem(""), Some(IdProblem::Empty));
        assert_eq!(
            id_problem(&"a".repeat(MAX_ID_LEN + 1)),
            Some(IdProblem::TooLong(MAX_ID_LEN + 1))
        );
        assert_eq!(id_problem("a\nb"), Some(IdProblem::Character('\n')));
        assert_eq!(id_problem("a/b"), Some(IdProblem::Character('/')));
        assert_eq!(id_problem("é"), Some(IdProblem::Character('é')));
        assert_eq!(describe_char('\n'), "the character U+000A");
        assert_eq!(describe_char('/'), "the character '/'");
    }
}
