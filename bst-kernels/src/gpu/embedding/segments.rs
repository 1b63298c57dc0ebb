//! The host's half of the embedding backward: each table's token ids of one batch grouped
//! by id (a stable radix sort), the long segments cut into pieces, all laid out in one
//! `u32` image whose layout the [`EmbeddingDims`] fix, so that the uniforms' offsets never
//! change. See the parent module's "Backward" section for what the kernels do with it.

use std::ops::Range;

use rayon::prelude::*;

use super::{
    CAT, EmbeddingDims, GpuError, ITEM, POS, TABLE_NAMES, TABLES, TokenIds, check_dims, table_maps,
};

/// The shortest piece length: segments of at most this many tokens are summed whole, in
/// the CPU's order.
pub const MIN_PIECE: u32 = 64;

/// The piece length of a table whose longest segment in the batch has `longest` tokens:
/// `max(MIN_PIECE, ceil(sqrt(longest)))`. Then a piece's sum is at most that many
/// additions, and so is a long segment's sum of its pieces.
pub fn piece_len(longest: u32) -> u32 {
    let longest = u64::from(longest);
    let mut r = (longest as f64).sqrt() as u64;
    while r * r > longest {
        r -= 1;
    }
    while r * r < longest {
        r += 1;
    }
    (r as u32).max(MIN_PIECE)
}

/// Room for the long segments (more than `MIN_PIECE` tokens) of `n` tokens.
fn long_room(n: usize) -> usize {
    n / (MIN_PIECE as usize + 1)
}

/// Room for the pieces of `n` tokens' long segments: a segment of `len > P >= MIN_PIECE`
/// tokens has `ceil(len / P) < 2 len / P <= 2 len / MIN_PIECE` pieces.
pub(super) fn piece_room(n: usize) -> usize {
    2 * n / MIN_PIECE as usize
}

/// Where one table's segments lie in the segments image (element offsets from its start).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct SegmentsAt {
    /// Unique ids, room for every token.
    pub(super) ids: u32,
    /// Segment starts, room for every token + 1.
    pub(super) start: u32,
    /// Token order, every token.
    pub(super) order: u32,
    /// The long segments (more than `P` tokens): their indices `u`, ascending.
    pub(super) long_u: u32,
    /// Long segment `l`'s first piece (and one past the last piece at the end).
    pub(super) long_piece: u32,
    /// The long segment of each piece.
    pub(super) piece_long: u32,
}

/// Elements of one table's region for `n` tokens: `[ids (n) | start (n + 1) | order (n) |
/// long_u (RL) | long_piece (RL + 1) | piece_long (RP)]`, RL = `long_room(n)`, RP =
/// `piece_room(n)`.
fn region_len(n: usize) -> usize {
    3 * n + 1 + 2 * long_room(n) + 1 + piece_room(n)
}

/// The fixed layout of the segments image: per table a region of `region_len(N)`
/// elements for the batch's N tokens. Returns the offsets and the length. Call after
/// [`check_dims`] (which checks the length fits `u32`).
pub(super) fn segments_layout(dims: &EmbeddingDims) -> ([SegmentsAt; TABLES], u32) {
    let mut at = [SegmentsAt::default(); TABLES];
    let mut end = 0;
    for (a, m) in at.iter_mut().zip(table_maps(dims)) {
        let n = m.tokens(dims.rows);
        let rl = long_room(n as usize) as u32;
        *a = SegmentsAt {
            ids: end,
            start: end + n,
            order: end + 2 * n + 1,
            long_u: end + 3 * n + 1,
            long_piece: end + 3 * n + 1 + rl,
            piece_long: end + 3 * n + 2 + 2 * rl,
        };
        end += region_len(n as usize) as u32;
    }
    (at, end)
}

/// The tokens of one table grouped by id: what `embedding_segment_sum` walks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Segments {
    /// The U distinct ids, ascending.
    pub ids: Vec<u32>,
    /// U + 1 offsets into `order`: segment `u` is `order[start[u]..start[u + 1]]`.
    pub start: Vec<u32>,
    /// The N token indices sorted by id; stable, so ascending within one id.
    pub order: Vec<u32>,
}

