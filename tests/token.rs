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

    async fn redis(&self) -> wxpush::store::Conn {
        common::redis_conn(&self.config.redis).await
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

// ---- The token-store windows ("Exactly-once, proven", item 8) ----

fn lock_key(s: &Setup) -> String {
    format!("{}:token-lock:{{{APPID}}}", s.prefix)
}

async fn lease_held(s: &Setup) -> bool {
    let mut conn = s.redis().await;
    redis::cmd("EXISTS")
        .arg(lock_key(s))
        .query_async::<bool>(&mut conn)
        .await
        .unwrap()
}

/// The stable endpoint can make two fetches in one refresh (normal, then forced when WeChat
/// hands back the failed token). Here each takes 600 ms under a 1 s lease: the refresher
/// must extend its lease before the second, or a waiting worker takes over at 1 s, fetches
/// normally, and stores the very token that just failed (WeChat still hands it out until
/// the forced fetch lands).
#[tokio::test]
async fn a_refresh_with_two_fetches_keeps_its_lease_for_the_second() {
    let s = setup("twofetch", MockOptions::default(), TokenEndpoint::Stable).await;
    let mut config = s.config.clone();
    config.wechat.lock_ttl = Duration::from_secs(1);
    config.wechat.timeout = Duration::from_millis(900);
    let store = |config: &Config| {
        let pool = wxpush::store::pooled(&config.redis).unwrap();
        TokenStore::new(config, pool, WechatClient::new(&config.wechat).unwrap()).unwrap()
    };
    let (a, b) = (store(&config), store(&config));
    let first = a.get("default").await.unwrap();
    s.mock.push_faults(
        FaultTarget::Token,
        vec![
            Fault::Delay(Duration::from_millis(600)),
            Fault::Delay(Duration::from_millis(600)),
        ],
    );
    let a_task = {
        let (a, first) = (a.clone(), first.clone());
        tokio::spawn(async move { a.replace_stale("default", &first).await })
    };
    eventually("A's first fetch", Duration::from_secs(5), || async {
        (s.mock.stats().in_flight > 0).then_some(())
    })
    .await;
    let b_token = b.get("default").await.unwrap();
    let a_token = a_task.await.unwrap().unwrap();
    assert_ne!(a_token, first, "A replaced the failed token");
    assert_eq!(b_token, a_token, "B waited for A's forced token");
    assert_eq!(s.stored_token().await.as_deref(), Some(a_token.expose()));
    let stats = s.mock.stats();
    assert_eq!(
        stats.stable_token_calls, 3,
        "initial, normal, forced; no takeover fetch: {stats:?}"
    );
    assert_eq!(stats.force_refresh_calls, 1);
    s.cleanup().await;
}

/// Three workers whose clocks are an hour fast, an hour slow and right share a token that
/// lives 3 s. Freshness is Redis's time, so they refresh once per refresh period between
/// them, and every token any of them hands out is accepted by WeChat (never 42001).
#[tokio::test]
async fn workers_with_skewed_clocks_refresh_once_per_lifetime_and_never_serve_an_expired_token() {
    let ttl = Duration::from_secs(3);
    let s = setup(
        "skew",
        MockOptions {
            token_ttl: ttl,
            ..Default::default()
        },
        TokenEndpoint::Classic,
    )
    .await;
    const HOUR_MS: i64 = 3_600_000;
    let stores: Vec<TokenStore> = [HOUR_MS, -HOUR_MS, 0]
        .into_iter()
        .map(|skew| {
            let pool = wxpush::store::pooled(&s.config.redis).unwrap();
            let client = WechatClient::new(&s.config.wechat).unwrap();
            TokenStore::with_local_clock_skew(&s.config, pool, client, skew).unwrap()
        })
        .collect();
    let run = Duration::from_millis(4500);
    let started = std::time::Instant::now();
    let tasks: Vec<_> = stores
        .into_iter()
        .enumerate()
        .map(|(i, store)| {
            let client = WechatClient::new(&s.config.wechat).unwrap();
            tokio::spawn(async move {
                let mut tokens = std::collections::HashSet::new();
                let mut pace = tokio::time::interval(Duration::from_millis(25));
                while started.elapsed() < run {
                    pace.tick().await;
                    let token = store.get("default").await.unwrap();
                    if let Err(e) = client.send(&token, &message(i)).await {
                        panic!("store {i} served a token WeChat refused: {e}");
                    }
                    tokens.insert(token.expose().to_owned());
                }
                tokens
            })
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    for t in tasks {
        seen.extend(t.await.unwrap());
    }
    let stats = s.mock.stats();
    // A refresh is due half-way through a 3 s lifetime: 4.5 s of traffic needs 3 or 4.
    assert!(
        (3..=4).contains(&stats.classic_token_calls),
        "one fetch per refresh period: {stats:?}"
    );
    assert_eq!(
        seen.len() as u64,
        stats.classic_token_calls,
        "every fetched token was used"
    );
    assert_eq!(stats.sends_by_errcode.get("42001"), None, "{stats:?}");
    s.cleanup().await;
}

/// 50 callers at once while every token fetch fails: the first failure answers the callers
/// queued behind it, so they do not each repeat the fetch one after another.
#[tokio::test]
async fn concurrent_callers_share_one_failed_refresh() {
    let s = setup(
        "failshare",
        MockOptions {
            latency: Duration::from_millis(100),
            ..Default::default()
        },
        TokenEndpoint::Stable,
    )
    .await;
    s.mock
        .set_fault_rate(FaultTarget::Token, Some(Fault::Http(500)), 1.0);
    let store = s.store();
    let barrier = Arc::new(tokio::sync::Barrier::new(50));
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (store, barrier) = (store.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store.get("default").await
            })
        })
        .collect();
    for t in tasks {
        let err = t.await.unwrap().unwrap_err();
        assert!(matches!(err, TokenError::Fetch { .. }), "{err:?}");
    }
    let elapsed = started.elapsed();
    let stats = s.mock.stats();
    assert!(stats.http_errors <= 3, "fetch attempts: {stats:?}");
    assert!(
        elapsed < Duration::from_millis(1500),
        "all callers answered in {elapsed:?}"
    );
    // The failure is not sticky: once WeChat answers, a token comes.
    s.mock.set_fault_rate(FaultTarget::Token, None, 0.0);
    eventually(
        "a token after the fault clears",
        Duration::from_secs(5),
        || async { store.get("default").await.ok() },
    )
    .await;
    s.cleanup().await;
}

