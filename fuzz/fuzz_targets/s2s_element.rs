#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| xmppfed_gateway::fuzz::s2s_element(data));
