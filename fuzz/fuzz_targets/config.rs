//! mirari.toml: any text gives a config or a `ConfigError`, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mirari_core::config::AppConfig;

fuzz_target!(|text: &str| {
    if let Err(error) = AppConfig::parse("fuzz/mirari.toml", text) {
        // The error says where: rendering it must not panic either.
        let _ = error.to_string();
    }
});
