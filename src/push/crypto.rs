//! WeChat's message-push signatures and safe-mode decryption, written from WeChat's
//! message-push page (消息推送, "开发者服务器接收消息推送"):
//!
//! - `signature` = hex sha1 of the dictionary-sorted, concatenated Token, timestamp and
//!   nonce; in safe mode `msg_signature` is the same over Token, timestamp, nonce and the
//!   body's `Encrypt`;
//! - the AES key is base64(EncodingAESKey + "="), 32 bytes; AES-256-CBC with the key's first
//!   16 bytes as IV; the plaintext is 16 random bytes, the message length (4 bytes, big
//!   endian), the message and the appid, padded PKCS#7 to a multiple of 32 bytes.
//!
//! Kept apart from the emulator's `push_crypto` on purpose: that one is the tests' oracle,
//! and two independent readings of the documentation that agree are the check.

use aes::cipher::block_padding::NoPadding;
use aes::cipher::{BlockModeDecrypt, KeyIvInit};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use secrecy::{ExposeSecret, SecretBox};
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

type Decryptor = cbc::Decryptor<aes::Aes256>;

/// WeChat pads to multiples of 32 bytes (its key size), not AES's 16.
const PAD_TO: usize = 32;

/// The length of an EncodingAESKey as the mini program console shows it.
pub const ENCODING_AES_KEY_LEN: usize = 43;

/// Why a key or an `Encrypt` was refused; the texts name the likely cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error(
        "the EncodingAESKey must be the 43 characters the mini program console shows (base64 of 32 bytes without its \"=\")"
    )]
    BadKey,
    #[error("Encrypt is not base64 of whole AES-256-CBC blocks")]
    BadCiphertext,
    #[error("the decrypted message has a bad padding or length (a different EncodingAESKey?)")]
    BadPlaintext,
}

/// An app's 32-byte AES key, kept out of logs and `Debug`.
pub struct AesKey(SecretBox<[u8; 32]>);

impl AesKey {
    /// The key of an EncodingAESKey (43 base64 characters).
    pub fn from_encoding_key(encoding_aes_key: &str) -> Result<AesKey, CryptoError> {
        if encoding_aes_key.len() != ENCODING_AES_KEY_LEN {
            return Err(CryptoError::BadKey);
        }
        let bytes = STANDARD
            .decode(format!("{encoding_aes_key}="))
            .map_err(|_| CryptoError::BadKey)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::BadKey)?;
        Ok(AesKey(SecretBox::new(Box::new(key))))
    }
}

impl std::fmt::Debug for AesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AesKey(***)")
    }
}

