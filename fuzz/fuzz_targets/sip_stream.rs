#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| xmppfed_gateway::fuzz::sip_stream(data));
