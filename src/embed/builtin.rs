//! The built-in models: feature hashing of words (and, for `hash-v2`, character trigrams).
//!
//! They need no provider, no weights and no network, and they give the same vector for the same
//! text on every run and platform, so the service can be tried out and tested offline. Texts
//! that share words get similar vectors, which is all a demo or a test of routing needs.
//! (Case folding and word splitting use std's Unicode tables, so a Unicode update could only
//! change texts with characters it newly assigns.)

use async_trait::async_trait;
use tokio::task::JoinHandle;

use super::{EmbedError, Embedded, Embedder, background};

/// Batches larger than this are hashed on the blocking pool: a backfill batch of thousands of
/// texts would otherwise hold a runtime worker for milliseconds, while the few texts of a
/// query or a single write are cheaper to hash than to hand over to another thread.
const INLINE_BATCH_LIMIT: usize = 16;

/// Marks the start and end of a word, so the trigrams at a word's edges differ from the same
/// letters inside a word. Neither is alphanumeric, so neither can occur in a word.
const WORD_START: char = '<';
const WORD_END: char = '>';

/// A deterministic hashing embedder.
///
/// Each feature of a text (a lowercase word, or a character n-gram of one) is hashed with
/// FNV-1a 64 and a per-model seed; the hash picks a dimension and a sign, and the feature adds
/// ±1 there. Signs make colliding features cancel on average instead of piling up. Each sum is
/// replaced by its signed square root, damping repeated words, and the vector is
/// L2-normalised, so a dot product of two vectors is their cosine.
///
/// A text with no word (empty, blank or only punctuation), or whose features all cancel out,
/// gets one fixed unit vector per model: a zero vector cannot be normalised, and such texts
/// have nothing to tell them apart anyway.
///
/// Vectors are persisted by the store: changing the hashing, a seed or the dimensions makes a
/// different vector space and so must be a new model, never an edit of an existing one.
#[derive(Debug, Clone, Copy)]
pub struct HashEmbedder {
    dims: usize,
    /// Seeds the hash of whole words.
    word_seed: u64,
    /// Also hash character n-grams of each word, when set.
    ngrams: Option<NGrams>,
}

/// Character n-grams of each word, padded with `WORD_START` and `WORD_END`.
#[derive(Debug, Clone, Copy)]
struct NGrams {
    len: usize,
    /// Differs from the word seed, so a word never shares a feature with an n-gram.
    seed: u64,
}

impl HashEmbedder {
    /// `hash-v1`: 256 dimensions, whole words only.
    pub fn hash_v1() -> Self {
        Self {
            dims: 256,
            word_seed: 0x5f1c_9e37_a4d2_0b61,
            ngrams: None,
        }
    }

    /// `hash-v2`: 384 dimensions, words and their character trigrams, with seeds of its own so
    /// its vectors share nothing with `hash-v1`'s. Trigrams make inflections and typos of a
    /// word ("embed", "embedding") land close together.
    pub fn hash_v2() -> Self {
        let ngrams = NGrams {
            len: 3,
            seed: 0xc3a5_c85c_97cb_3127,
        };
        Self {
            dims: 384,
            word_seed: 0x9ae1_6a3b_2f90_404f,
            ngrams: Some(ngrams),
        }
    }

    /// The unit vector of one text. Synchronous, so benchmarks can call it directly.
    pub fn embed_one(&self, text: &str) -> Vec<f32> {
        let mut vector = vec![0.0; self.dims];
        self.add_text(&mut vector, text);
        dampen(&mut vector);
        if !normalise(&mut vector) {
            // No word, or every feature cancelled: the empty word's feature stands in.
            self.add_feature(&mut vector, hash(self.word_seed, &[]));
        }
        vector
    }

    fn embed_all(&self, texts: &[String]) -> Vec<Vec<f32>> {
        texts.iter().map(|text| self.embed_one(text)).collect()
    }

    fn add_text(&self, vector: &mut [f32], text: &str) {
        // The current word, lowercased and padded; reused so no word allocates.
        let mut padded: Vec<char> = Vec::new();
        for word in text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            padded.clear();
            padded.push(WORD_START);
            padded.extend(word.chars().flat_map(char::to_lowercase));
            padded.push(WORD_END);
            self.add_word(vector, &padded);
        }
    }

    fn add_word(&self, vector: &mut [f32], padded: &[char]) {
        let word = &padded[1..padded.len() - 1];
        self.add_feature(vector, hash(self.word_seed, word));
        if let Some(ngrams) = self.ngrams {
            for ngram in padded.windows(ngrams.len) {
                self.add_feature(vector, hash(ngrams.seed, ngram));
            }
        }
    }

    fn add_feature(&self, vector: &mut [f32], hash: u64) {
        let dimension = (hash % self.dims as u64) as usize;
        // The top bit is independent of the low bits that chose the dimension.
        vector[dimension] += if hash >> 63 == 0 { 1.0 } else { -1.0 };
    }
}

