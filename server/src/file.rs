//! `--config gateway.toml`: every setting of [`SETTINGS`] under its name in lower case without
//! the `GATEWAY_` prefix (`RUST_LOG` is `log`), plus a `[models]` table. The environment
//! overrides the file. Anything the file gets wrong is refused at start with the file, the
//! line and the reason.

use std::collections::{BTreeMap, HashMap};
use std::error::Error;
use std::path::Path;

use serde::Deserialize;
use toml::{Spanned, Value};

use super::table::{Kind, SETTINGS};

/// One model of the `[models]` table. Every check is made while it is read, so an error
/// carries the place of the value that caused it.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The largest `n` (1 to 10; default 10).
    #[serde(default, deserialize_with = "max_images")]
    pub max_images: Option<u32>,
    /// The price of one image when no rule of `prices` applies (default `price_per_image`).
    pub price_per_image: Option<u64>,
    /// The qualities the model takes (default auto, low, medium, high).
    #[serde(default, deserialize_with = "qualities")]
    pub qualities: Option<Vec<String>>,
    /// The upstream's name for the model (default: `upstream_model` for `gpt-image-2`, else
    /// the same name).
    pub upstream_model: Option<String>,
    /// Prices for a size, a quality, or both.
    #[serde(default)]
    pub prices: Vec<PriceConfig>,
    /// The upstream deployments that serve the model (`[[models."NAME".upstreams]]`);
    /// none: the model goes where `GATEWAY_UPSTREAM_URL` (or the reference backend) sends it.
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
    /// Deployments tried per job at most (default 3).
    pub attempts: Option<usize>,
    /// Falls back after a timeout too, though the first deployment may still bill (default
    /// false).
    pub retry_after_timeout: Option<bool>,
    /// Failures within `cooldown_window_secs` that rest a deployment (default 3).
    pub cooldown_failures: Option<u32>,
    /// Default 60.
    pub cooldown_window_secs: Option<u64>,
    /// How long a deployment rests (default 30).
    pub cooldown_secs: Option<u64>,
    /// Charged (at most what the request held) when an upstream refuses a request on
    /// content policy, for upstreams that bill their refusals (default 0: released).
    pub violation_fee: Option<u64>,
}

/// One upstream deployment of a model.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Its base URL (`https://api.openai.com`, with or without `/v1`).
    pub url: String,
    /// Its API key.
    pub key: Option<String>,
    /// The environment variable that holds its API key (instead of `key`).
    pub key_env: Option<String>,
    /// The upstream's name for the model (default: the model's `upstream_model`, or its
    /// name).
    pub model: Option<String>,
    /// Its share of its priority group (default 1).
    pub weight: Option<u32>,
    /// Its group; higher first (default 0).
    pub priority: Option<i32>,
    /// Jobs at once (default unbounded).
    pub max_in_flight: Option<usize>,
    /// One call's bound, connect to last byte (default 300).
    pub timeout_secs: Option<u64>,
    /// The API's shape: `openai` (the default), `azure` (Azure OpenAI's deployment API:
    /// `url` is the deployment's URL) or `gemini` (Gemini's `generateContent`: `url` is the
    /// API's root).
    #[serde(default, deserialize_with = "provider")]
    pub provider: Option<String>,
    /// Azure's `api-version` (default `2025-04-01-preview`).
    pub api_version: Option<String>,
    /// What one image from it costs the operator (metrics only).
    pub cost_per_image: Option<u64>,
    /// Optional fields never sent to this upstream (one that rejects them).
    #[serde(default)]
    pub drop_fields: Vec<String>,
}

fn provider<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let name = String::deserialize(d)?;
    if !matches!(name.as_str(), "openai" | "azure" | "gemini") {
        return Err(serde::de::Error::custom(format!(
            "provider `{name}` is not supported; this version speaks `openai`, `azure` and `gemini`"
        )));
    }
    Ok(Some(name))
}

