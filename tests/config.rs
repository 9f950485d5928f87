//! Config loading and `check`: the contract's sample is accepted as written, every bad case
//! is reported with its line, environment overrides apply.

use std::path::Path;

use wxpush::config::{ConfigError, load_str};

const SAMPLE: &str = include_str!("../examples/wxpush.toml");

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn problems(text: &str) -> Vec<String> {
    load_str(text, Path::new("t.toml"), env(&[]))
        .expect("parses")
        .problems()
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn contract_sample_is_accepted_and_clean_when_the_secret_is_set() {
    // SAFETY of the test: this variable name is unique to this test file.
    unsafe { std::env::set_var("WXPUSH_DEFAULT_SECRET", "s3cret-for-tests") };
    let loaded = load_str(SAMPLE, Path::new("wxpush.toml"), env(&[])).unwrap();
    assert_eq!(loaded.problems(), vec![]);
    let c = &loaded.config;
    assert_eq!(c.amqp.prefetch, 256);
    assert_eq!(c.retry.max.as_secs(), 600);
    assert_eq!(c.policy.idempotency_ttl.as_secs(), 7 * 24 * 3600);
    assert_eq!(c.templates[0].get_ref().data.len(), 4);
}

#[test]
fn environment_overrides_keys_with_types() {
    let loaded = load_str(
        SAMPLE,
        Path::new("wxpush.toml"),
        env(&[
            ("WXPUSH_AMQP__URL", "amqp://u:p@rabbit:5672/%2f"),
            ("WXPUSH_AMQP__PREFETCH", "32"),
            ("WXPUSH_WECHAT__TIMEOUT", "2s"),
            ("WXPUSH_APPS__DEFAULT__APPID", "wxfeedface00000000"),
            (
                "WXPUSH_DEFAULT_SECRET",
                "not an override: no double underscore",
            ),
        ]),
    )
    .unwrap();
    assert_eq!(loaded.config.amqp.url, "amqp://u:p@rabbit:5672/%2f");
    assert_eq!(loaded.config.amqp.prefetch, 32);
    assert_eq!(loaded.config.wechat.timeout.as_secs(), 2);
    assert_eq!(
        loaded.config.apps["default"].get_ref().appid,
        "wxfeedface00000000"
    );
}

#[test]
fn bad_environment_override_names_the_variable() {
    let err = load_str(
        SAMPLE,
        Path::new("w.toml"),
        env(&[("WXPUSH_AMQP__PREFETCH", "lots")]),
    )
    .unwrap_err();
    assert!(
        matches!(&err, ConfigError::Env { var, .. } if var == "WXPUSH_AMQP__PREFETCH"),
        "{err}"
    );
}

#[test]
fn syntax_error_names_file_and_line() {
    let text = "[amqp]\nurl = \"amqp://x\"\nprefetch = = 3\n";
    let err = load_str(text, Path::new("broken.toml"), env(&[])).unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("broken.toml:3:"), "{msg}");
}

#[test]
fn wrong_type_and_unknown_key_name_the_line() {
    let err = load_str(
        "[amqp]\nprefetch = \"many\"\n",
        Path::new("c.toml"),
        env(&[]),
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("c.toml:2:"), "{err}");
    let err = load_str(
        "[amqp]\nurl = \"x\"\nprefech = 3\n",
        Path::new("c.toml"),
        env(&[]),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("c.toml:3:") && msg.contains("prefech"),
        "{msg}"
    );
    let err = load_str(
        "[retry]\ninitial = \"soon\"\n",
        Path::new("c.toml"),
        env(&[]),
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("c.toml:2:"), "{err}");
}

#[test]
fn inline_secret_is_refused() {
    let text = "[apps.default]\nappid = \"wx1\"\nsecret = \"hunter2\"\n";
    let p = problems(text);
    assert!(
        p.iter()
            .any(|m| m.starts_with("1:") && m.contains("secret_env")),
        "{p:?}"
    );
    assert!(
        !p.iter().any(|m| m.contains("hunter2")),
        "a problem must not echo the secret: {p:?}"
    );
}

