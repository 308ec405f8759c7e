//! The registry file: the accepted shape, each validation error, the environment overrides.

use std::collections::HashMap;

use super::*;

const BUILTINS: &str = r#"
active_model = "hash-v1"

[[models]]
id = "hash-v1"
provider = "builtin"
dimensions = 256

[[models]]
id = "hash-v2"
provider = "builtin"
dimensions = 384
"#;

/// `BUILTINS` plus one remote model, with `extra` appended to its table.
fn with_remote(base_url: &str, extra: &str) -> String {
    format!(
        r#"{BUILTINS}
[[models]]
id = "openai-small"
provider = "openai"
dimensions = 1536
base_url = "{base_url}"
model = "text-embedding-3-small"
{extra}
"#
    )
}

fn remote(extra: &str) -> String {
    with_remote("https://api.openai.com/v1", extra)
}

fn load(text: &str, vars: &[(&str, &str)]) -> Result<ModelRegistry, RegistryError> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    ModelRegistry::from_toml_str(text, &|name| vars.get(name).cloned())
}

fn load_err(text: &str, vars: &[(&str, &str)]) -> RegistryError {
    match load(text, vars) {
        Ok(registry) => panic!("accepted: {:?}", registry.models()),
        Err(error) => error,
    }
}

fn info(id: &str, provider: &str, dimensions: usize) -> ModelInfo {
    model_info(id.into(), provider, dimensions)
}

#[test]
fn builtin_models_load_as_without_a_file() {
    let registry = load(BUILTINS, &[]).unwrap();
    assert_eq!(registry.models(), ModelRegistry::builtin().models());
    assert_eq!(registry.active_model(), "hash-v1");
}

#[test]
fn the_example_file_is_valid_and_lists_the_builtin_models() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("reembed.example.toml");
    let registry = ModelRegistry::from_file(&path).unwrap();
    assert_eq!(registry.models(), ModelRegistry::builtin().models());
}

#[test]
fn an_unreadable_file_names_its_path() {
    let missing = Path::new("/nonexistent/reembed.toml");
    let Err(error) = ModelRegistry::from_file(missing) else {
        panic!("a missing file was read");
    };
    assert!(matches!(error, RegistryError::Read { .. }));
    assert!(
        error.to_string().contains("/nonexistent/reembed.toml"),
        "{error}"
    );
}

#[test]
fn an_openai_model_with_every_field_loads() {
    let text = remote(
        r#"api_key_env = "OPENAI_API_KEY"
send_dimensions = true
max_batch = 512
requests_per_minute = 3000
tokens_per_minute = 1000000
timeout_secs = 20
query_prefix = "query: "
document_prefix = "passage: "
max_input_tokens = 8191"#,
    );
    let registry = load(&text, &[("OPENAI_API_KEY", "sk-test")]).unwrap();
    let models = registry.models();
    assert_eq!(models[2], info("openai-small", "openai", 1536));
    let embedder = registry.get("openai-small").unwrap();
    assert_eq!(embedder.dimensions(), 1536);
    assert_eq!(registry.max_input_tokens("openai-small"), Some(8191));
}

#[test]
fn max_input_tokens_flags_longer_texts_of_its_model_only() {
    let registry = load(&remote("max_input_tokens = 8"), &[]).unwrap();
    assert_eq!(registry.max_input_tokens("openai-small"), Some(8));
    assert!(registry.is_over_input_limit("openai-small", &"x".repeat(33)));
    assert!(!registry.is_over_input_limit("openai-small", &"x".repeat(32)));
    assert!(!registry.is_over_input_limit("hash-v1", &"x".repeat(33)));
}

#[test]
fn without_max_input_tokens_no_model_has_a_limit() {
    let registry = load(&remote(""), &[]).unwrap();
    for model in ["hash-v1", "hash-v2", "openai-small"] {
        assert_eq!(registry.max_input_tokens(model), None, "{model}");
        assert!(!registry.is_over_input_limit(model, &"x".repeat(100_000)));
    }
}

