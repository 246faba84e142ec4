//! Meter overheads, on a fake powercap tree (two packages + DRAM, as in tests/meter.rs):
//! - the CPU cost of the sampling thread at its default rates: process CPU time over a 3 s window
//!   with the sampler running minus the same window without it (printed before criterion runs);
//!   the instant-power sampler's default is 50 ms (half of the 100 ms NVML period assumed when it
//!   cannot be measured); here each tick reads a powercap file in place of NVML;
//! - the time one begin/end window adds to a cell (criterion): RAPL (3 zones: 3 counter reads and
//!   one poll thread started and joined per zone at each edge), the estimate meter (two
//!   getrusage calls), and an empty window.
//!
//! Run: `cargo bench --bench meter`.

use criterion::Criterion;
use exitbench::meter::estimate::{process_cpu_seconds, CpuPower, EstimateMeter};
use exitbench::meter::sampler::Sampler;
use exitbench::meter::{nvml, rapl, EnergyWindow, Meter, MeterOptions};
use std::path::Path;
use std::time::{Duration, Instant};

fn zone(root: &Path, id: &str, name: &str) {
    let d = root.join(id);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("name"), format!("{name}\n")).unwrap();
    std::fs::write(d.join("max_energy_range_uj"), "262143328850\n").unwrap();
    std::fs::write(d.join("energy_uj"), "123456789\n").unwrap();
}

fn tree() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    zone(t.path(), "intel-rapl:0", "package-0");
    zone(t.path(), "intel-rapl:0:0", "dram");
    zone(t.path(), "intel-rapl:1", "package-1");
    t
}

fn rapl_meters(root: &Path) -> Vec<Box<dyn Meter>> {
    rapl::detect(&MeterOptions { powercap_root: root.to_path_buf(), ..MeterOptions::default() }).0
}

/// CPU seconds this process spends while `during` runs for `wall`.
fn cpu_over(wall: Duration, during: impl FnOnce(Duration)) -> f64 {
    let c0 = process_cpu_seconds().unwrap();
    during(wall);
    process_cpu_seconds().unwrap() - c0
}

fn report(what: &str, wall: Duration, cpu_s: f64, idle_s: f64) {
    let net = (cpu_s - idle_s).max(0.0);
    println!("{what:<58} {:>8.3} ms CPU per s of window ({:.4}% of one core)", net * 1e3 / wall.as_secs_f64(), 100.0 * net / wall.as_secs_f64());
}

fn sampler_cpu_cost(root: &Path) {
    let wall = Duration::from_secs(3);
    let idle = cpu_over(wall, std::thread::sleep);
    let file = root.join("intel-rapl:0").join("energy_uj");
    let poll = nvml::instant_poll(None, None);
    let run_sampler = |poll: Duration| {
        cpu_over(wall, |w| {
            let f = file.clone();
            let t0 = Instant::now();
            let s = Sampler::start("bench", poll, Vec::new(), move |v: &mut Vec<(f64, f64)>| {
                let x = rapl::read_energy_uj(&f, Path::new("/")).unwrap_or(0);
                v.push((t0.elapsed().as_secs_f64(), x as f64));
                poll
            })
            .unwrap();
            std::thread::sleep(w);
            std::hint::black_box(s.stop().unwrap());
        })
    };
    println!("\nSampling-thread CPU cost (idle baseline {:.3} ms CPU over {:?}):", idle * 1e3, wall);
    report(&format!("instant-power sampler at its default {} ms", poll.as_millis()), wall, run_sampler(poll), idle);
    report("instant-power sampler at its fastest (2 ms)", wall, run_sampler(nvml::MIN_POLL), idle);
    let mut ms = rapl_meters(root);
    let default_poll = rapl::poll_interval(262_143_328_850, rapl::DEFAULT_BOUND_W);
    let cpu = cpu_over(wall, |w| {
        ms.iter_mut().for_each(|m| m.begin().unwrap());
        std::thread::sleep(w);
        ms.iter_mut().for_each(|m| drop(m.end().unwrap()));
    });
    report(&format!("RAPL, 3 zones, default poll ({} ms)", default_poll.as_millis()), wall, cpu, idle);
    println!();
}

fn window_overhead(c: &mut Criterion, root: &Path) {
    let mut g = c.benchmark_group("window_begin_end");
    g.sample_size(50).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    let mut w = EnergyWindow::new(rapl_meters(root));
    g.bench_function("rapl_3_zones", |b| {
        b.iter(|| {
            w.begin().unwrap();
            std::hint::black_box(w.end().unwrap());
        })
    });
    let mut w = EnergyWindow::new(vec![Box::new(EstimateMeter::new(CpuPower { tdp_w: 85.0, cores: 2, origin: "bench".into() }))]);
    g.bench_function("estimate", |b| {
        b.iter(|| {
            w.begin().unwrap();
            std::hint::black_box(w.end().unwrap());
        })
    });
    let mut w = EnergyWindow::new(vec![]);
    g.bench_function("empty", |b| {
        b.iter(|| {
            w.begin().unwrap();
            std::hint::black_box(w.end().unwrap());
        })
    });
    g.finish();
}

fn main() {
    let t = tree();
    sampler_cpu_cost(t.path());
    let mut c = Criterion::default().configure_from_args();
    window_overhead(&mut c, t.path());
    c.final_summary();
}