/// Segments the token ids `ids` (token `k` has id `ids[k]`) of a table with `n_rows` rows.
///
/// The result is that of a stable sort by id (ascending token index within an id): an
/// LSD radix sort of the N keys `(id, k)` over the id's significant bits ([`sort_keys`]),
/// O(N) time per digit of 11 bits and O(N) memory, where a dense counting sort would
/// spend O(n_rows) per step on a large vocabulary.
/// An id `>= n_rows` is an error (the GPU would otherwise skip its gradient).
pub fn build_segments(ids: impl Iterator<Item = u32>, n_rows: usize) -> Result<Segments, GpuError> {
    let (mut keys, mut tmp) = (Vec::with_capacity(ids.size_hint().0), Vec::new());
    sort_keys(&mut keys, &mut tmp, ids, n_rows)?;
    let mut s = Segments {
        ids: Vec::new(),
        start: Vec::new(),
        order: Vec::with_capacity(keys.len()),
    };
    for (i, key) in keys.iter().enumerate() {
        let id = (key >> 32) as u32;
        if s.ids.last() != Some(&id) {
            s.ids.push(id);
            s.start.push(i as u32);
        }
        s.order.push(*key as u32);
    }
    s.start.push(keys.len() as u32);
    Ok(s)
}

/// Bits of a radix sort's digit: 2048 counters fit the L1 cache.
const RADIX_BITS: u32 = 11;

/// `keys` = the keys `(id << 32 | k)` of the token ids `ids`, sorted: ascending id, then
/// ascending token index. Replaces what `keys` held, reusing its memory and `tmp`'s. An
/// id `>= n_rows` is an error.
///
/// The keys are made in ascending `k`, so a stable sort by id alone sorts them: an LSD
/// radix sort over the bits an id `< n_rows` can have, one pass per digit of up to
/// [`RADIX_BITS`] (a category or position table: one pass over few counters; a million
/// items: two). Measured against `sort_unstable` of the keys: see the host bench.
fn sort_keys(
    keys: &mut Vec<u64>,
    tmp: &mut Vec<u64>,
    ids: impl Iterator<Item = u32>,
    n_rows: usize,
) -> Result<(), GpuError> {
    keys.clear();
    for (k, id) in ids.enumerate() {
        if id as usize >= n_rows {
            return Err(GpuError::Binding(format!(
                "embedding ids: token {k} has id {id}, past the table's {n_rows} rows; check \
                 the vocabulary sizes against the data"
            )));
        }
        let k = u32::try_from(k).map_err(|_| {
            GpuError::Binding("embedding ids: more than u32::MAX tokens in one batch".into())
        })?;
        keys.push(u64::from(id) << 32 | u64::from(k));
    }
    // Ids are u32 below n_rows: their significant bits.
    let bits = (u64::BITS - (n_rows.saturating_sub(1) as u64).leading_zeros()).min(32);
    let mut counts = [0usize; 1 << RADIX_BITS];
    let mut shift = 0;
    while shift < bits {
        let width = (bits - shift).min(RADIX_BITS);
        let (mask, at) = ((1u64 << width) - 1, 32 + shift);
        let digit = |key: u64| ((key >> at) & mask) as usize;
        let counts = &mut counts[..1 << width];
        counts.fill(0);
        for &key in keys.iter() {
            counts[digit(key)] += 1;
        }
        let mut sum = 0;
        for c in counts.iter_mut() {
            (*c, sum) = (sum, sum + *c);
        }
        tmp.resize(keys.len(), 0);
        for &key in keys.iter() {
            let c = &mut counts[digit(key)];
            tmp[*c] = key;
            *c += 1;
        }
        std::mem::swap(keys, tmp);
        shift += width;
    }
    Ok(())
}

