//! A generator of Taobao UserBehavior-shaped click logs, for runs at the real file's scale
//! (which cannot be downloaded here): rows `user_id,item_id,category_id,behavior_type,timestamp`
//! without header, as [`super::taobao`] reads them.
//!
//! At [`FULL_ROWS`] rows it has the real file's counts: 987,994 users, 4,162,024 items,
//! 9,439 categories, 9 days (2017-11-25 to 2017-12-03, China time, UTC+8; timestamps in
//! seconds), behaviours `pv` 89.7%, `cart` 5.5%, `fav` 2.9%, `buy` the rest (1.9%). At any
//! other row count, users, items and categories scale in proportion (at least one each).
//!
//! - Every user and every item appears (each user has at least one row; row `k` of the file
//!   introduces a new item whenever `floor((k+1) I / N)` steps, so all `I` appear, in
//!   popularity order); other rows draw an item Zipf-like (exponent 1) by popularity rank,
//!   or, 25% of the time, re-view one of the user's earlier items. Carts, favourites and
//!   purchases are mostly of items the user viewed.
//! - Each item has one category, fixed by its rank: the first `C` items cover every
//!   category, the others draw Zipf-like. Ids are spread over the real id ranges.
//! - Rows per user are log-normal (a long tail of heavy users), summing exactly to `N`.
//!   Each user's rows fall in sessions on random days, at hours weighted towards the
//!   evening, a minute or so apart; the file lists users in id order, each in time order.
//! - Seeded and deterministic: the same `(rows, seed)` gives the same bytes.
//!
//! The output is streamed: memory is one user's rows and one weight per user.

use crate::rng::Rng;
use std::io::Write;

/// Rows of the real UserBehavior.csv.
pub const FULL_ROWS: u64 = 100_150_807;
/// Users, items and categories of the real file.
pub const FULL_USERS: u64 = 987_994;
/// Items of the real file.
pub const FULL_ITEMS: u64 = 4_162_024;
/// Categories of the real file.
pub const FULL_CATEGORIES: u64 = 9_439;
/// 2017-11-25 00:00:00 China time (UTC+8), in Unix seconds: the first day.
pub const START: i64 = 1_511_539_200;
/// Days covered.
pub const DAYS: i64 = 9;
const DAY: i64 = 86_400;
/// The real id ranges (largest id), over which ids are spread.
const USER_ID_SPACE: u64 = 1_018_011;
const ITEM_ID_SPACE: u64 = 5_163_070;
const CATEGORY_ID_SPACE: u64 = 5_162_429;
/// Behaviour types and their cumulative shares (the last takes the rest).
const BEHAVIOURS: [(&str, f64); 4] = [("pv", 0.897), ("cart", 0.952), ("fav", 0.981), ("buy", 1.0)];
/// Relative activity by hour of day (China time): quiet at night, busiest in the evening.
const HOUR_WEIGHTS: [f64; 24] = [
    3.0, 1.5, 0.8, 0.5, 0.4, 0.5, 1.0, 2.0, 3.0, 3.5, 4.0, 4.0, //
    4.2, 4.2, 4.0, 4.0, 4.0, 4.2, 4.5, 5.0, 6.0, 6.5, 6.0, 4.5,
];
/// Share of rows that re-view one of the user's earlier items.
const REVIEW: f64 = 0.25;
/// Share of carts, favourites and purchases of an item the user viewed before.
const OF_VIEWED: f64 = 0.7;
/// Mean events per session and mean seconds between two events of a session.
const SESSION_EVENTS: f64 = 12.0;
const EVENT_GAP: f64 = 50.0;
/// Spread (sigma of the log) of rows per user.
const USER_SIGMA: f64 = 1.0;

/// What to generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaobaoSpec {
    /// Rows to write.
    pub rows: u64,
    /// Seed of everything.
    pub seed: u64,
}

/// The sizes of a generated file: each user, item and category appears at least once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaobaoSizes {
    /// Rows.
    pub rows: u64,
    /// Users.
    pub users: u64,
    /// Items.
    pub items: u64,
    /// Categories.
    pub categories: u64,
}

impl TaobaoSpec {
    /// The counts at this row count: the real file's, scaled by `rows / FULL_ROWS`.
    pub fn sizes(&self) -> TaobaoSizes {
        let n = self.rows;
        let scale = |full: u64| ((full as f64 * n as f64 / FULL_ROWS as f64).round() as u64).max(1);
        let users = scale(FULL_USERS).min(n);
        let items = scale(FULL_ITEMS).min(n);
        let categories = scale(FULL_CATEGORIES).min(items);
        TaobaoSizes {
            rows: n,
            users,
            items,
            categories,
        }
    }
}

