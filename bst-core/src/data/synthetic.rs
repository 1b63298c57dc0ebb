//! The built-in synthetic world: deterministic from a seed, no files needed.
//!
//! Users browse in sessions (minutes apart within a session, days between sessions).
//! Whether a user clicks the item shown depends on
//! - the item's own appeal and a taste that depends on the user's profile (age, gender),
//! - complementary categories, which only an order- and time-aware model can use fully:
//!   category `c + 1` is the complement of category `c` (phone, then phone case), and a
//!   complement seen shortly before the target pulls strongly, while one seen days ago
//!   does not. The pull fades with the time gap, and only in that direction.
//!
//! What the feed shows follows each user's few liked categories and the complements of
//! what they saw, so histories carry the user's interests.
//!
//! The generator knows each interaction's true click probability, so the test split's
//! oracle AUC (the AUC of the true probabilities) says how much signal there is to learn.

use super::{Field, Interaction, InteractionLog, Vocab};
use crate::rng::Rng;

/// The shape of the synthetic world.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticSpec {
    /// Number of users.
    pub users: usize,
    /// Number of item categories.
    pub categories: usize,
    /// Items in each category.
    pub items_per_category: usize,
    /// Mean interactions per user (at least 8 each).
    pub mean_events: usize,
    /// History window the complement pull looks back over (the model's `L`).
    pub lookback: usize,
    /// Seed of the world and its events.
    pub seed: u64,
}

impl SyntheticSpec {
    /// The default world of `users` users, for a model with history length `lookback`.
    pub fn new(users: usize, lookback: usize, seed: u64) -> SyntheticSpec {
        SyntheticSpec {
            users,
            categories: 12,
            items_per_category: 20,
            mean_events: 40,
            lookback,
            seed,
        }
    }
}

const AGE_GROUPS: usize = 6;
const GENDERS: usize = 2;
const LIKED_PER_USER: usize = 3;
const MINUTE: f64 = 60.0;
const DAY: f64 = 86_400.0;

/// Logit weights of the click model.
const BIAS: f64 = -0.6;
const COMPLEMENT: f64 = 2.6;
/// The complement pull is `COMPLEMENT * exp(-gap / COMPLEMENT_DECAY)`.
const COMPLEMENT_DECAY: f64 = 3600.0;

