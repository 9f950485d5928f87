//! The shared access_token: one fetch per app across processes and stores, one refresh per
//! stale token, takeover after a dead lock holder, classic vs stable, credential errors,
//! and no secret in any output.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use deadpool_redis::redis;
use wxpush::config::{Config, TokenEndpoint, load_str};
use wxpush::token::{TokenError, TokenStore};
use wxpush::wechat::client::{SubscribeMessage, WechatClient};
use wxpush_mock_wechat::{Fault, FaultTarget, MockOptions, MockServer};

struct Setup {
    prefix: String,
    mock: MockServer,
    config: Config,
    text: String,
}

async fn setup(name: &str, options: MockOptions, endpoint: TokenEndpoint) -> Setup {
    // SAFETY: every test in the process sets the same value.
    unsafe { std::env::set_var(SECRET_ENV, SECRET) };
    let prefix = format!(
        "t-{name}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let mock = MockServer::start(options, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    mock.register_app(APPID, SECRET);
    let endpoint_name = match endpoint {
        TokenEndpoint::Stable => "stable",
        TokenEndpoint::Classic => "classic",
    };
    let text = config_text(&prefix, &mock.base_url()).replace(
        "lock_ttl = \"5s\"",
        &format!("lock_ttl = \"5s\"\ntoken_endpoint = \"{endpoint_name}\""),
    );
    let config = load_str(&text, Path::new("t.toml"), vec![]).unwrap().config;
    Setup {
        prefix,
        mock,
        config,
        text,
    }
}

impl Setup {
    fn store(&self) -> TokenStore {
        let pool = wxpush::store::pooled(&self.config.redis).unwrap();
        let client = WechatClient::new(&self.config.wechat).unwrap();
        TokenStore::new(&self.config, pool, client).unwrap()
    }

    async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(REDIS_URL)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    async fn stored_token(&self) -> Option<String> {
        let mut conn = self.redis().await;
        redis::cmd("HGET")
            .arg(format!("{}:token:{{{APPID}}}", self.prefix))
            .arg("token")
            .query_async(&mut conn)
            .await
            .unwrap()
    }

    async fn cleanup(self) {
        let pool = wxpush::store::pooled(&self.config.redis).unwrap();
        wxpush::store::delete_prefix(&pool, &self.prefix)
            .await
            .unwrap();
        self.mock.shutdown().await;
    }
}

fn message(n: usize) -> SubscribeMessage {
    serde_json::from_value(serde_json::json!({
        "touser": openid(n), "template_id": "TPL", "data": {"thing1": {"value": "hi"}}
    }))
    .unwrap()
}

#[tokio::test]
async fn cold_stampede_of_64_tasks_across_4_stores_fetches_once() {
    let s = setup(
        "stampede",
        MockOptions {
            latency: Duration::from_millis(100),
            ..Default::default()
        },
        TokenEndpoint::Stable,
    )
    .await;
    let stores: Vec<TokenStore> = (0..4).map(|_| s.store()).collect();
    let barrier = Arc::new(tokio::sync::Barrier::new(64));
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let store = stores[i % 4].clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                store.get("default").await.unwrap()
            })
        })
        .collect();
    let mut tokens = Vec::new();
    for t in tasks {
        tokens.push(t.await.unwrap());
    }
    assert!(
        tokens.windows(2).all(|w| w[0] == w[1]),
        "all tasks got the same token"
    );
    let stats = s.mock.stats();
    assert_eq!(stats.token_calls, 1, "{stats:?}");
    assert_eq!(stats.tokens_issued, 1);
    s.cleanup().await;
}