/// What one table's segments hold, for the uniforms and the grids.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct TableSegments {
    /// Distinct ids.
    pub(super) unique: u32,
    /// The piece length P.
    pub(super) piece: u32,
    /// Segments longer than P.
    pub(super) longs: u32,
    /// Their pieces.
    pub(super) pieces: u32,
}

/// Writes the segments of sorted `keys` into one table's region of the segments image
/// (see [`region_len`]): the ids, starts and order as [`build_segments`] computes them,
/// then the long segments and their pieces for the piece length of the longest segment;
/// zeroes the rest of each part.
fn write_segments(region: &mut [u32], keys: &[u64], room: usize) -> TableSegments {
    let (ids, rest) = region.split_at_mut(room);
    let (start, rest) = rest.split_at_mut(room + 1);
    let (order, rest) = rest.split_at_mut(room);
    let (long_u, rest) = rest.split_at_mut(long_room(room));
    let (long_piece, piece_long) = rest.split_at_mut(long_room(room) + 1);
    let mut u = 0;
    for (i, &key) in keys.iter().enumerate() {
        let id = (key >> 32) as u32;
        if u == 0 || ids[u - 1] != id {
            ids[u] = id;
            start[u] = i as u32;
            u += 1;
        }
        order[i] = key as u32;
    }
    start[u] = keys.len() as u32;
    ids[u..].fill(0);
    start[u + 1..].fill(0);
    order[keys.len()..].fill(0);
    let len = |i: usize| start[i + 1] - start[i];
    let piece = piece_len((0..u).map(&len).max().unwrap_or(0));
    let (mut longs, mut pieces) = (0, 0);
    for i in (0..u).filter(|&i| len(i) > piece) {
        long_u[longs] = i as u32;
        long_piece[longs] = pieces as u32;
        let n = len(i).div_ceil(piece) as usize;
        piece_long[pieces..pieces + n].fill(longs as u32);
        longs += 1;
        pieces += n;
    }
    long_piece[longs] = pieces as u32;
    long_u[longs..].fill(0);
    long_piece[longs + 1..].fill(0);
    piece_long[pieces..].fill(0);
    TableSegments {
        unique: u as u32,
        piece,
        longs: longs as u32,
        pieces: pieces as u32,
    }
}

/// The segments of the four tables (item, category, position, other) for one batch, in
/// the `u32` layout the binding's segments buffer expects. Build them for each step
/// ([`EmbeddingSegments::build`], or [`EmbeddingSegments::build_into`] to reuse the
/// memory of an earlier batch's) and hand them to [`EmbeddingBinding::set_segments`].
#[derive(Clone, Debug)]
pub struct EmbeddingSegments {
    pub(super) dims: EmbeddingDims,
    pub(super) rows: u32,
    pub(super) tables: [TableSegments; TABLES],
    pub(super) data: Vec<u32>,
    /// Each table's sorted keys of the last build and the sort's scratch, kept for their
    /// memory.
    pub(super) keys: [[Vec<u64>; 2]; TABLES],
}

impl EmbeddingSegments {
    /// Elements (`u32`) of the segments buffer for these dims, the same for every batch:
    /// about 3.1 N + 3 per table of N tokens (see `region_len`). An error for dims that
    /// `bind` rejects.
    pub fn buffer_len(dims: &EmbeddingDims) -> Result<usize, GpuError> {
        check_dims(dims)?;
        Ok(segments_layout(dims).1 as usize)
    }

    /// Where each table's unique ids lie in the segments image (item, category,
    /// position, other): `(element offset, room)`, room being the table's tokens in a
    /// batch of `dims.rows` samples. The first `unique_ids()[i]` of table `i`'s room hold
    /// its ids after [`EmbeddingBinding::set_segments`]: the rows a step touches, for
    /// the lazy row-wise optimiser updates. An error for dims that `bind` rejects.
    pub fn unique_ids_at(dims: &EmbeddingDims) -> Result<[(u32, u32); TABLES], GpuError> {
        check_dims(dims)?;
        let (at, _) = segments_layout(dims);
        let maps = table_maps(dims);
        Ok(std::array::from_fn(|i| {
            (at[i].ids, maps[i].tokens(dims.rows))
        }))
    }

