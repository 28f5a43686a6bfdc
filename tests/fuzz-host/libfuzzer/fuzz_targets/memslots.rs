#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| kvm_rs_fuzz_host::memslots(data));
