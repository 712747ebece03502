//! Personal access tokens for the HTTP API (`shoal token create|list|revoke`), as Dragonfly's
//! manager has them for its open API: a token is shown once, when it is made; the file keeps
//! only its BLAKE3 hash (`tokens.json` in the API's directory, mode 0600). The scheduler reads
//! the file at each check, so a token made or revoked while it runs counts at once.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// What every token starts with (so a leaked one is recognisable).
const PREFIX: &str = "shoal_pat_";

/// One token as the file keeps it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenEntry {
    pub name: String,
    /// BLAKE3 of the token, hex.
    pub hash: String,
    /// Seconds since the epoch.
    pub created: u64,
}

#[derive(Default, Serialize, Deserialize)]
struct File {
    tokens: Vec<TokenEntry>,
}

/// The token file of an API directory.
#[derive(Clone, Debug)]
pub struct Tokens {
    path: PathBuf,
}

impl Tokens {
    pub fn in_dir(dir: &Path) -> Tokens {
        Tokens {
            path: dir.join("tokens.json"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes a token named `name` (a name in use is refused) and returns it: the only time it
    /// is seen.
    pub fn create(&self, name: &str) -> std::io::Result<String> {
        if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control()) {
            return Err(invalid("a token's name is 1 to 64 printable characters"));
        }
        let mut file = self.read()?;
        if file.tokens.iter().any(|t| t.name == name) {
            return Err(invalid(&format!(
                "a token named {name:?} exists: revoke it first, or choose another name"
            )));
        }
        let token = format!("{PREFIX}{}", hex(&rand::random::<[u8; 24]>()));
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        file.tokens.push(TokenEntry {
            name: name.to_owned(),
            hash: hash(&token),
            created,
        });
        self.write(&file)?;
        Ok(token)
    }

    /// Every token's name and creation time (never the token).
    pub fn list(&self) -> std::io::Result<Vec<TokenEntry>> {
        Ok(self.read()?.tokens)
    }

    /// Removes the token named `name`; whether there was one.
    pub fn revoke(&self, name: &str) -> std::io::Result<bool> {
        let mut file = self.read()?;
        let before = file.tokens.len();
        file.tokens.retain(|t| t.name != name);
        if file.tokens.len() == before {
            return Ok(false);
        }
        self.write(&file)?;
        Ok(true)
    }

    /// The name of the token `token` is, if it is one (a missing or unreadable file: none).
    pub fn check(&self, token: &str) -> Option<String> {
        if !token.starts_with(PREFIX) {
            return None;
        }
        let h = hash(token);
        let file = match self.read() {
            Ok(file) => file,
            Err(e) => {
                tracing::warn!(error = %e, "the API's tokens cannot be read: every request is refused");
                return None;
            }
        };
        // Hashes compared, not tokens: the time a comparison takes says nothing about a token.
        file.tokens
            .into_iter()
            .find(|t| t.hash == h)
            .map(|t| t.name)
    }

    fn read(&self) -> std::io::Result<File> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| invalid(&format!("{}: {e}", self.path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(File::default()),
            Err(e) => Err(e),
        }
    }

    fn write(&self, file: &File) -> std::io::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(".tokens.json.tmp");
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        out.write_all(&serde_json::to_vec_pretty(file).map_err(std::io::Error::other)?)?;
        out.sync_all()?;
        std::fs::rename(&tmp, &self.path)
    }
}

fn hash(token: &str) -> String {
    hex(blake3::hash(token.as_bytes()).as_bytes())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn invalid(why: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, why.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_shown_once_kept_hashed_and_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::in_dir(dir.path());
        assert_eq!(tokens.check("shoal_pat_nothing"), None);
        let t = tokens.create("harbor").unwrap();
        assert!(t.starts_with(PREFIX));
        assert!(tokens.create("harbor").is_err(), "a name is used once");
        let kept = std::fs::read_to_string(tokens.path()).unwrap();
        assert!(
            !kept.contains(&t[PREFIX.len()..]),
            "the file keeps no token"
        );
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(tokens.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(tokens.check(&t).as_deref(), Some("harbor"));
        assert_eq!(tokens.check(&format!("{t}x")), None);
        assert_eq!(tokens.list().unwrap()[0].name, "harbor");
        assert!(tokens.revoke("harbor").unwrap());
        assert!(!tokens.revoke("harbor").unwrap());
        assert_eq!(tokens.check(&t), None, "a revoked token counts no more");
    }
}