    /// Segments the ids of the first `rows` samples, in the CPU reference's token order:
    /// sample by sample, history slots then the target (token L, position bucket 0), and
    /// `other` field by field. `dims` must be the binding's.
    pub fn build(
        dims: &EmbeddingDims,
        rows: u32,
        ids: TokenIds,
        other: &[u32],
    ) -> Result<Self, GpuError> {
        let mut segs = Self {
            dims: *dims,
            rows: 0,
            tables: Default::default(),
            data: Vec::new(),
            keys: Default::default(),
        };
        segs.build_into(dims, rows, ids, other)?;
        Ok(segs)
    }

    /// [`EmbeddingSegments::build`] into `self`, reusing its memory: once its vectors
    /// have held a batch as large (and dims as large), a build allocates nothing. The
    /// result equals `build`'s bit for bit, whatever `self` held. On an error in the ids
    /// `self` holds the segments of no rows (all zeros); when `dims` or the lengths are
    /// refused it is unchanged.
    pub fn build_into(
        &mut self,
        dims: &EmbeddingDims,
        rows: u32,
        ids: TokenIds,
        other: &[u32],
    ) -> Result<(), GpuError> {
        check_dims(dims)?;
        if rows > dims.rows {
            return Err(GpuError::Binding(format!(
                "embedding segments for {rows} rows: the dims allow at most {}",
                dims.rows
            )));
        }
        let (b, l, f) = (rows as usize, dims.seq_len as usize, dims.fields as usize);
        for (what, have, need) in [
            ("hist_item (B, L)", ids.hist_item.len(), b * l),
            ("hist_cat (B, L)", ids.hist_cat.len(), b * l),
            ("hist_pos (B, L)", ids.hist_pos.len(), b * l),
            ("target_item (B)", ids.target_item.len(), b),
            ("target_cat (B)", ids.target_cat.len(), b),
            ("other (B, F)", other.len(), b * f),
        ] {
            if have < need {
                return Err(GpuError::Binding(format!(
                    "embedding segments: {what} has {have} ids, {rows} rows need {need}"
                )));
            }
        }
        let t = l + 1;
        let token = |pick: fn((usize, usize, usize)) -> usize| {
            (0..b).flat_map(move |bi| (0..t).map(move |ti| pick(ids.token(bi, ti, l)) as u32))
        };
        let maps = table_maps(dims);
        let (_, len) = segments_layout(dims);
        self.dims = *dims;
        self.data.resize(len as usize, 0);
        // The image is the four tables' regions one after another (segments_layout),
        // each sized for the dims' rows: one disjoint slice per table.
        let mut rest = &mut self.data[..];
        let mut jobs: [_; TABLES] = std::array::from_fn(|i| {
            let room = maps[i].tokens(dims.rows) as usize;
            let (region, tail) = std::mem::take(&mut rest).split_at_mut(region_len(room));
            rest = tail;
            (region, room, Ok(TableSegments::default()))
        });
        // The four tables' sorts are independent: one rayon task each.
        jobs.as_mut_slice()
            .par_iter_mut()
            .zip(self.keys.as_mut_slice())
            .enumerate()
            .for_each(|(i, ((region, room, table), [keys, tmp]))| {
                let n_rows = maps[i].rows as usize;
                let sorted = match i {
                    ITEM => sort_keys(keys, tmp, token(|(i, _, _)| i), n_rows),
                    CAT => sort_keys(keys, tmp, token(|(_, c, _)| c), n_rows),
                    POS => sort_keys(keys, tmp, token(|(_, _, p)| p), n_rows),
                    _ => sort_keys(keys, tmp, other[..b * f].iter().copied(), n_rows),
                };
                *table = sorted.map(|()| write_segments(region, keys, *room));
            });
        let mut tables = [TableSegments::default(); TABLES];
        let mut failed = None;
        for (i, (_, _, table)) in jobs.into_iter().enumerate() {
            match table {
                Ok(t) => tables[i] = t,
                Err(e) => {
                    failed.get_or_insert(match e {
                        GpuError::Binding(m) => {
                            GpuError::Binding(format!("{}: {m}", TABLE_NAMES[i]))
                        }
                        e => e,
                    });
                }
            }
        }
        if let Some(e) = failed {
            self.rows = 0;
            self.tables = Default::default();
            self.data.fill(0);
            return Err(e);
        }
        self.rows = rows;
        self.tables = tables;
        Ok(())
    }

