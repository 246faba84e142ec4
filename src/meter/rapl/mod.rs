//! RAPL energy counters through Linux powercap (`ROOT/intel-rapl:N` = package N,
//! `ROOT/intel-rapl:N:M` = its core/uncore/dram sub-zones; AMD Zen uses the same names).
//!
//! Counted: every package plus DRAM, never core/uncore on top of their package; psys (the whole
//! platform) only on request, and then without package/DRAM. Each counter wraps to 0 after
//! `max_energy_range_uj`: a background thread reads it often enough that at most one wrap can
//! happen between two reads (a quarter of the time one wrap takes at the zone's power bound,
//! capped at 1 s), and any read gap long enough to hide a wrap becomes a warning, never a
//! silently dropped interval. Reading sysfs directly is a few lines; no crate offers an
//! injectable root and this wraparound handling, so this is hand-written.

mod meter;

pub use meter::RaplMeter;

use super::{Meter, MeterOptions, MeterStatus, Scope};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Longest interval between two background reads.
pub const MAX_POLL: Duration = Duration::from_secs(1);
/// Shortest interval between two background reads.
pub const MIN_POLL: Duration = Duration::from_millis(10);
/// Power bound (W) assumed for a zone that states none and when no TDP is given.
pub const DEFAULT_BOUND_W: f64 = 500.0;
/// Nominal refresh period of RAPL counters (about 1 ms on Intel and AMD).
pub const UPDATE_PERIOD: Duration = Duration::from_millis(1);

/// One powercap zone.
#[derive(Debug, Clone, PartialEq)]
pub struct Zone {
    /// Directory name, e.g. `intel-rapl:0:1`.
    pub id: String,
    /// Directory path.
    pub path: PathBuf,
    /// Contents of its `name` file: `package-0`, `dram`, `core`, `uncore`, `psys`.
    pub name: String,
    /// Name of the parent zone for a sub-zone (`package-0` for `intel-rapl:0:1`).
    pub parent: Option<String>,
    /// `max_energy_range_uj`: the counter wraps to 0 after this many µJ.
    pub max_range_uj: u64,
    /// `constraint_0_max_power_uw` in watts, when the zone states it.
    pub max_power_w: Option<f64>,
}

impl Zone {
    /// Meter name: `rapl:package-0`, `rapl:package-0/dram`, `rapl:psys`.
    pub fn meter_name(&self) -> String {
        match &self.parent {
            Some(p) => format!("rapl:{p}/{}", self.name),
            None => format!("rapl:{}", self.name),
        }
    }

    /// Path of its `energy_uj` counter.
    pub fn energy_path(&self) -> PathBuf {
        self.path.join("energy_uj")
    }
}

/// Whether a zone is counted.
#[derive(Debug, Clone, PartialEq)]
pub enum Pick {
    /// Counted, with this scope.
    Count(Scope),
    /// Not counted, and why.
    Skip(String),
}

/// Package + DRAM (or psys alone when `psys`); core and uncore never, they lie inside the package.
pub fn pick(zone: &Zone, psys: bool) -> Pick {
    let n = zone.name.as_str();
    if n.starts_with("package") || n == "dram" {
        let scope = if n == "dram" { Scope::Dram } else { Scope::CpuPackage };
        if psys {
            return Pick::Skip("not counted: psys (whole platform) is counted instead".into());
        }
        return Pick::Count(scope);
    }
    match n {
        "psys" if psys => Pick::Count(Scope::Psys),
        "psys" => Pick::Skip("not counted: psys covers the whole platform; ask for it with --psys".into()),
        "core" | "uncore" => Pick::Skip(format!("not counted: included in {}", zone.parent.as_deref().unwrap_or("its package"))),
        other => Pick::Skip(format!("not counted: unknown zone kind `{other}`")),
    }
}

/// The `(N, M)` of `intel-rapl:N` / `intel-rapl:N:M`, else None (the `intel-rapl` control
/// directory, `intel-rapl-mmio:*` duplicates of the package, other control types).
fn zone_index(id: &str) -> Option<(u32, Option<u32>)> {
    let rest = id.strip_prefix("intel-rapl:")?;
    let mut parts = rest.split(':');
    let n = parts.next()?.parse().ok()?;
    let m = match parts.next() {
        Some(m) => Some(m.parse().ok()?),
        None => None,
    };
    parts.next().is_none().then_some((n, m))
}

