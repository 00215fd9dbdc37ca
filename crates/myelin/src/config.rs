//! Loading the configuration: defaults, then the TOML file, then `MYELIN_*` environment
//! variables (`__` nests). Any problem becomes one [`ConfigError`] line that names the key.

use std::path::{Path, PathBuf};

use figment::{
    Figment,
    providers::{Env, Format, Toml},
};
use myelin_service::Config;

/// The top-level keys of the configuration, taken from the type itself so that a new section
/// can never be forgotten here. Environment variables outside them (such as the test harness's
/// `MYELIN_TEST_DATABASE_URL`) are not configuration and are ignored rather than rejected.
fn top_level_keys() -> Vec<String> {
    match serde_json::to_value(Config::default()) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// A configuration that cannot be used, described in one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Loads and validates the configuration. Reads the file (if given) and the environment; touches
/// nothing else on disk.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    load_from(path, Env::prefixed("MYELIN_"))
}

fn load_from(path: Option<&Path>, env: Env) -> Result<Config, ConfigError> {
    let mut figment = Figment::new();
    if let Some(path) = path {
        let text = std::fs::read_to_string(path).map_err(|err| {
            ConfigError(format!(
                "config file {}: cannot read it: {err}",
                path.display()
            ))
        })?;
        figment = figment.merge(Toml::string(&text));
    }
    let known = top_level_keys();
    let env = env.split("__").filter(move |key| {
        let top = key.as_str().split('.').next().unwrap_or_default();
        known.iter().any(|known| top.eq_ignore_ascii_case(known))
    });
    figment = figment.merge(env);
    let config: Config = figment.extract().map_err(|err| describe(err, path))?;
    config
        .validate()
        .map_err(|problem| ConfigError(format!("config error: {problem}")))?;
    Ok(config)
}

/// One line for the first error figment found: the full key, what is wrong, and where it came
/// from.
fn describe(err: figment::Error, path: Option<&Path>) -> ConfigError {
    use figment::error::Kind;
    let Some(err) = err.into_iter().next() else {
        return ConfigError("config error: unknown problem".to_owned());
    };
    // figment's path already ends with the offending field.
    let key = if err.path.is_empty() {
        "(top level)".to_owned()
    } else {
        err.path.join(".")
    };
    let source = match (&err.metadata, path) {
        (Some(metadata), _) if metadata.name.contains("environment") => {
            format!(" (from {})", metadata.name)
        }
        (_, Some(path)) => format!(" (in {})", path.display()),
        (Some(metadata), None) => format!(" (from {})", metadata.name),
        (None, None) => String::new(),
    };
    let problem = match &err.kind {
        Kind::UnknownField(field, _) => format!("unknown key `{field}`"),
        other => other.to_string(),
    };
    ConfigError(format!("config error: key `{key}`: {problem}{source}").replace('\n', " "))
}

/// The default config file path, if one exists where operators usually put it.
pub fn default_path() -> Option<PathBuf> {
    let candidate = PathBuf::from("myelin.toml");
    candidate.exists().then_some(candidate)
}

