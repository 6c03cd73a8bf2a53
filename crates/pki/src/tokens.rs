//! Static bearer tokens in kube-apiserver's `--token-auth-file` format:
//! `token,user,uid[,"group1,group2"]`, one per line, `#` comments.

use crate::{Identity, PkiError, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenEntry {
    pub token: String,
    pub identity: Identity,
}

#[derive(Debug, Clone, Default)]
pub struct TokenFile {
    entries: Vec<TokenEntry>,
}

impl TokenFile {
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| PkiError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&path.display().to_string(), &text)
    }

    pub fn parse(origin: &str, text: &str) -> Result<Self> {
        let mut entries = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: &str| PkiError::TokenFile {
                path: origin.to_string(),
                line: index + 1,
                reason: reason.to_string(),
            };
            let fields = split_csv(line).ok_or_else(|| bad("unbalanced quotes"))?;
            if fields.len() < 3 {
                return Err(bad("expected token,user,uid[,\"group1,group2\"]"));
            }
            if fields[0].is_empty() || fields[1].is_empty() {
                return Err(bad("the token and the user must not be empty"));
            }
            let groups = fields
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            entries.push(TokenEntry {
                token: fields[0].clone(),
                identity: Identity {
                    user: fields[1].clone(),
                    uid: fields[2].clone(),
                    groups,
                },
            });
        }
        Ok(Self { entries })
    }

    /// The identity a bearer token stands for, comparing in constant time per entry.
    pub fn authenticate(&self, token: &str) -> Option<&Identity> {
        self.entries
            .iter()
            .find(|e| constant_time_eq(e.token.as_bytes(), token.as_bytes()))
            .map(|e| &e.identity)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Splits one CSV line with double-quoted fields.
fn split_csv(line: &str) -> Option<Vec<String>> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut field).trim().to_string()),
            c => field.push(c),
        }
    }
    if quoted {
        return None;
    }
    fields.push(field.trim().to_string());
    Some(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kube_apiserver_format() {
        let file = TokenFile::parse("tokens.csv", "# comment\nabc123,alice,u-1,\"dev,ops\"\n\nxyz,bob,u-2\n").unwrap();
        assert_eq!(file.len(), 2);
        let alice = file.authenticate("abc123").unwrap();
        assert_eq!((alice.user.as_str(), alice.uid.as_str()), ("alice", "u-1"));
        assert_eq!(alice.groups, vec!["dev", "ops"]);
        assert!(file.authenticate("xyz").unwrap().groups.is_empty());
        assert!(file.authenticate("abc12").is_none());
        assert!(file.authenticate("").is_none());
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let err = TokenFile::parse("tokens.csv", "ok,u,1\nonly-two,fields\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "tokens.csv:2: expected token,user,uid[,\"group1,group2\"]"
        );
        let err = TokenFile::parse("t", "a,b,c,\"unclosed\n").unwrap_err();
        assert_eq!(err.to_string(), "t:1: unbalanced quotes");
        let err = TokenFile::parse("t", ",user,1\n").unwrap_err();
        assert!(err.to_string().contains("must not be empty"));
    }
}
