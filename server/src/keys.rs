//! The API keys: `GATEWAY_API_KEYS`, or one demo user whose key outlives restarts.

use std::error::Error;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use image_gateway::auth::{StaticKeys, UserId};
use rand::distributions::{Alphanumeric, DistString};

/// The demo user's key file, inside the data dir.
const DEMO_KEY_FILE: &str = "demo-key";

/// The demo key, and whether this start made it.
pub struct DemoKey {
    pub key: String,
    pub new: bool,
}

/// The configured keys, checked: each user id valid, no key listed twice.
pub struct Keys {
    pub entries: Vec<(UserId, String)>,
    /// The demo key, when `GATEWAY_API_KEYS` is unset.
    pub demo: Option<DemoKey>,
}

impl Keys {
    /// The keys as a fixed in-process list.
    pub fn to_static(&self) -> Result<StaticKeys, Box<dyn Error>> {
        let mut keys = StaticKeys::new();
        for (user, key) in &self.entries {
            keys = keys.with_key(user.as_str(), key)?;
        }
        Ok(keys)
    }

    /// Every user with a key.
    pub fn users(&self) -> impl Iterator<Item = &UserId> {
        self.entries.iter().map(|(user, _)| user)
    }
}

/// The keys of `GATEWAY_API_KEYS` (`user:key,user:key`), or, when it is unset, the demo user
/// with the key kept in `data_dir` (made on the first start).
pub fn keys(list: Option<&str>, data_dir: &Path) -> Result<Keys, Box<dyn Error>> {
    let Some(list) = list else {
        let demo = demo_key(data_dir)?;
        return Ok(Keys {
            entries: vec![(UserId::new("demo")?, demo.key.clone())],
            demo: Some(demo),
        });
    };
    let mut entries = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for entry in list.split(',') {
        let (user, key) = entry
            .trim()
            .split_once(':')
            .ok_or("GATEWAY_API_KEYS must be user:key,user:key")?;
        let (user, key) = (user.trim(), key.trim());
        if user.is_empty() || key.is_empty() {
            return Err("GATEWAY_API_KEYS has an entry with an empty user or key".into());
        }
        // Two users with one key would make the second unreachable, and the key ambiguous.
        if !seen.insert(key) {
            return Err(format!("GATEWAY_API_KEYS lists one key twice (for user `{user}`)").into());
        }
        let user =
            UserId::new(user).map_err(|e| format!("GATEWAY_API_KEYS: user `{user}`: {e}"))?;
        entries.push((user, key.to_owned()));
    }
    Ok(Keys {
        entries,
        demo: None,
    })
}

/// The demo key from `data_dir/demo-key`, or a fresh one written there first. The file is
/// created readable by its owner only, and in one step (`create_new`), so two processes
/// starting on one data dir cannot both write a key.
fn demo_key(data_dir: &Path) -> Result<DemoKey, Box<dyn Error>> {
    let path = data_dir.join(DEMO_KEY_FILE);
    let describe = |e: io::Error| format!("cannot keep the demo key in {}: {e}", path.display());
    match fs::read_to_string(&path) {
        Ok(text) => {
            let key = text.trim();
            if !is_demo_key(key) {
                return Err(format!(
                    "{} does not hold a demo key (pk_live_ and 32 letters or digits); \
                     delete it to make a new one",
                    path.display()
                )
                .into());
            }
            return Ok(DemoKey {
                key: key.to_owned(),
                new: false,
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(describe(e).into()),
    }
    let key = format!(
        "pk_live_{}",
        Alphanumeric.sample_string(&mut rand::thread_rng(), 32)
    );
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = match options.open(&path) {
        Ok(file) => file,
        // Another process made it between the read and the create: use theirs.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return demo_key(data_dir),
        Err(e) => return Err(describe(e).into()),
    };
    file.write_all(format!("{key}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(describe)?;
    Ok(DemoKey { key, new: true })
}

fn is_demo_key(key: &str) -> bool {
    key.strip_prefix("pk_live_")
        .is_some_and(|rest| rest.len() == 32 && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
}