#[cfg(test)]
// figment's Jail closures return its large error type; that is its API, not ours.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    fn no_env() -> Env {
        Env::prefixed("MYELIN_TEST_NOTHING_SET_")
    }

    fn load_text(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("myelin.toml");
        std::fs::write(&path, text).unwrap();
        load_from(Some(&path), no_env())
    }

    #[test]
    fn no_file_gives_defaults() {
        assert_eq!(load_from(None, no_env()).unwrap(), Config::default());
    }

    #[test]
    fn example_config_is_the_defaults() {
        assert_eq!(load_text(crate::EXAMPLE_CONFIG).unwrap(), Config::default());
    }

    #[test]
    fn federation_settings_parse_and_bad_overrides_are_named() {
        let config = load_text(
            "[federation]\nallow_private_addresses = true\nverify_certificates = false\n\
             trusted_ca_files = [\"/ca.pem\"]\ntrusted_key_servers = [\"notary.org\"]\n\
             destination_overrides = { \"hs1\" = \"127.0.0.2:8448\", \"other\" = \"::1\" }\n",
        )
        .unwrap();
        assert!(config.federation.allow_private_addresses);
        assert!(!config.federation.verify_certificates);
        assert_eq!(
            config.federation.trusted_key_servers[0].as_str(),
            "notary.org"
        );
        assert_eq!(
            config.federation.destination_overrides["hs1"],
            "127.0.0.2:8448"
        );
        let err = load_text("[federation]\ndestination_overrides = { \"hs1\" = \"hs2:8448\" }\n")
            .unwrap_err();
        assert!(err.0.contains("federation.destination_overrides"), "{err}");
    }

    #[test]
    fn instance_name_defaults_to_main_and_must_be_a_plain_name() {
        assert_eq!(load_text("").unwrap().instance_name, "main");
        assert_eq!(
            load_text("instance_name = \"worker-2.eu\"\n")
                .unwrap()
                .instance_name,
            "worker-2.eu"
        );
        // The lease owner is `<instance>/<boot>`: a `/` would let one instance's name be
        // another's prefix.
        for bad in ["", "a/b", "with space", &"x".repeat(65)] {
            let err = load_text(&format!("instance_name = {bad:?}\n")).unwrap_err();
            assert!(err.0.contains("key `instance_name`"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let err = load_text("[database]\nurll = \"sqlite://x\"\n").unwrap_err();
        assert!(err.0.contains("key `database.urll`"), "{err}");
        assert!(err.0.contains("unknown key"), "{err}");
        let err = load_text("sever_name = \"a\"\n").unwrap_err();
        assert!(err.0.contains("key `sever_name`"), "{err}");
    }

    #[test]
    fn wrong_type_is_named() {
        let err = load_text("[database]\nmax_connections = \"many\"\n").unwrap_err();
        assert!(err.0.contains("key `database.max_connections`"), "{err}");
        let err = load_text("[listen]\nclient = 8008\n").unwrap_err();
        assert!(err.0.contains("key `listen.client`"), "{err}");
    }

    #[test]
    fn invalid_server_name_is_named() {
        let err = load_text("server_name = \"not a server name\"\n").unwrap_err();
        assert!(err.0.contains("key `server_name`"), "{err}");
    }

    #[test]
    fn validation_problems_are_named() {
        let err = load_text("[database]\nurl = \"mysql://x\"\n").unwrap_err();
        assert!(err.0.contains("key `database.url`"), "{err}");
        let err = load_text("[tls]\ncertificate = \"/x.pem\"\n").unwrap_err();
        assert!(err.0.contains("key `tls.private_key`"), "{err}");
    }

    #[test]
    fn unreadable_file_is_reported() {
        let err = load_from(Some(Path::new("/nonexistent/myelin.toml")), no_env()).unwrap_err();
        assert!(err.0.contains("/nonexistent/myelin.toml"), "{err}");
    }

    #[test]
    fn syntax_error_is_reported_on_one_line() {
        let err = load_text("server_name = \n[[[").unwrap_err();
        assert!(!err.0.contains('\n'), "{err}");
        assert!(err.0.starts_with("config error"), "{err}");
    }

    #[test]
    fn environment_overrides_file_and_nests_with_double_underscore() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("myelin.toml", "server_name = \"file.example\"\n")?;
            jail.set_env("MYELIN_SERVER_NAME", "env.example");
            jail.set_env("MYELIN_DATABASE__MAX_CONNECTIONS", "3");
            jail.set_env("MYELIN_LISTEN__CLIENT", "127.0.0.9:9999");
            // Not configuration: must be ignored rather than rejected as unknown.
            jail.set_env("MYELIN_TEST_DATABASE_URL", "postgres://x");
            let config = load(Some(Path::new("myelin.toml"))).map_err(|e| e.0)?;
            assert_eq!(config.server_name.as_str(), "env.example");
            assert_eq!(config.database.max_connections, 3);
            assert_eq!(config.listen.client.to_string(), "127.0.0.9:9999");
            Ok(())
        });
    }

    #[test]
    fn every_section_can_be_set_from_the_environment() {
        let sections = top_level_keys();
        for section in ["registration", "passwords", "sessions", "database", "http"] {
            assert!(
                sections.iter().any(|s| s == section),
                "{section} missing from {sections:?}"
            );
        }
        figment::Jail::expect_with(|jail| {
            jail.set_env("MYELIN_REGISTRATION__ENABLED", "maybe");
            let err = load(None).unwrap_err();
            assert!(err.0.contains("key `registration.enabled`"), "{err}");
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.set_env("MYELIN_REGISTRATION__ENABLED", "true");
            jail.set_env("MYELIN_PASSWORDS__ITERATIONS", "3");
            let config = load(None).map_err(|e| e.0)?;
            assert!(config.registration.enabled);
            assert_eq!(config.passwords.iterations, 3);
            Ok(())
        });
    }

    #[test]
    fn a_numeric_room_version_from_the_environment_is_a_version() {
        // The environment provider reads `10` as an integer; the room version is a string.
        figment::Jail::expect_with(|jail| {
            jail.set_env("MYELIN_ROOMS__DEFAULT_ROOM_VERSION", "10");
            let config = load(None).map_err(|e| e.0)?;
            assert_eq!(config.rooms.default_room_version, "10");
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.create_file("myelin.toml", "[rooms]\ndefault_room_version = \"11\"\n")?;
            let config = load(Some(Path::new("myelin.toml"))).map_err(|e| e.0)?;
            assert_eq!(config.rooms.default_room_version, "11");
            Ok(())
        });
    }

    #[test]
    fn unknown_nested_environment_key_is_named() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("MYELIN_DATABASE__NOPE", "1");
            let err = load(None).unwrap_err();
            assert!(err.0.contains("key `database.nope`"), "{err}");
            Ok(())
        });
    }
}