/// A price rule of a model: `{ size = "1536x1024", quality = "high", price = 12 }`.
#[derive(Clone, Debug)]
pub struct PriceConfig {
    pub size: Option<String>,
    pub quality: Option<String>,
    pub price: u64,
}

/// A price rule as written, before it is checked to name a size or a quality.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrice {
    size: Option<String>,
    quality: Option<String>,
    price: u64,
}

impl<'de> Deserialize<'de> for PriceConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// Checks the rule while its own value is read, so an error is placed at the rule.
        struct Checked;
        impl<'de> serde::de::Visitor<'de> for Checked {
            type Value = PriceConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a price rule: { size, quality, price }")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<PriceConfig, A::Error> {
                let raw = RawPrice::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                PriceConfig::try_from(raw).map_err(serde::de::Error::custom)
            }
        }
        d.deserialize_map(Checked)
    }
}

impl TryFrom<RawPrice> for PriceConfig {
    type Error = String;

    fn try_from(raw: RawPrice) -> Result<Self, String> {
        if raw.size.is_none() && raw.quality.is_none() {
            return Err(format!(
                "the price rule {} names neither a size nor a quality",
                raw.price
            ));
        }
        Ok(PriceConfig {
            size: raw.size,
            quality: raw.quality,
            price: raw.price,
        })
    }
}

fn max_images<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let n = u32::deserialize(d)?;
    if !(1..=10).contains(&n) {
        return Err(serde::de::Error::custom("max_images must be 1 to 10"));
    }
    Ok(Some(n))
}

fn qualities<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    let qualities = Vec::<String>::deserialize(d)?;
    if qualities.is_empty() {
        return Err(serde::de::Error::custom("qualities must not be empty"));
    }
    Ok(Some(qualities))
}

/// The `[models]` table alone, read again from the file's text when a model is refused: the
/// text's reader knows where each value is, so the error names the value's line.
#[derive(Deserialize)]
struct ModelsOnly {
    #[allow(dead_code)]
    #[serde(default)]
    models: BTreeMap<String, ModelConfig>,
}

/// The settings a file gave, each with the line it is on.
#[derive(Default)]
pub struct FileSettings {
    path: String,
    values: HashMap<&'static str, (String, usize)>,
    /// The `[models]` table, by name.
    pub models: BTreeMap<String, ModelConfig>,
}

/// The file key of a setting: `GATEWAY_RATE_LIMIT` is `rate_limit`, `RUST_LOG` is `log`.
pub fn key_of(name: &str) -> String {
    match name.strip_prefix("GATEWAY_") {
        Some(rest) => rest.to_ascii_lowercase(),
        None => "log".to_owned(),
    }
}

impl FileSettings {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<FileSettings, Box<dyn Error>> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the config file {shown}: {e}"))?;
        FileSettings::parse(&shown, &text)
    }

    /// Checks `text` as the file `path`.
    pub fn parse(path: &str, text: &str) -> Result<FileSettings, Box<dyn Error>> {
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let at = |offset: usize, reason: String| -> Box<dyn Error> {
            format!("{path}:{}: {reason}", line_of(offset)).into()
        };
        let table: BTreeMap<String, Spanned<Value>> = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |span| span.start);
            at(offset, e.message().trim().to_owned())
        })?;
        let mut file = FileSettings {
            path: path.to_owned(),
            ..FileSettings::default()
        };
        for (key, value) in table {
            let offset = value.span().start;
            if key == "models" {
                file.models = models(value.into_inner(), |reason| {
                    // The value's own place, when the text's reader finds it.
                    let place = toml::from_str::<ModelsOnly>(text)
                        .err()
                        .and_then(|e| e.span())
                        .map_or(offset, |span| span.start);
                    at(place, reason)
                })?;
                continue;
            }
            let Some(setting) = SETTINGS.iter().find(|s| key_of(s.name) == key) else {
                return Err(at(offset, format!("unknown setting `{key}`")));
            };
            let text = scalar(value.get_ref(), setting.kind)
                .map_err(|reason| at(offset, format!("`{key}` {reason}")))?;
            file.values.insert(setting.name, (text, line_of(offset)));
        }
        Ok(file)
    }

    /// The file's value of the setting `name`, as text.
    pub fn get(&self, name: &str) -> Option<String> {
        self.values.get(name).map(|(value, _)| value.clone())
    }

    /// Where the setting `name` was given, as `path:line`, if the file gave it.
    pub fn location(&self, name: &str) -> Option<String> {
        let (_, line) = self.values.get(name)?;
        Some(format!("{}:{line}", self.path))
    }
}

