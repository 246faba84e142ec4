//! Energy accounting of a cell: its round windows summed per repetition, the prefill's joules
//! from a prefill-only window (or by time share where none was measured), the decode joules
//! per token what is left, and the median repetition with statistics over all of them.

use super::plan::EnergySettings;
use super::rounds::{RoundRecord, WindowJoules};
use crate::backend::Backend;
use crate::decode::{generate, GenerateOptions};
use crate::error::Result;
use crate::exit::ExitMode;
use crate::meter::{EnergyWindow, Scope, WindowReading};
use crate::results::record::{Energy, Stats};
use std::time::Instant;

/// The window's figures as a round keeps them.
pub fn window_joules(r: &WindowReading, idle: &[(String, f64)]) -> WindowJoules {
    let mut warnings: Vec<String> = r.readings.iter().flat_map(|m| m.warnings.iter().map(|x| format!("{}: {x}", m.meter))).collect();
    warnings.dedup();
    WindowJoules {
        source: r.source_label.clone(),
        estimate: r.is_estimate(),
        total_j: r.total_j,
        net_j: crate::meter::net_energy(r, idle).net_j,
        duration_s: r.duration_s,
        gpu_j: r.scope_j(Scope::GpuBoard),
        cpu_j: r.scope_j(Scope::CpuPackage).or(r.scope_j(Scope::Psys)),
        dram_j: r.scope_j(Scope::Dram),
        warnings,
    }
}

/// Joules per query of a prefill-only pass (prompt → first token at `mode`'s depth) over
/// `prompts`, repeated inside one window until it lasts `min_window` seconds.
pub fn prefill_j_per_query<B: Backend>(backend: &mut B, prompts: &[Vec<u32>], mode: ExitMode, eos_ids: &[u32], window: &mut EnergyWindow, min_window: f64) -> Result<f64> {
    let opts = GenerateOptions::greedy(mode, 1, eos_ids.to_vec());
    backend.sync()?;
    window.begin()?;
    let start = Instant::now();
    let mut passes = 0usize;
    let work = (|| -> Result<()> {
        loop {
            for p in prompts {
                crate::interrupt::check()?;
                generate(backend, p, &opts)?;
            }
            passes += 1;
            if start.elapsed().as_secs_f64() >= min_window {
                return Ok(());
            }
        }
    })();
    let synced = backend.sync();
    let reading = window.end()?;
    work?;
    synced?;
    Ok(reading.total_j / (passes * prompts.len().max(1)) as f64)
}

/// One repetition's energy from its rounds (each window's joules divided by its passes, then
/// summed over the rounds: one pass over the cell's samples). `prefill_per_query` is the
/// prefill-only window's figure where one was measured.
pub fn repetition_energy(rounds: &[&RoundRecord], prefill_per_query: Option<f64>, e: &EnergySettings) -> Energy {
    let Some(first) = rounds.first() else { return Energy { source: crate::meter::Sources::none(), ..Default::default() } };
    if first.energy.source.is_none() {
        return Energy { source: crate::meter::Sources::none(), ..Default::default() };
    }
    let per = |f: fn(&WindowJoules) -> Option<f64>| -> Option<f64> {
        let xs: Vec<f64> = rounds.iter().filter_map(|r| f(&r.energy).map(|j| j / r.passes.max(1) as f64)).collect();
        (!xs.is_empty()).then(|| xs.iter().sum())
    };
    let gross = per(|w| Some(w.total_j)).unwrap_or(0.0);
    let net = per(|w| Some(w.net_j)).unwrap_or(0.0);
    let duration = per(|w| Some(w.duration_s)).unwrap_or(0.0);
    let (mut queries, mut tokens, mut decode_tokens, mut prefill_s, mut decode_s) = (0usize, 0usize, 0usize, 0.0, 0.0);
    for r in rounds {
        for s in &r.samples {
            queries += 1;
            tokens += s.ids.len();
            decode_tokens += s.decode_tokens;
            prefill_s += s.prefill_s;
            decode_s += s.decode_s / r.passes.max(1) as f64;
        }
    }
    let mut warnings: Vec<String> = rounds.iter().flat_map(|r| r.energy.warnings.iter().cloned()).collect();
    warnings.sort();
    warnings.dedup();
    let (prefill_j, method) = match prefill_per_query {
        Some(p) => (p * queries as f64, "window"),
        None => (gross * prefill_s / (prefill_s + decode_s).max(1e-12), "time-share"),
    };
    if prefill_j > gross {
        warnings.push(format!("the prefill-only window ({prefill_j:.3} J for {queries} queries) exceeds this cell's whole window ({gross:.3} J): decode joules set to 0"));
    }
    let decode_j = (gross - prefill_j).max(0.0);
    let passes = rounds.iter().map(|r| r.passes).min().unwrap_or(1);
    Energy {
        source: first.energy.source.clone(),
        estimate: first.energy.estimate,
        energy_j: Some(gross),
        energy_net_j: Some(net),
        idle_w: (duration > 0.0 && gross != net).then(|| (gross - net) / duration),
        avg_watts: (duration > 0.0).then(|| gross / duration),
        j_per_token: (tokens > 0).then(|| gross / tokens as f64),
        prefill_j: (queries > 0).then_some(prefill_j),
        prefill_j_per_query: (queries > 0).then(|| prefill_j / queries as f64),
        prefill_energy_method: Some(method.into()),
        decode_j_per_token: (decode_tokens > 0).then(|| decode_j / decode_tokens as f64),
        wh_per_1k_queries: (queries > 0).then(|| gross / 3600.0 / queries as f64 * 1000.0),
        gco2e: Some(crate::meter::carbon::gco2e(gross, e.carbon.g_per_kwh, e.pue)),
        carbon_g_per_kwh: Some(e.carbon.g_per_kwh),
        carbon_source: Some(e.carbon.source.clone()),
        pue: Some(e.pue),
        energy_gpu_j: per(|w| w.gpu_j),
        energy_cpu_j: per(|w| w.cpu_j),
        energy_dram_j: per(|w| w.dram_j),
        min_window_repeats: Some(passes),
        warnings,
        energy_j_stats: None,
        j_per_token_stats: None,
    }
}

