//! The grant ledger on the real Redis: each change's meaning (one-time and long-term), and
//! exactness under concurrency: two receivers (two push servers) taking WeChat's pushes,
//! every push delivered to both, while two simulated workers use grants on the same users.

mod common;

use common::openid;
use common::push::*;
use wxpush::store::grants::{self, Choice, Grant, Used};

#[tokio::test]
async fn each_change_does_what_it_says() {
    let h = PushHarness::start("grants-semantics").await;
    let mut conn = h.redis.get().await.unwrap();
    let key = h.keys.grants("default", &openid(1));
    let c = &mut conn;

    assert_eq!(grants::check(c, &key, ONCE).await.unwrap(), Grant::Unknown);
    assert_eq!(grants::use_one(c, &key, ONCE).await.unwrap(), Used::Unknown);
    assert_eq!(
        h.grants("default", &openid(1)).await,
        vec![],
        "a use of nothing writes nothing"
    );

    grants::record_choice(c, &key, ONCE, Choice::Accept, false)
        .await
        .unwrap();
    grants::record_choice(c, &key, ONCE, Choice::AcceptWithAudio, false)
        .await
        .unwrap();
    grants::record_choice(c, &key, ONCE, Choice::Reject, false)
        .await
        .unwrap();
    assert_eq!(
        h.count("default", &openid(1), ONCE).await,
        Some(2),
        "reject keeps the count"
    );
    assert_eq!(
        grants::use_one(c, &key, ONCE).await.unwrap(),
        Used::OneTime { left: 1 }
    );
    assert_eq!(
        grants::check(c, &key, ONCE).await.unwrap(),
        Grant::Available
    );
    assert_eq!(
        grants::use_one(c, &key, ONCE).await.unwrap(),
        Used::OneTime { left: 0 }
    );
    assert_eq!(grants::check(c, &key, ONCE).await.unwrap(), Grant::None);
    assert_eq!(
        grants::use_one(c, &key, ONCE).await.unwrap(),
        Used::WasEmpty,
        "never below 0"
    );
    assert_eq!(h.count("default", &openid(1), ONCE).await, Some(0));

    grants::record_choice(c, &key, ONCE, Choice::Accept, false)
        .await
        .unwrap();
    grants::refused(c, &key, ONCE).await.unwrap();
    assert_eq!(
        grants::check(c, &key, ONCE).await.unwrap(),
        Grant::None,
        "43101 zeroes"
    );

    grants::record_choice(c, &key, LONG, Choice::Accept, true)
        .await
        .unwrap();
    grants::record_choice(c, &key, LONG, Choice::Accept, true)
        .await
        .unwrap();
    assert_eq!(
        h.count("default", &openid(1), LONG).await,
        Some(1),
        "long-term is on, not counted"
    );
    assert_eq!(
        grants::use_one(c, &key, LONG).await.unwrap(),
        Used::LongTerm
    );
    assert_eq!(
        grants::check(c, &key, LONG).await.unwrap(),
        Grant::Available
    );
    grants::turn_off(c, &key, LONG).await.unwrap();
    assert_eq!(grants::check(c, &key, LONG).await.unwrap(), Grant::None);
    grants::record_choice(c, &key, LONG, Choice::Accept, true)
        .await
        .unwrap();
    grants::refused(c, &key, LONG).await.unwrap();
    assert_eq!(
        grants::check(c, &key, LONG).await.unwrap(),
        Grant::None,
        "43101 turns it off"
    );

    let refused_only = h.keys.grants("default", &openid(2));
    grants::refused(c, &refused_only, ONCE).await.unwrap();
    assert_eq!(
        grants::check(c, &refused_only, ONCE).await.unwrap(),
        Grant::None
    );

    let records = h.grants("default", &openid(1)).await;
    let once = records.iter().find(|r| r.template_id == ONCE).unwrap();
    assert_eq!(
        once.choice.as_deref(),
        Some("accept"),
        "the last choice is kept"
    );
    assert!(once.choice_at_ms.is_some() && once.updated_at_ms >= once.choice_at_ms);
    let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(c).await.unwrap();
    assert!(
        ttl > 399 * 24 * 3600 * 1000,
        "the ledger lives ~400 days: {ttl}"
    );
    h.cleanup().await;
}

/// Users, the grants they start with, and per user the taps the receivers get and the uses
/// each worker makes: starting grants cover every use, so the final count is exact whatever
/// the interleaving.
const USERS: usize = 4;
const START: u64 = 40;
const TAPS: u64 = 30;
const USES_PER_WORKER: u64 = 15;