/// A setting's value as the text its environment variable would hold.
fn scalar(value: &Value, kind: Kind) -> Result<String, String> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Integer(i) if *i >= 0 => i.to_string(),
        Value::Integer(_) => return Err("must not be negative".into()),
        Value::Boolean(b) => if *b { "on" } else { "off" }.to_owned(),
        Value::Array(items) => {
            let mut parts = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(s) if !s.contains(',') => parts.push(s.clone()),
                    _ => return Err("must be a list of strings without commas".into()),
                }
            }
            parts.join(",")
        }
        _ => return Err("must be a string, an integer, a boolean or a list of strings".into()),
    };
    if kind == Kind::Integer {
        // Normalised ("007" is 7), so what `--print-config` writes back is a TOML integer.
        let value: u64 = text
            .parse()
            .map_err(|_| "must be a non-negative integer".to_owned())?;
        return Ok(value.to_string());
    }
    if kind == Kind::Switch && !matches!(text.as_str(), "on" | "off") {
        return Err("must be true or false (or \"on\" / \"off\")".into());
    }
    Ok(text)
}

/// The `[models]` table: each entry a model, checked.
fn models(
    value: Value,
    at: impl Fn(String) -> Box<dyn Error>,
) -> Result<BTreeMap<String, ModelConfig>, Box<dyn Error>> {
    let Value::Table(table) = value else {
        return Err(at("`models` must be a table of models".into()));
    };
    let mut models = BTreeMap::new();
    for (name, entry) in table {
        if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(at(format!(
                "model name `{name}` must be 1 to 64 visible characters"
            )));
        }
        let model: ModelConfig = entry
            .try_into()
            .map_err(|e: toml::de::Error| at(format!("models.{name}: {}", e.message().trim())))?;
        for upstream in &model.upstreams {
            if upstream.key.is_some() && upstream.key_env.is_some() {
                return Err(at(format!(
                    "models.{name}.upstreams: give `key` or `key_env`, not both"
                )));
            }
        }
        models.insert(name, model);
    }
    Ok(models)
}

