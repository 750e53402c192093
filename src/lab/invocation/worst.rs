//! Worst cases.
