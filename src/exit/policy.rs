//! The exit policy: at which layers a token may exit (from the minimum exit layer on, every
//! k-th layer) and when it does (confidence ≥ the scheduled threshold); and the baselines that
//! run through the same decode loop.

use super::{Measure, Schedule};
use crate::error::{Error, Result};

/// A confidence-based early-exit policy.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExitPolicy {
    /// Confidence measure.
    pub measure: Measure,
    /// Threshold λ in [0, 1].
    pub threshold: f64,
    /// Threshold schedule.
    pub schedule: Schedule,
    /// First layer (1-based) at which a token may exit.
    pub min_exit_layer: usize,
    /// Check every k-th layer from the minimum exit layer on.
    pub exit_interval: usize,
}

impl ExitPolicy {
    /// Checks the policy against a model of `layers` layers.
    pub fn validate(&self, layers: usize) -> Result<()> {
        check_threshold("--threshold", self.threshold)?;
        check_exit_points(self.min_exit_layer, self.exit_interval, layers)
    }

    /// True when layer `l` (1-based) of `layers` is an exit point; the last layer never is
    /// (a token reaching it is emitted at full depth).
    pub fn is_exit_point(&self, l: usize, layers: usize) -> bool {
        is_exit_point(l, layers, self.min_exit_layer, self.exit_interval)
    }
}

// The exit knobs' checks: the one home of their rules and messages, used by the decode loop's
// modes here and by the sweep's plan (which checks every value of every list up front).

/// A threshold λ must lie in [0, 1] (NaN does not).
pub fn check_threshold(flag: &str, t: f64) -> Result<()> {
    if (0.0..=1.0).contains(&t) {
        Ok(())
    } else {
        Err(Error::setting(flag, format!("{t} is outside [0, 1]")))
    }
}

/// An exit layer (`--min-exit-layer`, `--static-exit`) must be one of the model's `layers`
/// (numbered from 1); `whose` names the model in the message when there are several.
pub fn check_exit_layer(flag: &str, k: usize, layers: usize, whose: Option<&std::path::Path>) -> Result<()> {
    if (1..=layers).contains(&k) {
        return Ok(());
    }
    let whose = whose.map(|d| format!(" for model {}", d.display())).unwrap_or_default();
    Err(Error::setting(flag, format!("{k} is outside 1..={layers} (layers are numbered from 1){whose}")))
}

/// An exit interval (check every k-th layer) must be at least 1.
pub fn check_exit_interval(k: usize) -> Result<()> {
    if k == 0 {
        Err(Error::setting("--exit-interval", "must be at least 1"))
    } else {
        Ok(())
    }
}

fn check_exit_points(min_exit_layer: usize, exit_interval: usize, layers: usize) -> Result<()> {
    check_exit_layer("--min-exit-layer", min_exit_layer, layers, None)?;
    check_exit_interval(exit_interval)
}

fn is_exit_point(l: usize, layers: usize, min: usize, interval: usize) -> bool {
    l >= min && l < layers && (l - min).is_multiple_of(interval)
}

/// How deep each token goes.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum ExitMode {
    /// Every token through all L layers.
    Full,
    /// Confidence-based early exit with state propagation.
    Dynamic(ExitPolicy),
    /// Every token exits at layer `layer`; layers above are never run (LayerSkip's setting).
    Static {
        /// The exit layer k.
        layer: usize,
    },
    /// All layers run; each token is credited to the lowest exit point whose argmax equals the
    /// final layer's (an analysis: its measured speedup is not meaningful).
    Oracle {
        /// First layer considered.
        min_exit_layer: usize,
        /// Consider every k-th layer.
        exit_interval: usize,
    },
}

impl ExitMode {
    /// Checks the mode against a model of `layers` layers.
    pub fn validate(&self, layers: usize) -> Result<()> {
        match self {
            ExitMode::Full => Ok(()),
            ExitMode::Dynamic(p) => p.validate(layers),
            ExitMode::Static { layer } => check_exit_layer("--static-exit", *layer, layers, None),
            ExitMode::Oracle { min_exit_layer, exit_interval } => check_exit_points(*min_exit_layer, *exit_interval, layers),
        }
    }

    /// Deepest layer ever run (the prefill depth).
    pub fn depth(&self, layers: usize) -> usize {
        match self {
            ExitMode::Static { layer } => *layer,
            _ => layers,
        }
    }

    /// Oracle exit points: layer `l` of `layers` is one from `min` on, every `interval`-th.
    pub fn oracle_point(l: usize, layers: usize, min: usize, interval: usize) -> bool {
        is_exit_point(l, layers, min, interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_points_respect_min_and_interval_and_skip_last() {
        let p = ExitPolicy { measure: Measure::SoftmaxDiff, threshold: 0.5, schedule: Schedule::Fixed, min_exit_layer: 2, exit_interval: 2 };
        let pts: Vec<usize> = (1..=8).filter(|&l| p.is_exit_point(l, 8)).collect();
        assert_eq!(pts, vec![2, 4, 6]);
    }

    #[test]
    fn invalid_settings_name_their_flag() {
        let mut p = ExitPolicy { measure: Measure::SoftmaxDiff, threshold: 1.5, schedule: Schedule::Fixed, min_exit_layer: 1, exit_interval: 1 };
        assert!(p.validate(4).unwrap_err().to_string().contains("--threshold"));
        p.threshold = 0.5;
        p.min_exit_layer = 5;
        assert!(p.validate(4).unwrap_err().to_string().contains("--min-exit-layer"));
        assert!(ExitMode::Static { layer: 0 }.validate(4).unwrap_err().to_string().contains("--static-exit"));
    }
}