#[test]
fn missing_secret_env_is_a_problem() {
    let text = "[apps.a]\nappid = \"wx1\"\nsecret_env = \"WXPUSH_TEST_NEVER_SET_SECRET\"\n";
    let p = problems(text);
    assert!(
        p.iter()
            .any(|m| m.contains("WXPUSH_TEST_NEVER_SET_SECRET") && m.contains("not set")),
        "{p:?}"
    );
}

#[test]
fn template_problems_each_with_their_line() {
    let text = r#"[apps.default]
appid = "wx1"
secret_file = "/nonexistent/secret"

[[templates]]
event = "order.paid"
app = "shop"
template_id = "T1"
[templates.data]
colour2 = "{x}"
thing1 = "{order_no"
time3 = "{at|bogus}"

[[templates]]
event = "order.paid"
template_id = ""
[templates.data]
thing1 = "ok"
"#;
    let p = problems(text);
    let has = |prefix: &str, needle: &str| {
        p.iter()
            .any(|m| m.starts_with(prefix) && m.contains(needle))
    };
    assert!(has("1:", "secret_file /nonexistent/secret"), "{p:?}");
    assert!(has("5:", "no [apps.shop]"), "{p:?}");
    assert!(has("10:", "`colour2` has no WeChat type"), "{p:?}");
    assert!(has("11:", "unclosed"), "{p:?}");
    assert!(has("12:", "unknown filter `bogus`"), "{p:?}");
    assert!(has("14:", "mapped twice"), "{p:?}");
    assert!(has("14:", "empty template_id"), "{p:?}");
}

#[test]
fn policy_and_retry_values_are_checked() {
    let err = load_str(
        "[policy]\non_refused = \"ignore\"\n",
        Path::new("p.toml"),
        env(&[]),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("p.toml:2:") && msg.contains("dead_letter"),
        "{msg}"
    );
    let p = problems("[retry]\ninitial = \"20m\"\nmax = \"10m\"\n");
    assert!(p.iter().any(|m| m.contains("retry.initial")), "{p:?}");
    let p = problems("[wechat]\ntimeout = \"30s\"\nlock_ttl = \"10s\"\n");
    assert!(p.iter().any(|m| m.contains("lock_ttl")), "{p:?}");
}

#[test]
fn a_bad_max_rate_names_the_line_and_the_form_to_use() {
    let err = load_str(
        "[apps.default]\nappid = \"wx1\"\nsecret_env = \"X\"\nmax_rate = \"fast\"\n",
        Path::new("r.toml"),
        env(&[]),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("r.toml:4:") && msg.contains("\"200/s\""),
        "{msg}"
    );
    let loaded = load_str(
        "[apps.default]\nappid = \"wx1\"\nsecret_env = \"X\"\nmax_rate = \"6000/m\"\n",
        Path::new("r.toml"),
        env(&[]),
    )
    .unwrap();
    let rate = loaded.config.apps["default"].get_ref().max_rate.unwrap();
    assert_eq!(
        (rate.count, rate.per),
        (6000, std::time::Duration::from_secs(60))
    );
}

#[test]
fn push_secrets_are_checked_and_an_empty_push_section_is_named() {
    let text = "[apps.a]\nappid = \"wx1\"\nsecret_file = \"Cargo.toml\"\npush_token_file = \"Cargo.toml\"\npush_aes_key_file = \"Cargo.toml\"\n";
    let p = problems(text);
    assert!(
        p.iter()
            .any(|m| m.contains("push_aes_key") && m.contains("43 characters")),
        "{p:?}"
    );
    let text = "[apps.a]\nappid = \"wx1\"\nsecret_file = \"Cargo.toml\"\npush_aes_key_env = \"WXPUSH_TEST_NEVER_SET_KEY\"\n";
    let p = problems(text);
    assert!(
        p.iter()
            .any(|m| m.contains("WXPUSH_TEST_NEVER_SET_KEY") && m.contains("not set")),
        "{p:?}"
    );
    let text = "[apps.a]\nappid = \"wx1\"\nsecret_file = \"Cargo.toml\"\n[push]\nlisten = \"127.0.0.1:0\"\n";
    let p = problems(text);
    assert!(
        p.iter()
            .any(|m| m.contains("[push]") && m.contains("push_token_env")),
        "{p:?}"
    );
}