fn read_trimmed(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map(|s| s.trim().to_string()).map_err(|e| Error::io(path, e))
}

/// Lists the RAPL zones under `root`, sorted by package then sub-zone.
pub fn list_zones(root: &Path) -> Result<Vec<Zone>> {
    let entries = std::fs::read_dir(root).map_err(|e| Error::Io {
        path: root.to_path_buf(),
        source: None,
        message: format!(
            "no powercap tree ({e}): RAPL needs Linux powercap (intel_rapl_common, which also serves AMD Zen since 5.8); \
             if it is mounted elsewhere, pass --powercap-root or set EXITBENCH_POWERCAP_ROOT"
        ),
    })?;
    // Both layouts: flat entries beside each other (/sys/class/powercap: intel-rapl:0,
    // intel-rapl:0:0, ...) and sub-zones nested in their package's folder
    // (/sys/devices/virtual/powercap/intel-rapl/intel-rapl:0/intel-rapl:0:0); a zone seen in both
    // places (the class tree has both) is counted once.
    type Found = Vec<((u32, Option<u32>), String, PathBuf)>;
    let mut found: Found = Vec::new();
    let add = |ix: (u32, Option<u32>), id: String, path: PathBuf, found: &mut Found| {
        if !found.iter().any(|(_, f, _)| *f == id) {
            found.push((ix, id, path));
        }
    };
    let top: Vec<(String, PathBuf)> = entries.filter_map(|e| e.ok()).map(|e| (e.file_name().to_string_lossy().to_string(), e.path())).collect();
    for (id, path) in &top {
        if let Some(ix) = zone_index(id) {
            add(ix, id.clone(), path.clone(), &mut found);
        }
    }
    for (id, path) in &top {
        if zone_index(id).is_some_and(|(_, m)| m.is_none()) {
            for e in std::fs::read_dir(path).into_iter().flatten().filter_map(|e| e.ok()) {
                let sub = e.file_name().to_string_lossy().to_string();
                if let Some(ix) = zone_index(&sub).filter(|(n, m)| m.is_some() && Some(*n) == zone_index(id).map(|z| z.0)) {
                    add(ix, sub, e.path(), &mut found);
                }
            }
        }
    }
    found.sort();
    let mut zones: Vec<Zone> = Vec::new();
    for ((n, m), id, path) in found {
        let name = read_trimmed(&path.join("name"))?;
        let range_path = path.join("max_energy_range_uj");
        let range = read_trimmed(&range_path)?;
        let max_range_uj = range
            .parse::<u64>()
            .map_err(|_| Error::file(&range_path, None, format!("expected a whole number of microjoules, found {range:?}")))?;
        let max_power_w = read_trimmed(&path.join("constraint_0_max_power_uw")).ok().and_then(|s| s.parse::<f64>().ok()).map(|uw| uw / 1e6).filter(|w| *w > 0.0);
        let parent = m.and_then(|_| zones.iter().find(|z| z.id == format!("intel-rapl:{n}")).map(|z| z.name.clone()));
        zones.push(Zone { id, path, name, parent, max_range_uj, max_power_w });
    }
    Ok(zones)
}

/// The message for an `energy_uj` that exists but cannot be read, with the fix.
pub fn permission_message(root: &Path) -> String {
    format!(
        "permission denied: since CVE-2020-8694 (Platypus) most kernels let only root read RAPL energy counters. \
         Fix: run as root, or allow reading until the next reboot with `sudo chmod o+r {}/intel-rapl:*/energy_uj` \
         (a udev rule or systemd-tmpfiles entry can repeat that at boot)",
        root.display()
    )
}

/// Reads a counter in µJ; a permission error carries [`permission_message`].
pub fn read_energy_uj(path: &Path, root: &Path) -> Result<u64> {
    let s = std::fs::read_to_string(path).map_err(|e| {
        let message = if e.kind() == std::io::ErrorKind::PermissionDenied {
            permission_message(root)
        } else {
            format!("cannot read the RAPL energy counter: {e}")
        };
        Error::Io { path: path.to_path_buf(), message, source: None }
    })?;
    let t = s.trim();
    t.parse::<u64>().map_err(|_| Error::file(path, None, format!("expected a whole number of microjoules, found {t:?}")))
}

