//! CURVE key files: z85 key pairs in small TOML files, and the check that a key is one.
//! Pure parsing (no sockets), shared by the client side (client, worker) and the broker.
//!
//! A key file (written by `tradeplex keygen`):
//! ```toml
//! public_key = "<40 z85 characters>"
//! secret_key = "<40 z85 characters>"
//! ```

use serde::{Deserialize, Serialize};
use std::path::Path;

/// Why a key or key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A key is not 40 z85 characters.
    #[error("invalid CURVE key in `{field}`: must be 40 z85 characters")]
    BadKey {
        /// Which key.
        field: String,
    },
    /// A key file could not be read or parsed.
    #[error("cannot read key file {path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// A CURVE key pair in z85 text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPair {
    /// Public key (share it).
    pub public_key: String,
    /// Secret key (keep it).
    pub secret_key: String,
}

impl KeyPair {
    /// Reads a key file and checks both keys.
    pub fn from_file(path: &Path) -> Result<KeyPair, KeyError> {
        let err = |message: String| KeyError::File {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let pair: KeyPair = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        check_key("public_key", &pair.public_key)?;
        check_key("secret_key", &pair.secret_key)?;
        Ok(pair)
    }

    /// The key file's TOML text.
    pub fn to_toml(&self) -> String {
        format!(
            "public_key = \"{}\"\nsecret_key = \"{}\"\n",
            self.public_key, self.secret_key
        )
    }
}

/// The Z85 alphabet (ZeroMQ RFC 32), in digit order.
const Z85: &[u8; 85] =
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

/// Checks that `key` is a z85-encoded 32-byte key: 40 characters of the Z85 alphabet.
/// (Stricter than libzmq 4.3.4's decoder, which also takes characters outside it.)
pub fn check_key(field: &str, key: &str) -> Result<(), KeyError> {
    if key.len() == 40 && key.bytes().all(|c| Z85.contains(&c)) {
        Ok(())
    } else {
        Err(KeyError::BadKey {
            field: field.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_key_file_round_trips() {
        let pair = KeyPair {
            public_key: "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7".into(),
            secret_key: "JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6".into(),
        };
        let path = std::env::temp_dir().join(format!("tpx-key-{}.toml", std::process::id()));
        std::fs::write(&path, pair.to_toml()).unwrap();
        assert_eq!(KeyPair::from_file(&path).unwrap(), pair);
        std::fs::write(&path, "public_key = \"short\"\nsecret_key = \"x\"\n").unwrap();
        assert!(matches!(
            KeyPair::from_file(&path),
            Err(KeyError::BadKey { .. })
        ));
        let _ = std::fs::remove_file(&path);
        assert!(matches!(
            KeyPair::from_file(&path),
            Err(KeyError::File { .. })
        ));
    }

    #[test]
    fn keys_outside_the_alphabet_or_length_are_refused() {
        // libzmq 4.3.4's decoder is laxer (it takes `"` or `~` and wraps overflowing
        // groups); a key file holding such text is a mistake, so the check refuses it.
        for key in [
            format!("{}\"", "0".repeat(39)),
            format!("{}~", "0".repeat(39)),
            "0".repeat(39),
            "0".repeat(41),
            String::new(),
        ] {
            assert!(check_key("k", &key).is_err(), "{key}");
        }
        assert!(check_key("k", &"%nSc0".repeat(8)).is_ok());
    }

    proptest! {
        /// On text of the alphabet, the check and libzmq agree (length decides).
        #[test]
        fn the_check_agrees_with_libzmq(key in "[0-9a-zA-Z.:+=^!/*?&<>()\\[\\]{}@%$#-]{38,41}") {
            let zmq_ok = key.len() == 40 && zmq::z85_decode(&key).is_ok_and(|b| b.len() == 32);
            prop_assert_eq!(check_key("k", &key).is_ok(), zmq_ok);
        }
    }
}
