//! `POST /v1/query` with `filter` (API.md, Query): only matching documents, the true top-k
//! among them, hits that carry their metadata, and a clear 422 for any other filter shape.

use reembed::embed::ModelRegistry;
use serde_json::{Value, json};

use crate::helpers::TestApp;
use crate::wire::QueryResult;

const LANGS: [&str; 3] = ["en", "de", "fr"];
const DOCS: usize = 60;

/// Which document indexes a filter should match.
type Matches = fn(usize) -> bool;

/// The metadata of document `i`: a language and a year cycling at different rates, a field no
/// filter can match (an array), and a number beyond `f64`.
fn metadata(i: usize) -> Value {
    let text = format!(
        r#"{{"lang": "{}", "year": {}, "tags": ["t{i}"], "n": 123456789012345678901234567890}}"#,
        LANGS[i % 3],
        2020 + i % 5
    );
    serde_json::from_str(&text).expect("valid metadata")
}

fn text(i: usize) -> String {
    format!("document {i} about rivers and {} mills", i % 7)
}

async fn corpus() -> TestApp {
    let app = TestApp::spawn().await;
    let documents: Vec<Value> = (0..DOCS)
        .map(|i| json!({"id": format!("d{i:02}"), "text": text(i), "metadata": metadata(i)}))
        .collect();
    app.bulk_reply(&json!({ "documents": documents }))
        .await
        .expect::<Value>(200);
    app
}

async fn query(app: &TestApp, top_k: usize, filter: Value) -> QueryResult {
    let body = json!({"text": "rivers and 3 mills", "top_k": top_k, "filter": filter});
    app.query_reply(&body).await.expect(200)
}

/// The ids an unfiltered exact query ranks, kept where `keep` holds, in rank order.
async fn ranked_where(app: &TestApp, keep: impl Fn(usize) -> bool) -> Vec<String> {
    let all = query(app, 1000, json!({})).await;
    all.hits
        .into_iter()
        .filter(|hit| keep(hit.id[1..].parse().expect("an index")))
        .map(|hit| hit.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_returns_the_true_top_k_of_the_matching_documents_with_their_metadata() {
    let app = corpus().await;
    let cases: [(Value, Matches); 4] = [
        (json!({"lang": "en"}), |i| i % 3 == 0),
        (json!({"lang": ["en", "de"], "year": 2021}), |i| {
            i % 3 != 2 && i % 5 == 1
        }),
        (json!({"year": 2024.0}), |i| i % 5 == 4),
        (json!({"lang": "xx"}), |_| false),
    ];
    for (filter, matches) in cases {
        let expected = ranked_where(&app, matches).await;
        for top_k in [1, 5, 1000] {
            let result = query(&app, top_k, filter.clone()).await;
            let want: Vec<&str> = expected.iter().take(top_k).map(String::as_str).collect();
            assert_eq!(result.hit_ids(), want, "{filter} top {top_k}");
            // A small model is scanned exactly in memory. PostgreSQL walks its index unless the
            // filter leaves fewer than `top_k` there (then it scans, `exact`): the hits above
            // are the true ones either way.
            if !crate::store::on_postgres() {
                assert!(result.exact);
            }
            for hit in &result.hits {
                let i: usize = hit.id[1..].parse().unwrap();
                assert_eq!(hit.metadata, metadata(i), "metadata round-trips exactly");
            }
        }
    }
    let all = query(&app, 1000, json!({})).await;
    assert_eq!(all.hits.len(), DOCS, "{{}} matches everything");
    let unfiltered: QueryResult = app
        .query_reply(&json!({"text": "rivers", "top_k": 1000, "exact": true}))
        .await
        .expect(200);
    assert_eq!(unfiltered.hits.len(), DOCS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_deletes_move_documents_in_and_out_of_a_filter_and_a_restart_keeps_them() {
    let app = corpus().await;
    let english = || async { query(&app, 1000, json!({"lang": "en"})).await.hits.len() };
    assert_eq!(english().await, 20);
    app.put_document_reply("d01", &json!({"text": text(1), "metadata": {"lang": "en"}}))
        .await
        .expect::<Value>(200);
    app.put_document_reply("d00", &json!({"text": text(0)}))
        .await
        .expect::<Value>(200);
    assert_eq!(app.delete("d03").await.status, 204);
    let after = query(&app, 1000, json!({"lang": "en"})).await;
    let ids = after.hit_ids();
    assert!(
        ids.contains(&"d01"),
        "a write that gained the field: {ids:?}"
    );
    assert!(!ids.contains(&"d00"), "a write that lost its metadata");
    assert!(!ids.contains(&"d03"), "a deleted document");
    assert_eq!(ids.len(), 19);
    assert_eq!(
        after.hits.iter().find(|h| h.id == "d01").unwrap().metadata,
        json!({"lang": "en"})
    );

    let app = app.restart(ModelRegistry::builtin()).await;
    let reloaded = query(&app, 1000, json!({"lang": "en"})).await;
    assert_eq!(
        reloaded.hit_ids(),
        ids,
        "the postings are rebuilt from the store"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_of_another_shape_is_422_naming_the_field() {
    let app = corpus().await;
    for (filter, names) in [
        (json!({"lang": {"eq": "en"}}), "filter.lang"),
        (json!({"lang": null}), "filter.lang"),
        (json!({"lang": []}), "filter.lang"),
        (json!({"lang": ["en", ["de"]]}), "filter.lang"),
        (json!(["lang"]), "filter"),
        (json!("lang"), "filter"),
    ] {
        let body = json!({"text": "rivers", "filter": filter});
        let problem = app.query_reply(&body).await.problem(422, "invalid-value");
        let detail = problem.detail.unwrap_or_default();
        assert!(detail.starts_with(names), "{filter}: {detail}");
    }
    let null_filter = json!({"text": "rivers", "filter": null, "top_k": 3});
    let result: QueryResult = app.query_reply(&null_filter).await.expect(200);
    assert_eq!(result.hits.len(), 3, "a null filter is no filter");
}
