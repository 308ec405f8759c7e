//! One line of an import file, checked before it is sent: a malformed line would make the
//! server refuse its whole bulk request, so it is caught here, reported with its own reason,
//! and never sent.

use serde_json::{Map, Value};

/// Fields a line may hold (the document of API.md's `POST /v1/documents`).
const FIELDS: [&str; 3] = ["id", "text", "metadata"];

/// Reads one line (with or without its line ending): `Ok(None)` for a blank line, the
/// document object for a good one, and why it is malformed otherwise.
pub fn parse(bytes: &[u8]) -> Result<Option<Map<String, Value>>, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(document) = value else {
        return Err(format!("not a JSON object but {}", kind(&value)));
    };
    check_fields(&document)?;
    Ok(Some(document))
}

fn check_fields(document: &Map<String, Value>) -> Result<(), String> {
    if let Some(unknown) = document.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "unknown field \"{unknown}\" (a line holds id, text and optional metadata)"
        ));
    }
    if string_field(document, "id")?.is_empty() {
        return Err("empty \"id\"".to_owned());
    }
    string_field(document, "text").map(drop)
}

fn string_field<'a>(document: &'a Map<String, Value>, name: &str) -> Result<&'a str, String> {
    match document.get(name) {
        None => Err(format!("missing \"{name}\"")),
        Some(Value::String(text)) => Ok(text),
        Some(other) => Err(format!("\"{name}\" is {}, not a string", kind(other))),
    }
}

/// A JSON value's kind with its article, for messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(line: &str) -> String {
        parse(line.as_bytes()).expect_err(line)
    }

    #[test]
    fn good_lines_give_their_document() {
        let doc = parse(br#"{"id": "a", "text": "x", "metadata": {"k": 1}}"#).unwrap();
        assert_eq!(doc.unwrap()["id"], "a");
        let doc = parse(b"{\"id\": \"b\", \"text\": \"\"}\r\n").unwrap();
        assert_eq!(doc.unwrap()["text"], "");
    }

    #[test]
    fn blank_lines_are_skipped() {
        assert_eq!(parse(b"").unwrap(), None);
        assert_eq!(parse(b"  \t\r\n").unwrap(), None);
    }

    #[test]
    fn each_malformation_has_its_reason() {
        let cases = [
            (r#"{"id": "a", "text": "#, "invalid JSON: "),
            ("[1, 2]", "not a JSON object but an array"),
            ("\"text\"", "not a JSON object but a string"),
            (r#"{"text": "x"}"#, "missing \"id\""),
            (
                r#"{"id": 7, "text": "x"}"#,
                "\"id\" is a number, not a string",
            ),
            (r#"{"id": "", "text": "x"}"#, "empty \"id\""),
            (r#"{"id": "a"}"#, "missing \"text\""),
            (
                r#"{"id": "a", "text": null}"#,
                "\"text\" is null, not a string",
            ),
            (
                r#"{"id": "a", "text": "x", "tags": []}"#,
                "unknown field \"tags\"",
            ),
        ];
        for (line, expected) in cases {
            let got = reason(line);
            assert!(got.starts_with(expected), "{line}: {got}");
        }
    }

    #[test]
    fn invalid_utf8_is_invalid_json() {
        let reason = parse(b"{\"id\": \"\xff\", \"text\": \"x\"}").unwrap_err();
        assert!(reason.starts_with("invalid JSON"), "{reason}");
    }
}
