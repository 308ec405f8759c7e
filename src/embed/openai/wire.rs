//! The JSON of `POST /embeddings`, and the checks an answer passes before its vectors are
//! trusted: one vector per input, every index once, the promised dimensions, a length to
//! normalise.

use serde::{Deserialize, Serialize};

use crate::embed::EmbedError;

/// The request body.
#[derive(Serialize)]
pub(super) struct EmbeddingsRequest<'a> {
    pub input: &'a [String],
    pub model: &'a str,
    /// Only when the settings ask for it (`OpenAiSettings::send_dimensions`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<usize>,
}

/// The part of the answer we read; `index` says which input a vector belongs to, since the
/// order of `data` is not promised.
#[derive(Deserialize)]
struct EmbeddingsResponse {
    data: Vec<Embedding>,
    /// What the request was billed; OpenAI reports it, some compatible servers do not.
    #[serde(default)]
    usage: Option<Usage>,
}

/// OpenAI's `usage`: for embeddings both counts are the input's tokens.
#[derive(Deserialize)]
struct Usage {
    prompt_tokens: Option<u64>,
    total_tokens: Option<u64>,
}

/// An answer's vectors, and the tokens its `usage` reports (`None` without one).
pub(super) struct Answer {
    pub vectors: Vec<Vec<f32>>,
    pub tokens: Option<u64>,
}

#[derive(Deserialize)]
struct Embedding {
    index: usize,
    embedding: Vec<f32>,
}

/// Reads the answer of `model` to `count` inputs into unit vectors of `dimensions`, in input
/// order, with the tokens it reports, or says which promise the answer broke.
pub(super) fn read_answer(
    body: &[u8],
    count: usize,
    dimensions: usize,
    model: &str,
) -> Result<Answer, EmbedError> {
    let response: EmbeddingsResponse = serde_json::from_slice(body).map_err(|error| {
        EmbedError::Misconfigured(format!(
            "{model}: the answer is not an embeddings response ({error}); is base_url the API \
             root, such as http://host/v1?"
        ))
    })?;
    let unavailable = |what: String| EmbedError::Unavailable(format!("{model} {what}"));
    if response.data.len() != count {
        let got = response.data.len();
        return Err(unavailable(format!(
            "returned {got} vectors for {count} inputs"
        )));
    }
    let mut ordered: Vec<Option<Vec<f32>>> = vec![None; count];
    for Embedding { index, embedding } in response.data {
        check_dimensions(embedding.len(), dimensions, model)?;
        let Some(slot @ None) = ordered.get_mut(index) else {
            return Err(unavailable(format!(
                "returned index {index} twice or out of range"
            )));
        };
        *slot = Some(normalised(embedding, index)?);
    }
    let tokens = response
        .usage
        .and_then(|usage| usage.prompt_tokens.or(usage.total_tokens));
    // `count` items, each filling a distinct one of `count` slots: all are filled.
    Ok(Answer {
        vectors: ordered.into_iter().flatten().collect(),
        tokens,
    })
}

/// A wrong dimension is a configuration error (the registry names the wrong size or model),
/// never something to store or to blame on a document.
fn check_dimensions(got: usize, expected: usize, model: &str) -> Result<(), EmbedError> {
    if got == expected {
        return Ok(());
    }
    Err(EmbedError::Misconfigured(format!(
        "{model} returned {got}-dimensional vectors where the registry promises {expected}; fix \
         `dimensions` in the model registry (or the model name)"
    )))
}

/// Scales a vector to unit length, as every embedder's vectors are. A vector with no length
/// (all zeros, or a NaN) cannot be, and the same input would give it again: that input is
/// rejected, so the backfill isolates and skips it rather than failing every batch.
pub(super) fn normalised(mut vector: Vec<f32>, index: usize) -> Result<Vec<f32>, EmbedError> {
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if !norm.is_normal() {
        return Err(EmbedError::Rejected(format!(
            "the model returned a vector of length {norm} for input {index}"
        )));
    }
    vector.iter_mut().for_each(|x| *x /= norm);
    Ok(vector)
}
