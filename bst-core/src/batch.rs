//! A batch: the rows of some samples gathered into contiguous buffers, reused across steps.

use bst_kernels::cpu::embedding::TokenIds;
use bst_kernels::cpu::mask::valid_mask;

/// Samples gathered for one step, row-major: the layout the kernels and
/// [`crate::scorer::CandidateBuffers`] use.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    /// Samples in the batch (B).
    pub size: usize,
    /// History length (L).
    pub seq_len: usize,
    /// Other-feature fields per sample (F).
    pub fields: usize,
    /// (B, L)
    pub hist_item: Vec<u32>,
    /// (B, L)
    pub hist_cat: Vec<u32>,
    /// (B, L)
    pub hist_pos: Vec<u32>,
    /// (B)
    pub target_item: Vec<u32>,
    /// (B)
    pub target_cat: Vec<u32>,
    /// (B, F)
    pub other: Vec<u32>,
    /// (B)
    pub label: Vec<f32>,
}

impl Batch {
    /// Gathers samples `idx` of `s` into this batch, reusing its buffers: rows copied
    /// from materialised [`crate::data::Samples`], or assembled from a compact
    /// [`crate::data::Split`].
    pub fn gather<S: SampleSource + ?Sized, I: SampleIndex>(&mut self, s: &S, idx: &[I]) {
        s.gather_into(self, idx);
    }

    /// A batch of samples `range` of `s`, in order.
    pub fn from_range<S: SampleSource + ?Sized>(s: &S, range: std::ops::Range<usize>) -> Batch {
        let idx: Vec<usize> = range.collect();
        let mut b = Batch::default();
        b.gather(s, &idx);
        b
    }

    /// The token ids, as the embedding kernels take them.
    pub fn token_ids(&self) -> TokenIds<'_> {
        TokenIds {
            hist_item: &self.hist_item,
            hist_cat: &self.hist_cat,
            hist_pos: &self.hist_pos,
            target_item: &self.target_item,
            target_cat: &self.target_cat,
        }
    }

    /// valid (B, T): 1 where the token's item is not padding; the target always is valid
    /// (as [`bst_kernels::cpu::mask::valid_mask`], which the GPU runs on the device).
    pub fn valid_mask(&self, valid: &mut Vec<u32>) {
        let (b, l) = (self.size, self.seq_len);
        valid.clear();
        valid.resize(b * (l + 1), 0);
        valid_mask(valid, &self.hist_item, b, l);
    }

    /// The rows of each embedding table (item, category, position, other) the batch
    /// reads, ascending and distinct: the rows its backward gives a gradient, and all a
    /// sparse update touches. The target's position bucket is 0.
    pub fn touched_rows(&self) -> [Vec<u32>; 4] {
        let mut rows = Default::default();
        self.touched_rows_into(&mut rows);
        rows
    }

    /// [`Batch::touched_rows`] into `rows`, reusing its vectors (no allocation once they
    /// are large enough).
    pub fn touched_rows_into(&self, rows: &mut [Vec<u32>; 4]) {
        let (b, l, f) = (self.size, self.seq_len, self.fields);
        let pos_target: &[u32] = if b > 0 { &[0] } else { &[] };
        let sources: [[&[u32]; 2]; 4] = [
            [&self.hist_item[..b * l], &self.target_item[..b]],
            [&self.hist_cat[..b * l], &self.target_cat[..b]],
            [&self.hist_pos[..b * l], pos_target],
            [&self.other[..b * f], &[]],
        ];
        for (ids, [hist, target]) in rows.iter_mut().zip(sources) {
            ids.clear();
            ids.extend_from_slice(hist);
            ids.extend_from_slice(target);
            ids.sort_unstable();
            ids.dedup();
        }
    }
}

/// An index into a list of samples: `usize` or, for the orders of large splits, `u32`.
pub trait SampleIndex: Copy + Send + Sync {
    /// The index as `usize`.
    fn at(self) -> usize;
}
impl SampleIndex for usize {
    fn at(self) -> usize {
        self
    }
}
impl SampleIndex for u32 {
    fn at(self) -> usize {
        self as usize
    }
}

/// Anything batches can be gathered from: materialised
/// [`crate::data::Samples`] or a compact [`crate::data::Split`].
pub trait SampleSource: Sync {
    /// Number of samples.
    fn len(&self) -> usize;
    /// No samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Writes samples `idx` into `batch`, reusing its buffers.
    fn gather_into<I: SampleIndex>(&self, batch: &mut Batch, idx: &[I]);
    /// Label and dense user of sample `i` (all that evaluation keeps per sample).
    fn label_user(&self, i: usize) -> (f32, u32);
    /// A 64-bit hash of the samples, to tell whether two runs saw the same data.
    fn fingerprint(&self) -> u64;
}
