//! Reports: JSON for scripts (stable snake_case keys, DESIGN.md › Reports), Markdown summaries on
//! stdout (written by each command), and PNG plots.

pub mod plot;

use std::path::Path;

use crate::error::Result;

/// Writes `value` as pretty JSON, atomically.
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).expect("a JSON value serialises");
    text.push('\n');
    crate::io::write_atomic(path, text.as_bytes())
}
