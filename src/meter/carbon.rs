//! Carbon: gCO2e = kWh × grid intensity (g/kWh) × PUE. The intensity is a number
//! (`--carbon-intensity 350`) or a country code from a small built-in table; the default is
//! CodeCarbon's world-average fallback, 475 g/kWh. PUE defaults to 1.0 (no facility overhead).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// World-average fallback intensity, g/kWh (CodeCarbon's; Ember puts the 2023 world average at
/// 481 g/kWh).
pub const WORLD_G_PER_KWH: f64 = 475.0;

/// Where [`COUNTRIES`] comes from.
pub const TABLE_SOURCE: &str = "Ember and Energy Institute via Our World in Data, carbon intensity of electricity generation, 2023";

/// Lifecycle carbon intensity of electricity generation in 2023, g CO2e/kWh, by ISO 3166-1
/// alpha-2 code ([`TABLE_SOURCE`]; Norway from Ember's 2023 figures). Generation, not
/// consumption: imports are not accounted.
pub const COUNTRIES: &[(&str, &str, f64)] = &[
    ("AT", "Austria", 111.0),
    ("AU", "Australia", 549.0),
    ("BE", "Belgium", 138.0),
    ("BR", "Brazil", 98.0),
    ("CA", "Canada", 170.0),
    ("CL", "Chile", 291.0),
    ("CN", "China", 582.0),
    ("DE", "Germany", 381.0),
    ("DK", "Denmark", 152.0),
    ("FI", "Finland", 79.0),
    ("FR", "France", 56.0),
    ("GR", "Greece", 337.0),
    ("IE", "Ireland", 291.0),
    ("IN", "India", 713.0),
    ("NO", "Norway", 30.0),
];

/// A grid intensity and where it comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Intensity {
    /// Grams CO2e per kWh.
    pub g_per_kwh: f64,
    /// Origin in words (`--carbon-intensity`, a country and the table's source, or the default).
    pub source: String,
}

impl Default for Intensity {
    fn default() -> Self {
        Intensity { g_per_kwh: WORLD_G_PER_KWH, source: "world average (CodeCarbon's fallback, 475 g/kWh)".into() }
    }
}

/// Parses `--carbon-intensity`: grams per kWh (0 to 2000), a country code from [`COUNTRIES`]
/// (case-insensitive), or `world`. None gives the world default.
pub fn resolve(arg: Option<&str>) -> Result<Intensity> {
    let Some(a) = arg.map(str::trim) else { return Ok(Intensity::default()) };
    if a.eq_ignore_ascii_case("world") {
        return Ok(Intensity::default());
    }
    if let Ok(g) = a.parse::<f64>() {
        if !g.is_finite() || !(0.0..=2000.0).contains(&g) {
            return Err(Error::setting("--carbon-intensity", format!("{a} g/kWh is out of range (0 to 2000)")));
        }
        return Ok(Intensity { g_per_kwh: g, source: "--carbon-intensity".into() });
    }
    match COUNTRIES.iter().find(|(code, _, _)| code.eq_ignore_ascii_case(a)) {
        Some((code, name, g)) => Ok(Intensity { g_per_kwh: *g, source: format!("{name} ({code}): {TABLE_SOURCE}") }),
        None => {
            let codes: Vec<&str> = COUNTRIES.iter().map(|c| c.0).collect();
            Err(Error::setting("--carbon-intensity", format!("`{a}` is neither g/kWh nor a known country code (world, {})", codes.join(", "))))
        }
    }
}

/// Checks a PUE (power usage effectiveness): finite, 1.0 to 3.0.
pub fn check_pue(pue: f64) -> Result<f64> {
    if pue.is_finite() && (1.0..=3.0).contains(&pue) {
        Ok(pue)
    } else {
        Err(Error::setting("--pue", format!("{pue} is not a PUE (expected 1.0 to 3.0)")))
    }
}

/// Kilowatt-hours in `joules`.
pub fn kwh(joules: f64) -> f64 {
    joules / 3.6e6
}

/// Grams CO2e for `joules` at `g_per_kwh` and `pue`.
pub fn gco2e(joules: f64, g_per_kwh: f64, pue: f64) -> f64 {
    kwh(joules) * g_per_kwh * pue
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_kwh_at_475_is_475_g() {
        assert_eq!(gco2e(3.6e6, 475.0, 1.0), 475.0);
        assert_eq!(gco2e(3.6e6, 100.0, 1.5), 150.0);
    }

    #[test]
    fn resolves_numbers_codes_and_world() {
        assert_eq!(resolve(None).unwrap().g_per_kwh, 475.0);
        assert_eq!(resolve(Some("fr")).unwrap().g_per_kwh, 56.0);
        assert_eq!(resolve(Some("350")).unwrap().g_per_kwh, 350.0);
        let e = resolve(Some("XX")).unwrap_err();
        assert!(e.is_bad_input() && e.to_string().starts_with("--carbon-intensity: `XX` is neither"), "{e}");
        assert!(resolve(Some("-1")).is_err());
        assert!(check_pue(0.9).is_err() && check_pue(1.2).is_ok());
    }
}
