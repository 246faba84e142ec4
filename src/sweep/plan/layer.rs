//! Layering settings: defaults ← file ← flags, each layer replacing the fields the next one sets.
//! The one place settings are merged (through their JSON form, so a new field needs no code here).

use super::RawSettings;
use crate::error::{Error, Result};

impl RawSettings {
    /// The settings a sweep runs with: [`RawSettings::defaults`], overridden by `file` (a
    /// `--config` file), overridden by `flags`.
    pub fn layered(file: RawSettings, flags: RawSettings) -> RawSettings {
        RawSettings::defaults().overridden_by(file).overridden_by(flags)
    }

    pub fn overridden_by(self, over: RawSettings) -> RawSettings {
        let (mut a, b) = (self.normalized().to_json(), over.normalized().to_json());
        if let (Some(a), Some(b)) = (a.as_object_mut(), b.as_object()) {
            for (k, v) in b.iter().filter(|(_, v)| !v.is_null()) {
                a.insert(k.clone(), v.clone());
            }
        }
        serde_json::from_value(a).expect("settings serialized by this build read back")
    }

    fn normalized(mut self) -> RawSettings {
        if self.no_oracle {
            self.oracle = Some(false);
            self.no_oracle = false;
        }
        self
    }

    pub(super) fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("settings serialize")
    }

    /// True when `self` sets the setting `key` (kebab-case, as in the TOML file and the flags).
    pub fn sets(&self, key: &str) -> bool {
        self.clone().normalized().to_json().get(key).is_some_and(|v| !v.is_null())
    }

    /// Refuses numbers that are not finite (`--tau nan`, `cooldown = inf`): layering would
    /// otherwise turn them into "not set" and fall back to the default.
    pub fn check_finite(&self) -> Result<()> {
        let e = &self.energy;
        let named = [("--tau", self.tau), ("--idle-seconds", e.idle_seconds), ("--min-window", e.min_window), ("--pue", e.pue), ("--cpu-tdp-watts", e.meter.cpu_tdp_watts), ("--cooldown", e.cooldown)];
        match named.iter().find(|(_, v)| v.is_some_and(|x| !x.is_finite())) {
            Some((flag, v)) => Err(Error::setting(*flag, format!("{} is not a finite number", v.unwrap_or_default()))),
            None => Ok(()),
        }
    }
}
