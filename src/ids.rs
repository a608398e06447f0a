//! Random ids and tokens: one helper, straight from the OS's CSPRNG (`getrandom`). There is no
//! weak fallback: a token minted without randomness (the persistent access token, SignalR
//! connection tokens) could be guessed, so callers get an error and refuse instead.

/// The OS could not give randomness (never happens on Linux after boot).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the OS has no randomness to give: {0}")]
pub struct RandomError(String);

/// `N` random bytes.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], RandomError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| RandomError(e.to_string()))?;
    Ok(bytes)
}

/// `N` random bytes as `2N` lowercase hex digits (URL-safe).
pub fn random_hex<const N: usize>() -> Result<String, RandomError> {
    Ok(random_bytes::<N>()?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// A token of 128 random bits, 32 lowercase hex digits.
pub fn random_token() -> Result<String, RandomError> {
    random_hex::<16>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_32_hex_digits_and_differ() {
        let a = random_token().expect("randomness");
        let b = random_token().expect("randomness");
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        assert_ne!(a, b);
        assert_eq!(random_hex::<8>().expect("randomness").len(), 16);
    }
}
