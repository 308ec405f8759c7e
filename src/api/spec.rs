//! The error responses that come from the layers around every handler, added to the generated
//! OpenAPI document, and every error served as what it is: `application/problem+json`.
//!
//! utoipa describes what each handler's annotation names. The statuses the layers send (auth,
//! the body limits, the time limit, a caught panic) are the same for every operation of a
//! kind, so they are added here in one place instead of on every handler:
//!
//! | status | slug | added to |
//! |---|---|---|
//! | 400, 414, 431 | `malformed-request`, `uri-too-long`, `headers-too-large` | every operation (a head the accept loop cannot parse) |
//! | 400 | `malformed-path` | operations with a path parameter |
//! | 400, 408, 413, 415 | `malformed-body`, `request-timeout`, `payload-too-large`, `unsupported-media-type` | operations with a request body |
//! | 401 | `unauthorized` | everything behind the API token (`/v1`, `/metrics`, the status page) |
//! | 403 | `forbidden` | operations behind the token that change something |
//! | 500, 503 | `internal`, `unavailable` | every operation |
//!
//! Where several layers answer the same status, its description names each cause.
//!
//! The responses that create a document or a migration also carry OpenAPI links to the
//! operations on what they created, with the id taken from the response body, so a client
//! generator or a stateful fuzzer can follow them ([`LINKS`]). The event feed is left out:
//! it stays open until the migration ends.

use utoipa::openapi::extensions::Extensions;
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::{Content, OpenApi, Ref, RefOr};

use crate::serving::{MAX_HEAD_BYTES, MAX_HEADERS, MAX_TARGET_BYTES};

/// The media type of every error body.
const PROBLEM: &str = "application/problem+json";

/// The links from a response to the operations on what it names: the creating operation,
/// its status, the runtime expression of the id, and the operations that take that id.
const LINKS: [(&str, &str, &str, &[&str]); 3] = [
    (
        "put_document",
        "200",
        "$response.body#/id",
        &["get_document", "delete_document"],
    ),
    (
        "bulk_upsert",
        "200",
        "$response.body#/results/0/id",
        &["get_document", "delete_document"],
    ),
    (
        "create_migration",
        "201",
        "$response.body#/id",
        &[
            "get_migration",
            "get_progress",
            "list_skips",
            "start_migration",
            "pause_migration",
            "resume_migration",
            "patch_config",
            "retry_skips",
            "get_history",
            "get_comparison",
            "evaluate_migration",
            "cutover_migration",
            "finalize_migration",
            "rollback_migration",
            "cancel_migration",
        ],
    ),
];

/// `spec` with the layers' error responses added, every error body typed as a problem, and
/// the [`LINKS`].
pub fn complete(mut spec: OpenApi) -> OpenApi {
    for (path, item) in spec.paths.paths.iter_mut() {
        for (method, operation) in operations(item) {
            add_layer_errors(path, method, operation);
            type_errors_as_problems(operation);
            add_links(operation);
        }
    }
    spec
}

/// Adds the [`LINKS`] that start at `operation`'s responses.
fn add_links(operation: &mut Operation) {
    for (from, status, id, targets) in LINKS {
        if operation.operation_id.as_deref() != Some(from) {
            continue;
        }
        let Some(RefOr::T(response)) = operation.responses.responses.get_mut(status) else {
            panic!("{from} has no {status} response to link from");
        };
        for target in targets {
            // utoipa 5.5 serializes `Link::operation_id` as `operation_id`, a key OpenAPI
            // does not know; `operationId` goes in through the flattened extensions instead.
            let link = LinkBuilder::new()
                .parameter("id", id)
                .extensions(Some(Extensions::from_iter([("operationId", *target)])))
                .build();
            response.links.insert((*target).to_owned(), RefOr::T(link));
        }
    }
}

/// The operations of a path, with their methods.
fn operations(item: &mut PathItem) -> impl Iterator<Item = (&'static str, &mut Operation)> {
    [
        ("get", &mut item.get),
        ("put", &mut item.put),
        ("post", &mut item.post),
        ("delete", &mut item.delete),
        ("patch", &mut item.patch),
        ("head", &mut item.head),
        ("options", &mut item.options),
        ("trace", &mut item.trace),
    ]
    .into_iter()
    .filter_map(|(method, operation)| operation.as_mut().map(|operation| (method, operation)))
}

