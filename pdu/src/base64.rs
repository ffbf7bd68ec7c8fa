//! Unpadded base64, standard and URL-safe (appendices "Unpadded Base64"). Decoding takes
//! input with or without padding, as the appendix asks.

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;

const CONFIG: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_encode_padding(false)
    .with_decode_padding_mode(DecodePaddingMode::Indifferent)
    // The appendix's own test seed ends in non-zero padding bits.
    .with_decode_allow_trailing_bits(true);

const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, CONFIG);
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, CONFIG);

/// Standard unpadded base64.
pub fn encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// URL-safe unpadded base64.
pub fn encode_url_safe(bytes: &[u8]) -> String {
    URL_SAFE.encode(bytes)
}

/// Decodes standard base64, padded or not.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    STANDARD.decode(text).ok()
}

/// Decodes URL-safe base64, padded or not.
pub fn decode_url_safe(text: &str) -> Option<Vec<u8>> {
    URL_SAFE.decode(text).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn appendix_examples() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::encode(plain.as_bytes()), encoded);
            assert_eq!(super::decode(encoded).unwrap(), plain.as_bytes());
        }
        assert_eq!(super::decode("Zm8=").unwrap(), b"fo");
        assert_eq!(super::encode_url_safe(&[0xfb, 0xff]), "-_8");
        assert_eq!(super::decode_url_safe("-_8").unwrap(), [0xfb, 0xff]);
        assert!(super::decode("-_8").is_none());
        assert!(super::decode("Z").is_none());
    }
}
