//! Config parsing (`snaprtcd::config::Config::from_toml`): TOML, serde, validation and the
//! `file:line:col` error positions.
//!
//! The input is the file's text. Invariants, besides not panicking (errors included, which
//! slice the text to find a line and column): a config that loads prints (`print-config`,
//! `Config::to_toml`) as TOML that loads back to the same config.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snaprtcd::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml(text, "fuzz.toml") {
        Ok(config) => {
            let printed = config.to_toml();
            let back = Config::from_toml(&printed, "print-config")
                .unwrap_or_else(|e| panic!("print-config output does not load: {e}\n{printed}"));
            assert_eq!(back, config, "print-config output loads as another config");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