fn add_layer_errors(path: &str, method: &str, operation: &mut Operation) {
    let head_limits = [
        (
            "414",
            format!("The request target is over {MAX_TARGET_BYTES} bytes (`uri-too-long`)"),
        ),
        (
            "431",
            format!(
                "The request head is over {MAX_HEAD_BYTES} bytes or has over {MAX_HEADERS} \
                 fields (`headers-too-large`)"
            ),
        ),
    ];
    let mut errors = vec![
        (
            "400",
            "The request head does not parse as HTTP (`malformed-request`)",
        ),
        ("500", "A fault of the server (`internal`)"),
        (
            "503",
            "Storage or the embedding provider is unavailable, or no answer within the request \
             time limit; nothing was changed (`unavailable`)",
        ),
    ];
    if path.contains('{') {
        errors.push((
            "400",
            "A path segment that does not decode (`malformed-path`)",
        ));
    }
    if operation.request_body.is_some() {
        errors.extend([
            (
                "400",
                "The body is not valid JSON or has the wrong shape (`malformed-body`)",
            ),
            (
                "408",
                "The body did not arrive within the request time limit (`request-timeout`)",
            ),
            (
                "413",
                "The body is over the size limit (`payload-too-large`)",
            ),
            (
                "415",
                "The body is not declared as `application/json` (`unsupported-media-type`)",
            ),
        ]);
    }
    if is_behind_token(path) {
        errors.push((
            "401",
            "An API token is configured and the request lacks it (`unauthorized`)",
        ));
        if !matches!(method, "get" | "head") {
            errors.push((
                "403",
                "The read-only token cannot change anything (`forbidden`)",
            ));
        }
    }
    errors.extend(
        head_limits
            .iter()
            .map(|(status, description)| (*status, description.as_str())),
    );
    let mut descriptions: Vec<(&str, Vec<&str>)> = Vec::new();
    for (status, description) in errors {
        match descriptions.iter_mut().find(|(known, _)| *known == status) {
            Some((_, causes)) => causes.push(description),
            None => descriptions.push((status, vec![description])),
        }
    }
    for (status, causes) in descriptions {
        operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| RefOr::T(problem_response(&causes.join(". Or: "))));
    }
}

/// Whether the API token guards `path` (API.md, Authentication).
fn is_behind_token(path: &str) -> bool {
    path.starts_with("/v1/") || path == "/metrics"
}

fn problem_response(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            PROBLEM,
            Content::new(Some(Ref::from_schema_name("Problem"))),
        )
        .build()
}

/// A handler's own error responses are annotated with `body = Problem`, which utoipa types as
/// `application/json`; the server sends them as `application/problem+json`.
fn type_errors_as_problems(operation: &mut Operation) {
    for (status, response) in operation.responses.responses.iter_mut() {
        if let (true, RefOr::T(response)) = (is_error(status), response)
            && let Some(content) = response.content.shift_remove("application/json")
        {
            response.content.insert(PROBLEM.to_owned(), content);
        }
    }
}

/// Whether a response key names an error status (4xx or 5xx).
fn is_error(status: &str) -> bool {
    status.parse::<u16>().is_ok_and(|status| status >= 400)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error statuses of `method` on `path`, each asserted to be a problem document.
    fn error_statuses(spec: &OpenApi, path: &str, method: &str) -> Vec<String> {
        let mut item = spec.paths.paths.get(path).expect("the path").clone();
        let (_, operation) = operations(&mut item)
            .find(|(m, _)| *m == method)
            .expect("the operation");
        operation
            .responses
            .responses
            .iter()
            .filter(|(status, _)| is_error(status))
            .map(|(status, response)| {
                let RefOr::T(response) = response else {
                    panic!("{status} is a reference");
                };
                assert_eq!(
                    response.content.keys().collect::<Vec<_>>(),
                    [PROBLEM],
                    "{method} {path} {status}"
                );
                status.clone()
            })
            .collect()
    }

    #[test]
    fn every_error_of_every_operation_is_a_problem_document() {
        let spec = super::super::openapi();
        for (path, item) in spec.paths.paths.clone().iter_mut() {
            for (method, _) in operations(item) {
                let statuses = error_statuses(&spec, path, method);
                for always in ["500", "503"] {
                    assert!(statuses.iter().any(|s| s == always), "{method} {path}");
                }
            }
        }
    }

    #[test]
    fn every_link_leads_to_an_operation_that_takes_the_id() {
        let spec = serde_json::to_value(super::super::openapi()).expect("the spec serializes");
        let operations = spec["paths"]
            .as_object()
            .expect("paths")
            .values()
            .flat_map(|item| item.as_object().expect("a path item").values());
        let mut taking_id = Vec::new();
        let mut links = Vec::new();
        for operation in operations {
            let parameters = operation["parameters"].as_array().into_iter().flatten();
            if parameters.into_iter().any(|p| p["name"] == "id") {
                taking_id.push(operation["operationId"].clone());
            }
            for response in operation["responses"]
                .as_object()
                .expect("responses")
                .values()
            {
                links.extend(
                    response["links"]
                        .as_object()
                        .into_iter()
                        .flat_map(|l| l.values()),
                );
            }
        }
        let expected: usize = LINKS.iter().map(|(_, _, _, targets)| targets.len()).sum();
        assert_eq!(links.len(), expected, "each link is in place");
        for link in links {
            assert!(taking_id.contains(&link["operationId"]), "{link}");
            assert!(link["parameters"]["id"].is_string(), "{link}");
            assert!(link.get("operation_id").is_none(), "{link}");
        }
    }

    #[test]
    fn a_write_with_a_body_lists_what_its_layers_answer() {
        let spec = super::super::openapi();
        let statuses = error_statuses(&spec, "/v1/documents/{id}", "put");
        for status in [
            "400", "401", "403", "408", "413", "415", "422", "500", "503",
        ] {
            assert!(
                statuses.iter().any(|s| s == status),
                "{status}: {statuses:?}"
            );
        }
        let health = error_statuses(&spec, "/healthz", "get");
        assert_eq!(
            health,
            ["400", "414", "431", "500", "503"],
            "no token, no body, no path parameter: what the accept loop and the server send"
        );
    }
}
