//! The name of every key wxpush writes, under the configured `redis.key_prefix`.
//!
//! Keys carry a hash tag (`{…}`) per app or per event so that everything one script touches
//! lives in one Redis Cluster slot, while different apps and events spread over the slots.
//! The prefix must not contain a brace (`check` refuses one): Redis would hash on it.
//!
//! The one key a script needs next to an event's that belongs to no event, the epoch (when
//! Redis's data began, see `store::claims`), is kept per slot: [`Keys::event_epoch`] is in
//! the event's slot. That is also what a cluster needs: each master can lose its data on
//! its own, and so each slot's epoch lives and dies with the slot's records.

use std::sync::LazyLock;

/// The number of Redis Cluster hash slots.
pub const SLOTS: u16 = 16384;

/// Key names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    /// Hash with the app's current token: `token`, `expires_at_ms`, `fetched_at_ms`, `endpoint`.
    pub fn token(&self, appid: &str) -> String {
        format!("{}:token:{{{appid}}}", self.prefix)
    }

    /// The refresh lock for the app's token.
    pub fn token_lock(&self, appid: &str) -> String {
        format!("{}:token-lock:{{{appid}}}", self.prefix)
    }

    /// Hash saying the app's sends are held fleet-wide (see `store::app_hold`); tagged like
    /// the app's rate key.
    pub fn app_hold(&self, app: &str) -> String {
        format!("{}:hold:{{app:{app}}}", self.prefix)
    }

    /// The app's `max_rate` limiter state (see `store::rate_limit`).
    pub fn app_rate(&self, app: &str) -> String {
        format!("{}:rate:{{app:{app}}}", self.prefix)
    }

    /// When Redis last lost its data (0: never seen lost); no TTL (see `store::claims`).
    pub fn epoch(&self) -> String {
        format!("{}:epoch", self.prefix)
    }

    /// When the data of the event's slot began: the epoch the claim script reads and, when
    /// missing, writes (see `store::claims`). In the event's hash slot.
    pub fn event_epoch(&self, event_id: &str) -> String {
        let tag = SLOT_TAGS[usize::from(slot(&self.event(event_id)))];
        format!("{}:epoch:{{{tag}}}", self.prefix)
    }

    /// Hash with an event's delivery state (see `store::claims`).
    pub fn event(&self, event_id: &str) -> String {
        format!("{}:event:{{{event_id}}}", self.prefix)
    }

    /// Hash with the user's grant ledger (see `store::grants`).
    pub fn grants(&self, app: &str, openid: &str) -> String {
        format!("{}:grants:{{{app}:{openid}}}", self.prefix)
    }

    /// Marker of a message push already applied to the user's ledger (WeChat retries a
    /// push up to 3 times); `push_id` names the push (`CreateTime:Event:digest`, see
    /// `push`). Tagged like the user's ledger, so one script checks it and applies the push.
    pub fn push_seen(&self, app: &str, openid: &str, push_id: &str) -> String {
        format!("{}:push-seen:{{{app}:{openid}}}:{push_id}", self.prefix)
    }

    /// Marker of a push's (timestamp, nonce) already accepted: a replayed request is refused.
    pub fn push_nonce(&self, app: &str, timestamp: &str, nonce: &str) -> String {
        format!(
            "{}:push-nonce:{{app:{app}}}:{timestamp}:{nonce}",
            self.prefix
        )
    }

    /// The event id a send's msgid belongs to (for the pushed result's outcome event);
    /// tagged like [`Keys::msg_result`].
    pub fn msg_event(&self, app: &str, msgid: &str) -> String {
        format!("{}:msg-event:{{{app}:{msgid}}}", self.prefix)
    }

    /// A console session (see `admin::auth::Sessions`): `digest` is the hex SHA-1 of the
    /// session id, never the id itself; the value is the session's CSRF token.
    pub fn console_session(&self, digest: &str) -> String {
        format!("{}:console:session:{digest}", self.prefix)
    }

    /// Hash with the final delivery result WeChat pushed for a sent message (see
    /// `store::delivery_result`).
    pub fn msg_result(&self, app: &str, msgid: &str) -> String {
        format!("{}:msg-result:{{{app}:{msgid}}}", self.prefix)
    }
}