/// The repetition with the median gross energy (all its figures kept together), with statistics
/// over all repetitions attached.
pub fn median_energy(mut v: Vec<Energy>) -> Energy {
    if v.is_empty() {
        return Energy { source: crate::meter::Sources::none(), ..Default::default() };
    }
    let over = |f: fn(&Energy) -> Option<f64>, v: &[Energy]| {
        let xs: Vec<f64> = v.iter().filter_map(f).collect();
        (!xs.is_empty()).then(|| Stats::of(&xs))
    };
    let (energy_j_stats, j_per_token_stats) = (over(|e| e.energy_j, &v), over(|e| e.j_per_token, &v));
    v.sort_by(|a, b| a.energy_j.unwrap_or(0.0).total_cmp(&b.energy_j.unwrap_or(0.0)));
    let mut e = v.swap_remove((v.len() - 1) / 2);
    e.energy_j_stats = energy_j_stats;
    e.j_per_token_stats = j_per_token_stats;
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::StopReason;
    use crate::sweep::rounds::SampleRun;

    fn round(total_j: f64, passes: usize, samples: &[(usize, f64, f64)]) -> RoundRecord {
        RoundRecord {
            cell_id: "c".into(),
            round: 0,
            repetition: 0,
            samples: samples
                .iter()
                .enumerate()
                .map(|(i, &(decoded, prefill_s, decode_s))| SampleRun {
                    sample: i,
                    prompt_tokens: 4,
                    ids: vec![1; decoded + 1],
                    exits: vec![1; decoded + 1],
                    confidences: vec![],
                    stop: StopReason::MaxNewTokens,
                    prefill_s,
                    decode_s,
                    decode_tokens: decoded,
                    split: [0.0; 3],
                    speculation: None,
                    gather_s: 0.0,
                    latency_s: None,
                })
                .collect(),
            passes,
            generate_s: 0.0,
            wall_s: 0.0,
            energy: WindowJoules { source: crate::meter::Sources::of([crate::meter::Source::Rapl]), total_j, net_j: total_j - 1.0, duration_s: 2.0, ..Default::default() },
            layer_s: vec![],
            layer_runs: vec![],
            peak_mem_mb: 0.0,
            peak_device_mem: None,
            batch: None,
        }
    }

    #[test]
    fn a_repetition_sums_its_rounds_per_pass_and_takes_the_prefill_window() {
        let e = EnergySettings { meters: Default::default(), idle_seconds: 0.0, min_window: 0.0, carbon: crate::meter::carbon::Intensity { g_per_kwh: 0.0, source: "t".into() }, pue: 1.0 };
        // Round 1: 20 J over 2 passes of two samples (3 and 1 decoded tokens); round 2: 6 J, one
        // sample with 2 decoded tokens. One pass: 10 + 6 = 16 J, 3 queries, 9 tokens, 6 decoded.
        let (a, b) = (round(20.0, 2, &[(3, 0.1, 0.6), (1, 0.1, 0.2)]), round(6.0, 1, &[(2, 0.1, 0.2)]));
        let w = repetition_energy(&[&a, &b], Some(1.0), &e);
        assert_eq!(w.energy_j, Some(16.0));
        assert_eq!(w.j_per_token, Some(16.0 / 9.0));
        assert_eq!((w.prefill_j, w.prefill_j_per_query, w.prefill_energy_method.as_deref()), (Some(3.0), Some(1.0), Some("window")));
        assert_eq!(w.decode_j_per_token, Some(13.0 / 6.0));
        // By time share: prefill 0.3 s of 0.3 + (0.6 + 0.2) / 2 + 0.2 s of one pass.
        let t = repetition_energy(&[&a, &b], None, &e);
        assert!((t.prefill_j.unwrap() - 16.0 * 0.3 / 0.9).abs() < 1e-12, "{:?}", t.prefill_j);
        assert_eq!(t.prefill_energy_method.as_deref(), Some("time-share"));
        // A prefill window above the cell's joules leaves zero for the decode, with a warning.
        let z = repetition_energy(&[&b], Some(10.0), &e);
        assert_eq!(z.decode_j_per_token, Some(0.0));
        assert!(z.warnings.iter().any(|w| w.contains("exceeds")), "{:?}", z.warnings);
    }
}
