use crate::{Error, Result};

/// Longest id accepted; the id names a directory and a cgroup, and both have
/// a 255-byte name limit.
pub const MAX_ID_LEN: usize = 200;

/// Container ids become directory and cgroup names, so only a conservative
/// alphabet is accepted (the same as runc's): no `/`, no `..`, no NUL.
pub fn validate(id: &str) -> Result<()> {
    let err = |why| {
        Err(Error::InvalidId {
            id: id.chars().take(64).collect(),
            why,
        })
    };
    if id.is_empty() {
        return err("empty");
    }
    if id.len() > MAX_ID_LEN {
        return err("longer than 200 bytes");
    }
    if id == "." || id == ".." {
        return err("'.' and '..' are not ids");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'+'))
    {
        return err("use only letters, digits and _ - . +");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate;

    #[test]
    fn accepts_ordinary_ids() {
        for id in ["a", "web-1", "x_y.z+2", "0123456789abcdef"] {
            validate(id).unwrap();
        }
    }

    #[test]
    fn rejects_path_like_and_odd_ids() {
        let long = "a".repeat(10_000);
        for id in [
            "",
            ".",
            "..",
            "a/b",
            "../x",
            "a\0b",
            "a b",
            "ü",
            long.as_str(),
        ] {
            assert!(validate(id).is_err(), "{id:?} accepted");
        }
    }
}