/// Hex sha1 of the sorted, concatenated parts: the one signature rule of message push.
pub fn sign(parts: &[&str]) -> String {
    let mut sorted = parts.to_vec();
    sorted.sort_unstable();
    Sha1::digest(sorted.concat().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `given` is the signature of `parts`, compared in constant time so a forger learns
/// nothing from how long a refusal took. Hex case is WeChat's (lower).
pub fn verify(given: &str, parts: &[&str]) -> bool {
    let expected = sign(parts);
    bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

/// What a safe-mode `Encrypt` holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decrypted {
    pub msg: String,
    /// The appid after the message: the receiver checks it is the app's own.
    pub appid: String,
}

/// Decrypts an `Encrypt`; refuses bad base64, a partial block, a bad padding or length.
pub fn decrypt(key: &AesKey, encrypt: &str) -> Result<Decrypted, CryptoError> {
    let key = key.0.expose_secret();
    let mut buf = STANDARD
        .decode(encrypt.trim())
        .map_err(|_| CryptoError::BadCiphertext)?;
    if buf.is_empty() || buf.len() % PAD_TO != 0 {
        return Err(CryptoError::BadCiphertext);
    }
    let iv: [u8; 16] = std::array::from_fn(|i| key[i]);
    let plain = Decryptor::new(key.into(), &iv.into())
        .decrypt_padded::<NoPadding>(&mut buf)
        .map_err(|_| CryptoError::BadCiphertext)?;
    unframe(strip_padding(plain)?)
}

/// Removes WeChat's PKCS#7 padding (1..=32 bytes, each its own length).
fn strip_padding(plain: &[u8]) -> Result<&[u8], CryptoError> {
    let pad = usize::from(*plain.last().ok_or(CryptoError::BadPlaintext)?);
    if !(1..=PAD_TO).contains(&pad) || pad > plain.len() {
        return Err(CryptoError::BadPlaintext);
    }
    let (body, padding) = plain.split_at(plain.len() - pad);
    if padding.iter().any(|&b| usize::from(b) != pad) {
        return Err(CryptoError::BadPlaintext);
    }
    Ok(body)
}

/// Splits 16 random bytes + length + message + appid.
fn unframe(body: &[u8]) -> Result<Decrypted, CryptoError> {
    let len: [u8; 4] = body
        .get(16..20)
        .and_then(|b| b.try_into().ok())
        .ok_or(CryptoError::BadPlaintext)?;
    let msg_len =
        usize::try_from(u32::from_be_bytes(len)).map_err(|_| CryptoError::BadPlaintext)?;
    let msg_end = 20usize
        .checked_add(msg_len)
        .filter(|&end| end <= body.len())
        .ok_or(CryptoError::BadPlaintext)?;
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| CryptoError::BadPlaintext);
    Ok(Decrypted {
        msg: text(&body[20..msg_end])?,
        appid: text(&body[msg_end..])?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // The worked examples of WeChat's message-push page (Token "AAAAA").
    const KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    const PUSHED: &str = "+qdx1OKCy+5JPCBFWw70tm0fJGb2Jmeia4FCB7kao+/Q5c/ohsOzQHi8khUOb05JCpj0JB4RvQMkUyus8TPxLKJGQqcvZqzDpVzazhZv6JsXUnnR8XGT740XgXZUXQ7vJVnAG+tE8NUd4yFyjPy7GgiaviNrlCTj+l5kdfMuFUPpRSrfMZuMcp3Fn2Pede2IuQrKEYwKSqFIZoNqJ4M8EajAsjLY2km32IIjdf8YL/P50F7mStwntrA2cPDrM1kb6mOcfBgRtWygb3VIYnSeOBrebufAlr7F9mFUPAJGj04=";

    #[test]
    fn signatures_match_the_documented_examples() {
        assert!(verify(
            "f464b24fc39322e44b38aa78f5edd27bd1441696",
            &["AAAAA", "1714036504", "1514711492"]
        ));
        assert!(verify(
            "046e02f8204d34f8ba5fa3b1db94908f3df2e9b3",
            &["AAAAA", "1714112445", "415670741", PUSHED]
        ));
        assert!(!verify(
            "f464b24fc39322e44b38aa78f5edd27bd1441697",
            &["AAAAA", "1714036504", "1514711492"]
        ));
        assert!(!verify("", &["AAAAA", "1714036504", "1514711492"]));
    }

    #[test]
    fn decrypts_the_documented_push() {
        let key = AesKey::from_encoding_key(KEY).unwrap();
        let d = decrypt(&key, PUSHED).unwrap();
        assert!(d.msg.starts_with(r#"{"ToUserName":"gh_97417a04a28d""#));
        assert_eq!(d.msg.len(), 167);
        assert_eq!(d.appid, "wxba5fad812f8e6fb9");
    }

    #[test]
    fn refuses_bad_keys_and_ciphertexts() {
        assert_eq!(
            AesKey::from_encoding_key("short").unwrap_err(),
            CryptoError::BadKey
        );
        assert_eq!(
            AesKey::from_encoding_key(&"!".repeat(43)).unwrap_err(),
            CryptoError::BadKey
        );
        let key = AesKey::from_encoding_key(KEY).unwrap();
        assert_eq!(
            decrypt(&key, "not base64!"),
            Err(CryptoError::BadCiphertext)
        );
        assert_eq!(decrypt(&key, "AAAA"), Err(CryptoError::BadCiphertext));
        let other =
            AesKey::from_encoding_key("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFE").unwrap();
        assert!(decrypt(&other, PUSHED).is_err(), "wrong key");
        assert_eq!(format!("{key:?}"), "AesKey(***)");
    }
}
