//! Any bytes as a template pattern and as event data: parsing and rendering never panic,
//! and whatever renders under `truncate` passes its key type's rule.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wxpush::template::pattern::Pattern;
use wxpush::template::render::render;
use wxpush::template::rules::KeyType;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (pattern_text, value) = text.split_once('\n').unwrap_or((&text, ""));
    let Ok(pattern) = Pattern::parse(pattern_text) else {
        return;
    };
    let mut fields = serde_json::Map::new();
    for field in pattern.fields() {
        fields.insert(field.split('.').next().unwrap_or("").to_owned(), value.into());
    }
    if let Ok(Some(rendered)) = render(&pattern, &fields) {
        for kind in [KeyType::Thing, KeyType::Name, KeyType::Phrase, KeyType::Symbol] {
            let cut = kind.truncate(&rendered);
            assert!(cut.chars().count() <= kind.limit_for(&rendered).max(kind.limit_for(&cut)));
        }
    }
});