/// Generates the interaction log (with true click probabilities) of a synthetic world.
pub fn generate(spec: &SyntheticSpec) -> InteractionLog {
    let root = Rng::new(spec.seed);
    let n_cat = spec.categories;
    let n_items = n_cat * spec.items_per_category;
    let cat_of = |item: usize| 1 + (item - 1) / spec.items_per_category; // items 1..=n_items

    // World: item appeal and profile taste per category.
    let mut rng = root.fork(1);
    let appeal: Vec<f64> = (0..=n_items).map(|_| 0.5 * rng.normal()).collect();
    let taste: Vec<f64> = (0..AGE_GROUPS * GENDERS * (n_cat + 1))
        .map(|_| 0.6 * rng.normal())
        .collect();

    let mut interactions = Vec::new();
    let mut true_prob = Vec::new();
    let mut user_features = Vec::with_capacity(spec.users);
    for u in 0..spec.users {
        let mut rng = root.fork(1000 + u as u64);
        let age = rng.below(AGE_GROUPS as u64) as usize;
        let gender = rng.below(GENDERS as u64) as usize;
        let liked: Vec<usize> = (0..LIKED_PER_USER)
            .map(|_| 1 + rng.below(n_cat as u64) as usize)
            .collect();
        user_features.push(vec![u as u32 + 1, age as u32 + 1, gender as u32 + 1]);

        let n_events = 8 + rng.below(2 * (spec.mean_events as u64 - 8) + 1) as usize;
        let mut time = 1_600_000_000.0 + rng.uniform() * 30.0 * DAY;
        let mut hist: Vec<(usize, f64)> = Vec::new(); // (category, time)
        for e in 0..n_events {
            if e > 0 {
                // A new session one time in four, else a few minutes later.
                time += if rng.uniform() < 0.25 {
                    rng.exponential(2.0 * DAY)
                } else {
                    rng.exponential(3.0 * MINUTE)
                };
            }
            let cat = shown_category(&mut rng, &hist, &liked, n_cat);
            let item = (cat - 1) * spec.items_per_category
                + 1
                + rng.below(spec.items_per_category as u64) as usize;
            debug_assert_eq!(cat_of(item), cat);
            let mut logit =
                BIAS + appeal[item] + taste[(age * GENDERS + gender) * (n_cat + 1) + cat];
            logit += complement_pull(
                &hist[hist.len().saturating_sub(spec.lookback)..],
                cat,
                time,
                n_cat,
            );
            let p = 1.0 / (1.0 + (-logit).exp());
            let label = if rng.uniform() < p { 1.0 } else { 0.0 };
            interactions.push(Interaction {
                user: u as u32,
                item: item as u32,
                time: time as i64,
                label,
            });
            true_prob.push(p as f32);
            hist.push((cat, time.floor()));
        }
    }

    let tokens = |n: usize, prefix: &str| -> Vec<String> {
        std::iter::once(String::new())
            .chain((1..=n).map(|i| format!("{prefix}{i}")))
            .collect()
    };
    let mut fields = Vec::new();
    let mut offset = 0;
    for (name, size) in [
        ("user_id", spec.users),
        ("age", AGE_GROUPS),
        ("gender", GENDERS),
    ] {
        fields.push(Field {
            name: name.into(),
            size: size + 1,
            offset,
            tokens: tokens(size, &format!("{name}_")),
        });
        offset += size + 1;
    }
    let item_ids = tokens(n_items, "item_");
    let mut item_cat = vec![0u32];
    item_cat.extend((1..=n_items).map(|i| cat_of(i) as u32));
    InteractionLog {
        interactions,
        implicit: false,
        vocab: Vocab {
            item_ids,
            item_cat,
            cat_names: tokens(n_cat, "cat_"),
            user_ids: (1..=spec.users).map(|u| format!("user_{u}")).collect(),
            fields,
        },
        user_features,
        true_prob: Some(true_prob),
    }
}

/// The next category the feed shows: often the complement of something seen earlier (most
/// often the last item), often a liked category, else any category.
fn shown_category(rng: &mut Rng, hist: &[(usize, f64)], liked: &[usize], n_cat: usize) -> usize {
    let r = rng.uniform();
    match hist.last() {
        Some(&(last, _)) if r < 0.25 => complement(last, n_cat),
        Some(_) if r < 0.40 => complement(hist[rng.below(hist.len() as u64) as usize].0, n_cat),
        _ if r < 0.70 => liked[rng.below(liked.len() as u64) as usize],
        _ => 1 + rng.below(n_cat as u64) as usize,
    }
}

/// Category `c + 1` complements category `c` (cyclically over 1..=n_cat).
fn complement(c: usize, n_cat: usize) -> usize {
    c % n_cat + 1
}

/// The strongest pull on category `cat` from a complement seen in `hist`, fading with the gap.
fn complement_pull(hist: &[(usize, f64)], cat: usize, now: f64, n_cat: usize) -> f64 {
    hist.iter()
        .filter(|&&(c, _)| complement(c, n_cat) == cat)
        .map(|&(_, t)| COMPLEMENT * (-(now.floor() - t).max(0.0) / COMPLEMENT_DECAY).exp())
        .fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_from_the_seed() {
        let a = generate(&SyntheticSpec::new(20, 20, 5));
        let b = generate(&SyntheticSpec::new(20, 20, 5));
        let c = generate(&SyntheticSpec::new(20, 20, 6));
        assert_eq!(a.interactions, b.interactions);
        assert_ne!(a.interactions, c.interactions);
    }

    #[test]
    fn a_recent_complement_raises_the_click_rate_and_an_old_one_does_not() {
        assert!(complement_pull(&[(3, 1000.0)], 4, 1060.0, 24) > 2.5);
        assert!(complement_pull(&[(3, 1000.0)], 4, 1000.0 + 3.0 * DAY, 24) < 1e-6);
        assert_eq!(
            complement_pull(&[(4, 1000.0)], 3, 1060.0, 24),
            0.0,
            "the pull has a direction"
        );
        assert!(
            complement_pull(&[(24, 1000.0)], 1, 1060.0, 24) > 2.5,
            "categories wrap around"
        );
    }
}