#[async_trait]
impl Embedder for HashEmbedder {
    fn dimensions(&self) -> usize {
        self.dims
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.len() <= INLINE_BATCH_LIMIT {
            return Ok(self.embed_all(texts));
        }
        let (embedder, texts) = (*self, texts.to_vec());
        joined(tokio::task::spawn_blocking(move || {
            embedder.embed_all(&texts)
        }))
        .await
    }

    async fn embed_backfill(&self, texts: &[String]) -> Result<Embedded, EmbedError> {
        let (embedder, texts) = (*self, texts.to_vec());
        joined(background::spawn(move || embedder.embed_all(&texts)))
            .await
            .map(Embedded::unreported)
    }

    fn embeds_on_this_machine(&self) -> bool {
        true
    }
}

/// The vectors hashed on another thread.
async fn joined(task: JoinHandle<Vec<Vec<f32>>>) -> Result<Vec<Vec<f32>>, EmbedError> {
    match task.await {
        Ok(vectors) => Ok(vectors),
        // Hashing cannot fail, so a panic is a bug: surface it as the inline path would.
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(error) => Err(EmbedError::Unavailable(format!(
            "hashing was cancelled: {error}"
        ))),
    }
}

/// Replaces each count by its signed square root, so that a feature repeated in a text (most
/// often a word like "the") weighs less than its count and shared filler words alone do not
/// make two texts look alike.
fn dampen(vector: &mut [f32]) {
    vector
        .iter_mut()
        .for_each(|x| *x = x.signum() * x.abs().sqrt());
}

/// Scales `vector` to unit length; `false`, leaving it untouched, when it is all zeros.
fn normalise(vector: &mut [f32]) -> bool {
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm == 0.0 {
        return false;
    }
    vector.iter_mut().for_each(|x| *x /= norm);
    true
}

fn hash(seed: u64, chars: &[char]) -> u64 {
    let mut hasher = Fnv1a::new(seed);
    chars.iter().for_each(|&c| hasher.write_char(c));
    hasher.finish()
}

/// FNV-1a 64 over UTF-8, written out because std's hashers are randomly seeded per process
/// and not promised stable across Rust versions, and these hashes end up in stored vectors.
struct Fnv1a(u64);

impl Fnv1a {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn new(seed: u64) -> Self {
        Self(Self::OFFSET ^ seed)
    }

    fn write_char(&mut self, c: char) {
        for &byte in c.encode_utf8(&mut [0; 4]).as_bytes() {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(Self::PRIME);
        }
    }

