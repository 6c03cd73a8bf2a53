#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rkube_apiserver::fuzzing::strategic_patch(data));
