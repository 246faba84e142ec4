//! Thresholds as the flags and the TOML file write them: numbers or `start:stop:step` ranges.

use super::dedup::dedup_keep_order;
use crate::error::{Error, Result};

/// The most thresholds one `start:stop:step` range may expand to.
pub const MAX_RANGE_THRESHOLDS: usize = 10_000;

/// Parses thresholds: numbers or `start:stop:step` ranges (inclusive, descending or ascending);
/// a value given twice counts once.
pub fn parse_thresholds(items: &[String]) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for item in items {
        let item = item.trim();
        let num = |s: &str| -> Result<f64> {
            s.trim().parse::<f64>().map_err(|_| Error::setting("--thresholds", format!("`{s}` is not a number")))
        };
        if item.contains(':') {
            let parts: Vec<&str> = item.split(':').collect();
            if parts.len() != 3 {
                return Err(Error::setting("--thresholds", format!("`{item}` is not start:stop:step")));
            }
            let (a, b, step) = (num(parts[0])?, num(parts[1])?, num(parts[2])?.abs());
            // Bounds before expansion: `0:1e9:1` must be an error, not billions of values.
            for t in [a, b] {
                if !(0.0..=1.0).contains(&t) {
                    return Err(Error::setting("--thresholds", format!("{t} in `{item}` is outside [0, 1]")));
                }
            }
            if step.is_nan() || step <= 0.0 {
                return Err(Error::setting("--thresholds", format!("`{item}` needs a positive step")));
            }
            let count = (b - a).abs() / step + 1e-9;
            if count > MAX_RANGE_THRESHOLDS as f64 {
                return Err(Error::setting("--thresholds", format!("`{item}` expands to {:.0} thresholds; at most {MAX_RANGE_THRESHOLDS} per range", count.floor() + 1.0)));
            }
            let n = count.floor() as usize;
            let dir = if b >= a { 1.0 } else { -1.0 };
            for i in 0..=n {
                out.push(((a + dir * step * i as f64) * 1e9).round() / 1e9);
            }
        } else {
            out.push(num(item)?);
        }
    }
    out.iter().try_for_each(|&t| crate::exit::policy::check_threshold("--thresholds", t))?;
    Ok(dedup_keep_order(out))
}
