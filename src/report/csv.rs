//! `results.csv`: one row per cell with the key, the summary figures and the derived comparisons.

use crate::results::{CellRecord, CellStatus};
use super::{Exporter, ReportRow};
use crate::error::{Error, Result};

/// Column names, in order.
pub const COLUMNS: &[&str] = &[
    "model", "dataset", "backend", "device", "dtype", "threads", "measure", "threshold", "schedule", "min_exit_layer",
    "exit_interval", "baseline", "static_layer", "machine", "num_layers", "samples", "tokens", "avg_layers",
    "speedup_theoretical", "speedup_measured", "speedup_measured_err", "ms_per_token", "ms_per_token_std", "tokens_per_s",
    "prefill_ms", "duration_s", "layers_s", "exit_checks_s", "propagation_s", "energy_j", "avg_watts", "j_per_token",
    "energy_source", "energy_net_j", "idle_w", "prefill_j", "decode_j_per_token", "wh_per_1k_queries", "gco2e", "energy_gpu_j",
    "energy_cpu_j", "energy_dram_j", "energy_warnings", "peak_mem_mb", "peak_device_mem_mb", "device_mem_scope", "status", "reason", "rouge_l_ref", "rouge_l_ref_lo", "rouge_l_ref_hi", "rouge_l_full",
    "d_full", "d_full_lo", "d_full_hi", "rouge_delta", "rouge_delta_lo", "rouge_delta_hi", "key_facts_exact", "random_weights",
    "compute_dtype", "runtime_version", "export_s", "session_s", "bytes_per_token", "achieved_gb_s", "mem_bandwidth_gb_s",
    "mem_bandwidth_all_gb_s", "speedup_measured_lo", "speedup_measured_hi", "speedup_pairs", "rounds", "prefill_j_per_query",
    "prefill_energy_method", "layer_us",
];

/// The CSV export.
pub struct CsvExporter;

fn num(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.6}")).unwrap_or_default()
}

impl Exporter for CsvExporter {
    fn file_name(&self) -> &'static str {
        "results.csv"
    }

    fn render(&self, rows: &[ReportRow], records: &[CellRecord]) -> Result<String> {
        let mut w = csv::Writer::from_writer(Vec::new());
        let err = |e: csv::Error| Error::Internal(format!("csv: {e}"));
        w.write_record(COLUMNS).map_err(err)?;
        for row in rows {
            let r = &records[row.record];
            let k = &r.key;
            let ok = r.status == CellStatus::Ok;
            let some = |x: f64| ok.then_some(x);
            let fields: Vec<String> = vec![
                k.model.clone(), k.dataset.clone(), k.backend.clone(), k.device.clone(), k.dtype.clone(), k.threads.to_string(),
                k.measure.clone(), num(k.threshold), k.schedule.clone(), k.min_exit_layer.map(|v| v.to_string()).unwrap_or_default(),
                k.exit_interval.map(|v| v.to_string()).unwrap_or_default(), k.baseline.name().to_string(),
                k.static_layer.map(|v| v.to_string()).unwrap_or_default(), k.machine.clone(), r.num_layers.to_string(),
                r.samples.to_string(), r.tokens.to_string(), num(some(r.avg_layers)), num(row.speedup_theoretical),
                num(row.speedup_measured), num(row.speedup_measured_err), num(some(r.ms_per_token.median)),
                num(some(r.ms_per_token.std)), num(some(r.tokens_per_s.median)), num(some(r.prefill_s.mean * 1e3)),
                num(some(r.duration_s.median)), num(some(r.time_split.layers_s)), num(some(r.time_split.exit_checks_s)),
                num(some(r.time_split.propagation_s)), num(r.energy.energy_j), num(r.energy.avg_watts), num(r.energy.j_per_token),
                r.energy.source.clone(), num(r.energy.energy_net_j), num(r.energy.idle_w), num(r.energy.prefill_j),
                num(r.energy.decode_j_per_token), num(r.energy.wh_per_1k_queries), num(r.energy.gco2e), num(r.energy.energy_gpu_j),
                num(r.energy.energy_cpu_j), num(r.energy.energy_dram_j), r.energy.warnings.len().to_string(), num(some(r.peak_mem_mb)), num(r.peak_device_mem_mb), r.device_mem_scope.clone().unwrap_or_default(), r.status.name().to_string(), r.reason.clone().unwrap_or_default(),
                num(some(row.rouge_l_ref.mean)), num(some(row.rouge_l_ref.lo)), num(some(row.rouge_l_ref.hi)),
                num(row.rouge_l_full.map(|x| x.mean)), num(row.d_full.map(|x| x.mean)), num(row.d_full.map(|x| x.lo)),
                num(row.d_full.map(|x| x.hi)), num(row.rouge_delta.map(|x| x.mean)), num(row.rouge_delta.map(|x| x.lo)),
                num(row.rouge_delta.map(|x| x.hi)), num(r.key_facts_exact), r.random_weights.to_string(),
                r.compute_dtype.clone().unwrap_or_default(), r.runtime.as_ref().map(|x| x.version.clone()).unwrap_or_default(),
                num(r.runtime.as_ref().and_then(|x| x.export_s)), num(r.runtime.as_ref().and_then(|x| x.session_s)),
                num(r.bytes_per_token), num(r.achieved_gb_s), num(r.hardware.mem_bandwidth_gb_s), num(r.hardware.mem_bandwidth_all_gb_s),
                num(row.speedup_measured_lo), num(row.speedup_measured_hi), r.speedup.as_ref().map(|p| p.pairs.to_string()).unwrap_or_default(),
                r.rounds.to_string(), num(r.energy.prefill_j_per_query), r.energy.prefill_energy_method.clone().unwrap_or_default(),
                r.layer_us.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(";"),
            ];
            debug_assert_eq!(fields.len(), COLUMNS.len());
            w.write_record(&fields).map_err(err)?;
        }
        let bytes = w.into_inner().map_err(|e| Error::Internal(format!("csv: {e}")))?;
        String::from_utf8(bytes).map_err(|e| Error::Internal(e.to_string()))
    }
}
