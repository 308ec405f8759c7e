//! The sticky canary (API.md "Confidence", `canary_percent`): before the threshold, a share of
//! the queries that carry a `routing_key` goes to the target model.
//!
//! Each key has a fixed place in [0, 1) per migration, a SHA-256 of the migration id and the
//! key, and is a canary when its place is under `canary_percent / 100`. Hence:
//! - a key always gets the same side while the percentage stays (and on every replica, since
//!   the hash depends on nothing but its inputs);
//! - raising the percentage only moves keys from the source to the target, and lowering it
//!   only moves them back;
//! - another migration draws a different share, so no tenant is always the first canary.

use sha2::{Digest, Sha256};

/// Longest accepted `routing_key`, in bytes (API.md query body).
pub const MAX_ROUTING_KEY_BYTES: usize = 256;

/// A query's `routing_key`: a tenant or user id, non-empty and at most
/// `MAX_ROUTING_KEY_BYTES` long. Parsed once at the edge, so the canary never sees another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingKey(String);

/// A `routing_key` over `MAX_ROUTING_KEY_BYTES`; holds its length in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("routing_key: must be at most {MAX_ROUTING_KEY_BYTES} bytes, got {0}")]
pub struct RoutingKeyTooLong(pub usize);

impl RoutingKey {
    /// The key a client sent. An empty key is no key: it names no tenant, and treating it as
    /// one would send every client that fills the field blindly to the same side.
    pub fn parse(key: String) -> Result<Option<Self>, RoutingKeyTooLong> {
        match key.len() {
            0 => Ok(None),
            len if len > MAX_ROUTING_KEY_BYTES => Err(RoutingKeyTooLong(len)),
            _ => Ok(Some(Self(key))),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether a query with `key` goes to the target of migration `migration_id` when
/// `canary_percent` (0 to 100) of the keys do. Never without a key, never at 0, always at 100.
pub fn is_canary(migration_id: &str, key: Option<&RoutingKey>, canary_percent: f64) -> bool {
    key.is_some_and(|key| place(migration_id, key) < canary_percent / 100.0)
}

/// The key's fixed place in [0, 1) for this migration: the first 8 bytes of
/// SHA-256(length of the id as 8 bytes big-endian ‖ id ‖ key), whose top 53 bits make an `f64`
/// exactly. The length prefix keeps ("ab", "c") and ("a", "bc") apart.
fn place(migration_id: &str, key: &RoutingKey) -> f64 {
    let digest = Sha256::new()
        .chain_update((migration_id.len() as u64).to_be_bytes())
        .chain_update(migration_id.as_bytes())
        .chain_update(key.as_str().as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(key: &str) -> RoutingKey {
        RoutingKey::parse(key.to_owned())
            .unwrap()
            .expect("a non-empty key")
    }

    #[test]
    fn an_empty_key_is_no_key_and_a_long_one_is_refused_with_its_length() {
        assert_eq!(RoutingKey::parse(String::new()), Ok(None));
        let longest = "k".repeat(MAX_ROUTING_KEY_BYTES);
        assert_eq!(RoutingKey::parse(longest.clone()), Ok(Some(key(&longest))));
        // Bytes, not characters: 128 two-byte characters are 256 bytes, 129 are too many.
        assert!(RoutingKey::parse("é".repeat(128)).unwrap().is_some());
        let err = RoutingKey::parse("é".repeat(129)).unwrap_err();
        assert_eq!(err, RoutingKeyTooLong(258));
        assert_eq!(
            err.to_string(),
            "routing_key: must be at most 256 bytes, got 258"
        );
    }

    /// Replicas on other machines, and later builds, must put a key where this one does: the
    /// places are pinned (computed independently with Python's hashlib).
    #[test]
    fn the_place_of_a_key_is_pinned() {
        let cases = [
            ("mig-1", "tenant-42", 0x63df_bf17_db19_d7ee_u64),
            ("mig-1", "tenant-43", 0x8bef_15e7_b73a_1de2),
            ("mig-2", "tenant-42", 0x8f5c_2a5a_aba2_0fb5),
        ];
        for (migration, k, top) in cases {
            let expected = (top >> 11) as f64 / (1u64 << 53) as f64;
            assert_eq!(place(migration, &key(k)), expected, "{migration} {k}");
        }
    }

    #[test]
    fn the_id_and_the_key_cannot_trade_bytes() {
        assert_ne!(place("ab", &key("c")), place("a", &key("bc")));
    }

    proptest! {
        #[test]
        fn the_same_key_always_gets_the_same_side(
            id in ".{0,16}", k in ".{1,32}", percent in 0.0..=100.0f64,
        ) {
            let k = key(&k);
            prop_assert_eq!(is_canary(&id, Some(&k), percent), is_canary(&id, Some(&k), percent));
        }

        #[test]
        fn no_key_or_zero_is_never_a_canary_and_a_hundred_always_is(
            id in ".{0,16}", k in ".{1,32}", percent in 0.0..=100.0f64,
        ) {
            prop_assert!(!is_canary(&id, None, percent));
            prop_assert!(!is_canary(&id, Some(&key(&k)), 0.0));
            prop_assert!(is_canary(&id, Some(&key(&k)), 100.0));
        }

        #[test]
        fn raising_the_percentage_never_moves_a_key_back_to_the_source(
            id in ".{0,16}", k in ".{1,32}", a in 0.0..=100.0f64, b in 0.0..=100.0f64,
        ) {
            let (low, high) = if a <= b { (a, b) } else { (b, a) };
            let k = key(&k);
            prop_assert!(!is_canary(&id, Some(&k), low) || is_canary(&id, Some(&k), high));
        }

        #[test]
        fn a_place_is_in_the_unit_interval(id in ".{0,16}", k in ".{1,32}") {
            let place = place(&id, &key(&k));
            prop_assert!((0.0..1.0).contains(&place), "{}", place);
        }
    }

    /// The share of 10,000 keys is the percentage, within a point (the binomial standard
    /// deviation at 20% is 0.4 points).
    #[test]
    fn the_share_of_many_keys_is_the_percentage() {
        for percent in [1.0, 20.0, 50.0, 99.5] {
            let canaries = (0..10_000)
                .filter(|i| is_canary("mig-1", Some(&key(&format!("user-{i}"))), percent))
                .count();
            let share = canaries as f64 / 100.0;
            assert!((share - percent).abs() < 1.0, "{share}% at {percent}%");
        }
    }
}
