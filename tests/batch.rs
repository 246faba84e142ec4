//! Batched decoding: every row of a batch decodes as it would alone (per-row and compact), on
//! both backends and both model shapes, with prompts of different lengths and a row that stops at
//! EOS first; batch-min, passengers and held tokens by hand on a scripted backend; replay.

#[path = "common/rows.rs"]
mod rows;

use exitbench::backend::{Backend, BackendKind, Batch, HeadSummary, KvSnapshot, RuntimeInfo};
use exitbench::decode::batch::{generate_batch, BatchPolicy, ExitReplay};
use exitbench::decode::{generate, GenerateOptions, Generation, Sampling};
use exitbench::exit::{ExitMode, ExitPolicy, Measure, Schedule};
use exitbench::model::ModelFiles;
use exitbench::with_backend;
use rows::{open, prompts};

const LAYERS: usize = 4;

fn opts(mode: ExitMode, n: usize, eos: Vec<u32>) -> GenerateOptions {
    GenerateOptions { mode, max_new_tokens: n, sampling: Sampling::default(), eos_ids: eos, profile_layers: false, time_split: true }
}

fn dynamic(measure: Measure, threshold: f64) -> ExitMode {
    ExitMode::Dynamic(ExitPolicy { measure, threshold, schedule: Schedule::Fixed, min_exit_layer: 1, exit_interval: 1 })
}

fn model_dir(variant: bool) -> tempfile::TempDir {
    rows::model_dir(LAYERS, variant, 29)
}

/// Below this a top-2 gap or a threshold margin is a near tie: batched matrix products may sum in
/// another order than single-row ones and pick the other side without either being wrong.
const NEAR: f32 = 1e-4;