#[tokio::test]
async fn two_receivers_and_two_workers_keep_counts_exact() {
    let h = PushHarness::start("grants-concurrent").await;
    let receivers = [h.receiver().await, h.receiver().await];
    let users: Vec<String> = (0..USERS).map(|n| openid(100 + n)).collect();
    {
        let mut conn = h.redis.get().await.unwrap();
        for user in &users {
            let key = h.keys.grants("default", user);
            for _ in 0..START {
                grants::record_choice(&mut conn, &key, ONCE, Choice::Accept, false)
                    .await
                    .unwrap();
            }
        }
    }
    let base = now_s();
    let pushes = async {
        let mut requests = tokio::task::JoinSet::new();
        for user in &users {
            for tap in 0..TAPS {
                // Each tap is one push (its own CreateTime), delivered to both receivers at
                // once, as WeChat's retry reaching another replica would be.
                let body = popup_json(user, base + tap, &[(ONCE, "accept"), (LONG, "accept")]);
                for addr in receivers {
                    let (http, body) = (h.http.clone(), body.clone());
                    requests.spawn(async move {
                        let answer = http
                            .post(url(addr, "default"))
                            .query(&plain_query(TOKEN, now_s(), &nonce()))
                            .body(body)
                            .send()
                            .await
                            .unwrap();
                        (answer.status().as_u16(), answer.text().await.unwrap())
                    });
                }
            }
        }
        while let Some(answer) = requests.join_next().await {
            assert_eq!(answer.unwrap(), (200, "success".to_owned()));
        }
    };
    let worker = |_: usize| async {
        let mut conn = h.redis.get().await.unwrap();
        let mut used = Vec::new();
        for _ in 0..USES_PER_WORKER {
            for user in &users {
                let key = h.keys.grants("default", user);
                used.push(grants::use_one(&mut conn, &key, ONCE).await.unwrap());
            }
        }
        used
    };
    let (_, used_a, used_b) = tokio::join!(pushes, worker(0), worker(1));
    for used in used_a.iter().chain(&used_b) {
        assert!(
            matches!(used, Used::OneTime { .. }),
            "a grant was there to use: {used:?}"
        );
    }
    for user in &users {
        assert_eq!(
            h.count("default", user, ONCE).await,
            Some(START + TAPS - 2 * USES_PER_WORKER),
            "{user}"
        );
        assert_eq!(h.count("default", user, LONG).await, Some(1));
    }
    h.cleanup().await;
}

#[tokio::test]
async fn grants_command_shows_each_template_as_a_table_and_json() {
    let h = PushHarness::start("grants-cli").await;
    let user = openid(200);
    let mut conn = h.redis.get().await.unwrap();
    let key = h.keys.grants("default", &user);
    grants::record_choice(&mut conn, &key, ONCE, Choice::Accept, false)
        .await
        .unwrap();
    grants::record_choice(&mut conn, &key, ONCE, Choice::Accept, false)
        .await
        .unwrap();
    grants::record_choice(&mut conn, &key, LONG, Choice::Accept, true)
        .await
        .unwrap();
    grants::turn_off(&mut conn, &key, LONG).await.unwrap();

    let file = tempfile::NamedTempFile::new().unwrap();
    let text = format!(
        "{}\n[[templates]]\nevent = \"plan.renewed\"\ntemplate_id = \"{LONG}\"\nlong_term = true\n[templates.data]\nthing1 = \"{{title}}\"\n",
        common::config_text(&h.prefix, &h.mock.base_url())
    );
    std::fs::write(file.path(), text).unwrap();
    let run = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_wxpush"))
            .arg("--config")
            .arg(file.path())
            .arg("grants")
            .args(args)
            .env(common::SECRET_ENV, common::SECRET)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let table = run(&[&user]);
    let once_row = table.lines().find(|l| l.contains(ONCE)).unwrap();
    assert!(
        once_row.contains("order.paid") && once_row.contains("one-time"),
        "{table}"
    );
    assert!(
        once_row.split_whitespace().any(|w| w == "2") && once_row.contains("accept"),
        "{table}"
    );
    let long_row = table.lines().find(|l| l.contains(LONG)).unwrap();
    assert!(
        long_row.contains("long-term") && long_row.contains(" off "),
        "{table}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&run(&[&user, "--app", "default", "--json"])).unwrap();
    let list = json["grants"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    let once = list.iter().find(|g| g["template_id"] == ONCE).unwrap();
    assert_eq!(
        (once["count"].as_u64(), once["available"].as_bool()),
        (Some(2), Some(true))
    );
    assert_eq!(once["kind"], "one-time");
    let long = list.iter().find(|g| g["template_id"] == LONG).unwrap();
    assert_eq!(
        (long["kind"].as_str(), long["choice"].as_str()),
        (Some("long-term"), Some("off"))
    );

    assert!(run(&[&openid(201)]).contains("no grants recorded"));
    h.cleanup().await;
}
