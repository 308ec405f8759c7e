//! `/v1/documents` (API.md "Documents"): versions, the stored shape, delete, paging, bulk.

use std::collections::BTreeSet;

use serde_json::json;

use crate::helpers::TestApp;
use crate::wire::{Embedding, Written};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_creates_version_one_and_each_write_adds_one() {
    let app = TestApp::spawn().await;
    let first = app.put_document("doc", "first words").await;
    assert_eq!((first.id.as_str(), first.version), ("doc", 1));
    assert_eq!(
        (first.embedded_with, first.write_route),
        (vec!["hash-v1".to_owned()], "legacy".to_owned())
    );
    assert_eq!(app.put_document("doc", "second words").await.version, 2);
    assert_eq!(
        app.put_document("other", "unrelated").await.version,
        1,
        "versions are per id"
    );
    assert_eq!(app.put_document("doc", "third words").await.version, 3);

    let doc = app.get_document("doc").await;
    assert_eq!(
        (doc.id.as_str(), doc.text.as_str(), doc.version),
        ("doc", "third words", 3)
    );
    let hash_v1 = Embedding {
        version: 3,
        dimensions: 256,
    };
    assert_eq!(
        doc.embeddings.into_iter().collect::<Vec<_>>(),
        [("hash-v1".to_owned(), hash_v1)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_returns_the_documented_shape_with_metadata() {
    let app = TestApp::spawn().await;
    let metadata = json!({ "lang": "en", "tags": ["a", "b"], "rank": 3 });
    let body = json!({ "text": "with metadata", "metadata": metadata });
    app.put_document_reply("meta", &body).await.ok::<Written>();
    let raw = app.document_reply("meta").await.json();
    let keys: BTreeSet<&str> = raw
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for key in ["id", "text", "metadata", "version", "embeddings"] {
        assert!(
            keys.contains(key),
            "GET /v1/documents/meta lacks {key}: {raw}"
        );
    }
    assert_eq!(raw["metadata"], metadata);
    assert_eq!(raw["truncated"], false, "hash-v1 has no input limit");
    assert_eq!(
        raw["embeddings"],
        json!({ "hash-v1": { "version": 1, "dimensions": 256 } })
    );

    app.put_document("plain", "metadata is optional").await;
    let plain = app.get_document("plain").await;
    assert!(
        plain.metadata.is_null() || plain.metadata == json!({}),
        "{plain:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_the_document_and_its_vectors() {
    let app = TestApp::spawn().await;
    app.put_document("gone", "a document about deleting things")
        .await;
    app.put_document("kept", "a document about keeping things")
        .await;
    let reply = app.delete("gone").await;
    assert_eq!(reply.status, 204, "{reply}");
    assert!(reply.body.is_empty(), "{reply}");
    app.document_reply("gone").await.problem(404, "not-found");
    app.delete("gone").await.problem(404, "not-found");
    let query = app.query("a document about deleting things", 10).await;
    assert_eq!(
        query.hit_ids(),
        ["kept"],
        "a deleted document's vector is gone from the index"
    );
    let listed: Vec<String> = app
        .all_documents(10)
        .await
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(listed, ["kept"]);
    app.put_document("gone", "back again").await;
    let back = app.get_document("gone").await;
    assert_eq!(back.text, "back again");
    assert!(back.is_current_in("hash-v1"), "{back:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_with_next_after_and_carries_embeddings() {
    let app = TestApp::spawn().await;
    let ids = ["e", "a", "g", "c", "b", "f", "d"];
    for id in ids {
        app.put_document(id, &format!("document {id}")).await;
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..ids.len() {
        let page = app.list_documents(3, after.as_deref()).await;
        assert!(
            page.documents.len() <= 3,
            "limit=3 gave {}",
            page.documents.len()
        );
        for doc in &page.documents {
            assert_eq!(doc.vector_version("hash-v1"), Some(1), "{doc:?}");
        }
        seen.extend(page.documents.iter().map(|d| d.id.clone()));
        match page.next_after {
            Some(next) => {
                assert_eq!(
                    Some(&next),
                    seen.last(),
                    "next_after names the page's last id"
                );
                after = Some(next);
            }
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        ids.len(),
        "every document exactly once: {seen:?}"
    );
    let last = app
        .list_documents(100, seen.last().map(String::as_str))
        .await;
    assert!(last.documents.is_empty() && last.next_after.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_upserts_every_document_and_reports_each_version() {
    let app = TestApp::spawn().await;
    app.put_document("old", "existing text").await;
    let results = app
        .bulk(&[("new-1", "one"), ("old", "rewritten"), ("new-2", "two")])
        .await;
    let versions: Vec<(&str, u64)> = results.iter().map(|r| (r.id.as_str(), r.version)).collect();
    assert_eq!(
        versions,
        [("new-1", 1), ("old", 2), ("new-2", 1)],
        "{results:?}"
    );
    for result in &results {
        assert_eq!(
            (result.embedded_with.as_slice(), result.write_route.as_str()),
            (&["hash-v1".to_owned()][..], "legacy")
        );
    }
    let old = app.get_document("old").await;
    assert_eq!((old.text.as_str(), old.version), ("rewritten", 2));
    assert!(old.is_current_in("hash-v1"), "{old:?}");
    assert_eq!(app.all_documents(100).await.len(), 3);
}

/// Metadata is the user's data: numbers beyond f64 and u64 come back digit for digit, from
/// a single write, a bulk write and a listing alike.
#[tokio::test]
async fn metadata_numbers_round_trip_exactly() {
    let app = TestApp::spawn().await;
    let body = r#"{"text": "precise", "metadata": {"big": 123456789012345678901234567890,
        "tiny": 1e-400, "long": 0.1000000000000000055511151231257827, "neg": -18446744073709551617}}"#;
    let put = app
        .send_raw(
            reqwest::Method::PUT,
            "/v1/documents/precise",
            Some(("application/json", body.to_owned())),
        )
        .await;
    assert_eq!(put.status, 200, "{put}");
    for text in [
        app.document_reply("precise").await.body,
        app.get("/v1/documents?limit=10").await.body,
    ] {
        for number in [
            "123456789012345678901234567890",
            "1e-400",
            "0.1000000000000000055511151231257827",
            "-18446744073709551617",
        ] {
            assert!(text.contains(number), "{number} changed: {text}");
        }
    }
}

/// An id may hold 1 to 512 characters, counted as JSON Schema counts them: 512 two-byte
/// characters are accepted, 513 are not.
#[tokio::test]
async fn an_id_holds_up_to_512_characters() {
    let app = TestApp::spawn().await;
    let longest = "é".repeat(512);
    let written = app
        .bulk_reply(&json!({"documents": [{"id": longest, "text": "a long id"}]}))
        .await;
    assert_eq!(written.status, 200, "{written}");
    app.bulk_reply(&json!({"documents": [{"id": "é".repeat(513), "text": "too long"}]}))
        .await
        .problem(422, "invalid-value");
    app.bulk_reply(&json!({"documents": [{"id": "", "text": "no id"}]}))
        .await
        .problem(422, "invalid-value");
}
