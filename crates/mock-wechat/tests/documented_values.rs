//! WeChat's documented value rules, row by row, against the emulator: each key type's
//! longest accepted value, one character over, the documentation's own examples and values
//! the documentation rules out. Sources: the table "订阅消息参数值内容限制说明" on
//! subscribeMessage.send and the notes under it (see `src/value_rules.rs`).
//!
//! Every case is asserted twice: through [`accepts_value`] and through a real
//! subscribe/send, where a refusal must be WeChat's 47003 naming the key. Nothing here
//! comes from the product's rules.

mod support;

use serde_json::json;
use support::{Api, OPENID};
use wxpush_mock_wechat::{MockOptions, accepts_value};

/// One documented case: the key, the value and whether WeChat accepts it, with why.
struct Case {
    key: &'static str,
    value: String,
    accepted: bool,
    why: &'static str,
}

fn ok(key: &'static str, value: impl Into<String>, why: &'static str) -> Case {
    Case {
        key,
        value: value.into(),
        accepted: true,
        why,
    }
}

fn refused(key: &'static str, value: impl Into<String>, why: &'static str) -> Case {
    Case {
        key,
        value: value.into(),
        accepted: false,
        why,
    }
}

fn cases() -> Vec<Case> {
    vec![
        // thing.DATA | 20个以内字符 | 可汉字、数字、字母或符号组合
        ok("thing1", "订".repeat(20), "20 Chinese characters"),
        refused("thing1", "订".repeat(21), "21 characters"),
        ok(
            "thing1",
            "a".repeat(20),
            "20 letters: the limit counts characters",
        ),
        ok("thing1", "😀".repeat(20), "20 emoji: characters, not bytes"),
        ok(
            "thing1",
            "订单A1001已付款, 请取货!",
            "Chinese, digits, letters and symbols",
        ),
        refused("thing1", "line\nbreak", "no control characters"),
        refused("thing1", "", "empty"),
        // number.DATA | 32位以内数字 | 只能数字，可带小数
        ok("number1", "9".repeat(32), "32 digits"),
        refused("number1", "9".repeat(33), "33 digits"),
        ok("number1", "339208499", "the send page's request example"),
        ok("number1", "12.5", "decimals"),
        ok(
            "number1",
            format!("{}.5", "1".repeat(30)),
            "32 characters with the point",
        ),
        refused("number1", "-12", "only digits: no sign"),
        refused("number1", "12a", "a letter"),
        refused("number1", "1.2.3", "two points"),
        refused("number1", ".5", "a point without digits before it"),
        refused("number1", "5.", "a point without digits after it"),
        // letter.DATA | 32位以内字母 | 只能字母
        ok("letter1", "a".repeat(32), "32 letters"),
        refused("letter1", "a".repeat(33), "33 letters"),
        ok("letter1", "AbCdEf", "letters of both cases"),
        refused("letter1", "abc1", "a digit"),
        refused("letter1", "ab cd", "a space"),
        refused("letter1", "café", "é is not an English letter"),
        // symbol.DATA | 5位以内符号 | 只能符号
        ok("symbol1", "!@#$%", "5 symbols"),
        refused("symbol1", "!@#$%^", "6 symbols"),
        ok("symbol1", "￥…，。✓", "symbols beyond ASCII"),
        refused("symbol1", "!a", "a letter"),
        refused("symbol1", "!1", "a digit"),
        refused("symbol1", "! !", "a space"),
        refused("symbol1", "!\u{200B}", "an invisible zero-width space"),
        // character_string.DATA | 32位以内数字、字母或符号 | 可数字、字母或符号组合
        ok("character_string1", "A".repeat(32), "32 characters"),
        refused("character_string1", "A".repeat(33), "33 characters"),
        ok(
            "character_string1",
            "A-1001/b_2#",
            "digits, letters and symbols",
        ),
        ok("character_string1", "No.1￥", "a symbol beyond ASCII"),
        refused("character_string1", "订单1", "a Chinese character"),
        refused("character_string1", "A 1", "a space"),
        refused("character_string1", "A\t1", "a tab"),
        refused("character_string1", "A\u{200B}1", "a zero-width space"),
        // time.DATA | 24小时制时间格式（支持+年月日），支持填时间段，两个时间点之间用“~”符号连接
        //   | 例如：15:01，或：2019年10月1日 15:01
        ok("time1", "15:01", "the documented example"),
        ok(
            "time1",
            "2019年10月1日 15:01",
            "the documented example with a date",
        ),
        ok("time1", "15:01:59", "HH:MM:SS (notes)"),
        ok("time1", "2026-11-24 10:00", "a date in the 2018-01-01 form"),
        ok("time1", "15:01~16:30", "a range"),
        ok(
            "time1",
            "2019年10月10日 15:01:01 ~ 2019年10月10日 15:01:01",
            "the longest documented shape",
        ),
        refused("time1", "24:00", "24-hour: hours 00 to 23"),
        refused("time1", "15:60", "minutes 00 to 59"),
        refused("time1", "5:01", "HH: two digits"),
        refused("time1", "2019年10月1日", "a date without a time"),
        refused("time1", "15:01~", "a range with one point"),
        refused("time1", "15:01~16:00~17:00", "three points"),
        refused("time1", "下午3点", "not the 24-hour format"),
        // date.DATA | 年月日格式（支持+24小时制时间），支持填时间段
        //   | 例如：2019年10月1日，或：2019年10月1日 15:01
        ok("date1", "2019年10月1日", "the documented example"),
        ok(
            "date1",
            "2019年10月1日 15:01",
            "the documented example with a time",
        ),
        ok("date1", "2015年01月05日", "the send page's request example"),
        ok("date1", "2018-01-01", "notes: joined by -"),
        ok("date1", "2018/01/01", "notes: joined by /"),
        ok("date1", "2018.01.01", "notes: joined by ."),
        ok("date1", "2018-01", "notes: year and month"),
        ok("date1", "01-01", "notes: month and day"),
        ok("date1", "2019年10月", "notes: y年m月"),
        ok("date1", "10月1日", "notes: m月d日"),
        ok("date1", "2019年10月1日~2019年10月7日", "a range"),
        ok(
            "date1",
            "2018-01-01 08:00 ~ 2018-01-02 18:00",
            "a range with times",
        ),
        refused("date1", "2018-13-01", "month 1 to 12"),
        refused("date1", "2018-01-32", "day 1 to 31"),
        refused("date1", "2018-01/01", "one separator per date"),
        refused("date1", "18-01-01", "a year has 4 digits"),
        refused("date1", "15:01", "a time without a date"),
        refused("date1", "2019年", "a year alone"),
        refused("date1", "tomorrow", "not a date"),
        // amount.DATA | 1个币种符号+10位以内纯数字，可带小数，结尾可带“元” | 可带小数
        ok("amount1", "¥1234567890", "a currency symbol and 10 digits"),
        refused("amount1", "¥12345678901", "11 digits"),
        ok("amount1", "1234567890.99元", "10 digits, decimals and 元"),
        ok("amount1", "12.50", "no currency symbol"),
        ok("amount1", "￥12.50", "the fullwidth yuan sign"),
        ok("amount1", "$3", "a dollar"),
        ok("amount1", "€0.5", "a euro"),
        refused("amount1", "¥¥1", "one currency symbol, not two"),
        refused("amount1", "-12.50", "pure digits: no sign"),
        refused("amount1", "12.50¥", "the symbol goes first"),
        refused("amount1", "1,000.00", "no thousands separators"),
        refused("amount1", "twelve", "not digits"),
        // phone_number.DATA | 17位以内，数字、符号 | 电话号码，例：+86-0766-66888866
        ok(
            "phone_number1",
            "+86-0766-66888866",
            "the documented example, 17 characters",
        ),
        refused("phone_number1", "+86-0766-668888669", "18 characters"),
        ok("phone_number1", "(0766)6688#102", "other symbols"),
        refused("phone_number1", "0766 66888866", "a space is not a symbol"),
        refused("phone_number1", "ext.123", "letters"),
        // car_number.DATA | 8位以内，第一位与最后一位可为汉字，其余为字母或数字 | 车牌号码：粤A8Z888挂
        ok("car_number1", "粤A8Z888挂", "the documented example"),
        ok(
            "car_number1",
            "粤AD12345",
            "8 characters (a new-energy plate)",
        ),
        refused("car_number1", "粤AD123456", "9 characters"),
        ok("car_number1", "A8Z888", "letters and digits only"),
        refused(
            "car_number1",
            "粤A粤888挂",
            "a Chinese character in the middle",
        ),
        refused("car_number1", "粤A-8888", "a symbol"),
        // name.DATA | 10个以内纯汉字或20个以内纯字母或符号 | 中文名10个汉字内；纯英文名20个字母内；
        //   中文和字母混合按中文名算，10个字内
        ok("name1", "欧阳".repeat(5), "10 Chinese characters"),
        refused(
            "name1",
            format!("{}欧", "欧阳".repeat(5)),
            "11 Chinese characters",
        ),
        ok("name1", "a".repeat(20), "20 letters"),
        refused("name1", "a".repeat(21), "21 letters"),
        ok(
            "name1",
            "Alexander Hamilton",
            "an English name with a space",
        ),
        ok("name1", "Mary-Jane O'Brien-Sm", "letters with symbols: 20"),
        refused("name1", "Mary-Jane O'Brien-Smi", "letters with symbols: 21"),
        ok("name1", "李Lee", "Chinese and letters"),
        refused(
            "name1",
            "李abcdefghij",
            "Chinese and letters count as Chinese: 11",
        ),
        ok("name1", "阿卜杜·热合曼", "a Chinese name with a middle dot"),
        refused("name1", "Agent 007", "digits"),
        // phrase.DATA | 5个以内汉字 | 5个以内纯汉字，例如：配送中
        ok("phrase1", "配送中", "the documented example"),
        ok("phrase1", "已完成配送", "5 Chinese characters"),
        refused("phrase1", "已完成配送了", "6 Chinese characters"),
        refused("phrase1", "paid", "letters"),
        refused("phrase1", "配送中!", "a symbol"),
        // A key that names no type.
        refused("colour1", "red", "no such type"),
        // enum.DATA | 枚举值 | 只能上传枚举值范围内的字段值: a documented type, named
        // enum_string in getTemplateList's example; the list is the template's.
        ok(
            "enum_string2",
            "客厅",
            "an enum value (getTemplateList's example)",
        ),
        ok("enum1", "a", "the table's own name for the type"),
        refused("enum_string2", "", "empty"),
    ]
}

