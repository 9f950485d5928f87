//! Micro-benchmarks of the CPU work a worker does per message, outside any I/O: parsing the
//! event, rendering its template, serializing the subscribe/send body. Run with
//! `cargo bench --bench hot_path`; `docs/benchmarks.md` has the results and how they compare
//! with the whole pipeline's CPU per message.

use std::path::Path;

use divan::{Bencher, black_box};
use wxpush::config::{Config, Overflow, load_str};
use wxpush::event::Event;
use wxpush::template::Templates;

fn main() {
    divan::main();
}

/// The body `wxpush-bench` publishes (one event of the order.paid template).
const BODY: &str = r#"{"id":"bench-1a2b3c4d-1234","type":"order.paid","recipient":{"openid":"o000000000000000000000b1234"},"data":{"order_no":"1a2b3c4d-1234","amount":"22.34","paid_at":"2026-11-24T10:00:00+08:00","remark":"感谢您的购买"},"occurred_at":"2026-11-24T10:00:01+08:00"}"#;

/// A long remark (over `thing`'s 20 characters) takes the truncation path.
const BODY_LONG_REMARK: &str = r#"{"id":"bench-long","type":"order.paid","recipient":{"openid":"o000000000000000000000b1234"},"data":{"order_no":"A9000","amount":"99","paid_at":"2026-11-24T10:05:00+08:00","remark":"这是一条非常非常长的订单备注，超过了微信对 thing 类型二十个字的限制"}}"#;

fn config() -> Config {
    load_str(
        include_str!("../examples/wxpush.toml"),
        Path::new("examples/wxpush.toml"),
        Vec::new(),
    )
    .expect("the example config parses")
    .config
}

#[divan::bench]
fn event_parse(bencher: Bencher) {
    bencher.bench(|| Event::parse(black_box(BODY.as_bytes())).expect("valid"));
}

#[divan::bench]
fn event_parse_invalid_json(bencher: Bencher) {
    let body = &BODY.as_bytes()[..BODY.len() / 2];
    bencher.bench(|| Event::parse(black_box(body)).expect_err("truncated"));
}

#[divan::bench]
fn templates_compile(bencher: Bencher) {
    let config = config();
    bencher.bench(|| Templates::compile(black_box(&config)).expect("compiles"));
}

fn render(bencher: Bencher, body: &str) {
    let templates = Templates::compile(&config()).expect("compiles");
    let template = templates.get("order.paid").expect("order.paid template");
    let event = Event::parse(body.as_bytes()).expect("valid");
    bencher.bench(|| {
        template
            .render(
                black_box("o000000000000000000000b1234"),
                black_box(&event.data),
                None,
                Overflow::Truncate,
            )
            .expect("renders")
    });
}

#[divan::bench]
fn template_render(bencher: Bencher) {
    render(bencher, BODY);
}

#[divan::bench]
fn template_render_truncating(bencher: Bencher) {
    render(bencher, BODY_LONG_REMARK);
}

/// What `WechatClient::send` does with the rendered message before the HTTP call.
#[divan::bench]
fn message_serialize(bencher: Bencher) {
    let templates = Templates::compile(&config()).expect("compiles");
    let template = templates.get("order.paid").expect("order.paid template");
    let event = Event::parse(BODY.as_bytes()).expect("valid");
    let message = template
        .render(
            "o000000000000000000000b1234",
            &event.data,
            None,
            Overflow::Truncate,
        )
        .expect("renders");
    bencher.bench(|| serde_json::to_vec(black_box(&message)).expect("serializes"));
}

/// Parse, look up, render and serialize: the whole per-message CPU work outside I/O.
#[divan::bench]
fn parse_render_serialize(bencher: Bencher) {
    let templates = Templates::compile(&config()).expect("compiles");
    bencher.bench(|| {
        let event = Event::parse(black_box(BODY.as_bytes())).expect("valid");
        let template = templates.get(&event.kind).expect("template");
        let mut message = template
            .render("", &event.data, event.page.as_deref(), Overflow::Truncate)
            .expect("renders");
        if let wxpush::event::Recipient::Openid(openid) = event.recipient {
            message.touser = openid;
        }
        serde_json::to_vec(&message).expect("serializes")
    });
}