#[tokio::test]
async fn cold_stampede_of_8_processes_fetches_once() {
    let s = setup(
        "procs",
        MockOptions {
            latency: Duration::from_millis(200),
            ..Default::default()
        },
        TokenEndpoint::Classic,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wxpush.toml");
    std::fs::write(&file, &s.text).unwrap();
    let children: Vec<_> = (0..8)
        .map(|_| {
            std::process::Command::new(env!("CARGO_BIN_EXE_wxpush"))
                .args(["token", "--config"])
                .arg(&file)
                .env(SECRET_ENV, SECRET)
                .env("RUST_LOG", "debug")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<_> = tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect()
    })
    .await
    .unwrap();
    let token = s.stored_token().await.expect("a token is stored");
    for out in &outputs {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        assert!(text.contains(APPID), "{text}");
        assert!(
            !text.contains(&token),
            "the token leaked into output: {text}"
        );
        assert!(
            !text.contains(SECRET),
            "the secret leaked into output: {text}"
        );
    }
    let fetched = outputs
        .iter()
        .filter(|o| String::from_utf8_lossy(&o.stdout).contains(" fetched "))
        .count();
    assert_eq!(fetched, 1, "exactly one process fetched");
    let stats = s.mock.stats();
    assert_eq!(stats.classic_token_calls, 1, "{stats:?}");
    s.cleanup().await;
}

#[tokio::test]
async fn expiry_storm_of_100_senders_refreshes_once() {
    let s = setup("storm", MockOptions::default(), TokenEndpoint::Stable).await;
    let store = s.store();
    let client = WechatClient::new(&s.config.wechat).unwrap();
    store.get("default").await.unwrap();
    s.mock.expire_all_tokens();
    let before = s.mock.stats().token_calls;
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let (store, client) = (store.clone(), client.clone());
            tokio::spawn(async move {
                let token = store.get("default").await.unwrap();
                match client.send(&token, &message(i)).await {
                    Ok(_) => panic!("the expired token was accepted"),
                    Err(e) => assert_eq!(e.errcode(), Some(42001)),
                }
                let fresh = store.replace_stale("default", &token).await.unwrap();
                client.send(&fresh, &message(i)).await.unwrap()
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let stats = s.mock.stats();
    assert_eq!(stats.token_calls - before, 1, "{stats:?}");
    assert_eq!(stats.sends_ok, 100);
    s.cleanup().await;
}

#[tokio::test]
async fn a_dead_lock_holder_is_replaced_after_its_lease() {
    let s = setup("deadholder", MockOptions::default(), TokenEndpoint::Stable).await;
    let mut conn = s.redis().await;
    // A holder that took the lease and died before writing a token.
    let _: () = redis::cmd("SET")
        .arg(format!("{}:token-lock:{{{APPID}}}", s.prefix))
        .arg("dead-worker")
        .arg("PX")
        .arg(1500)
        .query_async(&mut conn)
        .await
        .unwrap();
    let token = tokio::time::timeout(Duration::from_secs(10), s.store().get("default"))
        .await
        .expect("no deadlock")
        .unwrap();
    assert_eq!(s.stored_token().await.as_deref(), Some(token.expose()));
    assert_eq!(s.mock.stats().token_calls, 1);
    s.cleanup().await;
}

#[tokio::test]
async fn a_stalled_refresher_cannot_overwrite_its_successor() {
    // Classic tokens change on every fetch, so the race is visible: A's fetch stalls past its
    // 1 s lease, B takes over and stores its token, A's late token must be discarded.
    let s = setup("stalled", MockOptions::default(), TokenEndpoint::Classic).await;
    let mut config = s.config.clone();
    config.wechat.lock_ttl = Duration::from_secs(1);
    config.wechat.timeout = Duration::from_millis(900);
    let slow_client = {
        let mut c = config.wechat.clone();
        c.timeout = Duration::from_secs(10);
        WechatClient::new(&c).unwrap()
    };
    let pool = wxpush::store::pooled(&config.redis).unwrap();
    let a = TokenStore::new(&config, pool.clone(), slow_client).unwrap();
    let b = TokenStore::new(&config, pool, WechatClient::new(&config.wechat).unwrap()).unwrap();
    s.mock.push_faults(
        FaultTarget::Token,
        vec![Fault::Delay(Duration::from_millis(2500))],
    );
    let a_task = tokio::spawn(async move { a.get("default").await.unwrap() });
    // B starts once A holds the lease, and takes over when it lapses.
    eventually("A to hold the lease", Duration::from_secs(5), || async {
        (s.mock.stats().in_flight > 0).then_some(())
    })
    .await;
    let b_token = b.get("default").await.unwrap();
    let a_token = a_task.await.unwrap();
    assert_eq!(
        a_token, b_token,
        "A ends with the successor's token, not its own late one"
    );
    assert_eq!(s.stored_token().await.as_deref(), Some(b_token.expose()));
    assert_eq!(s.mock.stats().classic_token_calls, 2);
    s.cleanup().await;
}

#[tokio::test]
async fn stable_endpoint_forces_a_refresh_only_when_handed_the_failed_token() {
    let s = setup("stable", MockOptions::default(), TokenEndpoint::Stable).await;
    let store = s.store();
    let first = store.get("default").await.unwrap();
    // WeChat still considers `first` current, so a normal fetch would return it again.
    let second = store.replace_stale("default", &first).await.unwrap();
    assert_ne!(first, second);
    let stats = s.mock.stats();
    assert_eq!(
        stats.stable_token_calls, 3,
        "initial, normal, forced: {stats:?}"
    );
    assert_eq!(stats.force_refresh_calls, 1);
    // A stale token that is no longer current: a normal fetch suffices.
    let third = store.replace_stale("default", &first).await.unwrap();
    assert_eq!(
        third, second,
        "an old stale token does not cause another refresh"
    );
    assert_eq!(s.mock.stats().stable_token_calls, 3);
    s.cleanup().await;
}

#[tokio::test]
async fn classic_endpoint_fetches_a_new_token_without_forcing() {
    let s = setup("classic", MockOptions::default(), TokenEndpoint::Classic).await;
    let store = s.store();
    let first = store.get("default").await.unwrap();
    let second = store.replace_stale("default", &first).await.unwrap();
    assert_ne!(first, second);
    let stats = s.mock.stats();
    assert_eq!(stats.classic_token_calls, 2, "{stats:?}");
    assert_eq!(stats.stable_token_calls, 0);
    assert_eq!(stats.force_refresh_calls, 0);
    s.cleanup().await;
}

#[tokio::test]
async fn credential_errcodes_name_the_app() {
    let s = setup("cred", MockOptions::default(), TokenEndpoint::Stable).await;
    s.mock.register_app(APPID, "a-different-secret");
    let err = s.store().get("default").await.unwrap_err();
    assert!(
        matches!(err, TokenError::Credential { errcode: 40125, .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("`default`") && text.contains(APPID) && text.contains("40125"),
        "{text}"
    );
    assert!(!text.contains(SECRET));
    s.cleanup().await;
}

#[tokio::test]
async fn token_refresh_is_skipped_while_the_local_copy_is_fresh() {
    let s = setup("local", MockOptions::default(), TokenEndpoint::Stable).await;
    let store = s.store();
    let first = store.get("default").await.unwrap();
    // Remove the Redis copy: a fresh local copy must not even look.
    let mut conn = s.redis().await;
    let _: () = redis::cmd("DEL")
        .arg(format!("{}:token:{{{APPID}}}", s.prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(store.get("default").await.unwrap(), first);
    assert_eq!(s.mock.stats().token_calls, 1);
    s.cleanup().await;
}
