//! Reads a TOML settings file into [`RawSettings`]: unknown keys and bad values are reported
//! against the file and the line of their key.

use super::RawSettings;
use crate::error::{Error, Result};
use std::path::Path;

impl RawSettings {
    /// Reads a TOML settings file; unknown keys and bad types name the key and its line.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let line_of = |key: &str| line_of_key(&text, key);
        // Unknown keys (flattened sub-tables rule out serde's deny_unknown_fields).
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e.span().map(|s| text[..s.start].lines().count().max(1));
            Error::file(path, line, e.message().to_string())
        })?;
        let known = Self::keys();
        if let Some(k) = table.keys().find(|k| !known.contains(k)) {
            let hint = known.iter().find(|c| c.trim_end_matches('s') == k.trim_end_matches('s')).map(|c| format!(" (did you mean `{c}`?)")).unwrap_or_default();
            return Err(Error::file(path, line_of(k), format!("key `{k}`: unknown key{hint}")));
        }
        let de = toml::Deserializer::new(&text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            // The key's own line when the path names one, else the parser's span.
            let leaf = key.rsplit('.').next().unwrap_or("").to_string();
            let line = line_of(&leaf).filter(|_| !leaf.is_empty()).or_else(|| inner.span().map(|s| text[..s.start].lines().count().max(1)));
            Error::file(path, line, format!("key `{key}`: {}", inner.message()))
        })
    }
}

/// The 1-based line of `text` that sets `key` (`key = ...`), if any.
pub fn line_of_key(text: &str, key: &str) -> Option<usize> {
    text.lines().position(|l| l.trim_start().strip_prefix(key).is_some_and(|r| r.trim_start().starts_with('='))).map(|i| i + 1)
}
