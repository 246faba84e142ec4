//! The batched seam: what a runtime must do to decode several rows at once. Each row owns its
//! own per-layer caches; a state holds several rows side by side, one segment of positions per
//! row (a whole prompt at the prefill, one position per step afterwards), so prompts of
//! different lengths need no padding: each row's positions start at its own cache length and
//! its attention sees only its own cache (per-row offsets). Every call works on a chosen subset
//! of rows, so rows that go on through a layer and rows that exited before it both write that
//! layer's cache, in one call each.

use super::{Backend, HeadSummary, KvSnapshot};
use crate::error::Result;

/// A runtime that decodes several rows at once (see the module header).
pub trait Batch: Backend {
    /// The states of several rows, one segment of positions per row, in order.
    type Rows: Clone;

    /// True when one call reads each weight once for all its rows (one matrix product per
    /// projection); false when the runtime runs its rows one by one through its single-row path
    /// (correct outputs, but no saving in weight reads: recorded with every batched figure).
    fn shares_weight_reads(&self) -> bool;
    /// Empties every cache and makes `n` rows with empty caches, whose first allocation holds
    /// `capacity` positions (they grow beyond).
    fn start_rows(&mut self, n: usize, capacity: usize) -> Result<()>;
    /// Cached positions of `row` at `layer`.
    fn row_cache_len(&self, row: usize, layer: usize) -> usize;
    /// Embeddings of `tokens[i]` as segment i.
    fn embed_rows(&mut self, tokens: &[&[u32]]) -> Result<Self::Rows>;
    /// Runs `layer` on every segment of `h`, segment i belonging to `rows[i]` and continuing
    /// that row's cache, to which its keys and values are appended.
    fn layer_rows(&mut self, layer: usize, rows: &[usize], h: &Self::Rows) -> Result<Self::Rows>;
    /// How many times the last [`Batch::layer_rows`] call (on `rows` rows) read the layer's
    /// weights: once when the runtime shares weight reads, once per row otherwise, unless the
    /// runtime says otherwise (one that must split a call, e.g. into positions).
    fn last_layer_reads(&self, rows: usize) -> usize {
        if self.shares_weight_reads() {
            1
        } else {
            rows
        }
    }
    /// State propagation into `layer` for `rows[i]`: that layer's norm and k/v projections of
    /// the last position of segment i, appended to the row's cache.
    fn propagate_rows(&mut self, layer: usize, rows: &[usize], h: &Self::Rows) -> Result<()>;
    /// The exit head at the last position of every segment, reduced on the device.
    fn head_rows(&mut self, h: &Self::Rows) -> Result<Vec<HeadSummary>>;
    /// The exit head's f32 logits at the last position of every segment, on the host.
    fn exit_logits_rows(&mut self, h: &Self::Rows) -> Result<Vec<Vec<f32>>>;
    /// Cosine similarity of the last positions of segment i of `a` and of `b`, for every i.
    fn cosine_rows(&mut self, a: &Self::Rows, b: &Self::Rows) -> Result<Vec<f32>>;
    /// Exit-classifier probability of `layer` at the last position of every segment.
    fn classifier_rows(&mut self, layer: usize, h: &Self::Rows) -> Result<Vec<f32>>;
    /// A state of one position per pick: `picks[j] = (p, i)` takes the last position of segment
    /// i of `parts[p]` (gathering rows out of a batch, or merging two states row by row).
    fn pick_rows(&mut self, parts: &[&Self::Rows], picks: &[(usize, usize)]) -> Result<Self::Rows>;
    /// Keeps the first `n` positions of every layer's cache of `row` (benches repeat one step).
    fn truncate_row(&mut self, row: usize, n: usize) -> Result<()>;
    /// A copy of `row`'s cache of `layer` on the host (`None` while empty): for conformance
    /// tests, never timed.
    fn row_cached_kv(&self, row: usize, layer: usize) -> Result<Option<KvSnapshot>>;
}

/// What batched self-speculative decoding needs beyond [`Batch`]: a state whose segments are
/// built from saved one-position states (each row's drafted states, joined into its
/// verification segment), and the exit head at every position of every segment. Rolling a
/// row back is [`Batch::truncate_row`].
pub trait SpeculateRows: Batch {
    /// A state of one segment per entry of `picks`: segment j joins, in order, the last
    /// positions of the segments `picks[j] = [(p, i), …]` names (segment i of `parts[p]`).
    fn join_rows(&mut self, parts: &[&Self::Rows], picks: &[Vec<(usize, usize)>]) -> Result<Self::Rows>;
    /// The exit head at every position of every segment, reduced on the device: one summary
    /// per position, one list per segment.
    fn heads_rows(&mut self, h: &Self::Rows) -> Result<Vec<Vec<HeadSummary>>>;
    /// The exit head's f32 logits at every position of every segment, on the host (what
    /// speculative sampling compares).
    fn position_logits_rows(&mut self, h: &Self::Rows) -> Result<Vec<Vec<Vec<f32>>>>;
}