#[test]
fn a_missing_key_variable_stops_start_up_naming_it() {
    let text = remote(r#"api_key_env = "OPENAI_API_KEY""#);
    for vars in [&[][..], &[("OPENAI_API_KEY", "")]] {
        let error = load_err(&text, vars);
        assert!(matches!(error, RegistryError::MissingKey { .. }), "{error}");
        assert!(error.to_string().contains("OPENAI_API_KEY"), "{error}");
    }
}

#[test]
fn a_loopback_server_needs_no_key() {
    for base_url in [
        "http://localhost:11434/v1",
        "http://127.0.0.1:8080/v1",
        "http://[::1]:8000/v1",
    ] {
        let text = with_remote(base_url, r#"api_key_env = "LOCAL_KEY""#);
        assert!(load(&text, &[]).is_ok(), "{base_url}");
    }
}

#[test]
fn a_model_without_api_key_env_sends_no_key() {
    assert!(load(&remote(""), &[]).is_ok());
}

#[test]
fn api_key_env_must_be_a_variable_name_not_a_key() {
    for value in ["sk-proj-abc123", "", "1KEY", "MY KEY"] {
        let text = remote(&format!("api_key_env = {value:?}"));
        let error = load_err(&text, &[]);
        assert!(
            error.to_string().contains("api_key_env"),
            "{value}: {error}"
        );
    }
}

#[test]
fn the_active_model_can_be_overridden_from_the_environment() {
    let registry = load(BUILTINS, &[(ACTIVE_MODEL_ENV, "hash-v2")]).unwrap();
    assert_eq!(registry.active_model(), "hash-v2");
    let ignored = load(BUILTINS, &[(ACTIVE_MODEL_ENV, "")]).unwrap();
    assert_eq!(ignored.active_model(), "hash-v1");
    let error = load_err(BUILTINS, &[(ACTIVE_MODEL_ENV, "nope")]);
    assert!(matches!(error, RegistryError::UnknownActiveModel(id) if id == "nope"));
}

#[test]
fn a_base_url_override_is_applied_before_validation() {
    assert_eq!(
        base_url_env_var("openai-small"),
        "REEMBED_MODEL_OPENAI_SMALL_BASE_URL"
    );
    let text = remote(r#"api_key_env = "OPENAI_API_KEY""#);
    // Pointed at a local gateway, the model no longer needs its key...
    let local = [(
        "REEMBED_MODEL_OPENAI_SMALL_BASE_URL",
        "http://localhost:4000/v1",
    )];
    assert!(load(&text, &local).is_ok());
    // ...and a broken override is reported like a broken file.
    let broken = [("REEMBED_MODEL_OPENAI_SMALL_BASE_URL", "not a url")];
    let error = load_err(&text, &broken);
    assert!(error.to_string().contains("not a url"), "{error}");
}

#[test]
fn ids_must_be_unique_even_as_environment_keys() {
    let twice = format!(
        "{BUILTINS}{}",
        BUILTINS.replace("active_model = \"hash-v1\"", "")
    );
    let error = load_err(&twice, &[]);
    assert!(matches!(error, RegistryError::DuplicateId(id) if id == "hash-v1"));

    let clash = format!(
        "{}\n{}",
        remote(""),
        remote("")
            .replace(BUILTINS, "")
            .replace("openai-small", "openai_small")
    );
    let error = load_err(&clash, &[]);
    assert!(matches!(error, RegistryError::DuplicateId(id) if id == "openai_small"));
}

#[test]
fn the_active_model_must_be_configured() {
    let text = BUILTINS.replace("active_model = \"hash-v1\"", "active_model = \"hash-v3\"");
    let error = load_err(&text, &[]);
    assert!(matches!(error, RegistryError::UnknownActiveModel(id) if id == "hash-v3"));
}

#[test]
fn builtin_models_are_only_the_hash_models_with_their_dimensions() {
    let unknown = BUILTINS.replace("id = \"hash-v2\"", "id = \"hash-v3\"");
    assert!(
        load_err(&unknown, &[])
            .to_string()
            .contains("hash-v1 and hash-v2")
    );
    let resized = BUILTINS.replace("dimensions = 384", "dimensions = 512");
    let error = load_err(&resized, &[]);
    assert!(error.to_string().contains("384"), "{error}");
}

#[test]
fn malformed_shapes_are_parse_errors_naming_the_problem() {
    let cases = [
        (
            BUILTINS.replace("dimensions = 256", "dimensions = 0"),
            "dimensions = 0",
        ),
        (
            BUILTINS.replace("dimensions = 256", "dimensions = 256\ncolour = 1"),
            "colour",
        ),
        (format!("{BUILTINS}\nextra = true"), "extra"),
        (
            BUILTINS.replace("provider = \"builtin\"", "provider = \"cohere\""),
            "cohere",
        ),
        (remote("max_batch = 0"), "max_batch"),
        (remote("max_input_tokens = 0"), "max_input_tokens"),
        (remote("max_input_tokens = -8"), "max_input_tokens"),
        (remote("requests_per_minute = -1"), "requests_per_minute"),
        (
            BUILTINS.replace("active_model = \"hash-v1\"", ""),
            "active_model",
        ),
    ];
    for (text, mentioned) in cases {
        let error = load_err(&text, &[]);
        assert!(
            matches!(error, RegistryError::Parse(_)),
            "{mentioned}: {error}"
        );
        assert!(
            error.to_string().contains(mentioned),
            "{mentioned}: {error}"
        );
    }
}

#[test]
fn provider_fields_are_validated() {
    let cases = [
        (with_remote("ftp://files.example.com", ""), "http"),
        (with_remote("api.openai.com/v1", ""), "base_url"),
        (remote("").replace("\"openai-small\"", "\" \""), "blank"),
        (
            remote("").replace("\"text-embedding-3-small\"", "\" \""),
            "model is required",
        ),
        (
            remote("").replace("model = \"text-embedding-3-small\"", ""),
            "model is required",
        ),
        (
            remote("").replace("base_url = \"https://api.openai.com/v1\"", ""),
            "base_url is required",
        ),
        (
            BUILTINS.replace("dimensions = 384", "dimensions = 384\nmax_batch = 8"),
            "max_batch is for",
        ),
        (
            BUILTINS.replace(
                "dimensions = 384",
                "dimensions = 384\nmax_input_tokens = 512",
            ),
            "max_input_tokens is for provider = \"openai\" only",
        ),
    ];
    for (text, mentioned) in cases {
        let error = load_err(&text, &[]);
        assert!(
            matches!(error, RegistryError::InvalidModel { .. }),
            "{error}"
        );
        assert!(
            error.to_string().contains(mentioned),
            "{mentioned}: {error}"
        );
    }
}

#[test]
fn a_model_index_table_sets_its_graph_and_leaves_the_rest_default() {
    let text =
        format!("{BUILTINS}\n[models.index]\nquantization = \"f16\"\nexpansion_search = 128\n");
    let registry = load(&text, &[]).unwrap();
    let default = crate::index::GraphSettings::default();
    let expected = crate::index::GraphSettings {
        quantization: crate::index::Quantization::F16,
        expansion_search: 128,
        ..default
    };
    let last = registry.models().last().unwrap().id.clone();
    assert_eq!(registry.index_settings(&last), expected);
    assert_eq!(registry.index_settings("hash-v1"), default);
    for wrong in ["quantization = \"i4\"", "expansion_search = 0", "ef = 10"] {
        let text = format!("{BUILTINS}\n[models.index]\n{wrong}\n");
        assert!(
            matches!(load_err(&text, &[]), RegistryError::Parse(_)),
            "{wrong}"
        );
    }
}

#[test]
fn any_model_may_name_a_price_and_the_others_are_free() {
    let text = remote("price_per_million_tokens = 0.02").replace(
        "dimensions = 384",
        "dimensions = 384\nprice_per_million_tokens = 0",
    );
    let registry = load(&text, &[]).unwrap();
    assert_eq!(registry.price("openai-small"), Some(0.02));
    assert_eq!(registry.price("hash-v2"), Some(0.0));
    assert_eq!(registry.price("hash-v1"), None);
    assert_eq!(registry.price("unknown"), None);
}

#[test]
fn a_negative_price_is_refused_by_name() {
    let error = load_err(&remote("price_per_million_tokens = -1.5"), &[]);
    let text = error.to_string();
    assert!(text.contains("price_per_million_tokens"), "{text}");
    assert!(text.contains("openai-small"), "{text}");
    let nan = load_err(&remote("price_per_million_tokens = nan"), &[]);
    assert!(
        nan.to_string().contains("price_per_million_tokens"),
        "{nan}"
    );
}