    /// FNV's low bits mix poorly for short inputs, and the low bits pick the dimension, so the
    /// state goes through MurmurHash3's 64-bit finaliser.
    fn finish(self) -> u64 {
        let mut h = self.0;
        h = (h ^ (h >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
        h = (h ^ (h >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine(model: &HashEmbedder, a: &str, b: &str) -> f32 {
        let (a, b) = (model.embed_one(a), model.embed_one(b));
        a.iter().zip(&b).map(|(x, y)| x * y).sum()
    }

    fn norm(vector: &[f32]) -> f32 {
        vector.iter().map(|x| x * x).sum::<f32>().sqrt()
    }

    fn models() -> [(&'static str, HashEmbedder); 2] {
        [
            ("hash-v1", HashEmbedder::hash_v1()),
            ("hash-v2", HashEmbedder::hash_v2()),
        ]
    }

    /// Pairwise unrelated; the first and last share only "the", repeated.
    const UNRELATED: [&str; 5] = [
        "the quick brown fox jumps over the lazy dog",
        "green tea is brewed with water just below boiling",
        "rust makes systems programming safe and fast",
        "quarterly invoices were mailed to every customer",
        "the river runs past the old mill toward the sea",
    ];

    #[test]
    fn fnv1a_without_seed_is_the_standard_hash() {
        // Published FNV-1a 64 test vectors.
        let raw = |text: &str| {
            let mut hasher = Fnv1a::new(0);
            text.chars().for_each(|c| hasher.write_char(c));
            hasher.0
        };
        assert_eq!(raw(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(raw("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(raw("foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn vectors_have_the_model_dimensions_and_unit_norm() {
        for (name, model) in models() {
            for text in UNRELATED
                .iter()
                .chain(&["", "   ", "?!", "Ünïcödé ΣΊΣΥΦΟΣ 東京"])
            {
                let vector = model.embed_one(text);
                assert_eq!(vector.len(), model.dimensions(), "{name}");
                assert!((norm(&vector) - 1.0).abs() < 1e-5, "{name} {text:?}");
            }
        }
    }

    #[test]
    fn identical_texts_give_identical_vectors() {
        for (_, model) in models() {
            assert_eq!(model.embed_one(UNRELATED[0]), model.embed_one(UNRELATED[0]));
        }
    }

    #[test]
    fn case_and_punctuation_do_not_matter() {
        for (name, model) in models() {
            let a = model.embed_one("The Quick, brown FOX!");
            assert_eq!(a, model.embed_one("the quick brown fox"), "{name}");
        }
    }

    #[test]
    fn shared_words_give_high_similarity() {
        for (name, model) in models() {
            let similar = cosine(&model, "the quick brown fox", "the quick brown fox jumps");
            assert!(similar > 0.7, "{name}: {similar}");
        }
    }

    #[test]
    fn unrelated_texts_give_low_similarity() {
        for (name, model) in models() {
            for (i, a) in UNRELATED.iter().enumerate() {
                for b in &UNRELATED[i + 1..] {
                    let similarity = cosine(&model, a, b);
                    assert!(
                        similarity.abs() < 0.3,
                        "{name}: {similarity} for {a:?} / {b:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn trigrams_bring_inflections_closer_in_hash_v2_only() {
        let (v1, v2) = (HashEmbedder::hash_v1(), HashEmbedder::hash_v2());
        let (a, b) = ("embedding models", "embedded model");
        assert!(cosine(&v1, a, b).abs() < 0.3);
        assert!(cosine(&v2, a, b) > 0.5, "{}", cosine(&v2, a, b));
    }

    #[test]
    fn texts_without_words_share_one_fixed_vector_per_model() {
        for (name, model) in models() {
            let empty = model.embed_one("");
            assert_eq!(empty, model.embed_one(" \t\n"), "{name}");
            assert_eq!(empty, model.embed_one("-- !! --"), "{name}");
            assert_eq!(empty.iter().filter(|x| **x != 0.0).count(), 1, "{name}");
        }
    }

    #[test]
    fn the_two_models_are_different_spaces() {
        let (v1, v2) = (HashEmbedder::hash_v1(), HashEmbedder::hash_v2());
        let (a, b) = (v1.embed_one(UNRELATED[0]), v2.embed_one(UNRELATED[0]));
        let overlap: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!(overlap.abs() < 0.3, "{overlap}");
    }

    /// The dimensions a text sets, with their signs (as `1` or `-1`).
    fn features(model: &HashEmbedder, text: &str) -> Vec<(usize, i8)> {
        let vector = model.embed_one(text);
        let set = vector.iter().enumerate().filter(|(_, x)| **x != 0.0);
        set.map(|(d, x)| (d, if *x > 0.0 { 1 } else { -1 }))
            .collect()
    }

    #[test]
    fn both_models_are_pinned() {
        // Stored vectors depend on these exact features: if this fails, the change needs a
        // new model id, not a new expectation here.
        assert_eq!(features(&HashEmbedder::hash_v1(), "hello world"), PINNED_V1);
        assert_eq!(features(&HashEmbedder::hash_v2(), "Hi"), PINNED_V2);
    }

    const PINNED_V1: [(usize, i8); 2] = [(57, 1), (67, 1)];
    const PINNED_V2: [(usize, i8); 3] = [(121, 1), (295, 1), (306, -1)];

    #[tokio::test]
    async fn embed_keeps_order_inline_and_on_the_blocking_pool() {
        let model = HashEmbedder::hash_v2();
        for count in [0, 1, INLINE_BATCH_LIMIT, INLINE_BATCH_LIMIT + 1, 100] {
            let texts: Vec<String> = (0..count).map(|i| format!("document number {i}")).collect();
            let vectors = model.embed(&texts).await.unwrap();
            let expected: Vec<Vec<f32>> = texts.iter().map(|t| model.embed_one(t)).collect();
            assert_eq!(vectors, expected, "{count} texts");
        }
    }
}