    /// Rows (samples) of the batch segmented.
    pub fn rows(&self) -> u32 {
        self.rows
    }

    /// Distinct ids per table: item, category, position, other.
    pub fn unique_ids(&self) -> [u32; 4] {
        self.tables.map(|t| t.unique)
    }

    /// The piece length P per table ([`piece_len`] of its longest segment): segments of
    /// more than P tokens are summed in pieces of P tokens.
    pub fn piece_lens(&self) -> [u32; 4] {
        self.tables.map(|t| t.piece)
    }

    /// Segments longer than their table's piece length, and their pieces, per table.
    pub fn long_segments(&self) -> [(u32, u32); 4] {
        self.tables.map(|t| (t.longs, t.pieces))
    }

    /// The image; [`EmbeddingBinding::set_segments`] uploads its [`live`] ranges.
    ///
    /// [`live`]: EmbeddingSegments::live
    pub fn data(&self) -> &[u32] {
        &self.data
    }

    /// The ranges of [`EmbeddingSegments::data`] the kernels read for this batch: per
    /// table the unique ids, the starts, the order of this batch's tokens, the long
    /// segments and their pieces, each the used prefix of its room (the rest is zeros, and
    /// is not uploaded), ascending and non-empty. At batch 4096 of the default model about
    /// a third of the image. Allocates nothing (it runs every step).
    pub fn live(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        let (at, _) = segments_layout(&self.dims);
        let maps = table_maps(&self.dims);
        (0..TABLES)
            .flat_map(move |i| {
                let (a, t, n) = (at[i], self.tables[i], maps[i].tokens(self.rows));
                [
                    (a.ids, t.unique),
                    (a.start, t.unique + 1),
                    (a.order, n),
                    (a.long_u, t.longs),
                    (a.long_piece, t.longs + 1),
                    (a.piece_long, t.pieces),
                ]
            })
            .map(|(from, len)| from as usize..(from + len) as usize)
            .filter(|r| !r.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::super::OTHER;
    use super::*;

    #[test]
    fn segments_len_matches_the_layout() {
        let dims = EmbeddingDims {
            rows: 5,
            seq_len: 3,
            d_item: 1,
            d_cat: 1,
            d_pos: 1,
            fields: 2,
            d_other: 1,
            z_width: 2,
            z_off: 0,
            n_item: 1,
            n_cat: 1,
            n_pos: 1,
            n_other: 1,
        };
        let (at, len) = segments_layout(&dims);
        assert_eq!(len as usize, EmbeddingSegments::buffer_len(&dims).unwrap());
        // item: 20 tokens -> ids 0..20, start 20..41, order 41..61, no room for long
        // segments (61..61, long_piece 61..62), none for pieces; other starts at 3 * 62.
        assert_eq!((at[ITEM].ids, at[ITEM].start, at[ITEM].order), (0, 20, 41));
        let item = &at[ITEM];
        assert_eq!(
            (item.long_u, item.long_piece, item.piece_long),
            (61, 61, 62)
        );
        assert_eq!(at[OTHER].ids, 3 * 62);
        assert_eq!(len, 3 * 62 + 3 * 10 + 2);
        // 1000 tokens: 15 long segments at most, 31 pieces.
        assert_eq!((long_room(1000), piece_room(1000)), (15, 31));
        assert_eq!(region_len(1000), 3001 + 31 + 31);
    }

    #[test]
    fn radix_sort_of_the_keys_equals_a_comparison_sort() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (mut keys, mut tmp) = (Vec::new(), vec![9; 3]);
        for n_rows in [1usize, 2, 13, 64, 2048, 2049, 1 << 22, 1 << 32] {
            for n in [0, 1, 7, 5000] {
                let ids: Vec<u32> = (0..n).map(|_| (next() % n_rows as u64) as u32).collect();
                sort_keys(&mut keys, &mut tmp, ids.iter().copied(), n_rows).unwrap();
                let mut want: Vec<u64> = ids
                    .iter()
                    .enumerate()
                    .map(|(k, &id)| u64::from(id) << 32 | k as u64)
                    .collect();
                want.sort_unstable();
                assert_eq!(keys, want, "{n} ids below {n_rows}");
            }
        }
        // Large ids in a small batch: every digit's pass.
        let ids = [u32::MAX, 0, 1 << 31, 1 << 11, u32::MAX, 5];
        sort_keys(&mut keys, &mut tmp, ids.iter().copied(), 1 << 32).unwrap();
        let order: Vec<u32> = keys.iter().map(|&k| k as u32).collect();
        assert_eq!(order, [1, 5, 3, 2, 0, 4]);
    }

    #[test]
    fn piece_length_is_the_ceiling_square_root_and_at_least_64() {
        for (longest, want) in [(0, 64), (1, 64), (4096, 64), (4097, 65), (7000, 84)] {
            assert_eq!(piece_len(longest), want, "{longest}");
        }
        assert_eq!(piece_len(86016), 294); // 293^2 = 85849 < 86016 <= 294^2
        assert_eq!(piece_len(u32::MAX), 65536);
    }

    /// Every long segment's pieces cover it in order, within the rooms, for lengths
    /// around the piece length.
    #[test]
    fn long_segments_are_cut_into_pieces_within_the_rooms() {
        for lens in [
            vec![1, 64, 65, 3],
            vec![65; 30],
            vec![5000],
            vec![4097, 1, 129, 64, 200],
            vec![],
        ] {
            let keys: Vec<u64> = lens
                .iter()
                .enumerate()
                .flat_map(|(id, &n)| std::iter::repeat_n(id as u64, n))
                .enumerate()
                .map(|(k, id)| id << 32 | k as u64)
                .collect();
            let room = keys.len();
            let mut region = vec![7; region_len(room)];
            let t = write_segments(&mut region, &keys, room);
            let (rl, rp) = (long_room(room), piece_room(room));
            let long_u = &region[3 * room + 1..][..rl];
            let long_piece = &region[3 * room + 1 + rl..][..rl + 1];
            let piece_long = &region[3 * room + 2 + 2 * rl..][..rp];
            let longest = lens.iter().copied().max().unwrap_or(0);
            assert_eq!(t.piece, piece_len(longest as u32), "{lens:?}");
            let want: Vec<u32> = (0..lens.len() as u32)
                .filter(|&u| lens[u as usize] > t.piece as usize)
                .collect();
            assert_eq!(t.longs as usize, want.len(), "{lens:?}");
            assert_eq!(&long_u[..want.len()], &want[..], "{lens:?}");
            let mut p = 0;
            for (l, &u) in want.iter().enumerate() {
                let n = lens[u as usize].div_ceil(t.piece as usize);
                assert_eq!(long_piece[l] as usize, p, "{lens:?}");
                assert!(piece_long[p..p + n].iter().all(|&x| x as usize == l));
                p += n;
            }
            assert_eq!((t.pieces as usize, long_piece[want.len()] as usize), (p, p));
            assert!(long_u[want.len()..].iter().all(|&x| x == 0), "{lens:?}");
            assert!(piece_long[p..].iter().all(|&x| x == 0), "{lens:?}");
        }
    }
}
