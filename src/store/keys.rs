//! The name of every key wxpush writes, under the configured `redis.key_prefix`.
//!
//! Keys carry a hash tag (`{…}`) per app or per event so that everything one script touches
//! lives in one Redis Cluster slot, while different apps and events spread over the slots.

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

    /// Hash with the final delivery result WeChat pushed for a sent message (see
    /// `store::delivery_result`).
    pub fn msg_result(&self, app: &str, msgid: &str) -> String {
        format!("{}:msg-result:{{{app}:{msgid}}}", self.prefix)
    }
}