/// A caller that gives up (its future dropped) while holding the lease mid-fetch releases
/// the lease at once instead of leaving every other worker waiting out `lock_ttl` (5 s).
#[tokio::test]
async fn a_cancelled_refresh_releases_its_lease() {
    let s = setup("cancel", MockOptions::default(), TokenEndpoint::Stable).await;
    let (a, b) = (s.store(), s.store());
    s.mock.push_faults(
        FaultTarget::Token,
        vec![Fault::Delay(Duration::from_secs(3))],
    );
    let a_task = tokio::spawn(async move { a.get("default").await });
    eventually(
        "A to hold the lease and fetch",
        Duration::from_secs(5),
        || async { (s.mock.stats().in_flight > 0 && lease_held(&s).await).then_some(()) },
    )
    .await;
    a_task.abort();
    assert!(a_task.await.unwrap_err().is_cancelled());
    eventually("the lease released", Duration::from_secs(2), || async {
        (!lease_held(&s).await).then_some(())
    })
    .await;
    let started = std::time::Instant::now();
    b.get("default").await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "B did not wait out the lease"
    );
    s.cleanup().await;
}

/// A Redis error while the lease is held (here the token write fails: the key was turned
/// into a string mid-fetch) ends the refresh with that error and the lease released.
#[tokio::test]
async fn a_redis_error_while_holding_the_lease_releases_it() {
    let s = setup("rediserr", MockOptions::default(), TokenEndpoint::Stable).await;
    let store = s.store();
    s.mock.push_faults(
        FaultTarget::Token,
        vec![Fault::Delay(Duration::from_millis(500))],
    );
    let task = {
        let store = store.clone();
        tokio::spawn(async move { store.get("default").await })
    };
    eventually("the fetch in flight", Duration::from_secs(5), || async {
        (s.mock.stats().in_flight > 0).then_some(())
    })
    .await;
    let token_key = format!("{}:token:{{{APPID}}}", s.prefix);
    let mut conn = s.redis().await;
    let _: () = redis::cmd("SET")
        .arg(&token_key)
        .arg("not a hash")
        .query_async(&mut conn)
        .await
        .unwrap();
    let err = task.await.unwrap().unwrap_err();
    assert!(matches!(err, TokenError::Redis(_)), "{err:?}");
    assert!(
        !lease_held(&s).await,
        "the lease was released on the error path"
    );
    let _: () = redis::cmd("DEL")
        .arg(&token_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    eventually(
        "a token once the key is sane",
        Duration::from_secs(5),
        || async { store.get("default").await.ok() },
    )
    .await;
    s.cleanup().await;
}

/// Every fetch outlives its 1 s lease (1.3 s each, a client whose timeout is too long): each
/// turn of the refresh loop loses the lease and discards its token. The loop must still end
/// at its deadline (3 × lock_ttl) instead of going round for ever.
#[tokio::test]
async fn a_refresh_that_keeps_losing_its_lease_stops_at_its_deadline() {
    let s = setup("lostlease", MockOptions::default(), TokenEndpoint::Classic).await;
    let mut config = s.config.clone();
    config.wechat.lock_ttl = Duration::from_secs(1);
    config.wechat.timeout = Duration::from_millis(900);
    let slow_client = {
        let mut c = config.wechat.clone();
        c.timeout = Duration::from_secs(10);
        WechatClient::new(&c).unwrap()
    };
    let pool = wxpush::store::pooled(&config.redis).unwrap();
    let store = TokenStore::new(&config, pool, slow_client).unwrap();
    s.mock.set_fault_rate(
        FaultTarget::Token,
        Some(Fault::Delay(Duration::from_millis(1300))),
        1.0,
    );
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(10), store.get("default"))
        .await
        .expect("the refresh loop ends by itself");
    let err = result.unwrap_err();
    assert!(matches!(err, TokenError::WaitTimeout { .. }), "{err:?}");
    // The deadline (3 s) plus at most the fetch in progress when it passed.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    s.mock.set_fault_rate(FaultTarget::Token, None, 0.0);
    s.cleanup().await;
}
