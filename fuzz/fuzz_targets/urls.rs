#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| primacy::fuzzing::urls(data));