/// The Redis Cluster slot of `key`: CRC16 of its hash tag (the part between the first `{`
/// and the next `}`, if not empty), else of the whole key, modulo [`SLOTS`].
pub fn slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tag = bytes.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &bytes[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    slot_of_tag(tag.unwrap_or(bytes))
}

fn slot_of_tag(tag: &[u8]) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(tag) % SLOTS
}

/// For each slot, a short tag (a number) that hashes to it: the smallest such number.
static SLOT_TAGS: LazyLock<Vec<u32>> = LazyLock::new(|| {
    let mut tags = vec![u32::MAX; usize::from(SLOTS)];
    let mut missing = usize::from(SLOTS);
    let mut n: u32 = 0;
    while missing > 0 {
        let slot = usize::from(slot_of_tag(n.to_string().as_bytes()));
        if tags[slot] == u32::MAX {
            tags[slot] = n;
            missing -= 1;
        }
        n += 1;
    }
    tags
});

#[cfg(test)]
mod tests {
    use super::*;

    /// Every script's keys, as the callers pass them (`KEYS[1]`, `KEYS[2]`, …).
    fn script_keys(keys: &Keys) -> Vec<(&'static str, Vec<String>)> {
        let app = "wx1234567890abcdef";
        let mut sets = vec![
            (
                "token store_if_owner",
                vec![keys.token(app), keys.token_lock(app)],
            ),
            ("token read / invalidate", vec![keys.token(app)]),
            ("lease", vec![keys.token_lock(app)]),
            ("app hold", vec![keys.app_hold("default")]),
            ("rate limit", vec![keys.app_rate("default")]),
            (
                "grant ledger change with its push marker",
                vec![
                    keys.grants("default", "o6_bmjrPTlm6"),
                    keys.push_seen("default", "o6_bmjrPTlm6", "1700000000:evt:abcd"),
                ],
            ),
            ("delivery result", vec![keys.msg_result("default", "123")]),
        ];
        for event in ["e-1", "order-9f8e7d", "", "{odd}", "x}y{z", "事件-1"] {
            sets.push(("claim", vec![keys.event(event), keys.event_epoch(event)]));
        }
        sets
    }

    #[test]
    fn each_scripts_keys_hash_to_one_slot() {
        for prefix in ["wxpush", "test-claims-abc", "a:b:c"] {
            let keys = Keys::new(prefix);
            for (script, set) in script_keys(&keys) {
                let slots: Vec<u16> = set.iter().map(|k| slot(k)).collect();
                assert!(
                    slots.windows(2).all(|w| w[0] == w[1]),
                    "{script}: keys {set:?} hash to slots {slots:?}"
                );
            }
        }
    }

    #[test]
    fn slots_match_redis_cluster_keyslot() {
        // Values from CLUSTER KEYSLOT on Redis 7.
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(slot("foo{}{bar}"), slot("foo{}{bar}"));
        assert_ne!(slot("foo{}{bar}"), slot("bar"));
        assert_eq!(slot("foo{{bar}}zap"), slot("{bar"));
        assert_eq!(slot("123456789"), 0x31C3 % SLOTS);
    }

    #[test]
    fn events_and_apps_spread_over_slots() {
        let keys = Keys::new("wxpush");
        let slots: std::collections::BTreeSet<u16> = (0..1000)
            .map(|i| slot(&keys.event(&format!("e-{i}"))))
            .collect();
        assert!(
            slots.len() > 900,
            "only {} slots for 1000 events",
            slots.len()
        );
        let epochs: std::collections::BTreeSet<String> = (0..1000)
            .map(|i| keys.event_epoch(&format!("e-{i}")))
            .collect();
        assert_eq!(epochs.len(), slots.len(), "one epoch key per slot");
    }
}
