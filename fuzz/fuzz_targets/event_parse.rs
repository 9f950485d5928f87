//! Any bytes as an event body: parsing returns an event or an error, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wxpush::event::Event::parse(data);
    let _ = wxpush::event::peek(data);
});
