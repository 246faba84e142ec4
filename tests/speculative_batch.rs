//! Batched self-speculative decoding: every row of a batch drafts, accepts and rolls back as it
//! would alone (its tokens, its passes, its caches), on both backends and both model shapes,
//! with prompts of different lengths and a row that stops at EOS first; sampling makes each
//! row's own draws; the passes' positions, padding and weight reads are what the loop ran.

#[path = "common/rows.rs"]
mod rows;

use exitbench::backend::{Batch, BackendKind, Inspect};
use exitbench::decode::speculative::{generate_speculative, DraftCache, DraftStop, Speculation};
use exitbench::decode::speculative_batch::generate_speculative_batch;
use exitbench::decode::{generate, GenerateOptions, Sampling};
use exitbench::exit::{ExitMode, Measure};
use exitbench::with_backend;
use rows::{open, prompts};

const LAYERS: usize = 4;

fn opts(n: usize, sampling: Sampling, eos: Vec<u32>) -> GenerateOptions {
    GenerateOptions { mode: ExitMode::Full, max_new_tokens: n, sampling, eos_ids: eos, profile_layers: false, time_split: true }
}

fn model_dir(variant: bool) -> tempfile::TempDir {
    rows::model_dir(LAYERS, variant, 13)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Below this a top-2 gap is a near tie: ONNX Runtime's batched products may sum in another
/// order than a row's alone and pick the other side without either being wrong.
const NEAR: f32 = 1e-4;

/// Every row of a batch of 4 equals itself decoded alone: full depth's tokens and stop reason,
/// the passes (drafted, accepted, emitted) of speculative decoding at batch size 1, every
/// emitted token's top-2 logit gap (bit for bit on candle, where a pass of 4 rows verifies up
/// to 36 positions, beyond the few-row kernel's 16 rows; within 1e-4 on ONNX Runtime, whose
/// batched products round otherwise, and where a token may then differ at a near tie, counted),
/// and every layer's cache afterwards (its length, and its entries within 1e-4). For every draft
/// layer,
/// k ∈ {1, 3, 8} and both cache modes; row 2 stops at EOS before the others. The passes'
/// positions are the rows' segments, and padding is what the longest segment implies.
fn rows_speculate_as_alone(kind: BackendKind, variant: bool, draft_layers: std::ops::Range<usize>, ks: &[usize]) {
    let dir = model_dir(variant);
    let prompts = prompts();
    with_backend!(&mut open(kind, dir.path()), b => {
        // Row 2 stops at EOS: the earliest of its tokens (from the third) that no other row
        // generates.
        let plain: Vec<Vec<u32>> = prompts.iter().map(|p| generate(b, p, &opts(20, Sampling::default(), vec![])).unwrap().ids()).collect();
        let eos = *plain[2][2..].iter().find(|t| plain.iter().enumerate().all(|(r, ids)| r == 2 || !ids.contains(t))).expect("a token only row 2 generates");
        let o = opts(20, Sampling::default(), vec![eos]);
        let alone: Vec<_> = prompts.iter().map(|p| {
            let g = generate(b, p, &o).unwrap();
            let kv: Vec<_> = (1..=LAYERS).map(|l| b.cached_kv(l).unwrap().unwrap()).collect();
            (g, kv)
        }).collect();
        assert!(alone[2].0.tokens.len() < alone[0].0.tokens.len(), "row 2 should stop first");
        let (mut drafted, mut accepted, mut padded, mut near_ties, mut compared) = (0, 0, 0, 0, 0);
        for e in draft_layers.clone() {
            for &k in ks {
                for cache in [DraftCache::Shared, DraftCache::Separate] {
                    let spec = Speculation { draft_layer: e, draft_tokens: k, cache, stop: None };
                    let singles: Vec<_> = prompts.iter().map(|p| generate_speculative(b, p, &o, &spec).unwrap()).collect();
                    let g = generate_speculative_batch(b, &prompts, &o, &spec).unwrap();
                    let what = format!("{kind} variant={variant} {spec:?}");
                    for (r, row) in g.rows.iter().enumerate() {
                        compared += 1;
                        let (got, want) = (row.generation.ids(), alone[r].0.ids());
                        if kind == BackendKind::Ort && got != want {
                            let k = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
                            let gap = alone[r].0.tokens.get(k).and_then(|t| t.top2_gap);
                            assert!(gap.is_some_and(|x| x < NEAR), "{what} row {r}: token {k} differs from the row alone, not at a near tie ({gap:?})");
                            near_ties += 1;
                            continue;
                        }
                        assert_eq!(got, want, "{what} row {r}: tokens");
                        assert_eq!(row.generation.stop, alone[r].0.stop, "{what} row {r}: stop");
                        assert_eq!(row.stats.passes, singles[r].stats.passes, "{what} row {r}: passes");
                        assert_eq!(row.accepted_draft, singles[r].accepted_draft, "{what} row {r}: accepted drafts");
                        // The same bits as alone, not only the same argmax: every emitted token's
                        // top-2 logit gap, however many positions the batch's pass verified.
                        let gaps = |g: &exitbench::decode::Generation| g.tokens.iter().map(|t| t.top2_gap.map(f32::to_bits)).collect::<Vec<_>>();
                        if kind == BackendKind::Candle {
                            assert_eq!(gaps(&row.generation), gaps(&singles[r].generation), "{what} row {r}: logit gaps differ from the row alone");
                        } else {
                            for (a, b) in row.generation.tokens.iter().zip(&singles[r].generation.tokens) {
                                let (a, b) = (a.top2_gap.unwrap(), b.top2_gap.unwrap());
                                assert!((a - b).abs() <= NEAR, "{what} row {r}: logit gap {a} batched, {b} alone");
                            }
                        }
                        for l in 1..=LAYERS {
                            let (got, want) = (b.row_cached_kv(r, l).unwrap().unwrap(), &alone[r].1[l - 1]);
                            assert_eq!(got.len, want.len, "{what} row {r} layer {l}: cached positions");
                            assert!(max_abs_diff(&got.k, &want.k) <= 1e-4 && max_abs_diff(&got.v, &want.v) <= 1e-4, "{what} row {r} layer {l}: cache differs after rollback");
                        }
                        drafted += row.stats.drafted;
                        accepted += row.stats.accepted;
                    }
                    // Pass j holds the rows with more than j passes, each verifying its drafts
                    // and its last token.
                    for (j, p) in g.passes.iter().enumerate() {
                        let rows: Vec<_> = g.rows.iter().filter_map(|row| row.stats.passes.get(j)).collect();
                        assert_eq!(p.rows, rows.len(), "{what} pass {j}: rows");
                        assert_eq!(p.verified_positions, rows.iter().map(|x| x.drafted + 1).sum::<usize>(), "{what} pass {j}: positions");
                        assert_eq!(p.padded_positions, rows.len() * rows.iter().map(|x| x.drafted + 1).max().unwrap(), "{what} pass {j}: padded");
                        assert_eq!((p.drafted, p.accepted, p.emitted), rows.iter().fold((0, 0, 0), |a, x| (a.0 + x.drafted, a.1 + x.accepted, a.2 + x.emitted)), "{what} pass {j}");
                        assert_eq!(p.draft_steps, rows.iter().map(|x| x.drafted).max().unwrap(), "{what} pass {j}: draft steps");
                        assert_eq!(p.row_draft_steps, p.drafted, "{what} pass {j}: a row drafts one token per step it takes part in");
                    }
                    assert_eq!(g.passes.len(), g.rows.iter().map(|r| r.stats.passes.len()).max().unwrap(), "{what}: passes");
                    padded += g.passes.iter().map(|p| p.padded_positions - p.verified_positions).sum::<usize>();
                }
            }
        }
        assert!(accepted > 0 && accepted < drafted, "drafts accepted {accepted} of {drafted}: both outcomes must occur");
        println!("{kind} variant={variant}: {compared} rows compared, {near_ties} near-tie difference(s)");
        assert!(near_ties * 20 <= compared, "{near_ties} of {compared} rows differ at near ties");
        assert!(padded > 0, "rows with different drafts must leave padding a padded pass would run");
    });
}

#[test]
fn candle_rows_speculate_as_alone() {
    for variant in [false, true] {
        rows_speculate_as_alone(BackendKind::Candle, variant, 1..LAYERS, &[1, 3, 8]);
    }
}

#[test]
fn ort_rows_speculate_as_alone() {
    for variant in [false, true] {
        rows_speculate_as_alone(BackendKind::Ort, variant, 1..LAYERS, &[3, 8]);
    }
}

/// Sampling: each row draws from its own generator (seed + row), so a row of a batch emits what
/// speculative sampling emits for that row alone with that seed; for both cache modes.
#[test]
fn batched_speculative_sampling_makes_each_rows_own_draws() {
    let dir = model_dir(false);
    let prompts = prompts();
    with_backend!(&mut open(BackendKind::Candle, dir.path()), b => {
        let mut accepted = 0;
        for seed in [0, 7, 19] {
            for cache in [DraftCache::Shared, DraftCache::Separate] {
                let spec = Speculation { draft_layer: 2, draft_tokens: 4, cache, stop: None };
                let sampling = |s| Sampling { temperature: 0.3, top_p: 0.95, seed: s };
                let g = generate_speculative_batch(b, &prompts, &opts(16, sampling(seed), vec![]), &spec).unwrap();
                for (r, row) in g.rows.iter().enumerate() {
                    let alone = generate_speculative(b, &prompts[r], &opts(16, sampling(seed + r as u64), vec![]), &spec).unwrap();
                    assert_eq!(row.generation.ids(), alone.generation.ids(), "seed {seed} {cache} row {r}");
                    assert_eq!(row.stats.passes, alone.stats.passes, "seed {seed} {cache} row {r}");
                    accepted += row.stats.accepted;
                }
            }
        }
        assert!(accepted > 0);
    });
}

/// A draft stop decides per row as it does alone: every measure, both cache modes, the passes
/// of each row equal its passes at batch size 1.
#[test]
fn batched_draft_stop_stops_each_row_as_alone() {
    let dir = model_dir(true);
    let prompts = prompts();
    with_backend!(&mut open(BackendKind::Candle, dir.path()), b => {
        let o = opts(16, Sampling::default(), vec![]);
        for cache in [DraftCache::Shared, DraftCache::Separate] {
            for &measure in Measure::ALL {
                let threshold = if measure == Measure::Saturation { 0.9 } else { 0.2 };
                let spec = Speculation { draft_layer: 2, draft_tokens: 6, cache, stop: Some(DraftStop { measure, threshold }) };
                let g = generate_speculative_batch(b, &prompts, &o, &spec).unwrap();
                for (r, row) in g.rows.iter().enumerate() {
                    let alone = generate_speculative(b, &prompts[r], &o, &spec).unwrap();
                    assert_eq!(row.stats.passes, alone.stats.passes, "{cache} {measure} row {r}");
                    assert_eq!(row.generation.ids(), alone.generation.ids(), "{cache} {measure} row {r}");
                }
            }
        }
    });
}

/// A pass's weight reads, one read per call for all rows: each draft step reads layers 1..E
/// and the head; on candle the verification reads every layer once (shared: the last token's
/// layers 1..E, then E+1..L over the segments) and the head once. ONNX Runtime's attention op
/// takes one position per row at a time once caches hold anything, so its verification reads a
/// layer once per position of the longest segment (`rows.rs` of its backend).
#[test]
fn batched_pass_reads_count_what_the_pass_ran() {
    let dir = model_dir(false);
    let prompts = prompts();
    for kind in [BackendKind::Candle, BackendKind::Ort] {
        with_backend!(&mut open(kind, dir.path()), b => {
            for cache in [DraftCache::Shared, DraftCache::Separate] {
                let e = 2;
                let spec = Speculation { draft_layer: e, draft_tokens: 3, cache, stop: None };
                let g = generate_speculative_batch(b, &prompts, &opts(12, Sampling::default(), vec![]), &spec).unwrap();
                let mut split = 0;
                for p in &g.passes {
                    let longest = if kind == BackendKind::Ort { p.padded_positions / p.rows } else { 1 };
                    split += usize::from(longest > 1);
                    let verify = match cache {
                        DraftCache::Shared => e + (LAYERS - e) * longest,
                        DraftCache::Separate => LAYERS * longest,
                    };
                    assert_eq!((p.reads.layers, p.reads.heads), (p.draft_steps * e + verify, p.draft_steps + 1), "{kind} {cache}: {p:?}");
                }
                assert!(g.shares_weight_reads);
                assert!(kind == BackendKind::Candle || split > 0, "{kind} {cache}: no pass verified several positions per row");
            }
        });
    }
}
