//! WeChat's message-push signatures and safe-mode encryption, written from the
//! documentation alone, for the emulator's pushes and as the oracle of the product's
//! receiver tests.
//!
//! Source: 消息推送 (message push), "开发者服务器接收消息推送", with its worked examples for
//! the GET verification, plaintext mode and safe mode (all used as test vectors below):
//! <https://developers.weixin.qq.com/miniprogram/dev/framework/server-ability/message-push.html>
//!
//! - `signature` = sha1 of the dictionary-sorted, concatenated Token, timestamp, nonce (hex).
//! - Safe mode (`encrypt_type=aes`): `msg_signature` = the same over Token, timestamp, nonce
//!   and the body's `Encrypt`.
//! - AESKey = Base64_Decode(EncodingAESKey + "="), 32 bytes; AES-256-CBC with IV = the
//!   key's first 16 bytes; plaintext FullStr = random(16 bytes) + msg_len (4 bytes, network
//!   order) + msg + appid, padded PKCS#7 with K = 32 (so the pad is 1..=32 bytes of its own
//!   length), then Base64.

use std::fmt;

use aes::cipher::block_padding::NoPadding;
use aes::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha1::{Digest, Sha1};

type Encryptor = cbc::Encryptor<aes::Aes256>;
type Decryptor = cbc::Decryptor<aes::Aes256>;

/// WeChat pads to multiples of 32 bytes (the key size), not AES's 16.
const PAD_TO: usize = 32;

/// Why a key or a ciphertext was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CryptoError {
    /// The EncodingAESKey is not 43 base64 characters decoding to 32 bytes.
    BadKey,
    /// `Encrypt` is not base64 of whole AES blocks.
    BadCiphertext,
    /// The decrypted padding or length prefix does not fit the message (wrong key?).
    BadPlaintext,
}

impl fmt::Display for CryptoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CryptoError::BadKey => {
                "the EncodingAESKey must be 43 base64 characters (32 bytes once \"=\" is added)"
            }
            CryptoError::BadCiphertext => "Encrypt is not base64 of whole AES-256-CBC blocks",
            CryptoError::BadPlaintext => {
                "the decrypted message has a bad padding or length (wrong EncodingAESKey?)"
            }
        })
    }
}

impl std::error::Error for CryptoError {}

/// sha1 hex of the sorted, concatenated parts: the one signature rule of message push.
pub fn sign_parts(parts: &[&str]) -> String {
    let mut sorted = parts.to_vec();
    sorted.sort_unstable();
    let digest = Sha1::digest(sorted.concat().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// `signature` of a push or of the GET verification.
pub fn sign(token: &str, timestamp: &str, nonce: &str) -> String {
    sign_parts(&[token, timestamp, nonce])
}

/// `msg_signature` of a safe-mode push over its `Encrypt`.
pub fn msg_signature(token: &str, timestamp: &str, nonce: &str, encrypt: &str) -> String {
    sign_parts(&[token, timestamp, nonce, encrypt])
}

/// The 32-byte AES key of an EncodingAESKey.
pub fn aes_key(encoding_aes_key: &str) -> Result<[u8; 32], CryptoError> {
    if encoding_aes_key.len() != 43 {
        return Err(CryptoError::BadKey);
    }
    let bytes = STANDARD
        .decode(format!("{encoding_aes_key}="))
        .map_err(|_| CryptoError::BadKey)?;
    bytes.try_into().map_err(|_| CryptoError::BadKey)
}

/// `Encrypt` for `msg` from `appid`, with fresh random bytes in front.
pub fn encrypt(encoding_aes_key: &str, appid: &str, msg: &str) -> Result<String, CryptoError> {
    let random: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    encrypt_with_random(encoding_aes_key, appid, msg, &random)
}

/// [`encrypt`] with the 16 leading bytes given: reproduces the documentation's example.
pub fn encrypt_with_random(
    encoding_aes_key: &str,
    appid: &str,
    msg: &str,
    random: &[u8; 16],
) -> Result<String, CryptoError> {
    let key = aes_key(encoding_aes_key)?;
    let msg_len = u32::try_from(msg.len()).map_err(|_| CryptoError::BadPlaintext)?;
    let mut buf = Vec::with_capacity(20 + msg.len() + appid.len() + PAD_TO);
    buf.extend_from_slice(random);
    buf.extend_from_slice(&msg_len.to_be_bytes());
    buf.extend_from_slice(msg.as_bytes());
    buf.extend_from_slice(appid.as_bytes());
    let pad = PAD_TO - buf.len() % PAD_TO;
    buf.resize(buf.len() + pad, u8::try_from(pad).unwrap_or(0));
    let len = buf.len();
    Encryptor::new(&key.into(), &iv(&key).into())
        .encrypt_padded::<NoPadding>(&mut buf, len)
        .map_err(|_| CryptoError::BadPlaintext)?;
    Ok(STANDARD.encode(&buf))
}

/// What a safe-mode `Encrypt` holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decrypted {
    pub msg: String,
    /// The appid after the message: a receiver must check it is its own.
    pub appid: String,
}

/// Decrypts an `Encrypt`; refuses a bad key, bad base64, bad padding or length.
pub fn decrypt(encoding_aes_key: &str, encrypt: &str) -> Result<Decrypted, CryptoError> {
    let key = aes_key(encoding_aes_key)?;
    let mut buf = STANDARD
        .decode(encrypt)
        .map_err(|_| CryptoError::BadCiphertext)?;
    if buf.is_empty() || buf.len() % 16 != 0 {
        return Err(CryptoError::BadCiphertext);
    }
    let plain = Decryptor::new(&key.into(), &iv(&key).into())
        .decrypt_padded::<NoPadding>(&mut buf)
        .map_err(|_| CryptoError::BadCiphertext)?;
    let pad = usize::from(*plain.last().ok_or(CryptoError::BadPlaintext)?);
    if !(1..=PAD_TO).contains(&pad) || pad > plain.len() {
        return Err(CryptoError::BadPlaintext);
    }
    let body = &plain[..plain.len() - pad];
    let len_bytes: [u8; 4] = body
        .get(16..20)
        .and_then(|b| b.try_into().ok())
        .ok_or(CryptoError::BadPlaintext)?;
    let msg_len = usize::try_from(u32::from_be_bytes(len_bytes)).unwrap_or(usize::MAX);
    let msg = body
        .get(20..20usize.saturating_add(msg_len))
        .ok_or(CryptoError::BadPlaintext)?;
    let appid = &body[20 + msg_len..];
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| CryptoError::BadPlaintext);
    Ok(Decrypted {
        msg: text(msg)?,
        appid: text(appid)?,
    })
}

