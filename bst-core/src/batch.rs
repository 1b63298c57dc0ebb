//! A batch: the rows of some samples gathered into contiguous buffers, reused across steps.

use crate::data::Samples;
use bst_kernels::cpu::embedding::TokenIds;

#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub size: usize,
    pub seq_len: usize,
    pub fields: usize,
    pub hist_item: Vec<u32>,   // (B, L)
    pub hist_cat: Vec<u32>,    // (B, L)
    pub hist_pos: Vec<u32>,    // (B, L)
    pub target_item: Vec<u32>, // (B)
    pub target_cat: Vec<u32>,  // (B)
    pub other: Vec<u32>,       // (B, F)
    pub label: Vec<f32>,       // (B)
}

impl Batch {
    /// Gathers samples `idx` of `s` into this batch, reusing its buffers.
    pub fn gather(&mut self, s: &Samples, idx: &[usize]) {
        let (l, f) = (s.seq_len, s.fields);
        self.size = idx.len();
        self.seq_len = l;
        self.fields = f;
        let rows = |dst: &mut Vec<u32>, src: &[u32], w: usize| {
            dst.clear();
            for &i in idx {
                dst.extend_from_slice(&src[i * w..(i + 1) * w]);
            }
        };
        rows(&mut self.hist_item, &s.hist_item, l);
        rows(&mut self.hist_cat, &s.hist_cat, l);
        rows(&mut self.hist_pos, &s.hist_pos, l);
        rows(&mut self.target_item, &s.target_item, 1);
        rows(&mut self.target_cat, &s.target_cat, 1);
        rows(&mut self.other, &s.other, f);
        self.label.clear();
        self.label.extend(idx.iter().map(|&i| s.label[i]));
    }

    /// A batch of samples `range` of `s`, in order.
    pub fn from_range(s: &Samples, range: std::ops::Range<usize>) -> Batch {
        let idx: Vec<usize> = range.collect();
        let mut b = Batch::default();
        b.gather(s, &idx);
        b
    }

    pub fn token_ids(&self) -> TokenIds<'_> {
        TokenIds {
            hist_item: &self.hist_item,
            hist_cat: &self.hist_cat,
            hist_pos: &self.hist_pos,
            target_item: &self.target_item,
            target_cat: &self.target_cat,
        }
    }

    /// valid (B, T): 1 where the token's item is not padding; the target always is valid.
    pub fn valid_mask(&self, valid: &mut Vec<u32>) {
        let (b, l) = (self.size, self.seq_len);
        valid.clear();
        for bi in 0..b {
            valid.extend(
                self.hist_item[bi * l..(bi + 1) * l]
                    .iter()
                    .map(|&i| (i != 0) as u32),
            );
            valid.push(1);
        }
    }
}
