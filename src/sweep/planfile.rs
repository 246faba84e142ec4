//! `plan.json`: the plans run into a results directory, so that a resume with other settings is
//! refused (naming what differs) and `--extend` adds a plan's cells knowingly.

use super::plan::Plan;
use crate::error::{Error, Result};
use std::path::Path;

/// The plans run into a results directory, oldest first (`plan.json`).
pub const PLAN_FILE: &str = "plan.json";

/// The settings that define a sweep and what its cells measure, as recorded in `plan.json`
/// (`out` and the pause between cells left out: a resume may change those).
fn plan_settings(plan: &Plan) -> serde_json::Value {
    let mut v = serde_json::to_value(&plan.resolved).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.remove("out");
        o.remove("cooldown");
    }
    v
}

/// Refuses a resume whose plan differs from the last one recorded in `dir` (naming what
/// differs); with `extend`, or without a record, records this plan.
pub fn check_and_record_plan(plan: &Plan, dir: &Path, resume: bool, extend: bool) -> Result<()> {
    let path = dir.join(PLAN_FILE);
    let now = plan_settings(plan);
    let mut plans: Vec<serde_json::Value> = match std::fs::read_to_string(&path) {
        Ok(t) => serde_json::from_str::<serde_json::Value>(&t)
            .ok()
            .and_then(|v| v.get("plans").and_then(|p| p.as_array()).cloned())
            .ok_or_else(|| Error::file(&path, None, "not a plan record (expected {\"plans\": [...]})"))?,
        Err(_) => Vec::new(),
    };
    if let Some(last) = plans.last() {
        if *last == now {
            return Ok(());
        }
        if resume && !extend {
            let (a, b) = (last.as_object(), now.as_object());
            let mut keys: Vec<String> = a.into_iter().chain(b).flat_map(|m| m.keys().cloned()).collect();
            keys.sort();
            keys.dedup();
            let diffs: Vec<String> = keys
                .iter()
                .filter(|k| last.get(k.as_str()) != now.get(k.as_str()))
                .map(|k| format!("{k}: {} → {}", last.get(k.as_str()).unwrap_or(&serde_json::Value::Null), now.get(k.as_str()).unwrap_or(&serde_json::Value::Null)))
                .collect();
            return Err(Error::setting(
                "--resume",
                format!("{} was made by another plan ({}); resume it with the same settings, or pass --extend to add this plan's cells to it", dir.display(), diffs.join("; ")),
            ));
        }
    }
    plans.push(now);
    let text = serde_json::to_string_pretty(&serde_json::json!({ "plans": plans })).map_err(|e| Error::Internal(e.to_string()))?;
    let tmp = dir.join(".plan.json.tmp");
    std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
}