/// getTemplateList's example: `enum_string2` takes only its template's
/// `keywordEnumValueList` (客厅, 餐厅, … 其他房间).
#[test]
fn enum_values_are_the_templates_list() {
    use wxpush_mock_wechat::value_rules::{Reason, accepts_enum};
    let rooms = ["客厅", "餐厅", "厨房", "卧室", "其他房间"];
    assert_eq!(accepts_enum("客厅", &rooms), Ok(()));
    assert_eq!(accepts_enum("其他房间", &rooms), Ok(()));
    assert_eq!(accepts_enum("阁楼", &rooms), Err(Reason::NotListed));
    assert_eq!(accepts_enum("客厅 ", &rooms), Err(Reason::NotListed));
}

#[test]
fn documented_values_through_accepts_value() {
    let mut wrong = Vec::new();
    for case in cases() {
        if accepts_value(case.key, &case.value) != case.accepted {
            wrong.push(format!(
                "{} = {:?}: expected {} ({})",
                case.key,
                case.value,
                if case.accepted { "accepted" } else { "refused" },
                case.why
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test]
async fn documented_values_through_subscribe_send() {
    let api = Api::start(MockOptions::default()).await;
    let token = api.token().await;

    let mut wrong = Vec::new();
    for case in cases() {
        let body = json!({
            "touser": OPENID,
            "template_id": "TPL",
            "data": {case.key: {"value": case.value}},
        });
        let answer = api.send(&token, &body).await;
        let expected_errmsg = format!("argument invalid! data.{}.value invalid rid: ", case.key);
        let as_expected = if case.accepted {
            answer["errcode"] == 0
        } else {
            answer["errcode"] == 47003
                && answer["errmsg"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(&expected_errmsg))
        };
        if !as_expected {
            wrong.push(format!(
                "{} = {:?} ({}): {answer}",
                case.key, case.value, case.why
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let accepted = cases().iter().filter(|c| c.accepted).count();
    assert_eq!(api.server.stats().sends_ok, accepted as u64);
    api.server.shutdown().await;
}