/// A bijection of `0..m` (`x -> (a x + b) mod m`, `a` coprime with `m`), spreading dense
/// indices over an id range.
#[derive(Clone, Copy, Debug)]
struct Spread {
    a: u64,
    b: u64,
    m: u64,
}

impl Spread {
    fn new(m: u64, rng: &mut Rng) -> Spread {
        let gcd = |mut x: u64, mut y: u64| {
            while y != 0 {
                (x, y) = (y, x % y);
            }
            x
        };
        let mut a = (rng.next_u64() % m).max(1);
        while gcd(a, m) != 1 {
            a = a % m + 1;
        }
        Spread {
            a,
            b: rng.below(m),
            m,
        }
    }
    fn id(&self, x: u64) -> u64 {
        1 + ((x as u128 * self.a as u128 + self.b as u128) % self.m as u128) as u64
    }
}

/// A Zipf-like (exponent 1) rank in `0..n` for a uniform `u` in `[0, 1)`: the continuous
/// density `1/x` on `[1, n+1)`, floored.
fn zipf_rank(u: f64, n: u64) -> u64 {
    let x = ((n + 1) as f64).powf(u);
    (x as u64).saturating_sub(1).min(n - 1)
}

/// A 64-bit mix of `x` (SplitMix64's finaliser): a stateless hash for per-item draws.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Appends the decimal digits of `x`.
fn push_u64(buf: &mut Vec<u8>, mut x: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (x % 10) as u8;
        x /= 10;
        if x == 0 {
            break;
        }
    }
    buf.extend_from_slice(&tmp[i..]);
}

/// The generator's fixed world: sizes, id spreads and the per-item category hash.
struct World {
    sizes: TaobaoSizes,
    item_ids: Spread,
    cat_ids: Spread,
    user_id_space: u64,
    cat_seed: u64,
    hour_cdf: [f64; 24],
}

impl World {
    fn new(spec: &TaobaoSpec) -> World {
        let sizes = spec.sizes();
        let mut rng = Rng::new(spec.seed).fork(0);
        let space = |full_space: u64, full: u64, n: u64| {
            ((full_space as f64 * n as f64 / full as f64).round() as u64).max(n)
        };
        let mut hour_cdf = [0.0; 24];
        let total: f64 = HOUR_WEIGHTS.iter().sum();
        let mut acc = 0.0;
        for (c, w) in hour_cdf.iter_mut().zip(HOUR_WEIGHTS) {
            acc += w / total;
            *c = acc;
        }
        World {
            item_ids: Spread::new(space(ITEM_ID_SPACE, FULL_ITEMS, sizes.items), &mut rng),
            cat_ids: Spread::new(CATEGORY_ID_SPACE.max(sizes.categories), &mut rng),
            user_id_space: space(USER_ID_SPACE, FULL_USERS, sizes.users),
            cat_seed: rng.next_u64(),
            hour_cdf,
            sizes,
        }
    }

    /// Category rank of item rank `r`: the first `C` items cover the categories.
    fn category(&self, r: u64) -> u64 {
        let c = self.sizes.categories;
        if r < c {
            return r;
        }
        let u = (mix(self.cat_seed ^ r) >> 11) as f64 / (1u64 << 53) as f64;
        zipf_rank(u, c)
    }

    /// Raw user id of dense user `u`: increasing, spread over the id range.
    fn user_id(&self, u: u64) -> u64 {
        1 + (u as u128 * self.user_id_space as u128 / self.sizes.users as u128) as u64
    }

    /// A session start: a random day, an hour by [`HOUR_WEIGHTS`], a random second.
    fn session_start(&self, rng: &mut Rng) -> i64 {
        let day = rng.below(DAYS as u64) as i64;
        let u = rng.uniform();
        let hour = self.hour_cdf.iter().position(|&c| u < c).unwrap_or(23) as i64;
        START + day * DAY + hour * 3600 + rng.below(3600) as i64
    }
}

