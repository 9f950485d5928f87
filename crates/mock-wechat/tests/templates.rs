//! gettemplate and the templates sends are checked against, over real HTTP: the listing's
//! documented shape (content, example, type, keywordEnumValueList), enum keys enforced with
//! 47003, unknown template ids with 40037, and the control API's template body.

mod support;

use serde_json::{Value, json};
use support::{Api, OPENID, errcode};
use wxpush_mock_wechat::{MockOptions, TemplateDef};

/// An emulator and a token for it: every test here reads or sends with one.
async fn start() -> (Api, String) {
    let api = Api::start(MockOptions::default()).await;
    let token = api.token().await;
    (api, token)
}

fn message(template_id: &str, data: Value) -> Value {
    json!({"touser": OPENID, "template_id": template_id, "data": data})
}

/// The documentation's second example (a long-term template with two enum keys), as the
/// emulator would hold it.
fn washer() -> TemplateDef {
    TemplateDef::new("cy_DfOZL7lypxHh3ja3DyAUbn1GYQRGwezuy5LBTFME", &["time1"])
        .title("洗衣机故障提醒")
        .label("time1", "完成时间")
        .enum_key("enum_string2", &["客厅", "餐厅", "厨房"])
        .label("enum_string2", "所在位置")
        .enum_key("enum_string3", &["设备发生故障，导致工作异常，请及时查看"])
        .label("enum_string3", "提示说明")
        .long_term()
}

#[tokio::test]
async fn gettemplate_lists_the_registered_templates_in_wechats_shape() {
    let (api, token) = start().await;
    let empty = api.gettemplate(&token).await;
    assert_eq!(empty, json!({"errcode": 0, "errmsg": "ok", "data": []}));

    api.server
        .add_template(
            TemplateDef::new("TPL_ORDER_PAID", &["character_string1", "amount2"])
                .title("订单支付成功通知")
                .label("character_string1", "订单号"),
        )
        .unwrap();
    api.server.add_template(washer()).unwrap();
    let listed = api.gettemplate(&token).await;
    assert_eq!(listed["errcode"], 0);
    assert_eq!(
        listed["data"],
        json!([
            {
                "priTmplId": "TPL_ORDER_PAID",
                "title": "订单支付成功通知",
                "content": "订单号:{{character_string1.DATA}}\n金额:{{amount2.DATA}}\n",
                "example": "订单号:A1001\n金额:¥12.50元\n",
                "type": 2
            },
            {
                "priTmplId": "cy_DfOZL7lypxHh3ja3DyAUbn1GYQRGwezuy5LBTFME",
                "title": "洗衣机故障提醒",
                "content": "完成时间:{{time1.DATA}}\n所在位置:{{enum_string2.DATA}}\n提示说明:{{enum_string3.DATA}}\n",
                "example": "完成时间:2019年10月1日 15:01\n所在位置:客厅\n提示说明:设备发生故障，导致工作异常，请及时查看\n",
                "type": 3,
                "keywordEnumValueList": [
                    {"keywordCode": "enum_string2.DATA", "enumValueList": ["客厅", "餐厅", "厨房"]},
                    {"keywordCode": "enum_string3.DATA", "enumValueList": ["设备发生故障，导致工作异常，请及时查看"]}
                ]
            }
        ])
    );
    assert_eq!(api.server.stats().gettemplate_calls, 2);
}

#[tokio::test]
async fn gettemplate_checks_the_token() {
    let (api, token) = start().await;
    assert_eq!(errcode(&api.gettemplate("nope").await), 40001);
    assert_eq!(errcode(&api.gettemplate("a b").await), 40014);
    api.server.expire_all_tokens();
    assert_eq!(errcode(&api.gettemplate(&token).await), 42001);
    let stats = api.server.stats();
    assert_eq!(stats.errcode_counts.get("40001"), Some(&1));
}

#[tokio::test]
async fn sends_must_give_enum_keys_a_listed_value() {
    let (api, token) = start().await;
    api.server.add_template(washer()).unwrap();
    let id = washer().template_id;
    let good = json!({
        "time1": {"value": "15:01"},
        "enum_string2": {"value": "厨房"},
        "enum_string3": {"value": "设备发生故障，导致工作异常，请及时查看"}
    });
    assert_eq!(
        errcode(&api.send(&token, &message(&id, good.clone())).await),
        0
    );

    let mut off_list = good.clone();
    off_list["enum_string2"]["value"] = json!("阳台");
    let refused = api.send(&token, &message(&id, off_list)).await;
    assert_eq!(errcode(&refused), 47003);
    assert!(
        refused["errmsg"]
            .as_str()
            .unwrap()
            .starts_with("argument invalid! data.enum_string2.value invalid rid: "),
        "{refused}"
    );
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("enum_string3");
    assert_eq!(
        errcode(&api.send(&token, &message(&id, missing)).await),
        47003
    );
    assert_eq!(
        errcode(&api.send(&token, &message("TPL_UNKNOWN", good)).await),
        40037
    );
}

#[tokio::test]
async fn add_template_refuses_bad_definitions() {
    let (api, token) = start().await;
    let err = api
        .server
        .add_template(TemplateDef::new("T", &["enum_string1"]))
        .unwrap_err();
    assert!(err.contains("enum_string1"), "{err}");
    assert_eq!(
        api.gettemplate(&token).await["data"],
        json!([]),
        "nothing registered"
    );
}

#[tokio::test]
async fn the_control_api_takes_title_type_enums_and_labels() {
    let (api, token) = start().await;
    let (status, _) = api
        .control(
            "templates",
            json!({
                "template_id": "TPL_ROOM",
                "keys": ["thing1", "enum_string2"],
                "title": "房间提醒",
                "type": 3,
                "enums": {"enum_string2": ["客厅", "餐厅"]},
                "labels": {"thing1": "备注"}
            }),
        )
        .await;
    assert_eq!(status, 200);
    let listed = api.gettemplate(&token).await;
    assert_eq!(listed["data"][0]["type"], 3);
    assert_eq!(listed["data"][0]["title"], "房间提醒");
    assert_eq!(
        listed["data"][0]["content"],
        "备注:{{thing1.DATA}}\n选项:{{enum_string2.DATA}}\n"
    );
    let data = json!({"thing1": {"value": "x"}, "enum_string2": {"value": "客厅"}});
    assert_eq!(
        errcode(&api.send(&token, &message("TPL_ROOM", data)).await),
        0
    );

    for (body, says) in [
        (
            json!({"template_id": "T", "keys": ["thing1"], "type": 1}),
            "type 1",
        ),
        (
            json!({"template_id": "T", "keys": ["enum_string1"]}),
            "needs its values",
        ),
        (
            json!({"template_id": "T", "keys": ["thing1"], "enums": {"thing2": ["a"]}}),
            "not one of the keys",
        ),
    ] {
        let (status, answer) = api.control("templates", body.clone()).await;
        assert_eq!(status, 400, "{body}");
        assert!(answer["error"].as_str().unwrap().contains(says), "{answer}");
    }
}
