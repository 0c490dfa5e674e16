//! The binary's `--config` file: any text is a checked set of settings or an error naming a
//! line, never a panic; what `--print-config` writes of an accepted file reads back as the
//! same settings (secrets aside: they print masked).
#![no_main]

#[path = "../../server/src/table.rs"]
#[allow(dead_code)]
mod table;

#[path = "../../server/src/file.rs"]
#[allow(dead_code)]
mod file;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = match file::FileSettings::parse("f.toml", text) {
        Ok(parsed) => parsed,
        Err(error) => {
            assert!(error.to_string().starts_with("f.toml:"), "{error}");
            return;
        }
    };
    let printed = file::print(|name| Some((parsed.get(name)?, "f".to_owned())), &parsed);
    let again = file::FileSettings::parse("p.toml", &printed).unwrap_or_else(|e| {
        panic!("--print-config wrote a file that does not read: {e}\n{printed}")
    });
    for setting in table::SETTINGS {
        let secret = matches!(
            setting.name,
            "GATEWAY_API_KEYS"
                | "GATEWAY_ADMIN_KEY"
                | "GATEWAY_UPSTREAM_KEY"
                | "GATEWAY_S3_SECRET_ACCESS_KEY"
                | "GATEWAY_DATABASE_URL"
                | "GATEWAY_REDIS_URL"
        );
        let given = parsed.get(setting.name);
        if !secret && given.is_some() {
            assert_eq!(given, again.get(setting.name), "{}", setting.name);
        }
    }
    assert_eq!(parsed.models.len(), again.models.len());
});