fn iv(key: &[u8; 32]) -> [u8; 16] {
    std::array::from_fn(|i| key[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    // The documentation's worked examples (Token "AAAAA").
    const KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    const APPID: &str = "wxba5fad812f8e6fb9";
    const PUSHED: &str = "+qdx1OKCy+5JPCBFWw70tm0fJGb2Jmeia4FCB7kao+/Q5c/ohsOzQHi8khUOb05JCpj0JB4RvQMkUyus8TPxLKJGQqcvZqzDpVzazhZv6JsXUnnR8XGT740XgXZUXQ7vJVnAG+tE8NUd4yFyjPy7GgiaviNrlCTj+l5kdfMuFUPpRSrfMZuMcp3Fn2Pede2IuQrKEYwKSqFIZoNqJ4M8EajAsjLY2km32IIjdf8YL/P50F7mStwntrA2cPDrM1kb6mOcfBgRtWygb3VIYnSeOBrebufAlr7F9mFUPAJGj04=";

    #[test]
    fn signatures_match_the_documented_examples() {
        // GET verification.
        assert_eq!(
            sign("AAAAA", "1714036504", "1514711492"),
            "f464b24fc39322e44b38aa78f5edd27bd1441696"
        );
        // Plaintext-mode push.
        assert_eq!(
            sign("AAAAA", "1714037059", "486452656"),
            "899cf89e464efb63f54ddac96b0a0a235f53aa78"
        );
        // Safe-mode push and reply.
        assert_eq!(
            msg_signature("AAAAA", "1714112445", "415670741", PUSHED),
            "046e02f8204d34f8ba5fa3b1db94908f3df2e9b3"
        );
        assert_eq!(
            msg_signature(
                "AAAAA",
                "1713424427",
                "415670741",
                "ELGduP2YcVatjqIS+eZbp80MNLoAUWvzzyJxgGzxZO/5sAvd070Bs6qrLARC9nVHm48Y4hyRbtzve1L32tmxSQ=="
            ),
            "1b9339964ed2e271e7c7b6ff2b0ef902fc94dea1"
        );
    }

    #[test]
    fn decrypts_the_documented_push() {
        let d = decrypt(KEY, PUSHED).unwrap();
        assert_eq!(
            d.msg,
            r#"{"ToUserName":"gh_97417a04a28d","FromUserName":"o9AgO5Kd5ggOC-bXrbNODIiE3bGY","CreateTime":1714112445,"MsgType":"event","Event":"debug_demo","debug_str":"hello world"}"#
        );
        assert_eq!(d.msg.len(), 167);
        assert_eq!(d.appid, APPID);
    }

    #[test]
    fn encrypts_the_documented_reply() {
        let encrypt = encrypt_with_random(
            KEY,
            APPID,
            r#"{"demo_resp":"good luck"}"#,
            b"707722b803182950",
        )
        .unwrap();
        assert_eq!(
            encrypt,
            "ELGduP2YcVatjqIS+eZbp80MNLoAUWvzzyJxgGzxZO/5sAvd070Bs6qrLARC9nVHm48Y4hyRbtzve1L32tmxSQ=="
        );
    }

    #[test]
    fn round_trips_and_refuses_bad_input() {
        // Ends in "E": the 2 bits past the 32nd byte are zero, as in any key made from 32 bytes.
        let key = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFE";
        for msg in ["", "x", &"长".repeat(100), &"a".repeat(12)] {
            let e = encrypt(key, "wx1", msg).unwrap();
            assert_eq!(
                decrypt(key, &e).unwrap(),
                Decrypted {
                    msg: msg.to_owned(),
                    appid: "wx1".into()
                }
            );
        }
        assert_eq!(aes_key("short"), Err(CryptoError::BadKey));
        assert_eq!(
            aes_key("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"),
            Err(CryptoError::BadKey),
            "bits past the 32nd byte"
        );
        assert_eq!(decrypt(KEY, "not base64!"), Err(CryptoError::BadCiphertext));
        assert_eq!(decrypt(KEY, "AAAA"), Err(CryptoError::BadCiphertext));
        assert!(decrypt(key, PUSHED).is_err(), "wrong key");
    }
}