/// Checks `got` against `want` token by token: ids and exit layers equal, or a near tie at the
/// first difference (after which the texts may differ). Returns 1 for a near tie, else 0.
fn same_row(got: &Generation, want: &Generation, what: &str) -> usize {
    for (k, (g, w)) in got.tokens.iter().zip(&want.tokens).enumerate() {
        if (g.id, g.exit_layer) != (w.id, w.exit_layer) {
            let near = w.top2_gap.is_some_and(|x| x < NEAR) || w.min_margin.is_some_and(|x| x < NEAR);
            assert!(near, "{what}: token {k} is ({}, exit {}) batched but ({}, exit {}) alone, not a near tie ({:?}, {:?})", g.id, g.exit_layer, w.id, w.exit_layer, w.top2_gap, w.min_margin);
            return 1;
        }
    }
    assert_eq!((got.tokens.len(), got.stop), (want.tokens.len(), want.stop), "{what}: length or stop reason");
    0
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// A threshold of `measure` at which the rows alone exit at a mix of layers.
fn mixed_threshold<B: Backend>(b: &mut B, measure: Measure, prompts: &[Vec<u32>]) -> f64 {
    let candidates: &[f64] = match measure {
        Measure::Saturation => &[0.999, 0.99, 0.98, 0.95, 0.9, 0.8, 0.6],
        _ => &[0.9, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001],
    };
    for &t in candidates {
        let layers: Vec<usize> = prompts.iter().flat_map(|p| generate(b, p, &opts(dynamic(measure, t), 12, vec![])).unwrap().tokens[1..].iter().map(|x| x.exit_layer).collect::<Vec<_>>()).collect();
        let early = layers.iter().filter(|&&l| l < LAYERS).count();
        let distinct = layers.iter().collect::<std::collections::BTreeSet<_>>().len();
        if early * 4 >= layers.len() && early < layers.len() && distinct >= 3 {
            return t;
        }
    }
    panic!("{measure}: no threshold gives a mix of exit layers");
}

/// Per-row and compact batches equal each row alone (tokens, exit layers, stop reasons, and every
/// row's caches), in every exit mode; batch-min equals them at full depth and static exits.
fn rows_decode_as_alone(kind: BackendKind, variant: bool) {
    let dir = model_dir(variant);
    let prompts = prompts();
    with_backend!(&mut open(kind, dir.path()), b => {
        let mut modes = vec![ExitMode::Full, ExitMode::Static { layer: 2 }, ExitMode::Oracle { min_exit_layer: 1, exit_interval: 1 }];
        for m in [Measure::SoftmaxDiff, Measure::Saturation, Measure::Classifier] {
            modes.push(dynamic(m, mixed_threshold(b, m, &prompts)));
        }
        let mut near_ties = 0;
        let mut compared = 0;
        for mode in &modes {
            // Row 2 stops at EOS before the others: its third decoded token alone is the EOS id.
            let eos = generate(b, &prompts[2], &opts(*mode, 12, vec![])).unwrap().tokens[3].id;
            let o = opts(*mode, 12, vec![eos]);
            let alone: Vec<(Generation, Vec<Option<KvSnapshot>>)> = prompts.iter().map(|p| {
                let g = generate(b, p, &o).unwrap();
                let kv = (1..=LAYERS).map(|l| exitbench::backend::Inspect::cached_kv(b, l).unwrap()).collect();
                (g, kv)
            }).collect();
            assert!(alone[2].0.tokens.len() < alone[0].0.tokens.len() || alone[0].0.stop == exitbench::decode::StopReason::Eos, "{mode:?}: row 2 should stop first");
            let policies: &[BatchPolicy] = if matches!(mode, ExitMode::Dynamic(_)) { &[BatchPolicy::PerRow, BatchPolicy::Compact] } else { BatchPolicy::ALL };
            for &policy in policies {
                for batch in [1, 4] {
                    let g = generate_batch(b, &prompts[..batch], &o, policy, None).unwrap();
                    for (r, row) in g.rows.iter().enumerate() {
                        let what = format!("{kind} variant={variant} {mode:?} {policy} B={batch} row {r}");
                        let tie = same_row(row, &alone[r].0, &what);
                        near_ties += tie;
                        compared += 1;
                        if tie == 0 {
                            for l in 1..=LAYERS {
                                let (got, want) = (b.row_cached_kv(r, l).unwrap(), &alone[r].1[l - 1]);
                                assert_eq!(got.is_some(), want.is_some(), "{what} layer {l}: cache written");
                                let (Some(got), Some(want)) = (got, want) else { continue };
                                assert_eq!(got.len, want.len, "{what} layer {l}: cached positions");
                                assert!(max_abs_diff(&got.k, &want.k) <= 1e-4 && max_abs_diff(&got.v, &want.v) <= 1e-4, "{what} layer {l}: cache differs");
                            }
                        }
                    }
                    let wasted: usize = g.steps.iter().map(|s| s.wasted_row_layers).sum();
                    if policy != BatchPolicy::PerRow || batch == 1 {
                        assert_eq!(wasted, 0, "{mode:?} {policy}: only per-row carries passengers");
                    }
                    if policy == BatchPolicy::PerRow && batch == 4 && matches!(mode, ExitMode::Dynamic(_)) {
                        assert!(wasted > 0, "{mode:?}: rows exiting at different layers must leave passengers");
                    }
                }
            }
        }
        eprintln!("{kind} variant={variant}: {near_ties} near ties in {compared} rows compared");
        assert!(near_ties * 10 <= compared, "{near_ties} near ties of {compared}: too many to be ties");
    });
}

#[test]
fn candle_rows_decode_as_alone() {
    for v in [false, true] {
        rows_decode_as_alone(BackendKind::Candle, v);
    }
}

#[test]
fn ort_rows_decode_as_alone() {
    for v in [false, true] {
        rows_decode_as_alone(BackendKind::Ort, v);
    }
}

/// ONNX Runtime at B = 4 decodes what candle decodes at B = 4, under each policy.
#[test]
fn ort_batch_equals_candle_batch() {
    let dir = model_dir(false);
    let prompts = prompts();
    let (mut c, mut o) = (open(BackendKind::Candle, dir.path()), open(BackendKind::Ort, dir.path()));
    let t = with_backend!(&mut c, b => mixed_threshold(b, Measure::SoftmaxDiff, &prompts));
    for policy in BatchPolicy::ALL {
        let op = opts(dynamic(Measure::SoftmaxDiff, t), 12, vec![]);
        let a = with_backend!(&mut c, b => generate_batch(b, &prompts, &op, *policy, None).unwrap());
        let g = with_backend!(&mut o, b => generate_batch(b, &prompts, &op, *policy, None).unwrap());
        for r in 0..prompts.len() {
            same_row(&g.rows[r], &a.rows[r], &format!("{policy} row {r}: ort vs candle"));
        }
        assert!(g.shares_weight_reads && a.shares_weight_reads);
    }
}

/// Replaying a batch's own exit layers on the same model reproduces them exactly.
#[test]
fn replay_reproduces_the_recorded_exit_layers() {
    let dir = model_dir(false);
    let prompts = prompts();
    with_backend!(&mut open(BackendKind::Candle, dir.path()), b => {
        let t = mixed_threshold(b, Measure::SoftmaxDiff, &prompts);
        let o = opts(dynamic(Measure::SoftmaxDiff, t), 12, vec![]);
        let recorded = generate_batch(b, &prompts, &o, BatchPolicy::Compact, None).unwrap();
        let trace = ExitReplay { layers: recorded.rows.iter().map(|g| g.tokens[1..].iter().map(|t| t.exit_layer).collect()).collect() };
        // A different threshold: the decisions must come from the trace, not the measure.
        let o2 = opts(dynamic(Measure::SoftmaxDiff, 0.999), 12, vec![]);
        for policy in [BatchPolicy::Compact, BatchPolicy::PerRow] {
            let again = generate_batch(b, &prompts, &o2, policy, Some(&trace)).unwrap();
            for (r, g) in again.rows.iter().enumerate() {
                let got: Vec<usize> = g.tokens[1..].iter().map(|t| t.exit_layer).collect();
                assert_eq!(got, trace.layers[r], "{policy} row {r}");
            }
        }
    });
}

// ---- batch-min, passengers and held tokens by hand, on a scripted backend ----

/// A backend whose rows' confidences are given: `conf[row][layer - 1]` is the saturation
/// measure of `row` at `layer` at every step; the head's argmax is `10·layer + row`. It counts
/// every cache entry each row receives at each layer.
struct Scripted {
    conf: Vec<Vec<f32>>,
    entries: Vec<Vec<usize>>,
    layer_runs: usize,
}

/// A scripted state: per segment (row, layer whose output it is).
type Seg = Vec<(usize, usize)>;

impl Backend for Scripted {
    type Hidden = ();
    fn num_layers(&self) -> usize {
        4
    }
    fn vocab_size(&self) -> usize {
        100
    }
    fn max_positions(&self) -> usize {
        1000
    }
    fn has_classifier(&self) -> bool {
        false
    }
    fn reset(&mut self) {}
    fn cache_len(&self, _: usize) -> usize {
        0
    }
    fn embed(&mut self, _: &[u32]) -> exitbench::Result<()> {
        unimplemented!("rows only")
    }
    fn layer(&mut self, _: usize, _: &()) -> exitbench::Result<()> {
        unimplemented!("rows only")
    }
    fn propagate(&mut self, _: usize, _: &()) -> exitbench::Result<()> {
        unimplemented!("rows only")
    }
    fn head(&mut self, _: &()) -> exitbench::Result<HeadSummary> {
        unimplemented!("rows only")
    }
    fn exit_logits(&mut self, _: &()) -> exitbench::Result<Vec<f32>> {
        unimplemented!("rows only")
    }
    fn cosine(&mut self, _: &(), _: &()) -> exitbench::Result<f32> {
        unimplemented!("rows only")
    }
    fn classifier(&mut self, _: usize, _: &()) -> exitbench::Result<f32> {
        unimplemented!("rows only")
    }
    fn sync(&self) -> exitbench::Result<()> {
        Ok(())
    }
    fn runtime_info(&self) -> RuntimeInfo {
        RuntimeInfo::default()
    }
}

impl Batch for Scripted {
    type Rows = Seg;
    fn shares_weight_reads(&self) -> bool {
        true
    }
    fn start_rows(&mut self, n: usize, _: usize) -> exitbench::Result<()> {
        self.entries = vec![vec![0; 4]; n];
        Ok(())
    }
    fn row_cache_len(&self, row: usize, layer: usize) -> usize {
        self.entries[row][layer - 1]
    }
    fn embed_rows(&mut self, tokens: &[&[u32]]) -> exitbench::Result<Seg> {
        Ok(tokens.iter().map(|_| (usize::MAX, 0)).collect())
    }
    fn layer_rows(&mut self, layer: usize, rows: &[usize], h: &Seg) -> exitbench::Result<Seg> {
        assert_eq!(rows.len(), h.len());
        self.layer_runs += rows.len();
        for (&r, s) in rows.iter().zip(h) {
            assert!(s.0 == usize::MAX || s.0 == r, "segment of row {} given as row {r}", s.0);
            self.entries[r][layer - 1] += 1;
        }
        Ok(rows.iter().map(|&r| (r, layer)).collect())
    }
    fn propagate_rows(&mut self, layer: usize, rows: &[usize], h: &Seg) -> exitbench::Result<()> {
        for (&r, s) in rows.iter().zip(h) {
            assert_eq!(s.0, r, "propagating another row's state");
            assert!(s.1 < layer, "propagating a state of layer {} into layer {layer}", s.1);
            self.entries[r][layer - 1] += 1;
        }
        Ok(())
    }
    fn head_rows(&mut self, h: &Seg) -> exitbench::Result<Vec<HeadSummary>> {
        Ok(h.iter().map(|&(r, l)| HeadSummary::from_reduced((10 * l + r) as u32, 1.0, 0.0, 1.0)).collect())
    }
    fn exit_logits_rows(&mut self, _: &Seg) -> exitbench::Result<Vec<Vec<f32>>> {
        unimplemented!("greedy only")
    }
    fn cosine_rows(&mut self, _: &Seg, b: &Seg) -> exitbench::Result<Vec<f32>> {
        Ok(b.iter().map(|&(r, l)| self.conf[r][l - 1]).collect())
    }
    fn classifier_rows(&mut self, _: usize, _: &Seg) -> exitbench::Result<Vec<f32>> {
        unimplemented!("saturation only")
    }
    fn pick_rows(&mut self, parts: &[&Seg], picks: &[(usize, usize)]) -> exitbench::Result<Seg> {
        Ok(picks.iter().map(|&(p, i)| parts[p][i]).collect())
    }
    fn truncate_row(&mut self, _: usize, _: usize) -> exitbench::Result<()> {
        unimplemented!("not used by the decode loop")
    }
    fn row_cached_kv(&self, _: usize, _: usize) -> exitbench::Result<Option<KvSnapshot>> {
        Ok(None)
    }
}

#[test]
fn batch_min_passengers_and_held_tokens_by_hand() {
    // Threshold 0.5. Row 0 clears at layer 1, row 1 at layer 3, row 2 never (exit points 1..3).
    let conf = vec![vec![0.9, 0.9, 0.9, 0.0], vec![0.1, 0.2, 0.8, 0.0], vec![0.1, 0.1, 0.1, 0.0]];
    let three = [vec![1u32], vec![2], vec![3]];
    let steps = 5; // decoded tokens per row after the prefill's
    let o = opts(dynamic(Measure::Saturation, 0.5), steps + 1, vec![]);
    let run = |policy, rows: usize| {
        let mut b = Scripted { conf: conf.clone(), entries: Vec::new(), layer_runs: 0 };
        let g = generate_batch(&mut b, &three[..rows], &o, policy, None).unwrap();
        // Every row's every layer got exactly one entry per position (prompt + decoded tokens).
        for (r, e) in b.entries.iter().enumerate() {
            assert_eq!(e, &vec![1 + steps; 4], "{policy}: row {r}'s cache entries per layer");
        }
        (g, b.layer_runs)
    };
    let exits = |g: &exitbench::decode::batch::BatchGeneration| -> Vec<Vec<(u32, usize)>> { g.rows.iter().map(|r| r.tokens[1..].iter().map(|t| (t.id, t.exit_layer)).collect()).collect() };
    let prefill = 3 * 4;

    // per-row: tokens from each row's own layer; rows 0 and 1 ride along until row 2's layer 4.
    let (g, runs) = run(BatchPolicy::PerRow, 3);
    assert_eq!(exits(&g), vec![vec![(10, 1); steps], vec![(31, 3); steps], vec![(42, 4); steps]]);
    let per_step = g.steps[0].clone();
    assert_eq!((per_step.row_layers, per_step.wasted_row_layers, per_step.held_row_tokens), (12, 3 + 1, 0), "row 0 rides layers 2–4, row 1 layer 4");
    assert_eq!(runs, prefill + 12 * steps);

    // compact: the same tokens, no passenger, fewer layer runs.
    let (g, runs) = run(BatchPolicy::Compact, 3);
    assert_eq!(exits(&g), vec![vec![(10, 1); steps], vec![(31, 3); steps], vec![(42, 4); steps]]);
    assert_eq!((g.steps[0].row_layers, g.steps[0].wasted_row_layers), (1 + 3 + 4, 0));
    assert_eq!(runs, prefill + 8 * steps);

    // batch-min with rows 0 and 1: the batch exits at layer 3 (row 1's), row 0 held from layer 1.
    let (g, _) = run(BatchPolicy::BatchMin, 2);
    assert_eq!(exits(&g), vec![vec![(30, 3); steps], vec![(31, 3); steps]]);
    assert_eq!((g.steps[0].row_layers, g.steps[0].held_row_tokens), (6, 1));
    // With row 2 the batch never exits: rows 0 and 1 are both held, every token from layer 4.
    let (g, _) = run(BatchPolicy::BatchMin, 3);
    assert_eq!(exits(&g), vec![vec![(40, 4); steps], vec![(41, 4); steps], vec![(42, 4); steps]]);
    assert_eq!((g.steps[0].row_layers, g.steps[0].held_row_tokens), (12, 2));
}

/// A row that reaches its budget leaves the batch; the others go on.
#[test]
fn a_row_that_ends_leaves_the_batch() {
    let conf = vec![vec![0.9, 0.9, 0.9, 0.0], vec![0.1, 0.1, 0.1, 0.0]];
    let mut b = Scripted { conf, entries: Vec::new(), layer_runs: 0 };
    // Row 0's token (exit at layer 1) is 10: make it EOS, so row 0 stops after its first decoded token.
    let o = opts(dynamic(Measure::Saturation, 0.5), 6, vec![10]);
    let g = generate_batch(&mut b, &[vec![1], vec![2]], &o, BatchPolicy::Compact, None).unwrap();
    assert_eq!(g.rows[0].tokens.len(), 2);
    assert_eq!(g.rows[1].tokens.len(), 6);
    assert_eq!(g.steps.iter().map(|s| s.rows).collect::<Vec<_>>(), vec![2, 1, 1, 1, 1]);
}

/// Bytes per token at batch size B come from the calls each step counted: at B = 1 they equal
/// what `decode_bytes` counts from the exit trace of plain decoding, for every mode and measure;
/// at B = 4 a candle step reads each layer's weights once for all rows (ONNX Runtime once per
/// row), and the attended positions are every row's own.
#[test]
fn batched_reads_count_what_the_steps_ran() {
    use exitbench::decode_bytes::{batch_step_bytes, bytes_per_token, ModelBytes};
    let dir = model_dir(false);
    let cfg = ModelFiles::open(dir.path(), None).unwrap().config;
    let mb = ModelBytes::of(&cfg, 4.0);
    let prompts = prompts();
    let mut c = open(BackendKind::Candle, dir.path());
    let t = with_backend!(&mut c, b => mixed_threshold(b, Measure::SoftmaxDiff, &prompts));
    let mut modes = vec![ExitMode::Full, ExitMode::Static { layer: 2 }, ExitMode::Oracle { min_exit_layer: 1, exit_interval: 1 }];
    modes.extend(Measure::ALL.iter().map(|&m| dynamic(m, if m == Measure::SoftmaxDiff { t } else { 0.5 })));
    let mut exits = std::collections::BTreeSet::new();
    for mode in &modes {
        for p in &prompts {
            let o = opts(*mode, 10, vec![]);
            let plain = with_backend!(&mut c, b => generate(b, p, &o).unwrap());
            let g = with_backend!(&mut c, b => generate_batch(b, std::slice::from_ref(p), &o, BatchPolicy::PerRow, None).unwrap());
            let exit_layers: Vec<usize> = plain.tokens.iter().map(|x| x.exit_layer).collect();
            exits.extend(exit_layers[1..].iter().copied());
            let want = bytes_per_token(mode, &cfg, 4.0, [(p.len(), exit_layers.as_slice())]).unwrap();
            let got = g.steps.iter().map(|s| batch_step_bytes(&mb, s.rows, &s.reads, s.attended)).sum::<f64>() / g.decoded_tokens() as f64;
            assert!((got - want).abs() <= 1e-9 * want, "{mode:?}: batched {got} vs plain {want}");
        }
    }
    assert!(exits.len() > 2, "{exits:?}: exits at several layers");
    // B = 4, full depth: one read per layer per step on both (ONNX Runtime's in-place graphs
    // take the rows at once; its concatenating ones, on CUDA and in bf16, one row at a time).
    let o = opts(ExitMode::Full, 6, vec![]);
    let mut ort = open(BackendKind::Ort, dir.path());
    let a = with_backend!(&mut c, b => generate_batch(b, &prompts, &o, BatchPolicy::PerRow, None).unwrap());
    let r = with_backend!(&mut ort, b => generate_batch(b, &prompts, &o, BatchPolicy::PerRow, None).unwrap());
    for (s, z) in a.steps.iter().zip(&r.steps) {
        assert_eq!((s.reads.layers, s.reads.heads), (LAYERS, 1));
        assert_eq!((z.reads.layers, z.reads.heads), (LAYERS, 1));
        // Both backends attend the same positions: each row its own cache, in every layer.
        assert_eq!(s.attended, z.attended);
    }
    let step0: usize = prompts.iter().map(|p| p.len() + 1).sum::<usize>() * LAYERS;
    assert_eq!(a.steps[0].attended, step0);
}
