#![no_main]
libfuzzer_sys::fuzz_target!(
    init: mscope_fuzz::let_tokenizers_panics_unwind(),
    |data: &[u8]| mscope_fuzz::tokenizer(data)
);
