//! Threshold schedules. `fixed` uses λ at every step. `decaying` is CALM's Eq. 5 (the paper's
//! form, not the t5x code's): λ'(λ, t) = clip₀¹(0.9·λ + 0.1·exp(−τ·t / N)), with t the 0-based
//! decode step and N the maximum number of new tokens. Early tokens thus need more confidence.

use crate::error::{Error, Result};

/// Default τ of the decaying schedule (the t5x default).
pub const DEFAULT_TAU: f64 = 4.0;

/// How the threshold changes over decode steps.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Schedule {
    /// λ at every step.
    Fixed,
    /// CALM's decaying threshold with temperature τ.
    Decaying {
        /// Temperature τ.
        tau: f64,
    },
}

impl Schedule {
    /// Parses `fixed` or `decaying` (τ given separately).
    pub fn parse(s: &str, tau: f64) -> Result<Self> {
        match s {
            "fixed" => Ok(Schedule::Fixed),
            "decaying" => {
                if !(tau.is_finite() && tau >= 0.0) {
                    return Err(Error::setting("--tau", format!("{tau} must be a finite number ≥ 0")));
                }
                Ok(Schedule::Decaying { tau })
            }
            other => Err(Error::setting("--schedule", format!("unknown schedule `{other}` (expected fixed or decaying)"))),
        }
    }

    /// Canonical name.
    pub fn name(&self) -> &'static str {
        match self {
            Schedule::Fixed => "fixed",
            Schedule::Decaying { .. } => "decaying",
        }
    }

    /// Name with its parameter, as results keys record it: `fixed`, `decaying(tau=4)`.
    pub fn key_name(&self) -> String {
        match self {
            Schedule::Fixed => "fixed".into(),
            Schedule::Decaying { tau } => format!("decaying(tau={tau})"),
        }
    }

    /// Reads [`Schedule::key_name`]'s form back (`fixed`, `decaying(tau=4)`).
    pub fn from_key_name(s: &str) -> Option<Schedule> {
        if s == "fixed" {
            return Some(Schedule::Fixed);
        }
        let tau: f64 = s.strip_prefix("decaying(tau=")?.strip_suffix(')')?.parse().ok()?;
        (tau.is_finite() && tau >= 0.0).then_some(Schedule::Decaying { tau })
    }

    /// The threshold at decode step `t` (0-based) of at most `n` new tokens.
    pub fn threshold(&self, lambda: f64, t: usize, n: usize) -> f64 {
        match *self {
            Schedule::Fixed => lambda,
            Schedule::Decaying { tau } => {
                let n = n.max(1) as f64;
                (0.9 * lambda + 0.1 * (-tau * t as f64 / n).exp()).clamp(0.0, 1.0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decaying_starts_high_and_decays_towards_0_9_lambda() {
        let s = Schedule::Decaying { tau: 4.0 };
        assert!((s.threshold(0.5, 0, 100) - 0.55).abs() < 1e-12);
        let late = s.threshold(0.5, 100, 100);
        assert!((late - (0.45 + 0.1 * (-4.0f64).exp())).abs() < 1e-12);
        assert!(s.threshold(0.5, 10, 100) > late);
        assert_eq!(Schedule::Fixed.threshold(0.7, 5, 10), 0.7);
    }

    #[test]
    fn key_names_read_back() {
        for s in [Schedule::Fixed, Schedule::Decaying { tau: 4.0 }, Schedule::Decaying { tau: 0.25 }] {
            assert_eq!(Schedule::from_key_name(&s.key_name()), Some(s));
        }
        assert_eq!(Schedule::from_key_name("decaying(tau=x)"), None);
        assert_eq!(Schedule::from_key_name("-"), None);
    }
}
