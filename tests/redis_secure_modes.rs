//! Redis Cluster and Sentinel with TLS and passwords, as single mode has them
//! (tests/tls.rs): a worker delivers end to end and the token store works on the secured
//! set of `scripts/clusters.sh` (native TLS, a CA it made, trusted through `SSL_CERT_FILE`;
//! an ACL user on the cluster; a sentinel whose password is not the primary's), and a wrong
//! password or an untrusted CA is refused with an error that names it.
//!
//! Needs the secured set: `eval "$(scripts/clusters.sh start-secure)"` (scripts/test.sh
//! starts it with the other clusters). Without its variables these tests skip with a note,
//! except in CI (`CI=true`), where they fail.

mod common;

use std::time::Duration;

use common::*;
use deadpool_redis::redis;
use wxpush::token::TokenStore;
use wxpush::wechat::client::WechatClient;

/// Events through a worker on the secured Redis of `mode`, then the token they were sent
/// with, read back through the token store and straight from Redis.
async fn delivers_and_keeps_the_token(mode: RedisMode) {
    let Some(secure) = secure_redis(mode) else {
        return;
    };
    let name = format!("secure-{}", mode.as_str());
    let app = TestApp::start_with(&name, Default::default(), |config| {
        config.redis = RedisConfig {
            key_prefix: config.redis.key_prefix.clone(),
            ..secure
        };
    })
    .await;
    let worker = app.worker().await;
    let events = order_events(&app.prefix, 4);
    app.publish_all(&events).await;
    assert_each_sent_once(&app.sent(4).await, 4);
    for event in &events {
        let id = event["id"].as_str().unwrap();
        let state = eventually("the sent mark", Duration::from_secs(10), || async {
            app.event_state(id).await.filter(|s| s == "sent")
        })
        .await;
        assert_eq!(state, "sent", "{id} is recorded in the secured Redis");
    }

    let pool = wxpush::store::pooled(&app.config.redis).unwrap();
    let client = WechatClient::new(&app.config.wechat).unwrap();
    let tokens = TokenStore::new(&app.config, pool, client).unwrap();
    let token = tokens.get("default").await.expect("the token store works");
    let mut conn = redis_conn(&app.config.redis).await;
    let stored: String = redis::cmd("HGET")
        .arg(format!("{}:token:{{{APPID}}}", app.prefix))
        .arg("token")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        token.expose(),
        stored,
        "the store reads the token from Redis"
    );
    assert_eq!(
        app.mock.stats().tokens_issued,
        1,
        "the worker's token was shared"
    );
    worker.shutdown().await.unwrap();
    app.cleanup().await;
}

#[tokio::test]
async fn cluster_over_tls_with_a_password_delivers_and_keeps_the_token() {
    delivers_and_keeps_the_token(RedisMode::Cluster).await;
}

#[tokio::test]
async fn sentinel_over_tls_with_passwords_delivers_and_keeps_the_token() {
    delivers_and_keeps_the_token(RedisMode::Sentinel).await;
}

/// The error of connecting with `redis`, through the hot path and the pool, with its
/// causes.
async fn connect_errors(redis: &RedisConfig) -> [String; 2] {
    let hot = wxpush::store::HotPath::new(redis)
        .unwrap()
        .get()
        .await
        .err()
        .expect("the hot path refuses to connect");
    let pooled = wxpush::store::pooled(redis)
        .unwrap()
        .get()
        .await
        .err()
        .expect("the pool refuses to connect");
    [
        format!("{:#}", anyhow::Error::from(hot)),
        format!("{:#}", anyhow::Error::from(pooled)),
    ]
}

/// `redis` with `to` where its URLs have `from`.
fn with_urls_replacing(redis: &RedisConfig, from: &str, to: &str) -> RedisConfig {
    RedisConfig {
        urls: redis.urls.iter().map(|u| u.replace(from, to)).collect(),
        ..redis.clone()
    }
}

/// The `user:password@` of a URL.
fn login(url: &str) -> &str {
    let rest = url.split_once("://").expect("a URL").1;
    &rest[..=rest.find('@').expect("a URL with a login")]
}

/// The password of a URL.
fn password(url: &str) -> &str {
    let login = login(url);
    &login[login.find(':').expect("a password") + 1..login.len() - 1]
}

fn assert_names(errors: &[String], parts: &[&str]) {
    for e in errors {
        for part in parts {
            assert!(e.contains(part), "`{part}` is named in: {e}");
        }
        assert!(
            !e.contains("wrong-password"),
            "the password is not shown: {e}"
        );
    }
}

