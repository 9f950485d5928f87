//! The delivery pipeline end to end: real RabbitMQ and Redis, the emulator for WeChat.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use wxpush::wechat::mock::{Fault, FaultTarget};

#[tokio::test]
async fn happy_path_sends_the_exact_rendered_message() {
    let app = TestApp::start("happy").await;
    let worker = app.worker().await;
    app.publish(&json!({
        "id": "ord-1001-paid", "type": "order.paid",
        "recipient": {"openid": openid(1)},
        "data": {"order_no": "A1001", "amount": "12.5", "paid_at": "2026-11-24T10:00:00+08:00", "remark": "感谢您的购买"}
    }))
    .await;
    let sends = app.sent(1).await;
    assert_eq!(
        sends[0].body,
        json!({
            "touser": openid(1),
            "template_id": "TPL_ORDER_PAID",
            "page": "pages/order/detail?id=A1001",
            "miniprogram_state": "formal",
            "lang": "zh_CN",
            "data": {
                "character_string1": {"value": "A1001"},
                "amount2": {"value": "12.50"},
                "time3": {"value": "2026-11-24 10:00"},
                "thing4": {"value": "感谢您的购买"}
            }
        })
    );
    assert_eq!(sends[0].appid, APPID);
    assert_eq!(app.mock.stats().tokens_issued, 1);
    worker.shutdown().await.unwrap();
    app.cleanup().await;
}
