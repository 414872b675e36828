#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| primacy::fuzzing::srt_stream_id(data));