#[tokio::test]
async fn a_wrong_or_missing_cluster_password_is_refused_naming_the_login() {
    let Some(cluster) = secure_redis(RedisMode::Cluster) else {
        return;
    };
    let wrong = with_urls_replacing(&cluster, password(&cluster.urls[0]), "wrong-password");
    let none = with_urls_replacing(&cluster, login(&cluster.urls[0]), "");
    for refused in [wrong, none] {
        assert_names(
            &connect_errors(&refused).await,
            &[
                "Redis refused the login",
                "the username and password in redis.urls",
            ],
        );
    }
}

#[tokio::test]
async fn a_wrong_sentinel_or_primary_password_is_refused_naming_which() {
    let Some(sentinel) = secure_redis(RedisMode::Sentinel) else {
        return;
    };
    let wrong_primary = RedisConfig {
        sentinel_master_password: Some("wrong-password".into()),
        ..sentinel.clone()
    };
    assert_names(
        &connect_errors(&wrong_primary).await,
        &[
            "Redis refused the login",
            "the primary",
            "refused redis.sentinel_master_username / redis.sentinel_master_password",
        ],
    );
    let wrong_sentinel =
        with_urls_replacing(&sentinel, password(&sentinel.urls[0]), "wrong-password");
    assert_names(
        &connect_errors(&wrong_sentinel).await,
        &[
            "Redis refused the login",
            "the sentinel rediss://:***@127.0.0.1:",
            "its URL in redis.urls",
        ],
    );
    // Without the primary's own password, the sentinels' is tried on it, and refused.
    let shared = RedisConfig {
        sentinel_master_password: None,
        ..sentinel
    };
    assert_names(
        &connect_errors(&shared).await,
        &["set redis.sentinel_master_password"],
    );
}

/// `wxpush token` with `config`, in an environment with or without `SSL_CERT_FILE`.
async fn token(config: &std::path::Path, trust_ca: bool) -> CliOutput {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_wxpush"));
    command
        .arg("--config")
        .arg(config)
        .arg("token")
        .env(SECRET_ENV, SECRET);
    if !trust_ca {
        command.env_remove("SSL_CERT_FILE");
    }
    CliOutput::from(command.output().await.expect("wxpush runs"))
}

/// `wxpush token` on the secured Redis of `mode`: trusting the set's CA through
/// `SSL_CERT_FILE` it works; with only the system's CAs it is refused, naming the
/// certificate and the fix.
async fn the_ca_is_trusted_through_ssl_cert_file(mode: RedisMode) {
    let Some(secure) = secure_redis(mode) else {
        return;
    };
    let app = TestApp::start(&format!("secure-ca-{}", mode.as_str())).await;
    let file = app.config_file_with(|table| {
        set_toml(table, "redis", "mode", mode.as_str());
        set_toml(table, "redis", "urls", secure.urls.clone());
        set_toml(table, "redis", "replicas_ack", 0);
        if let Some(master) = &secure.sentinel_master {
            set_toml(table, "redis", "sentinel_master", master.as_str());
        }
        if let Some(password) = &secure.sentinel_master_password {
            set_toml(
                table,
                "redis",
                "sentinel_master_password",
                password.as_str(),
            );
        }
    });
    let trusted = token(file.path(), true).await;
    let untrusted = token(file.path(), false).await;
    assert!(trusted.ok().contains(APPID), "{trusted:#?}");
    let passwords = secure.urls.iter().map(|u| password(u));
    for secret in passwords.chain(secure.sentinel_master_password.as_deref()) {
        for output in [&trusted, &untrusted] {
            assert!(
                !output.stdout.contains(secret) && !output.stderr.contains(secret),
                "no password in the output: {output:#?}"
            );
        }
    }
    assert_ne!(untrusted.code, Some(0), "{untrusted:#?}");
    for part in [
        "Redis's TLS certificate is not trusted",
        "SSL_CERT_FILE",
        "UnknownIssuer",
    ] {
        assert!(
            untrusted.stderr.contains(part),
            "`{part}` is named: {untrusted:#?}"
        );
    }
    app.cleanup().await;
}

#[tokio::test]
async fn cluster_refuses_an_untrusted_certificate_naming_it() {
    the_ca_is_trusted_through_ssl_cert_file(RedisMode::Cluster).await;
}

#[tokio::test]
async fn sentinel_refuses_an_untrusted_certificate_naming_it() {
    the_ca_is_trusted_through_ssl_cert_file(RedisMode::Sentinel).await;
}