/// Rows per user: log-normal weights scaled so that every user has at least one row and
/// the counts sum to `rows` exactly.
fn rows_per_user(sizes: &TaobaoSizes, seed: u64) -> Vec<u64> {
    let mut rng = Rng::new(seed).fork(1);
    let weights: Vec<f64> = (0..sizes.users)
        .map(|_| (USER_SIGMA * rng.normal()).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let extra = sizes.rows - sizes.users;
    let (mut cum, mut given) = (0.0, 0u64);
    let mut out: Vec<u64> = weights
        .iter()
        .map(|w| {
            cum += w;
            let upto = ((extra as f64 * cum / total).floor() as u64).min(extra);
            let n = 1 + upto - given;
            given = upto;
            n
        })
        .collect();
    if let Some(last) = out.last_mut() {
        *last += extra - given; // floating-point rounding, at most a row or two
    }
    out
}

/// Writes `spec.rows` rows to `out`, calling `progress(rows written)` about every million
/// rows. Returns the sizes written.
pub fn write(
    spec: &TaobaoSpec,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<TaobaoSizes> {
    if spec.rows == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a generated click log needs at least one row",
        ));
    }
    let world = World::new(spec);
    let sizes = world.sizes;
    let (n, items) = (sizes.rows, sizes.items);
    let counts = rows_per_user(&sizes, spec.seed);
    let root = Rng::new(spec.seed).fork(2);
    let mut k = 0u64; // rows written
    let mut next_new = 0u64; // items introduced so far
    let mut last_report = 0u64;
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
    let mut times: Vec<i64> = Vec::new();
    let mut seen: Vec<u64> = Vec::new(); // item ranks of this user so far
    for (u, &count) in counts.iter().enumerate() {
        let mut rng = root.fork(u as u64);
        // Timestamps: sessions, each a burst of events a minute or so apart.
        times.clear();
        let sessions = ((count as f64 / SESSION_EVENTS).round() as u64).max(1);
        let starts: Vec<i64> = (0..sessions)
            .map(|_| world.session_start(&mut rng))
            .collect();
        let mut clocks = starts.clone();
        for _ in 0..count {
            let s = rng.below(sessions) as usize;
            clocks[s] += 1 + rng.exponential(EVENT_GAP) as i64;
            times.push(clocks[s].min(START + DAYS * DAY - 1));
        }
        times.sort_unstable();
        // Items and behaviours, in time order.
        seen.clear();
        let user_id = world.user_id(u as u64);
        for &t in &times {
            let b = rng.uniform();
            let behaviour = BEHAVIOURS.iter().position(|&(_, c)| b < c).unwrap_or(3);
            let r = if (k + 1) * items / n > k * items / n {
                next_new += 1;
                next_new - 1
            } else {
                let again = if behaviour == 0 { REVIEW } else { OF_VIEWED };
                if !seen.is_empty() && rng.uniform() < again {
                    seen[rng.below(seen.len() as u64) as usize]
                } else {
                    zipf_rank(rng.uniform(), items)
                }
            };
            seen.push(r);
            push_u64(&mut buf, user_id);
            buf.push(b',');
            push_u64(&mut buf, world.item_ids.id(r));
            buf.push(b',');
            push_u64(&mut buf, world.cat_ids.id(world.category(r)));
            buf.push(b',');
            buf.extend_from_slice(BEHAVIOURS[behaviour].0.as_bytes());
            buf.push(b',');
            push_u64(&mut buf, t as u64);
            buf.push(b'\n');
            k += 1;
        }
        if buf.len() >= 1 << 16 {
            out.write_all(&buf)?;
            buf.clear();
        }
        if k - last_report >= 1 << 20 {
            progress(k);
            last_report = k;
        }
    }
    out.write_all(&buf)?;
    out.flush()?;
    progress(k);
    Ok(sizes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_are_bijections_and_zipf_ranks_stay_in_range() {
        let mut rng = Rng::new(3);
        for m in [1, 2, 12, 1000, 5_163_070] {
            let s = Spread::new(m, &mut rng);
            let n = m.min(10_000);
            let mut ids: Vec<u64> = (0..n).map(|x| s.id(x)).collect();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len() as u64, n, "m = {m}");
            assert!(ids.iter().all(|&i| (1..=m).contains(&i)));
        }
        for n in [1, 2, 100] {
            for u in [0.0, 0.5, 0.999_999_999] {
                assert!(zipf_rank(u, n) < n);
            }
        }
        assert_eq!(zipf_rank(0.0, 100), 0);
    }

    #[test]
    fn rows_per_user_sum_exactly_and_give_everyone_a_row() {
        for rows in [1, 7, 1000, 200_001] {
            let sizes = TaobaoSpec { rows, seed: 1 }.sizes();
            let c = rows_per_user(&sizes, 1);
            assert_eq!(c.len() as u64, sizes.users);
            assert_eq!(c.iter().sum::<u64>(), rows);
            assert!(c.iter().all(|&x| x >= 1));
        }
    }

    #[test]
    fn the_full_row_count_has_the_real_files_counts() {
        let s = TaobaoSpec {
            rows: FULL_ROWS,
            seed: 0,
        }
        .sizes();
        assert_eq!(
            (s.users, s.items, s.categories),
            (FULL_USERS, FULL_ITEMS, FULL_CATEGORIES)
        );
        let digits = |x: u64| {
            let mut b = Vec::new();
            push_u64(&mut b, x);
            String::from_utf8(b).unwrap()
        };
        assert_eq!(digits(0), "0");
        assert_eq!(digits(1_511_539_200), "1511539200");
        assert_eq!(digits(u64::MAX), u64::MAX.to_string());
    }
}
