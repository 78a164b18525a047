//! Loading `halley.toml`: the file is parsed into `halley_proto::spec` types, each service's
//! `env_file` is read and merged under its `env`, and every error names the file and, for a bad
//! value, its line, column and field, with what is allowed.
//!
//! ## Guarantees
//! - An `env_file` must be a regular file readable only by its owner (mode 0600 or stricter):
//!   it holds secrets. Its values are never logged.
//! - Relative `env_file` paths are relative to the directory of `halley.toml`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use halley_proto::spec::{HalleyToml, ServiceName, ServiceSpec, parse_env_file};

use crate::error::{Error, Result};

/// Reads and checks `halley.toml`.
pub fn load(path: &Path) -> Result<HalleyToml> {
    let text = std::fs::read_to_string(path).map_err(Error::io("cannot read", path))?;
    let mut doc = parse(path, &text)?;
    let base = path.parent().unwrap_or(Path::new("."));
    for (name, spec) in doc.service.iter_mut() {
        merge_env_file(base, name, spec)?;
    }
    Ok(doc)
}

/// Loads `halley.toml` and returns one service's spec.
pub fn load_service(path: &Path, name: &ServiceName) -> Result<ServiceSpec> {
    let mut doc = load(path)?;
    let known: Vec<String> = doc.service.keys().map(ToString::to_string).collect();
    doc.service.remove(name).ok_or_else(|| {
        Error::Invalid(format!(
            "{} has no [service.{name}] table; it defines: {}",
            path.display(),
            if known.is_empty() {
                "no services".to_owned()
            } else {
                known.join(", ")
            }
        ))
    })
}

/// Parses the text of a `halley.toml` (no env files read).
pub fn parse(path: &Path, text: &str) -> Result<HalleyToml> {
    toml::from_str(text).map_err(|e| {
        let place = e
            .span()
            .map(|span| {
                let (line, col) = line_col(text, span.start);
                format!(":{line}:{col}")
            })
            .unwrap_or_default();
        // toml's own rendering carries a snippet of the line with a caret under the bad value.
        let display = e.to_string();
        let snippet: Vec<&str> = display
            .lines()
            .filter(|l| l.starts_with(' ') || l.starts_with(|c: char| c.is_ascii_digit()))
            .collect();
        Error::Invalid(format!(
            "{}{place}: {}\n{}",
            path.display(),
            e.message().trim_end(),
            snippet.join("\n")
        ))
    })
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn merge_env_file(base: &Path, name: &ServiceName, spec: &mut ServiceSpec) -> Result<()> {
    let Some(file) = spec.env_file.clone() else {
        return Ok(());
    };
    let path: PathBuf = base.join(&file);
    let meta = std::fs::metadata(&path).map_err(Error::io("cannot read env_file", &path))?;
    if !meta.is_file() {
        return Err(Error::Invalid(format!(
            "service {name}: env_file {} is not a regular file",
            path.display()
        )));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::Invalid(format!(
            "service {name}: env_file {} has mode {mode:o}, readable by others; it holds secrets, so run 'chmod 600 {}'",
            path.display(),
            path.display()
        )));
    }
    let text = std::fs::read_to_string(&path).map_err(Error::io("cannot read env_file", &path))?;
    let vars = parse_env_file(&text)
        .map_err(|e| Error::Invalid(format!("service {name}: env_file {}: {e}", path.display())))?;
    for (key, value) in vars {
        // `env` in halley.toml wins over the file, as in Docker Compose.
        spec.env.entry(key).or_insert(value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse(Path::new("halley.toml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn errors_name_line_column_and_field() {
        let e =
            err("[service.web]\ncommand = [\"./app\"]\nlisten = \":8080\"\nprotocl = \"http\"\n");
        assert!(
            e.starts_with("halley.toml:4:1: unknown field `protocl`"),
            "{e}"
        );
        assert!(e.contains("protocol"), "the allowed fields are listed: {e}");

        let e = err("[service.web]\ncommand = [\"./app\"]\nlisten = \"nowhere\"\n");
        assert!(e.starts_with("halley.toml:3:10:"), "{e}");
        assert!(e.contains("\"IP:PORT\""), "{e}");

        let e = err(
            "[service.web]\ncommand = [\"./app\"]\nlisten = \":80\"\n[service.web.stop]\ndrain_timeout = \"3 weeks\"\n",
        );
        assert!(e.starts_with("halley.toml:5:17:"), "{e}");

        let e = err("[service.Web]\ncommand = [\"./app\"]\nlisten = \":80\"\n");
        assert!(e.contains("bad service name"), "{e}");

        let e = err("[service.web]\ncommand = []\nlisten = \":80\"\n");
        assert!(e.contains("command must name a program"), "{e}");

        let e = err(
            "[service.web]\ncommand = [\"a\"]\nlisten = \":80\"\nhealth = { http = \"/up\", tcp = true }\n",
        );
        assert!(e.contains("only one of"), "{e}");
        assert!(e.starts_with("halley.toml:4:"), "{e}");
    }

    #[test]
    fn env_file_must_be_private_and_is_merged_under_env() {
        let dir = tempfile::tempdir().unwrap();
        let toml = dir.path().join("halley.toml");
        std::fs::write(
            &toml,
            "[service.web]\ncommand = [\"./app\"]\nlisten = \":80\"\nenv = { A = \"toml\" }\nenv_file = \"web.env\"\n",
        )
        .unwrap();
        let env = dir.path().join("web.env");
        std::fs::write(&env, "A=file\nB=secret\n").unwrap();
        std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load(&toml).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o600)).unwrap();
        let spec = load_service(&toml, &"web".parse().unwrap()).unwrap();
        assert_eq!(spec.env["A"].0, "toml");
        assert_eq!(spec.env["B"].0, "secret");
        let e = load_service(&toml, &"api".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("defines: web"), "{e}");
    }
}