/// `--print-config`: the effective settings as a file, secrets masked, with where each
/// came from.
pub fn print(lookup: impl Fn(&str) -> Option<(String, String)>, file: &FileSettings) -> String {
    let mut out = String::from("# image-gateway: the effective settings (secrets masked)\n");
    for setting in SETTINGS {
        let key = key_of(setting.name);
        let (value, from) = match lookup(setting.name) {
            Some((value, from)) => (value, from),
            None if setting.default.is_empty() => {
                out.push_str(&format!("# {key} = (unset)\n"));
                continue;
            }
            None => (setting.default.to_owned(), "default".to_owned()),
        };
        let value = mask(setting.name, &value);
        let rendered = if setting.kind == Kind::Integer && value.bytes().all(|b| b.is_ascii_digit())
        {
            value
        } else {
            toml_string(&value)
        };
        out.push_str(&format!("{key} = {rendered}  # {from}\n"));
    }
    for (name, model) in &file.models {
        out.push_str(&format!("\n[models.{}]\n", toml_string(name)));
        if let Some(n) = model.max_images {
            out.push_str(&format!("max_images = {n}\n"));
        }
        if let Some(price) = model.price_per_image {
            out.push_str(&format!("price_per_image = {price}\n"));
        }
        if let Some(fee) = model.violation_fee {
            out.push_str(&format!("violation_fee = {fee}\n"));
        }
        if let Some(qualities) = &model.qualities {
            let list: Vec<String> = qualities.iter().map(|q| toml_string(q)).collect();
            out.push_str(&format!("qualities = [{}]\n", list.join(", ")));
        }
        if let Some(upstream) = &model.upstream_model {
            out.push_str(&format!("upstream_model = {}\n", toml_string(upstream)));
        }
        for (key, value) in [
            ("attempts", model.attempts.map(|v| v.to_string())),
            (
                "retry_after_timeout",
                model.retry_after_timeout.map(|v| v.to_string()),
            ),
            (
                "cooldown_failures",
                model.cooldown_failures.map(|v| v.to_string()),
            ),
            (
                "cooldown_window_secs",
                model.cooldown_window_secs.map(|v| v.to_string()),
            ),
            ("cooldown_secs", model.cooldown_secs.map(|v| v.to_string())),
        ] {
            if let Some(value) = value {
                out.push_str(&format!("{key} = {value}\n"));
            }
        }
        for rule in &model.prices {
            let mut parts = Vec::new();
            if let Some(size) = &rule.size {
                parts.push(format!("size = {}", toml_string(size)));
            }
            if let Some(quality) = &rule.quality {
                parts.push(format!("quality = {}", toml_string(quality)));
            }
            parts.push(format!("price = {}", rule.price));
            out.push_str(&format!(
                "[[models.{}.prices]]\n{}\n",
                toml_string(name),
                parts.join("\n")
            ));
        }
        for upstream in &model.upstreams {
            out.push_str(&format!("[[models.{}.upstreams]]\n", toml_string(name)));
            out.push_str(&format!(
                "url = {}\n",
                toml_string(&mask_url_password(&upstream.url))
            ));
            if upstream.key.is_some() {
                out.push_str("key = \"****\"\n");
            }
            let texts = [
                ("key_env", upstream.key_env.clone()),
                ("model", upstream.model.clone()),
                ("provider", upstream.provider.clone()),
                ("api_version", upstream.api_version.clone()),
            ];
            for (key, value) in texts {
                if let Some(value) = value {
                    out.push_str(&format!("{key} = {}\n", toml_string(&value)));
                }
            }
            let numbers = [
                ("weight", upstream.weight.map(|v| v.to_string())),
                ("priority", upstream.priority.map(|v| v.to_string())),
                (
                    "max_in_flight",
                    upstream.max_in_flight.map(|v| v.to_string()),
                ),
                ("timeout_secs", upstream.timeout_secs.map(|v| v.to_string())),
                (
                    "cost_per_image",
                    upstream.cost_per_image.map(|v| v.to_string()),
                ),
            ];
            for (key, value) in numbers {
                if let Some(value) = value {
                    out.push_str(&format!("{key} = {value}\n"));
                }
            }
            if !upstream.drop_fields.is_empty() {
                let names: Vec<String> = upstream
                    .drop_fields
                    .iter()
                    .map(|f| toml_string(f))
                    .collect();
                out.push_str(&format!("drop_fields = [{}]\n", names.join(", ")));
            }
        }
    }
    out
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A setting's value with its secrets replaced by `****`.
fn mask(name: &str, value: &str) -> String {
    match name {
        "GATEWAY_ADMIN_KEY"
        | "GATEWAY_UPSTREAM_KEY"
        | "GATEWAY_S3_SECRET_ACCESS_KEY"
        | "GATEWAY_MODERATION_KEY" => "****".to_owned(),
        "GATEWAY_API_KEYS" => value
            .split(',')
            .map(|entry| match entry.split_once(':') {
                Some((user, _)) => format!("{}:****", user.trim()),
                None => "****".to_owned(),
            })
            .collect::<Vec<_>>()
            .join(","),
        "GATEWAY_DATABASE_URL" | "GATEWAY_REDIS_URL" => mask_url_password(value),
        _ => value.to_owned(),
    }
}

/// `scheme://user:password@host/...` with the password masked.
fn mask_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((credentials, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match credentials.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:****@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_has_a_file_key_and_a_default_file_loads() {
        let mut text = String::new();
        for setting in SETTINGS {
            if !setting.default.is_empty() {
                let value = if setting.kind == Kind::Integer {
                    setting.default.to_owned()
                } else {
                    toml_string(setting.default)
                };
                text.push_str(&format!("{} = {value}\n", key_of(setting.name)));
            }
        }
        let file = FileSettings::parse("t.toml", &text).unwrap();
        assert_eq!(file.get("GATEWAY_ADDR").as_deref(), Some("127.0.0.1:8080"));
        assert_eq!(file.location("GATEWAY_ADDR").as_deref(), Some("t.toml:1"));
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            (
                "addr = \"x\"\nprise_per_image = 3\n",
                "t.toml:2: unknown setting `prise_per_image`",
            ),
            (
                "\n\nrate_limit = \"fast\"\n",
                "t.toml:3: `rate_limit` must be a non-negative integer",
            ),
            (
                "url_fetch = 1\n",
                "t.toml:1: `url_fetch` must be true or false",
            ),
            ("addr = \n", "t.toml:1:"),
            (
                "price_per_image = -1\n",
                "t.toml:1: `price_per_image` must not be negative",
            ),
            (
                "[models.m]\nprice = 3\n",
                "t.toml:2: models.m: unknown field `price`",
            ),
            (
                "[models.m]\nprice_per_image = 3\n\nmax_images = 11\n",
                "t.toml:4: models.m: max_images must be 1 to 10",
            ),
            (
                "[models.m]\nqualities = []\n",
                "t.toml:2: models.m: qualities must not be empty",
            ),
            (
                "[models.m]\nmax_images = 2\nprices = [\n  { size = \"8x8\", price = 1 },\n  { price = 3 },\n]\n",
                "t.toml:5: models.m: the price rule 3 names neither a size nor a quality",
            ),
            (
                "[models.m]\n[[models.m.upstreams]]\nurl = \"https://a\"\nprovider = \"vertex\"\n",
                "provider `vertex` is not supported",
            ),
            (
                "[models.m]\n[[models.m.upstreams]]\nurl = \"https://a\"\nweight = -1\n",
                "models.m",
            ),
            (
                "[models.m]\n[[models.m.upstreams]]\nurl = \"https://a\"\ndrop_fields = \"user\"\n",
                "models.m",
            ),
            (
                "[models.m]\n[[models.m.upstreams]]\nurl = \"https://a\"\nkey = \"k\"\nkey_env = \"K\"\n",
                "give `key` or `key_env`, not both",
            ),
        ];
        for (text, expected) in cases {
            let error = FileSettings::parse("t.toml", text)
                .err()
                .unwrap()
                .to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn secrets_are_masked() {
        assert_eq!(
            mask("GATEWAY_API_KEYS", "alice:pk_1,bob:pk_2"),
            "alice:****,bob:****"
        );
        assert_eq!(mask("GATEWAY_ADMIN_KEY", "adm"), "****");
        assert_eq!(
            mask("GATEWAY_DATABASE_URL", "postgres://u:secret@h:5432/db"),
            "postgres://u:****@h:5432/db"
        );
        assert_eq!(
            mask("GATEWAY_REDIS_URL", "redis://h:6379"),
            "redis://h:6379"
        );
        // An upstream deployment's key, and a password in its URL.
        let file = FileSettings::parse(
            "t.toml",
            "[models.m]\n[[models.m.upstreams]]\nurl = \"https://u:pw@a\"\nkey = \"sk-secret\"\nweight = 3\n",
        )
        .unwrap();
        let printed = print(|_| None, &file);
        assert!(printed.contains("[[models.\"m\".upstreams]]"), "{printed}");
        assert!(printed.contains("key = \"****\"") && printed.contains("weight = 3"));
        assert!(
            !printed.contains("sk-secret") && !printed.contains(":pw@"),
            "{printed}"
        );
    }
}
