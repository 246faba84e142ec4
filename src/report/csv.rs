//! `results.csv`: one row per cell with the key, the summary figures and the derived comparisons.

use crate::results::{CellRecord, CellStatus};
use super::{Exporter, ReportRow};
use crate::error::{Error, Result};

/// A column: its header and how a row's value is written.
type Column = (&'static str, fn(&ReportRow, &CellRecord) -> String);

fn num(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.6}")).unwrap_or_default()
}

/// A figure measured only for `ok` cells.
fn ok(r: &CellRecord, x: f64) -> String {
    num((r.status == CellStatus::Ok).then_some(x))
}

fn opt<T: ToString>(x: Option<T>) -> String {
    x.map(|v| v.to_string()).unwrap_or_default()
}

/// The columns, in order: each header beside its value, so they cannot drift apart.
pub const COLUMNS: &[Column] = &[
    ("model", |_, r| r.key.model.clone()),
    ("dataset", |_, r| r.key.dataset.clone()),
    ("backend", |_, r| r.key.backend.to_string()),
    ("device", |_, r| r.key.device.to_string()),
    ("dtype", |_, r| r.key.dtype.to_string()),
    ("threads", |_, r| r.key.threads.to_string()),
    ("measure", |_, r| r.key.measure_name().to_string()),
    ("threshold", |_, r| num(r.key.threshold)),
    ("schedule", |_, r| r.key.schedule.map(|s| s.key_name()).unwrap_or_else(|| "-".into())),
    ("min_exit_layer", |_, r| opt(r.key.min_exit_layer)),
    ("exit_interval", |_, r| opt(r.key.exit_interval)),
    ("baseline", |_, r| r.key.baseline.to_string()),
    ("static_layer", |_, r| opt(r.key.static_layer)),
    ("machine", |_, r| r.key.machine.clone()),
    ("num_layers", |_, r| r.num_layers.to_string()),
    ("samples", |_, r| r.samples.to_string()),
    ("tokens", |_, r| r.tokens.to_string()),
    ("avg_layers", |_, r| ok(r, r.avg_layers)),
    ("speedup_theoretical", |row, _| num(row.speedup_theoretical)),
    ("speedup_measured", |row, _| num(row.speedup_measured)),
    ("speedup_measured_err", |row, _| num(row.speedup_measured_err)),
    ("ms_per_token", |_, r| ok(r, r.ms_per_token.median)),
    ("ms_per_token_std", |_, r| ok(r, r.ms_per_token.std)),
    ("tokens_per_s", |_, r| ok(r, r.tokens_per_s.median)),
    ("prefill_ms", |_, r| ok(r, r.prefill_s.mean * 1e3)),
    ("duration_s", |_, r| ok(r, r.duration_s.median)),
    ("layers_s", |_, r| ok(r, r.time_split.layers_s)),
    ("exit_checks_s", |_, r| ok(r, r.time_split.exit_checks_s)),
    ("propagation_s", |_, r| ok(r, r.time_split.propagation_s)),
    ("energy_j", |_, r| num(r.energy.energy_j)),
    ("avg_watts", |_, r| num(r.energy.avg_watts)),
    ("j_per_token", |_, r| num(r.energy.j_per_token)),
    ("energy_source", |_, r| r.energy.source.to_string()),
    ("energy_net_j", |_, r| num(r.energy.energy_net_j)),
    ("idle_w", |_, r| num(r.energy.idle_w)),
    ("prefill_j", |_, r| num(r.energy.prefill_j)),
    ("decode_j_per_token", |_, r| num(r.energy.decode_j_per_token)),
    ("wh_per_1k_queries", |_, r| num(r.energy.wh_per_1k_queries)),
    ("gco2e", |_, r| num(r.energy.gco2e)),
    ("energy_gpu_j", |_, r| num(r.energy.energy_gpu_j)),
    ("energy_cpu_j", |_, r| num(r.energy.energy_cpu_j)),
    ("energy_dram_j", |_, r| num(r.energy.energy_dram_j)),
    ("energy_warnings", |_, r| r.energy.warnings.len().to_string()),
    ("peak_mem_mb", |_, r| ok(r, r.peak_mem_mb)),
    ("peak_device_mem_mb", |_, r| num(r.peak_device_mem_mb)),
    ("device_mem_scope", |_, r| r.device_mem_scope.clone().unwrap_or_default()),
    ("status", |_, r| r.status.to_string()),
    ("reason", |_, r| r.reason.clone().unwrap_or_default()),
    ("rouge_l_ref", |row, r| ok(r, row.rouge_l_ref.mean)),
    ("rouge_l_ref_lo", |row, r| ok(r, row.rouge_l_ref.lo)),
    ("rouge_l_ref_hi", |row, r| ok(r, row.rouge_l_ref.hi)),
    ("rouge_l_full", |row, _| num(row.rouge_l_full.map(|x| x.mean))),
    ("d_full", |row, _| num(row.d_full.map(|x| x.mean))),
    ("d_full_lo", |row, _| num(row.d_full.map(|x| x.lo))),
    ("d_full_hi", |row, _| num(row.d_full.map(|x| x.hi))),
    ("rouge_delta", |row, _| num(row.rouge_delta.map(|x| x.mean))),
    ("rouge_delta_lo", |row, _| num(row.rouge_delta.map(|x| x.lo))),
    ("rouge_delta_hi", |row, _| num(row.rouge_delta.map(|x| x.hi))),
    ("key_facts_exact", |_, r| num(r.key_facts_exact)),
    ("random_weights", |_, r| r.random_weights.to_string()),
    ("compute_dtype", |_, r| r.compute_dtype.clone().unwrap_or_default()),
    ("runtime_version", |_, r| r.runtime.as_ref().map(|x| x.version.clone()).unwrap_or_default()),
    ("export_s", |_, r| num(r.runtime.as_ref().and_then(|x| x.export_s))),
    ("session_s", |_, r| num(r.runtime.as_ref().and_then(|x| x.session_s))),
    ("bytes_per_token", |_, r| num(r.bytes_per_token)),
    ("achieved_gb_s", |_, r| num(r.achieved_gb_s)),
    ("mem_bandwidth_gb_s", |_, r| num(r.hardware.mem_bandwidth_gb_s)),
    ("mem_bandwidth_all_gb_s", |_, r| num(r.hardware.mem_bandwidth_all_gb_s)),
    ("speedup_measured_lo", |row, _| num(row.speedup_measured_lo)),
    ("speedup_measured_hi", |row, _| num(row.speedup_measured_hi)),
    ("speedup_pairs", |_, r| opt(r.speedup.as_ref().map(|p| p.pairs))),
    ("rounds", |_, r| r.rounds.to_string()),
    ("prefill_j_per_query", |_, r| num(r.energy.prefill_j_per_query)),
    ("prefill_energy_method", |_, r| r.energy.prefill_energy_method.clone().unwrap_or_default()),
    ("layer_us", |_, r| r.layer_us.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(";")),
    ("huge_page_weights_mib", |_, r| num(r.runtime.as_ref().and_then(|x| x.huge_pages).map(|h| h.backed_mib))),
];

/// The CSV export.
pub struct CsvExporter;

impl Exporter for CsvExporter {
    fn file_name(&self) -> &'static str {
        "results.csv"
    }

    fn render(&self, rows: &[ReportRow], records: &[CellRecord]) -> Result<String> {
        let mut w = csv::Writer::from_writer(Vec::new());
        let err = |e: csv::Error| Error::Internal(format!("csv: {e}"));
        w.write_record(COLUMNS.iter().map(|c| c.0)).map_err(err)?;
        for row in rows {
            let r = &records[row.record];
            w.write_record(COLUMNS.iter().map(|c| (c.1)(row, r))).map_err(err)?;
        }
        let bytes = w.into_inner().map_err(|e| Error::Internal(format!("csv: {e}")))?;
        String::from_utf8(bytes).map_err(|e| Error::Internal(e.to_string()))
    }
}
