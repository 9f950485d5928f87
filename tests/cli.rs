//! The command line as a user meets it: `check` exit codes and messages, clear errors for a
//! missing or broken config, help that lists every command, and the developer tools present
//! only in a default (not a production) build.

use std::process::{Command, Output};

fn wxpush(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wxpush"));
    cmd.args(args)
        .env_remove("WXPUSH_CONFIG")
        .env_remove("WXPUSH_DEFAULT_SECRET");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn check_accepts_the_contract_sample() {
    let out = wxpush(
        &["check", "--config", "examples/wxpush.toml"],
        &[("WXPUSH_DEFAULT_SECRET", "x")],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("ok (1 app(s), 1 template(s))"));
}

#[test]
fn check_lists_each_problem_with_file_and_line_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[apps.default]\nappid = \"wx1\"\nsecret = \"inline\"\n\n[[templates]]\nevent = \"a\"\ntemplate_id = \"T\"\n[templates.data]\ncolour1 = \"{x}\"\n",
    )
    .unwrap();
    let out = wxpush(&["check", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    let f = file.display().to_string();
    assert!(
        t.contains(&format!(
            "{f}:1:1: [apps.default] has `secret` written in the file"
        )),
        "{t}"
    );
    assert!(
        t.contains(&format!("{f}:9:")) && t.contains("`colour1` has no WeChat type"),
        "{t}"
    );
    assert!(
        !t.contains("inline"),
        "the inline secret is not echoed: {t}"
    );
}

#[test]
fn a_missing_config_says_how_to_provide_one() {
    let out = wxpush(&["run", "--config", "/nonexistent/wxpush.toml"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let t = text(&out);
    assert!(
        t.contains("cannot read config file /nonexistent/wxpush.toml")
            && t.contains("--config FILE"),
        "{t}"
    );
    assert_eq!(
        t.matches("No such file").count(),
        1,
        "the cause is said once: {t}"
    );
}

#[test]
fn a_syntax_error_stops_run_with_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.toml");
    std::fs::write(&file, "[amqp]\nprefetch = 12x\n").unwrap();
    let out = wxpush(&["run", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains(&format!("{}:2:", file.display())),
        "{}",
        text(&out)
    );
}

#[test]
fn help_lists_every_command() {
    let out = wxpush(&["--help"], &[]);
    assert!(out.status.success());
    let t = text(&out);
    for command in ["run", "publish", "replay", "dead", "check", "token"] {
        assert!(
            t.contains(&format!("  {command} ")),
            "{command} missing from help: {t}"
        );
    }
    // The load harness is its own package (crates/bench, `wxpush-bench`), not a subcommand.
    assert!(
        !t.contains("  bench "),
        "bench is not a wxpush command: {t}"
    );
}

/// The developer tools are in a default build and absent from the production one
/// (`--no-default-features`, as deploy/Dockerfile builds it): `cargo test --test cli`
/// checks the first, `cargo test --no-default-features --test cli` the second.
#[test]
fn developer_tools_only_with_the_dev_tools_feature() {
    let help = text(&wxpush(&["--help"], &[]));
    for command in ["mock-wechat", "demo"] {
        let sub = wxpush(&[command, "--help"], &[]);
        if cfg!(feature = "dev-tools") {
            assert!(
                help.contains(&format!("  {command} ")),
                "{command} missing from help: {help}"
            );
            assert!(sub.status.success(), "{command} --help: {}", text(&sub));
        } else {
            assert!(
                !help.contains(&format!("  {command} ")),
                "{command} in a production build: {help}"
            );
            assert_eq!(sub.status.code(), Some(2), "{command}: {}", text(&sub));
            assert!(
                text(&sub).contains("unrecognized subcommand"),
                "{}",
                text(&sub)
            );
        }
    }
}

#[test]
fn publish_refuses_invalid_events_before_touching_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.ndjson");
    std::fs::write(
        &file,
        "{\"id\":\"1\",\"type\":\"order.paid\",\"recipient\":{\"openid\":\"o1\"}}\nnot json\n",
    )
    .unwrap();
    let out = wxpush(
        &[
            "publish",
            "--config",
            "examples/wxpush.toml",
            file.to_str().unwrap(),
        ],
        &[
            ("WXPUSH_DEFAULT_SECRET", "x"),
            ("WXPUSH_AMQP__URL", "amqp://guest:guest@127.0.0.1:1/%2f"),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let t = text(&out);
    assert!(
        t.contains("1 invalid event(s), nothing published") && t.contains("line 2:"),
        "{t}"
    );
}