/// Background read interval: a quarter of the time one wrap takes at `bound_w`, clamped to
/// [`MIN_POLL`, `MAX_POLL`].
pub fn poll_interval(max_range_uj: u64, bound_w: f64) -> Duration {
    let wrap_s = wrap_time_s(max_range_uj, bound_w);
    Duration::from_secs_f64((wrap_s / 4.0).clamp(MIN_POLL.as_secs_f64(), MAX_POLL.as_secs_f64()))
}

/// Seconds the counter takes to wrap once at `bound_w`.
pub(crate) fn wrap_time_s(max_range_uj: u64, bound_w: f64) -> f64 {
    if bound_w > 0.0 && max_range_uj > 0 {
        max_range_uj as f64 / 1e6 / bound_w
    } else {
        f64::INFINITY
    }
}

/// Finds the RAPL meters under `opts.powercap_root`: a status for the backend (`rapl`) and one per
/// zone, counted or not and why.
pub fn detect(opts: &MeterOptions) -> (Vec<Box<dyn Meter>>, Vec<MeterStatus>) {
    let root = &opts.powercap_root;
    let zones = match list_zones(root) {
        Ok(z) => z,
        Err(e) => return (Vec::new(), vec![MeterStatus::new("rapl", false, false, e.to_string())]),
    };
    if zones.is_empty() {
        let why = format!("{}: no intel-rapl:* zones (no RAPL driver loaded, or a virtual machine that hides RAPL)", root.display());
        return (Vec::new(), vec![MeterStatus::new("rapl", false, false, why)]);
    }
    let mut meters: Vec<Box<dyn Meter>> = Vec::new();
    let mut status = Vec::new();
    let mut first_error = None;
    for zone in zones.iter() {
        let name = zone.meter_name();
        let readable = read_energy_uj(&zone.energy_path(), root);
        match (pick(zone, opts.psys), readable) {
            (Pick::Count(scope), Ok(_)) => {
                let bound = [zone.max_power_w, opts.cpu_tdp_watts, Some(DEFAULT_BOUND_W)].into_iter().flatten().fold(0.0, f64::max);
                let m = RaplMeter::new(zone.clone(), scope, root, bound);
                let why = format!("counted as {}; read every {:.0} ms (wraps after {:.0} J)", scope.name(), m.poll_interval().as_secs_f64() * 1e3, zone.max_range_uj as f64 / 1e6);
                status.push(MeterStatus::new(name, true, true, why));
                meters.push(Box::new(m));
            }
            (Pick::Count(_), Err(e)) => {
                first_error.get_or_insert_with(|| e.to_string());
                status.push(MeterStatus::new(name, false, false, e.to_string()));
            }
            (Pick::Skip(why), r) => status.push(MeterStatus::new(name, r.is_ok(), false, why)),
        }
    }
    if opts.psys && !zones.iter().any(|z| z.name == "psys") {
        status.push(MeterStatus::new("rapl:psys", false, false, format!("--psys: no psys zone under {}", root.display())));
    }
    let summary = if meters.is_empty() {
        MeterStatus::new("rapl", false, false, first_error.unwrap_or_else(|| format!("{}: no counted zone (package, dram{})", root.display(), if opts.psys { ", psys" } else { "" })))
    } else {
        let names: Vec<String> = meters.iter().map(|m| m.name()).collect();
        MeterStatus::new("rapl", true, true, format!("counting {}", names.join(", ")))
    };
    status.insert(0, summary);
    (meters, status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_ids() {
        assert_eq!(zone_index("intel-rapl:0"), Some((0, None)));
        assert_eq!(zone_index("intel-rapl:1:2"), Some((1, Some(2))));
        assert_eq!(zone_index("intel-rapl"), None);
        assert_eq!(zone_index("intel-rapl-mmio:0"), None);
        assert_eq!(zone_index("intel-rapl:0:1:2"), None);
    }

    #[test]
    fn poll_interval_is_clamped_and_fast_enough() {
        // A typical Intel range (262 kJ) at 500 W wraps after ~524 s: capped at 1 s.
        assert_eq!(poll_interval(262_143_328_850, 500.0), MAX_POLL);
        // 1 J at 20 W wraps after 50 ms: read every 12.5 ms.
        assert_eq!(poll_interval(1_000_000, 20.0), Duration::from_secs_f64(0.0125));
        assert_eq!(poll_interval(1_000, 500.0), MIN_POLL);
    }
}
